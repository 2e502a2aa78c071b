"""Secret stores that keep secrets off disk in clear (an AES-GCM encrypted file, the OS
keyring) and the ``modelmesh secrets`` command: round trips through the CLI as a subprocess and
through ``${secrets:…}`` in a config that then authenticates against a fake upstream, wrong keys,
altered files, and a real file-backed keyring backend (keyrings.alt's ``PlaintextKeyring``)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelmesh_core import CompletionRequest, ConfigError, ModelMesh
from modelmesh_core.builtin.secrets import (
    EncryptedFileConfig,
    EncryptedFileStore,
    KeyringStore,
    KeyringStoreConfig,
)
from modelmesh_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "correct horse battery staple"
API_KEY = "sk-from-the-encrypted-file-7f3a9c"
PLAINTEXT = "keyrings.alt.file.PlaintextKeyring"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODELMESH_SECRETS_KEY", "PYTHON_KEYRING_BACKEND", "MODELMESH_CONFIG")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def cli(*argv: str, env: dict[str, str], stdin: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelmesh_core.cli", *argv], input=stdin,
                          capture_output=True, text=True, env=env, timeout=60, cwd=cwd)


def encrypted_config(tmp_path: Path, base_url: str = "http://127.0.0.1:9/v1") -> Path:
    path = tmp_path / "modelmesh.yaml"
    path.write_text(f"""
secrets:
  connector: modelmesh.encrypted-file.v1
  config: {{path: "{tmp_path / 'secrets.enc'}", keyring_service: null}}
providers:
  up:
    connector: openai.llm.v1
    config: {{base_url: "{base_url}", api_key: "${{secrets:UPSTREAM_KEY}}"}}
models:
  up.gpt-4o-mini: {{}}
