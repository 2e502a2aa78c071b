"""The first run without friction: every mistake reported at once, logging flags after the
subcommand, hints when nothing is configured, ``plugins`` showing connector ids with load errors
kept to the row width, and the fake upstream started from the shell."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from modelmesh_core.cli import build_parser, main
from modelmesh_core.plugins import STRICT_ENV, PluginRegistry, load_plugins

ROOT = Path(__file__).resolve().parents[1]
FAKEDIST = Path(__file__).parent / "data" / "fakedist"

FOUR_MISTAKES = """
providers:
  alpha:
    connector: opneai.llm.v1
models:
  alpha.gpt-4o-mini: {capabilities: [chat-complete]}
pools:
  chat:
    capability: chat-completion
    strategy: round-robbin
    retry: {max_attempts: "three"}
discovery: {auto_detect: false}
"""


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_check_reports_all_four_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "four.yaml"
    path.write_text(FOUR_MISTAKES)
    code, out = run("check", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{path}: 4 problems"
    problems = sorted(line.strip() for line in lines[1:])
    assert problems[0] == ("models.alpha.gpt-4o-mini.capabilities.0: unknown capability "
                           "'chat-complete' (did you mean 'chat-completion' or "
                           "'text-completion'?)")
    assert problems[1] == "pools.chat.retry.max_attempts: must be an integer, not str 'three'"
    assert problems[2].startswith("pools.chat.strategy: unknown strategy 'round-robbin' "
                                  "(did you mean 'round-robin'?); installed: ")
    assert problems[3].startswith("providers.alpha.connector: unknown provider connector "
                                  "'opneai.llm.v1' (did you mean 'openai.llm.v1'?); "
                                  "installed: ")


@pytest.mark.parametrize("argv", [
    ["-v", "--log-json", "pools"],
    ["pools", "-v", "--log-json"],
    ["--log-json", "pools", "-v"],
])
def test_logging_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.command, args.verbose, args.log_json) == ("pools", 1, True)


def test_every_help_page_renders() -> None:
    parser = build_parser()
    pages = [parser.format_help()]
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            pages.append(sub.format_help())
            if name == "secrets":
                inner = sub._subparsers._group_actions[0]  # type: ignore[union-attr]
                pages.extend(p.format_help() for p in inner.choices.values())
    assert len(pages) > 14
    fake = next(p for p in pages if "fake-upstream [-h]" in p)
    assert "30% of requests fail with a 500" in " ".join(fake.split())


def test_logging_flags_default_off() -> None:
    args = build_parser().parse_args(["secrets", "list"])
    assert (args.verbose, args.log_json, args.config) == (0, False, None)
    args = build_parser().parse_args(["secrets", "-c", "x.yaml", "get", "K", "-v"])
    assert (args.verbose, args.config, args.name) == (1, "x.yaml", "K")


@pytest.mark.parametrize("command", ["pools", "models"])
def test_empty_pools_and_models_print_a_hint(command: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELMESH_CONFIG", raising=False)
    pm, report = load_plugins(strict=False)
    for spec in PluginRegistry.from_manager(pm, report).providers.values():
        for var in spec.env_vars:
            monkeypatch.delenv(var, raising=False)
    assert main([command]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"no {command}: no config file was found and no provider was "
                          "detected from the environment.")
    assert "modelmesh fake-upstream" in err and "--config" in err


def test_plugins_lists_connector_ids_and_keeps_errors_to_the_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "modelmesh.yaml"
    config.write_text("plugins: {block: [dupe]}\ndiscovery: {auto_detect: false}\n")
    monkeypatch.delenv(STRICT_ENV, raising=False)
    monkeypatch.syspath_prepend(str(FAKEDIST))
    monkeypatch.setenv("COLUMNS", "100")
    try:
        code, out = run("plugins", "-c", str(config))
        code_json, out_json = run("plugins", "-c", str(config), "--json")
    finally:
        for mod in ("mm_fake_good", "mm_fake_broken", "mm_fake_badhook", "mm_fake_dupe"):
            sys.modules.pop(mod, None)
    assert code == 0
    table, _, rest = out.partition("\n\nregistered connectors:\n")
    assert all(len(line) <= 100 for line in table.splitlines()), table
    broken = next(line for line in table.splitlines() if line.startswith("broken "))
    assert re.search(r"failed: import failed.*…$", broken)
    registered, _, errors = rest.partition("\n\nload errors:\n")
    assert "  openai\n    providers: openai.llm.v1, groq.api.v1," in registered
    assert ("  modelmesh_core.builtin.sinks\n    sinks: modelmesh.null.v1" in registered)
    assert "modelmesh.webhook.v1" in registered and "modelmesh.keyring.v1" in registered
    assert "  good\n    strategies: fake.first.v1\n    stages: fake.tag\n" in registered
    # the full error text is still there, below the table
    assert "  broken (mm-fake-good): import failed: " in errors
    assert "definitely-not-installed" in errors

    assert code_json == 0
    rows = {r["name"]: r for r in json.loads(out_json)}
    assert rows["good"]["registers"] == {"strategies": ["fake.first.v1"],
                                         "stages": ["fake.tag"]}
    assert rows["broken"]["registers"] == {} and rows["broken"]["status"] == "failed"
    capsys.readouterr()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.parametrize(("argv", "scenario"), [
    (["-m", "modelmesh_core.cli", "fake-upstream", "--scenario", "overloaded"], "overloaded"),
    (["-m", "modelmesh_core.fakes"], "ok"),
])
def test_fake_upstream_from_the_shell(argv: list[str], scenario: str) -> None:
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        m = re.match(rf"fake OpenAI upstream on (http://127\.0\.0\.1:\d+/v1) \(scenario "
                     rf"{scenario}: ", first)
        assert m, first
        base = m.group(1)
        banner = [proc.stdout.readline() for _ in range(9)]
        assert f'    config: {{base_url: "{base}", api_key: "sk-fake-modelmesh-0000"}}\n' \
            in banner
        body = json.dumps({"model": "gpt-4o-mini",
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", data=body, headers={
            "Authorization": "Bearer anything", "Content-Type": "application/json"})
        if scenario == "overloaded":
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=10)
            assert info.value.code == 503
            assert json.loads(info.value.read())["error"]["type"] == "server_error"
        else:
            with urllib.request.urlopen(request, timeout=10) as r:
                answer = json.loads(r.read())
            assert answer["object"] == "chat.completion"
            assert answer["choices"][0]["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.endswith("fake upstream stopped after 1 requests\n")
