"""Every README example runs verbatim against the fake upstream, and prints no warning.

The README's Python blocks are extracted and run, unchanged, in fresh interpreters with
``-W error`` (stderr must stay empty: an unclosed aiohttp session at exit is reported there
even when it cannot raise). What a reader would set up around them is the test's: the
environment variables the README names (``OPENAI_BASE_URL`` pointing at a
:class:`~modelmesh_core.fakes.FakeUpstream` on 127.0.0.1), and for the proxy example a real
``modelmesh serve`` started as the README's shell block says. That block listens on port 8080;
the test runs the proxy on a free port instead (8080 may be taken on a shared machine) and the
example's interpreter gets a ``sitecustomize`` that routes connections for 127.0.0.1:8080 to
it, so the example's text is still run as written. The YAML example is validated against the
installed plugins.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from modelmesh_core import ModelMesh
from modelmesh_core.fakes import FakeUpstream, Reply

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
_REDIRECT = """\
import os, socket
_port = int(os.environ["README_PROXY_PORT"])
_create = socket.create_connection
def create_connection(address, *args, **kwargs):
    host, port = address[0], address[1]
    if host in ("127.0.0.1", "localhost") and port == 8080:
        address = (host, _port)
    return _create(address, *args, **kwargs)
socket.create_connection = create_connection
"""


def blocks(lang: str) -> list[str]:
    return [code for kind, code in _BLOCK.findall(README.read_text(encoding="utf-8"))
            if kind == lang]


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream.running_in_thread(default=Reply("Hello from the README!")) as f:
        yield f


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.endswith(("_API_KEY", "_BASE_URL", "_ENDPOINT", "_HOST"))
           and not k.startswith(("MODELMESH_", "PYTHONWARNINGS"))}
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_readme_has_the_examples_this_test_runs() -> None:
    assert len(blocks("python")) == 3
    quick = section("Quick start")
    commands = _BLOCK.findall(quick)
    assert [kind for kind, _ in commands] == ["bash", "bash"]  # two commands on a fresh machine
    assert all(code.count("\n") == 1 for _, code in commands)  # each one line
    assert "modelmesh demo" in commands[0][1] and "pytest" in commands[1][1]
    assert "modelmesh fake-upstream" in quick


def test_embedding_example(fake: FakeUpstream, tmp_path: Path) -> None:
    code = blocks("python")[0]
    assert "ModelMesh(CONFIG)" in code
    env = clean_env(OPENAI_API_KEY="sk-readme-000000", GROQ_API_KEY="gsk-readme-000000",
                    OPENAI_BASE_URL=fake.base_url)
    before = len(fake.calls)
    result = run_python(code, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.split() == ["openai.gpt-4o-mini", "Hello", "from", "the", "README!",
                                     "1"]
    [call] = fake.calls[before:]
    assert call.body["messages"] == [{"role": "user", "content": "Hello!"}]
    assert call.api_key == "sk-readme-000000"


def test_create_example_closes_its_session(fake: FakeUpstream, tmp_path: Path) -> None:
    code = blocks("python")[1]
    assert "modelmesh_core.create(" in code
    env = clean_env(OPENAI_API_KEY="sk-readme-000000", OPENAI_BASE_URL=fake.base_url)
    result = run_python(code, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Unclosed" not in result.stderr
    assert result.stderr == ""
    text, model = result.stdout.rsplit(" ", 1)
    assert text == "Hello from the README!" and model.strip().startswith("openai.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_proxy_example(fake: FakeUpstream, tmp_path: Path) -> None:
    section_text = section("The proxy, with any OpenAI SDK")
    [shell] = [code for kind, code in _BLOCK.findall(section_text) if kind == "bash"]
    assert "modelmesh serve --port 8080" in shell
    code = blocks("python")[2]
    assert 'base_url="http://127.0.0.1:8080/v1"' in code
    port = _free_port()
    env = clean_env(OPENAI_API_KEY="sk-readme-000000", OPENAI_BASE_URL=fake.base_url)
    server = subprocess.Popen(
        [sys.executable, "-m", "modelmesh_core.cli", "serve", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("the proxy did not start") from None
                time.sleep(0.1)
        (tmp_path / "sitecustomize.py").write_text(_REDIRECT)
        client_env = clean_env(README_PROXY_PORT=str(port), PYTHONPATH=str(tmp_path))
        result = run_python(code, client_env, tmp_path)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    first, streamed = result.stdout.split("\n", 1)
    assert first == "Hello from the README!"
    assert streamed == "Hello from the README!"
    prompts = [c.body["messages"][0]["content"] for c in fake.calls[-2:]]
    assert prompts == ["Hi", "Count to 5"]


def test_yaml_example_is_a_valid_config() -> None:
    [config] = blocks("yaml")
    env = {"OPENAI_API_KEY": "sk-readme-000000", "GROQ_API_KEY": "gsk-readme-000000",
           "TEAM_KEY": "team-key-0000000", "ADMIN_KEY": "admin-key-000000"}
    counts = ModelMesh(yaml.safe_load(config), env=env).validate()
    assert counts == {"providers": 3, "models": 3, "pools": counts["pools"]}
    assert counts["pools"] >= 1
