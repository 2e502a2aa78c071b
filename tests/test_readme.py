"""Every README example runs verbatim against the fake upstream, and prints no warning.

The README's Python blocks are extracted and run, unchanged, in fresh interpreters with
``-W error`` (stderr must stay empty: an unclosed aiohttp session at exit is reported there
even when it cannot raise). What a reader would set up around them is the test's: the
environment variables the README names (``OPENAI_BASE_URL`` pointing at a
:class:`~modelmesh_core.fakes.FakeUpstream` on 127.0.0.1). The proxy example follows the
quick start's recipe to the letter — ``modelmesh fake-upstream --port 9999``, then
``modelmesh serve --port 8080`` with ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` exported, then the
example against 127.0.0.1:8080 — inside a private network namespace (``unshare --net``), so
the fixed ports cannot clash with anything else on the machine. The YAML example is validated
against the installed plugins. The examples use the OpenAI plugin package's connectors
(``modelmesh_openai``), so this module runs in the all-plugins test session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelmesh_core import ModelMesh
from modelmesh_core.fakes import FakeUpstream, Reply

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


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
    assert len(blocks("python")) == 4
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


_DRIVER = """\
import json, os, subprocess, sys, time, urllib.request
py, modelmesh, example = sys.argv[1:4]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
env = dict(os.environ)
procs = []

def wait(url):
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("did not start: " + url)
            time.sleep(0.1)

try:
    # the quick start's way to try it without keys, then the proxy section's command
    procs.append(subprocess.Popen([modelmesh, "fake-upstream", "--port", "9999"], env=env,
                                  stdout=subprocess.DEVNULL))
    wait("http://127.0.0.1:9999/v1/models")
    served = dict(env, OPENAI_API_KEY="any", OPENAI_BASE_URL="http://127.0.0.1:9999/v1")
    procs.append(subprocess.Popen([modelmesh, "serve", "--port", "8080"], env=served,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait("http://127.0.0.1:8080/health")
    r = subprocess.run([py, "-W", "error", example], env=env, capture_output=True, text=True,
                       timeout=60)
    print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}))
finally:
    for p in procs:
        p.terminate()
        p.wait(timeout=30)
"""


def run_against_the_proxy(code: str, tmp_path: Path) -> dict[str, Any]:
    """Run ``code`` as the README's proxy section does it (fake upstream on 9999, ``modelmesh
    serve --port 8080``), in a network namespace of its own; the example's rc / stdout /
    stderr."""
    modelmesh = shutil.which("modelmesh", path=str(Path(sys.executable).parent))
    assert modelmesh is not None, "the modelmesh console script is not installed"
    unshare = shutil.which("unshare")
    assert unshare is not None and shutil.which("ip") is not None, (
        "this test runs the proxy on port 8080 in a private network namespace: it needs "
        "unshare(1) and ip(8) (util-linux, iproute2)")
    (tmp_path / "driver.py").write_text(_DRIVER)
    (tmp_path / "example.py").write_text(code)
    # A network namespace of its own: port 8080 (and 9999) are this test's alone, whatever
    # else runs on the machine, so the README's commands and code run exactly as written.
    done = subprocess.run(
        [unshare, "--map-root-user", "--net", sys.executable, "driver.py", sys.executable,
         modelmesh, "example.py"],
        env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_proxy_example(tmp_path: Path) -> None:
    section_text = section("The proxy, with any OpenAI SDK")
    [shell] = [code for kind, code in _BLOCK.findall(section_text) if kind == "bash"]
    assert "modelmesh serve --port 8080" in shell
    code = blocks("python")[2]
    assert 'base_url="http://127.0.0.1:8080/v1"' in code
    result = run_against_the_proxy(code, tmp_path)
    assert result["rc"] == 0, result["stderr"]
    assert result["stderr"] == ""
    first, streamed = result["stdout"].split("\n", 1)
    assert first == "Hello from the fake upstream!"
    assert streamed == "Hello from the fake upstream!"


def test_anthropic_sdk_example(tmp_path: Path) -> None:
    code = blocks("python")[3]
    assert "from anthropic import Anthropic" in code
    assert 'base_url="http://127.0.0.1:8080"' in code
    result = run_against_the_proxy(code, tmp_path)
    assert result["rc"] == 0, result["stderr"]
    assert result["stderr"] == ""
    assert result["stdout"] == "Hello from the fake upstream!"


def test_yaml_example_is_a_valid_config() -> None:
    [config] = blocks("yaml")
    env = {"OPENAI_API_KEY": "sk-readme-000000", "GROQ_API_KEY": "gsk-readme-000000",
           "TEAM_KEY": "team-key-0000000", "ADMIN_KEY": "admin-key-000000"}
    counts = ModelMesh(yaml.safe_load(config), env=env).validate()
    assert counts == {"providers": 3, "models": 3, "pools": counts["pools"]}
    assert counts["pools"] >= 1
