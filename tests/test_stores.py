"""Secret stores, the local-file state store, observability sinks, budgets, the rate-limit
filter and redaction."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from modelmesh_core import (
    BudgetExceededError,
    CompletionRequest,
    ConfigError,
    ModelMesh,
    NoActiveModelError,
    ProviderError,
)
from modelmesh_core.builtin.secrets import (
    DotenvStore,
    EnvStore,
    EnvStoreConfig,
    FileStoreConfig,
    JsonSecretsStore,
    MemorySecretsStore,
    MemoryStoreConfig,
)
from modelmesh_core.events import EventType
from modelmesh_core.redaction import redact, register_secret
from modelmesh_core.testing import MockPlugin, mock_config

HI = [{"role": "user", "content": "hi"}]
DAY = 86400.0


def request() -> CompletionRequest:
    return CompletionRequest(messages=HI)


def two_provider_config(**pool: Any) -> dict[str, Any]:
    cfg = mock_config(providers=("a", "b"))
    cfg["pools"] = {"chat": {"capability": "chat-completion", **pool}}
    return cfg


# --------------------------------------------------------------------------- secret stores


def test_env_store_with_and_without_prefix() -> None:
    env = {"OPENAI_KEY": "plain", "MM_OPENAI_KEY": "prefixed"}
    assert EnvStore(None, env=env).get("OPENAI_KEY") == "plain"
    assert EnvStore(EnvStoreConfig(prefix="MM_"), env=env).get("OPENAI_KEY") == "prefixed"
    assert EnvStore(None, env=env).get("MISSING") is None


def test_dotenv_parsing(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# a comment\n"
        "\n"
        "PLAIN=value1\n"
        "export EXPORTED=value2\n"
        "DOUBLE=\"quoted value # not a comment\"\n"
        "SINGLE='single quoted'\n"
        "INLINE=value3 # trailing comment\n"
        "  SPACED  =  spaced value  \n"
        "EMPTY=\n"
        "EQUALS=a=b=c\n"
        "not a pair\n"
        "   # indented comment\n",
        encoding="utf-8",
    )
    store = DotenvStore(FileStoreConfig(path=str(path)))
    assert store.get("PLAIN") == "value1"
    assert store.get("EXPORTED") == "value2"
    assert store.get("DOUBLE") == "quoted value # not a comment"
    assert store.get("SINGLE") == "single quoted"
    assert store.get("INLINE") == "value3"
    assert store.get("SPACED") == "spaced value"
    assert store.get("EMPTY") == ""
    assert store.get("EQUALS") == "a=b=c"
    assert store.get("not a pair") is None
    assert store.list() == ["DOUBLE", "EMPTY", "EQUALS", "EXPORTED", "INLINE", "PLAIN",
                            "SINGLE", "SPACED"]


def test_dotenv_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"secrets\.config\.path"):
        DotenvStore(FileStoreConfig(path=str(tmp_path / "nope.env")))


def test_json_secrets_set_list_delete_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secrets.json"
    store = JsonSecretsStore(FileStoreConfig(path=str(path)))
    assert store.list() == []
    assert not path.exists()
    store.set("B_KEY", "bee-secret")
    store.set("A_KEY", "ay-secret")
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.list() == ["A_KEY", "B_KEY"]
    assert json.loads(path.read_text(encoding="utf-8")) == {"A_KEY": "ay-secret",
                                                             "B_KEY": "bee-secret"}
    # A new store over the same file sees what was written.
    again = JsonSecretsStore(FileStoreConfig(path=str(path)))
    assert again.get("B_KEY") == "bee-secret"
    again.delete("B_KEY")
    assert again.list() == ["A_KEY"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert JsonSecretsStore(FileStoreConfig(path=str(path))).get("B_KEY") is None
    with pytest.raises(KeyError):
        again.delete("B_KEY")
    assert not list(path.parent.glob("*.tmp"))


def test_json_secrets_rejects_a_non_object_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="JSON object"):
        JsonSecretsStore(FileStoreConfig(path=str(path)))


def test_memory_secrets_store() -> None:
    store = MemorySecretsStore(MemoryStoreConfig(values={"X": "1"}))
    assert store.get("X") == "1"
    store.set("Y", "2")
    assert store.list() == ["X", "Y"]
    store.delete("X")
    assert store.get("X") is None
    with pytest.raises(KeyError):
        store.delete("X")
    assert MemorySecretsStore(None).list() == []


async def test_writable_secret_store_through_the_mesh(tmp_path: Path, make_mesh: Any) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"ADMIN": "admin-token-from-json"}), encoding="utf-8")
    cfg = mock_config()
    cfg["secrets"] = {"connector": "modelmesh.json-secrets.v1", "config": {"path": str(path)}}
    cfg["proxy"] = {"auth": {"admin_keys": ["${secrets:ADMIN}"]}}
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    assert mesh.config.proxy.auth.admin_keys == ("admin-token-from-json",)
    mesh.secret_store.set("NEW", "v")
    assert json.loads(path.read_text(encoding="utf-8"))["NEW"] == "v"
    assert mesh.registry.secret_stores["modelmesh.json-secrets.v1"].writable


# --------------------------------------------------------------------------- state storage


def file_state_config(path: Path, **pool: Any) -> dict[str, Any]:
    # priority-selection: the first model in pool order whenever it is available (the
    # default stick-until-failure would rightly stay on b once it took over).
    cfg = two_provider_config(strategy="modelmesh.priority-selection.v1", **pool)
    cfg["storage"] = {"connector": "modelmesh.local-file.v1", "config": {"path": str(path)}}
    return cfg


async def test_local_file_state_survives_a_restart(
    tmp_path: Path, make_mesh: Any, manual_clock: Any
) -> None:
    path = tmp_path / "state" / "state.json"
    first = await make_mesh(file_state_config(path), plugins=[MockPlugin()], clock=manual_clock)
    await first.router.complete("chat", request())
    first.deactivate("a.mock-chat", "maintenance")
    assert (await first.router.route("chat")).model_id == "b.mock-chat"
    await first.shutdown()
    assert path.exists()

    second = await make_mesh(file_state_config(path), plugins=[MockPlugin()],
                             clock=manual_clock)
    st = second.state.model("a.mock-chat")
    assert st.status == "standby"
    assert st.deactivation_reason == "maintenance"
    assert st.requests == 1
    status = {m["model"]: m for m in second.pool_status()["chat"]["models"]}
    assert status["a.mock-chat"]["status"] == "standby"
    decision = await second.router.route("chat")
    assert decision.model_id == "b.mock-chat"
    assert decision.reasons == {"a.mock-chat": "standby (maintenance)"}
    second.reactivate("a.mock-chat")
    assert (await second.router.route("chat")).model_id == "a.mock-chat"


async def test_cooldown_from_failures_survives_a_restart(
    tmp_path: Path, make_mesh: Any, manual_clock: Any
) -> None:
    path = tmp_path / "state.json"
    cfg = file_state_config(path, failure_threshold=1, cooldown="2m")
    plugin = MockPlugin()
    first = await make_mesh(cfg, plugins=[plugin], clock=manual_clock)
    plugin.adapters["a"].script(ProviderError("down", status=503, retryable=True))
    response = await first.router.complete("chat", request())
    assert response.model == "b.mock-chat"
    await first.shutdown()

    manual_clock.advance(60)
    second = await make_mesh(cfg, plugins=[MockPlugin()], clock=manual_clock)
    st = second.state.model("a.mock-chat")
    assert (st.status, st.deactivation_reason) == ("standby", "error_threshold")
    decision = await second.router.route("chat")
    assert decision.model_id == "b.mock-chat"
    assert "another 60.0s" in decision.reasons["a.mock-chat"]
    manual_clock.advance(61)
    response = await second.router.complete("chat", request())
    assert response.model == "a.mock-chat"  # half-open trial succeeded
    assert second.state.model("a.mock-chat").status == "active"


async def test_corrupt_state_file_is_ignored(tmp_path: Path, make_mesh: Any) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json", encoding="utf-8")
    mesh = await make_mesh(file_state_config(path), plugins=[MockPlugin()])
    assert (await mesh.router.route("chat")).model_id == "a.mock-chat"
    await mesh.shutdown()
    assert json.loads(path.read_text(encoding="utf-8"))["models"] is not None


# --------------------------------------------------------------------------- sinks

SECRET_ENV = "mm-registered-secret-value-42"
LEAKY = (f"upstream said: key sk-live-abcdefghijkl0123 rejected; Authorization: Bearer "
         f"tok_abcdef123456; echo {SECRET_ENV}")


def leaky_config(sink: dict[str, Any]) -> dict[str, Any]:
    cfg = two_provider_config()
    cfg["proxy"] = {"auth": {"admin_keys": ["${env:MM_SINK_SECRET}"]}}
    cfg["observability"] = {"sinks": [sink]}
    return cfg


async def run_leaky_request(make_mesh: Any, sink: dict[str, Any], clock: Any) -> Any:
    plugin = MockPlugin()
    mesh = await make_mesh(leaky_config(sink), plugins=[plugin], clock=clock,
                           env={"MM_SINK_SECRET": SECRET_ENV})
    plugin.adapters["a"].script(ProviderError(LEAKY, status=503, retryable=True))
    response = await mesh.router.complete("chat", request())
    assert response.model == "b.mock-chat"
    return mesh


def assert_no_secrets(text: str) -> None:
    assert SECRET_ENV not in text
    assert "sk-live-abcdefghijkl0123" not in text
    assert "tok_abcdef123456" not in text


async def test_json_log_sink_writes_one_redacted_line_per_event(
    tmp_path: Path, make_mesh: Any, manual_clock: Any
) -> None:
    path = tmp_path / "logs" / "events.jsonl"
    mesh = await run_leaky_request(
        make_mesh, {"connector": "modelmesh.json-log.v1", "config": {"path": str(path)}},
        manual_clock)
    await mesh.shutdown()
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    events = [json.loads(line) for line in lines]
    types = [e["type"] for e in events]
    assert types[0] == EventType.REQUEST_ROUTED
    assert EventType.ATTEMPT_FAILED in types
    assert EventType.REQUEST_SUCCEEDED in types
    assert EventType.POOL_ROTATED in types
    assert len(lines) == len(types) == text.count("\n")
    assert all(e["timestamp"] == manual_clock.now for e in events)
    failed = next(e for e in events if e["type"] == EventType.ATTEMPT_FAILED)
    assert failed["model"] == "a.mock-chat"
    assert "upstream said" in failed["data"]["message"]
    assert "***" in failed["data"]["message"]
    assert_no_secrets(text)


async def test_json_log_sink_event_filter(
    tmp_path: Path, make_mesh: Any, manual_clock: Any
) -> None:
    path = tmp_path / "events.jsonl"
    sink = {"connector": "modelmesh.json-log.v1",
            "config": {"path": str(path), "events": [EventType.ATTEMPT_FAILED]}}
    mesh = await run_leaky_request(make_mesh, sink, manual_clock)
    await mesh.shutdown()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["type"] for line in lines] == [EventType.ATTEMPT_FAILED]


async def test_console_sink(
    make_mesh: Any, manual_clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_leaky_request(
        make_mesh, {"connector": "modelmesh.console.v1", "config": {"stream": "stdout"}},
        manual_clock)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("request.routed pool=chat model=a.mock-chat")
    assert any(line.startswith("attempt.failed") and "status=503" in line for line in lines)
    assert any(line.startswith("request.succeeded") and "model=b.mock-chat" in line
               for line in lines)
    assert_no_secrets(out)


async def test_callback_sink(
    tmp_path: Path, make_mesh: Any, manual_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mm_sink_target.py").write_text(
        "EVENTS = []\n\ndef collect(event):\n    EVENTS.append(event)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mm_sink_target", raising=False)
    await run_leaky_request(
        make_mesh, {"connector": "modelmesh.callback.v1",
                    "config": {"target": "mm_sink_target:collect"}}, manual_clock)
    import mm_sink_target  # type: ignore[import-not-found]

    types = [e.type for e in mm_sink_target.EVENTS]
    assert types[0] == EventType.REQUEST_ROUTED
    assert EventType.ATTEMPT_FAILED in types
    assert EventType.REQUEST_SUCCEEDED in types
    failed = next(e for e in mm_sink_target.EVENTS if e.type == EventType.ATTEMPT_FAILED)
    assert (failed.pool, failed.model, failed.provider) == ("chat", "a.mock-chat", "a")


async def test_callback_sink_with_a_bad_target_is_a_config_error() -> None:
    cfg = two_provider_config()
    cfg["observability"] = {"sinks": [{"connector": "modelmesh.callback.v1",
                                       "config": {"target": "no_such_module_xyz:fn"}}]}
    with pytest.raises(ConfigError, match="no_such_module_xyz"):
        await ModelMesh(cfg, plugins=[MockPlugin()]).initialize()


# --------------------------------------------------------------------------- budgets


def budget_config(**budget: Any) -> dict[str, Any]:
    cfg = two_provider_config()
    cfg["models"] = {
        "a.mock-chat": {"pricing": {"per_request": 0.3}},
        "b.mock-chat": {"pricing": {"input": 0.0, "output": 0.0}},
    }
    cfg["providers"]["a"]["budget"] = budget
    return cfg


async def test_per_request_budget_rotates_away_from_an_expensive_model(
    make_mesh: Any, manual_clock: Any
) -> None:
    cfg = budget_config()
    del cfg["providers"]["a"]["budget"]
    cfg["budget"] = {"per_request": 0.1}
    mesh = await make_mesh(cfg, plugins=[MockPlugin()], clock=manual_clock)
    decision = await mesh.router.route("chat", request=request())
    assert decision.model_id == "b.mock-chat"
    assert "per_request budget" in decision.reasons["a.mock-chat"]
    response = await mesh.router.complete("chat", request())
    assert response.model == "b.mock-chat"


async def test_per_request_budget_error_mode(make_mesh: Any, manual_clock: Any) -> None:
    cfg = budget_config(per_request=0.1, on_budget_exceeded="error")
    plugin = MockPlugin()
    mesh = await make_mesh(cfg, plugins=[plugin], clock=manual_clock)
    with pytest.raises(BudgetExceededError) as exc:
        await mesh.router.complete("chat", request())
    err = exc.value
    assert (err.limit_type, err.limit, err.scope) == ("per_request", 0.1, "provider:a")
    assert err.actual == pytest.approx(0.3)
    assert plugin.adapters["a"].calls == [] and plugin.adapters["b"].calls == []


async def test_daily_budget_alert_rotation_and_reset(make_mesh: Any, manual_clock: Any) -> None:
    events: list[Any] = []
    mesh = await make_mesh(budget_config(daily=1.0, alert_threshold=0.8),
                           plugins=[MockPlugin()], clock=manual_clock)
    mesh.events.subscribe(events.append)

    def alerts() -> list[Any]:
        return [e for e in events if e.type == EventType.BUDGET_ALERT]

    served = [(await mesh.router.complete("chat", request())).model for _ in range(3)]
    assert served == ["a.mock-chat"] * 3
    (alert,) = alerts()  # spend 0.9 crossed 0.8 of 1.0, once
    assert alert.data["scope"] == "provider:a"
    assert alert.data["window"] == "daily"
    assert alert.data["spent"] == pytest.approx(0.9)

    # A fourth would take the day to 1.2: the model is dropped, the next one answers.
    response = await mesh.router.complete("chat", request())
    assert response.model == "b.mock-chat"
    decision = await mesh.router.route("chat", request=request())
    assert "daily budget" in decision.reasons["a.mock-chat"]
    assert len(alerts()) == 1

    manual_clock.advance(DAY)
    assert (await mesh.router.complete("chat", request())).model == "a.mock-chat"


async def test_daily_budget_error_mode(make_mesh: Any, manual_clock: Any) -> None:
    cfg = budget_config(daily=0.5, on_budget_exceeded="error")
    mesh = await make_mesh(cfg, plugins=[MockPlugin()], clock=manual_clock)
    assert (await mesh.router.complete("chat", request())).model == "a.mock-chat"
    with pytest.raises(BudgetExceededError) as exc:
        await mesh.router.complete("chat", request())
    assert exc.value.limit_type == "daily"
    assert exc.value.actual == pytest.approx(0.6)
    manual_clock.advance(DAY)
    assert (await mesh.router.complete("chat", request())).model == "a.mock-chat"


async def test_unenforced_budget_only_alerts(make_mesh: Any, manual_clock: Any) -> None:
    events: list[Any] = []
    mesh = await make_mesh(budget_config(daily=0.5, enforce=False), plugins=[MockPlugin()],
                           clock=manual_clock)
    mesh.events.subscribe(events.append)
    served = [(await mesh.router.complete("chat", request())).model for _ in range(3)]
    assert served == ["a.mock-chat"] * 3
    assert [e.type for e in events].count(EventType.BUDGET_ALERT) == 1


# --------------------------------------------------------------------------- rate limits


async def test_configured_rpm_is_respected_without_a_429(
    make_mesh: Any, manual_clock: Any
) -> None:
    cfg = two_provider_config()
    cfg["models"] = {"a.mock-chat": {"limits": {"rpm": 2}}, "b.mock-chat": {}}
    plugin = MockPlugin()
    mesh = await make_mesh(cfg, plugins=[plugin], clock=manual_clock)
    served = [(await mesh.router.complete("chat", request())).model for _ in range(4)]
    assert served == ["a.mock-chat", "a.mock-chat", "b.mock-chat", "b.mock-chat"]
    assert len(plugin.adapters["a"].calls) == 2
    decision = await mesh.router.route("chat")
    assert "requests-per-minute" in decision.reasons["a.mock-chat"]
    # A rolling minute (one-second buckets) holds a request between 60 and 61 seconds.
    manual_clock.advance(60)
    assert (await mesh.router.complete("chat", request())).model == "b.mock-chat"
    manual_clock.advance(1)
    assert (await mesh.router.complete("chat", request())).model == "a.mock-chat"


async def test_configured_rpd_is_respected_and_resets_daily(
    make_mesh: Any, manual_clock: Any
) -> None:
    cfg = two_provider_config()
    cfg["models"] = {"a.mock-chat": {"limits": {"rpd": 3}}, "b.mock-chat": {}}
    plugin = MockPlugin()
    mesh = await make_mesh(cfg, plugins=[plugin], clock=manual_clock)
    served = []
    for _ in range(5):
        served.append((await mesh.router.complete("chat", request())).model)
        manual_clock.advance(61)  # a new minute each time: only the daily quota bites
    assert served == ["a.mock-chat"] * 3 + ["b.mock-chat"] * 2
    assert len(plugin.adapters["a"].calls) == 3
    decision = await mesh.router.route("chat")
    assert "daily request quota" in decision.reasons["a.mock-chat"]
    manual_clock.advance(DAY)
    assert (await mesh.router.complete("chat", request())).model == "a.mock-chat"


async def test_provider_rpm_limit_and_no_active_model(make_mesh: Any, manual_clock: Any) -> None:
    cfg = mock_config(providers=("a",))
    cfg["providers"]["a"]["limits"] = {"rpm": 1}
    cfg["pools"] = {"chat": {"capability": "chat-completion"}}
    mesh = await make_mesh(cfg, plugins=[MockPlugin()], clock=manual_clock)
    assert (await mesh.router.complete("chat", request())).model == "a.mock-chat"
    with pytest.raises(NoActiveModelError) as exc:
        await mesh.router.complete("chat", request())
    assert "provider 'a'" in exc.value.reasons["a.mock-chat"]
    # Over its limit a candidate is refused with a 429 and when to come back.
    assert exc.value.rate_limited
    assert exc.value.retry_after == pytest.approx(61.0)
    manual_clock.advance(61)
    assert (await mesh.router.complete("chat", request())).model == "a.mock-chat"


# --------------------------------------------------------------------------- redaction


def test_redact_masks_registered_secrets_bearer_tokens_and_keys() -> None:
    register_secret("registered-value-778899")
    register_secret("short")  # too short to register safely
    text = ("a=registered-value-778899 auth='Bearer abc.def-123' key=sk-proj-ABCDEFGH1234 "
            "gsk_not sk-short plain words short")
    out = redact(text)
    assert "registered-value-778899" not in out
    assert "abc.def-123" not in out
    assert "sk-proj-ABCDEFGH1234" not in out
    assert out.startswith("a=*** auth='Bearer ***' key=***")
    assert out.endswith("gsk_not sk-short plain words short")
    assert redact("nothing to hide") == "nothing to hide"


async def test_budget_spend_survives_a_restart(
    tmp_path: Path, make_mesh: Any, manual_clock: Any
) -> None:
    path = tmp_path / "state.json"
    cfg = budget_config(daily=1.0)
    cfg["storage"] = {"connector": "modelmesh.local-file.v1", "config": {"path": str(path)}}
    first = await make_mesh(cfg, plugins=[MockPlugin()], clock=manual_clock)
    for _ in range(3):
        assert (await first.router.complete("chat", request())).model == "a.mock-chat"
    await first.shutdown()

    second = await make_mesh(cfg, plugins=[MockPlugin()], clock=manual_clock)
    # 0.9 of the day's 1.0 was spent before the restart: a fourth 0.3 request would exceed it
    assert (await second.router.complete("chat", request())).model == "b.mock-chat"
