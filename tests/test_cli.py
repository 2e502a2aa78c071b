"""Tests of the ``modelmesh`` command line (in-process and as real subprocesses)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from modelmesh_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-cli-test-secret-0123456789"

GOOD = f"""
providers:
  alpha:
    connector: openai.llm.v1
    config: {{base_url: "http://127.0.0.1:9/v1", api_key: "{SECRET}"}}
models:
  alpha.gpt-4o-mini: {{}}
  alpha.gpt-4o: {{}}
pools:
  chat:
    capability: chat-completion
    strategy: priority-selection
discovery: {{auto_detect: false}}
"""

BAD = f"""
providers:
  alpha:
    connector: openai.llm.v1
    config: {{base_url: "http://127.0.0.1:9/v1", api_key: "{SECRET}"}}
  gamma:
    connector: opneai.llm.v1
models:
  alpha.gpt-4o-mini: {{}}
  delta.gpt-4o: {{}}
  alpha.custom-thing: {{capabilities: [chat-complete]}}
pools:
  chat:
    models: [alpha.gpt-4o-mini]
    retry: {{backoff: sometimes, max_attempts: "three"}}
  fast:
    models: [alpha.gpt-4o-mini]
    strategy: round-robbin
proxy:
  port: "eighty"
  auth: {{keys: [{{key: abcdefgh, rmp: 3}}]}}
"""

EXPECTED_PROBLEMS = [
    "pools.chat.retry.max_attempts: must be an integer",
    "pools.chat.retry.backoff: must be one of fixed, exponential_jitter, retry_after",
    "proxy.port: must be an integer",
    "proxy.auth.keys.0.rmp: unknown key (did you mean 'rpm'?)",
    "providers.gamma.connector: unknown provider connector 'opneai.llm.v1' "
    "(did you mean 'openai.llm.v1'?)",
    "models.delta.gpt-4o: unknown provider 'delta'",
    "models.alpha.custom-thing.capabilities.0: unknown capability 'chat-complete'",
    "pools.fast.strategy: unknown strategy 'round-robbin' (did you mean 'round-robin'?)",
]


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def test_check_reports_every_problem_with_its_path(bad: Path) -> None:
    code, out = run("check", str(bad))
    assert code == 1
    assert f"{bad}: {len(EXPECTED_PROBLEMS)} problems" in out
    for problem in EXPECTED_PROBLEMS:
        assert problem in out, f"missing: {problem}\n{out}"
    assert SECRET not in out


def test_check_as_subprocess(bad: Path, good: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "modelmesh_core.cli", "check", str(bad)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert proc.returncode == 1
    for problem in EXPECTED_PROBLEMS:
        assert problem in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "modelmesh_core.cli", "check", str(good)],
                          capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK (1 providers, 2 models" in proc.stdout


def test_check_valid_and_missing(good: Path, tmp_path: Path) -> None:
    code, out = run("check", str(good))
    assert code == 0
    assert "OK" in out
    code, out = run("check", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert "does not exist" in out


def test_check_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("providers: [unclosed\n")
    code, out = run("check", str(path))
    assert code == 1
    assert "invalid YAML" in out


def test_route_and_explain(good: Path) -> None:
    code, out = run("route", "chat", "-c", str(good))
    assert code == 0
    assert "chat -> alpha." in out
    code, out = run("route", "chat-completion", "-c", str(good), "--json")
    data = json.loads(out)
    assert data["pool"] == "chat" and data["provider"] == "alpha"
    code, out = run("explain", "chat", "-c", str(good), "--message", "hello there", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["pool"] == "chat"
    assert data["strategy"] == "modelmesh.priority-selection.v1"
    code, out = run("explain", "chat", "-c", str(good))
    assert "selected" in out and "stages" in out


def test_unknown_name_is_an_error(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("route", "chta", "-c", str(good))
    assert code == 1
    assert "chta" in capsys.readouterr().err


def test_pools_models_plugins(good: Path) -> None:
    code, out = run("pools", "-c", str(good))
    assert code == 0
    assert "chat" in out and "modelmesh.priority-selection.v1" in out
    code, out = run("models", "-c", str(good), "--json")
    ids = {m["model"] for m in json.loads(out)}
    assert ids == {"alpha.gpt-4o-mini", "alpha.gpt-4o"}
    code, out = run("plugins", "-c", str(good), "--json")
    rows = json.loads(out)
    openai_row = next(r for r in rows if r["distribution"] == "modelmesh-openai")
    assert openai_row["status"] == "loaded"
    assert "modelmesh_providers" in openai_row["hooks"]
    assert openai_row["version"]
    code, out = run("plugins", "-c", str(good))
    assert "PLUGIN" in out and "modelmesh-openai" in out
    for text in (out,):
        assert SECRET not in text


def test_capabilities(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run("capabilities")
    assert "generation.text-generation.chat-completion  (alias: chat-completion)" in out
    code, out = run("capabilities", "--search", "speech")
    assert code == 0
    assert "generation.audio-generation.text-to-speech" in out
    code, out = run("capabilities", "--tree")
    assert "├── generation" in out and "chat-completion" in out
    assert run("capabilities", "--search", "zzzz")[0] == 1


def test_logging_json_and_verbose(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("--log-json", "-v", "models", "-c", str(good))
    assert code == 0
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert lines, "debug records were logged"
    assert all("record" in line for line in lines)
    assert SECRET not in err
    code, _ = run("models", "-c", str(good))
    assert capsys.readouterr().err == ""  # quiet by default


def test_demo_runs_green() -> None:
    started = time.monotonic()
    code, out = run("demo", "--requests", "60", "--no-progress")
    assert code == 0, out
    assert "steady.gpt-4o-mini" in out
    assert "errors seen by the client" in out
    assert time.monotonic() - started < 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_health(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.communicate()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("serve did not become healthy")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_and_sigterm(good: Path, workers: int, tmp_path: Path) -> None:
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")
    if workers > 1:  # several workers must share their state (serve refuses the memory store)
        shared = yaml.safe_load(good.read_text())
        shared["storage"] = {"connector": "modelmesh.sqlite.v1",
                             "config": {"path": str(tmp_path / "state.db")}}
        good = tmp_path / "shared.yaml"
        good.write_text(yaml.safe_dump(shared))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelmesh_core.cli", "serve", "-c", str(good), "--port",
         str(port), "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        _wait_health(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
            ids = [m["id"] for m in json.loads(r.read())["data"]]
        assert "chat" in ids
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert SECRET not in out + err
    assert f"http://127.0.0.1:{port}" in out  # the address, with one worker or several