discovery: {{auto_detect: false}}
""")
    return path


# --------------------------------------------------------------------------- encrypted file


def test_encrypted_file_round_trip_and_what_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secrets.enc"
    cfg = EncryptedFileConfig(path=str(path), keyring_service=None)
    env = {"MODELMESH_SECRETS_KEY": PASSPHRASE}
    store = EncryptedFileStore(cfg, env=env)
    assert store.list() == [] and not path.exists()
    store.set("UPSTREAM_KEY", API_KEY)
    store.set("OTHER", "second-value-123")
    store.delete("OTHER")

    again = EncryptedFileStore(cfg, env=env)
    assert again.get("UPSTREAM_KEY") == API_KEY
    assert again.list() == ["UPSTREAM_KEY"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert API_KEY not in raw and "UPSTREAM_KEY" not in raw  # names are secret too
    doc = json.loads(raw)
    assert (doc["format"], doc["version"], doc["cipher"]) == (
        "modelmesh-secrets", 1, "AES-256-GCM")
    assert doc["kdf"]["name"] == "scrypt"
    assert API_KEY not in repr(again) and PASSPHRASE not in repr(again)

    # every write uses a fresh nonce
    nonce = doc["nonce"]
    again.set("X", "another-value-456")
    assert json.loads(path.read_text())["nonce"] != nonce


def test_wrong_key_is_a_clear_config_error(tmp_path: Path) -> None:
    path = tmp_path / "secrets.enc"
    cfg = EncryptedFileConfig(path=str(path), keyring_service=None)
    EncryptedFileStore(cfg, env={"MODELMESH_SECRETS_KEY": PASSPHRASE}).set("K", API_KEY)
    with pytest.raises(ConfigError) as info:
        EncryptedFileStore(cfg, env={"MODELMESH_SECRETS_KEY": "wrong passphrase"})
    assert info.value.errors == [
        f"secrets.config.key_env: cannot decrypt {path}: the key from $MODELMESH_SECRETS_KEY "
        "is not the one the file was written with (or the file was altered); set "
        "$MODELMESH_SECRETS_KEY to the passphrase used when it was created"]
    assert API_KEY not in str(info.value) and "wrong passphrase" not in str(info.value)


def test_an_altered_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "secrets.enc"
    cfg = EncryptedFileConfig(path=str(path), keyring_service=None)
    env = {"MODELMESH_SECRETS_KEY": PASSPHRASE}
    EncryptedFileStore(cfg, env=env).set("K", API_KEY)
    doc = json.loads(path.read_text())
    doc["kdf"]["n"] = 2**15  # the header is authenticated with the data
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"cannot decrypt .*\(or the file was altered\)"):
        EncryptedFileStore(cfg, env=env)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"secrets.config.path: .* cannot read it"):
        EncryptedFileStore(cfg, env=env)


def test_no_key_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "secrets.enc"
    cfg = EncryptedFileConfig(path=str(path), keyring_service=None)
    store = EncryptedFileStore(cfg, env={})  # a missing file needs no key until written
    with pytest.raises(ConfigError) as info:
        store.set("K", API_KEY)
    assert info.value.errors == [
        f"secrets.config.key_env: {path} is an encrypted secrets file and no key was found: "
        "set $MODELMESH_SECRETS_KEY to its passphrase"]
    assert not path.exists()


def test_the_key_can_come_from_the_keyring(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    from keyrings.alt.file import PlaintextKeyring

    PlaintextKeyring().set_password("mm-test", "secrets-key", PASSPHRASE)
    cfg = EncryptedFileConfig(path=str(tmp_path / "s.enc"), keyring_service="mm-test",
                              keyring_backend=PLAINTEXT)
    EncryptedFileStore(cfg, env={}).set("K", API_KEY)
    # the same file opens with the same passphrase given through the environment
    env_cfg = EncryptedFileConfig(path=str(tmp_path / "s.enc"), keyring_service=None)
    assert EncryptedFileStore(env_cfg, env={"MODELMESH_SECRETS_KEY": PASSPHRASE}).get(
        "K") == API_KEY


async def test_secrets_reference_resolves_from_the_encrypted_file(
        tmp_path: Path, fake_upstream: Any) -> None:
    fake = await fake_upstream(api_keys={API_KEY})  # answers 401 to any other key
    EncryptedFileStore(EncryptedFileConfig(path=str(tmp_path / "secrets.enc")),
                       env={"MODELMESH_SECRETS_KEY": PASSPHRASE}).set("UPSTREAM_KEY", API_KEY)
    config = encrypted_config(tmp_path, fake.base_url)
    mesh = ModelMesh(str(config), env={"MODELMESH_SECRETS_KEY": PASSPHRASE})
    async with mesh:
        response = await mesh.router.complete(
            "chat-completion", CompletionRequest(messages=[{"role": "user", "content": "hi"}]))
        assert response.content
        assert API_KEY not in repr(mesh.config.providers["up"].config)
    assert fake.calls[-1].headers["authorization"] == f"Bearer {API_KEY}"

    with pytest.raises(ConfigError) as info:
        ModelMesh(str(config), env={"MODELMESH_SECRETS_KEY": "not it"}).validate()
    assert any("cannot decrypt" in e for e in info.value.errors)


# --------------------------------------------------------------------------- the CLI


def run_main(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_round_trip_through_the_encrypted_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = encrypted_config(tmp_path)
    env = cli_env(MODELMESH_SECRETS_KEY=PASSPHRASE)

    # as a user would: real processes, the value on stdin
    proc = cli("secrets", "set", "UPSTREAM_KEY", "-c", str(config), env=env,
               stdin=API_KEY + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stored UPSTREAM_KEY in modelmesh.encrypted-file.v1\n"
    assert API_KEY not in proc.stdout + proc.stderr
    proc = cli("secrets", "-c", str(config), "get", "UPSTREAM_KEY", env=env)
    assert (proc.returncode, proc.stdout) == (0, API_KEY + "\n")
    proc = cli("check", str(config), env=cli_env(MODELMESH_SECRETS_KEY="wrong"))
    assert proc.returncode == 1
    assert "cannot decrypt" in proc.stdout and "set $MODELMESH_SECRETS_KEY" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and API_KEY not in proc.stdout

    # the rest in-process (same code path, without a second of start-up each)
    monkeypatch.setenv("MODELMESH_SECRETS_KEY", PASSPHRASE)
    monkeypatch.setattr(sys, "stdin", io.StringIO("spare-value-0000"))
    assert run_main("secrets", "-c", str(config), "set", "SPARE", capsys=capsys)[0] == 0
    code, out, _ = run_main("secrets", "-c", str(config), "list", "--json", capsys=capsys)
    assert json.loads(out) == ["SPARE", "UPSTREAM_KEY"]
    code, out, err = run_main("check", str(config), capsys=capsys)
    assert code == 0, out + err
    assert run_main("secrets", "-c", str(config), "rm", "SPARE", capsys=capsys)[1] == (
        "removed SPARE from modelmesh.encrypted-file.v1\n")
    code, out, err = run_main("secrets", "-c", str(config), "get", "UPSTRAEM_KEY",
                              capsys=capsys)
    assert (code, out) == (1, "")
    assert err == ("error: secret 'UPSTRAEM_KEY' is not set in modelmesh.encrypted-file.v1 "
                   "(did you mean 'UPSTREAM_KEY'?)\n")

    monkeypatch.setenv("MODELMESH_SECRETS_KEY", "wrong")
    code, out, err = run_main("secrets", "-c", str(config), "get", "UPSTREAM_KEY",
                              capsys=capsys)
    assert (code, out) == (1, "")
    assert "cannot decrypt" in err and "Traceback" not in err and API_KEY not in err


def test_cli_secrets_in_process_and_read_only_stores(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELMESH_CONFIG", raising=False)
    assert main(["secrets", "set", "X"]) == 1  # default store: the environment
    err = capsys.readouterr().err
    assert err.startswith("error: the secret store modelmesh.env.v1 is read-only; configure "
                          "a writable one")
    assert "modelmesh.encrypted-file.v1" in err


# --------------------------------------------------------------------------- keyring


def test_keyring_store_with_a_real_file_backend(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    store = KeyringStore(KeyringStoreConfig(service="mm-test", backend=PLAINTEXT))
    store.set("A_KEY", API_KEY)
    store.set("B_KEY", "b-value-123456")
    assert store.get("A_KEY") == API_KEY and store.get("missing") is None
    assert store.list() == ["A_KEY", "B_KEY"]
    store.delete("B_KEY")
    assert store.list() == ["A_KEY"] and store.get("B_KEY") is None
    with pytest.raises(KeyError):
        store.delete("B_KEY")
    ring_file = tmp_path / "python_keyring" / "keyring_pass.cfg"
    assert "[mm_2Dtest]" in ring_file.read_text()  # really went through the backend's file
    assert API_KEY not in repr(store)


def test_keyring_through_the_cli_and_a_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "modelmesh.yaml"
    config.write_text("""
secrets: {connector: modelmesh.keyring.v1, config: {service: mm-cli-test}}
providers:
  up:
    connector: openai.llm.v1
    config: {base_url: "http://127.0.0.1:9/v1", api_key: "${secrets:UPSTREAM_KEY}"}
models:
  up.gpt-4o-mini: {}
discovery: {auto_detect: false}
""")
    # keyring's own switch picks the backend; XDG_DATA_HOME says where its file lives
    env = cli_env(PYTHON_KEYRING_BACKEND=PLAINTEXT, XDG_DATA_HOME=str(tmp_path / "data"))
    proc = cli("secrets", "-c", str(config), "set", "UPSTREAM_KEY", env=env, stdin=API_KEY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "stored UPSTREAM_KEY in modelmesh.keyring.v1\n"
    assert (tmp_path / "data" / "python_keyring" / "keyring_pass.cfg").is_file()
    proc = cli("secrets", "-c", str(config), "get", "UPSTREAM_KEY", env=env)
    assert proc.stdout == API_KEY + "\n"

    # in-process, the same keyring file through the store's own backend setting
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config.write_text(config.read_text().replace(
        "{service: mm-cli-test}", f"{{service: mm-cli-test, backend: {PLAINTEXT}}}"))
    code, out, _ = run_main("secrets", "-c", str(config), "list", capsys=capsys)
    assert (code, out) == (0, "UPSTREAM_KEY\n")
    code, out, err = run_main("check", str(config), capsys=capsys)
    assert code == 0, out + err
    assert run_main("secrets", "-c", str(config), "rm", "UPSTREAM_KEY", capsys=capsys)[0] == 0
    code, out, err = run_main("secrets", "-c", str(config), "list", capsys=capsys)
    assert out == "" and "no secrets in modelmesh.keyring.v1" in err
    code, out, err = run_main("check", str(config), capsys=capsys)
    assert code == 1 and "secret 'UPSTREAM_KEY' is not set" in out
