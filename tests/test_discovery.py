"""The built-in discovery connectors against fake upstreams on 127.0.0.1: the health monitor
brings a downed provider and a standby model back without live traffic (and puts them back
out when the probe fails), with bounded concurrency and jitter; registry sync adds a model
that appears in an upstream's ``GET /v1/models`` to the pools that cover it."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from modelmesh_core import CompletionRequest, ConfigError, ModelMesh
from modelmesh_core.builtin.discovery import (
    HealthMonitor,
    HealthMonitorConfig,
    RegistrySync,
    _jittered,
)
from modelmesh_core.events import EventType
from modelmesh_core.fakes import Fail, FakeUpstream, Reply
from modelmesh_core.testing import openai_config

HI = [{"role": "user", "content": "hi"}]
MONITOR = "modelmesh.health-monitor.v1"
SYNC = "modelmesh.registry-sync.v1"


def with_connectors(config: dict[str, Any], *connectors: dict[str, Any],
                    **discovery: Any) -> dict[str, Any]:
    config["discovery"] = {"auto_detect": False, "connectors": list(connectors), **discovery}
    return config


def monitor(mesh: ModelMesh) -> HealthMonitor:
    [m] = [d for d in mesh.discovery if isinstance(d, HealthMonitor)]
    return m


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def events(mesh: ModelMesh) -> list[Any]:
    seen: list[Any] = []
    mesh.events.subscribe(seen.append)
    return seen


# --------------------------------------------------------------------------- health monitor


async def test_probe_brings_a_provider_back_without_traffic(fake_upstream: Any, make_mesh: Any,
                                                            manual_clock: Any) -> None:
    a = await fake_upstream()
    b = await fake_upstream()
    a.script(Fail(500))  # the start-up probe (GET /v1/models) fails: provider a goes down
    cfg = with_connectors(openai_config([("a", a), ("b", b)]),
                          {"connector": MONITOR, "config": {"interval": "20ms"}},
                          probe_on_start=True)
    mesh = await make_mesh(cfg, clock=manual_clock)
    seen = events(mesh)
    assert not mesh.state.provider("a").available
    await asyncio.sleep(0.1)  # several rounds: nothing is due during the cooldown
    assert [c.path for c in a.calls] == ["/v1/models"]
    manual_clock.advance(61)  # the 60 s start-up cooldown is over
    await wait_for(lambda: mesh.state.provider("a").available)
    assert [(c.method, c.path) for c in a.calls] == [("GET", "/v1/models")] * 2
    assert a.calls[1].api_key == "sk-test-0000000000"
    assert [e.type for e in seen] == [EventType.PROVIDER_UP]
    assert seen[0].provider == "a"
    assert mesh.state.provider("a").last_probe == manual_clock()
    assert len(b.calls) == 1  # the start-up probe: only what was down is probed later
    assert monitor(mesh).rounds >= 2


async def test_failed_provider_probe_keeps_it_down_as_long_again(
        fake_upstream: Any, make_mesh: Any, manual_clock: Any) -> None:
    a = await fake_upstream()
    a.script(Fail(500), Fail(503))
    cfg = with_connectors(openai_config([("a", a)]),
                          {"connector": MONITOR, "config": {"interval": "1h"}},
                          probe_on_start=True)
    mesh = await make_mesh(cfg, clock=manual_clock)
    mon = monitor(mesh)
    manual_clock.advance(61)
    [result] = await mon.run_once()
    assert (result.kind, result.target, result.ok) == ("provider", "a", False)
    assert "503" in (result.error or "")
    ps = mesh.state.provider("a")
    assert not ps.available and not ps.trial_in_flight
    assert ps.cooldown_until == pytest.approx(manual_clock() + 60)
    assert await mon.run_once() == []  # not due again before that
    manual_clock.advance(60)
    [result] = await mon.run_once()
    assert result.ok and ps.available


async def test_rejected_key_keeps_the_provider_down_as_such(
        fake_upstream: Any, make_mesh: Any, manual_clock: Any) -> None:
    a = await fake_upstream(api_keys={"sk-the-real-key-000"})
    cfg = with_connectors(openai_config([("a", a)]),
                          {"connector": MONITOR, "config": {"interval": "1h"}},
                          probe_on_start=True)
    mesh = await make_mesh(cfg, clock=manual_clock)
    assert mesh.state.provider("a").deactivation_reason == "authentication_rejected"
    manual_clock.advance(61)
    [result] = await monitor(mesh).run_once()
    assert not result.ok and "AuthenticationError" in (result.error or "")
    assert mesh.state.provider("a").deactivation_reason == "authentication_rejected"


async def test_probe_brings_a_standby_model_back(fake_upstream: Any, make_mesh: Any,
                                                 manual_clock: Any) -> None:
    a = await fake_upstream()
    b = await fake_upstream()
    cfg = with_connectors(
        openai_config([("a", a), ("b", b)], failure_threshold=1, cooldown="30s"),
        {"connector": MONITOR, "config": {"interval": "1h"}})
    mesh = await make_mesh(cfg, clock=manual_clock)
    a.script(Fail(500))
    assert (await mesh.router.complete("chat", CompletionRequest(messages=HI))).provider == "b"
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.status == "standby"
    seen = events(mesh)
    mon = monitor(mesh)
    assert await mon.run_once() == []  # cooling down
    manual_clock.advance(31)
    a.script(Fail(503))  # the first probe fails: standby for another 30 s
    [result] = await mon.run_once()
    assert (result.kind, result.target, result.ok) == ("model", "a.gpt-4o-mini", False)
    assert st.status == "standby" and st.cooldown_until == pytest.approx(manual_clock() + 30)
    manual_clock.advance(31)
    [result] = await mon.run_once()
    assert result.ok and st.status == "active"
    assert [e.type for e in seen] == [EventType.MODEL_RECOVERED]
    probes = [c for c in a.calls if c.path == "/v1/chat/completions"][1:]
    assert len(probes) == 2
    for call in probes:  # a 1-token completion
        assert call.body["max_tokens"] == 1
        assert call.body["model"] == "gpt-4o-mini"
        assert call.body["messages"] == [{"role": "user", "content": "ping"}]
    # probes are not traffic: the model's request counters saw only the real request
    assert st.requests == 1


async def test_manual_standby_is_not_probed(fake_upstream: Any, make_mesh: Any,
                                            manual_clock: Any) -> None:
    a = await fake_upstream()
    cfg = with_connectors(openai_config([("a", a)]),
                          {"connector": MONITOR, "config": {"interval": "1h"}})
    mesh = await make_mesh(cfg, clock=manual_clock)
    mesh.deactivate("a.gpt-4o-mini", "maintenance")
    manual_clock.advance(10_000)
    assert await monitor(mesh).run_once() == []
    assert not a.calls


async def test_embedding_models_are_probed_with_an_embedding(fake_upstream: Any,
                                                             make_mesh: Any,
                                                             manual_clock: Any) -> None:
    a = await fake_upstream()
    cfg = openai_config([("a", a)])
    cfg["models"] = {"a.text-embedding-3-small": {"capabilities": ["text-embeddings"]}}
    cfg["pools"] = {"vectors": {"capability": "text-embeddings", "cooldown": "5s"}}
    mesh = await make_mesh(with_connectors(
        cfg, {"connector": MONITOR, "config": {"interval": "1h"}}), clock=manual_clock)
    mesh.deactivate("a.text-embedding-3-small")
    mesh.state.model("a.text-embedding-3-small").cooldown_until = manual_clock() + 5
    manual_clock.advance(6)
    [result] = await monitor(mesh).run_once()
    assert result.ok
    assert a.calls[-1].path == "/v1/embeddings" and a.calls[-1].body["input"] == ["ping"]


async def test_probes_run_with_bounded_concurrency(fake_upstream: Any, make_mesh: Any,
                                                   manual_clock: Any) -> None:
    fakes = [await fake_upstream() for _ in range(4)]
    for fake in fakes:
        fake.script(Fail(500), Reply(delay=0.15))  # start-up probe fails; the next is slow
    cfg = with_connectors(
        openai_config([(f"p{i}", f) for i, f in enumerate(fakes)]),
        {"connector": MONITOR, "config": {"interval": "1h", "concurrency": 2}},
        probe_on_start=True)
    mesh = await make_mesh(cfg, clock=manual_clock)
    manual_clock.advance(61)
    results = await monitor(mesh).run_once()
    assert sorted(r.target for r in results) == ["p0", "p1", "p2", "p3"], results
    assert sorted(r.target for r in results if r.ok) == ["p0", "p1", "p2", "p3"]
    starts = sorted(f.calls[1].time for f in fakes)
    # two at a time: the third probe starts only when one of the first two ended
    assert starts[2] - starts[0] >= 0.14
    assert starts[1] - starts[0] < 0.1


def test_jitter_and_config_checks() -> None:
    rng = random.Random(3)
    values = [_jittered(10.0, 0.2, rng) for _ in range(500)]
    assert min(values) >= 8.0 and max(values) <= 12.0
    assert max(values) - min(values) > 2.0  # actually spread
    assert _jittered(10.0, 0.0, rng) == 10.0
    with pytest.raises(ConfigError) as err:
        HealthMonitorConfig(interval=0, concurrency=0, provider_probe="ping")
    assert err.value.errors == ["config.interval: must be positive",
                                "config.concurrency: must be at least 1",
                                "config.provider_probe: must be one of list_models, completion"]


async def test_unknown_monitor_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        ModelMesh(with_connectors({}, {"connector": MONITOR,
                                       "config": {"intervall": "5s"}})).validate()
    assert "discovery.connectors.0.config" in str(err.value)


# --------------------------------------------------------------------------- registry sync


def sync_config(a: FakeUpstream, **sync: Any) -> dict[str, Any]:
    cfg = openai_config([("a", a)], strategy="round-robin")
    cfg["pools"]["pinned"] = {"models": ["a.gpt-4o-mini"]}
    return with_connectors(cfg, {"connector": SYNC, "config": {
        "interval": "1h", "rules": [{"match": "llama-*", "capabilities": ["chat-completion"]}],
        **sync}})


async def test_registry_sync_adds_a_listed_model(fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream(models=("gpt-4o-mini", "gpt-4o", "text-embedding-3-small",
                                    "llama-3.1-70b", "mystery-model"))
    mesh = await make_mesh(sync_config(a))
    sync = next(d for d in mesh.discovery if isinstance(d, RegistrySync))
    # the first sync runs as the connector starts
    await wait_for(lambda: "a.llama-3.1-70b" in mesh.models)
    assert sorted(sync.discovered) == ["a.gpt-4o", "a.llama-3.1-70b",
                                       "a.text-embedding-3-small"]
    assert sync.skipped == {"a.mystery-model":
                            "capabilities unknown (no catalogue entry, no rule)"}
    # catalogue models come with their catalogue description; rule models with the rule's
    assert mesh.models["a.gpt-4o"].pricing.input > 0
    assert mesh.models["a.llama-3.1-70b"].capabilities == (
        "generation.text-generation.chat-completion",)
    assert mesh.pools["chat"].model_ids == ["a.gpt-4o-mini", "a.gpt-4o", "a.llama-3.1-70b"]
    assert mesh.pools["pinned"].model_ids == ["a.gpt-4o-mini"]  # explicit pools never change
    # a discovered model routes by its id and by the pool
    reply = await mesh.router.complete("a.llama-3.1-70b", CompletionRequest(messages=HI))
    assert reply.provider == "a" and a.calls[-1].body["model"] == "llama-3.1-70b"
    got = {(await mesh.router.complete("chat", CompletionRequest(messages=HI))).model
           for _ in range(3)}
    assert got == {"a.gpt-4o-mini", "a.gpt-4o", "a.llama-3.1-70b"}
    # a second sync adds nothing new
    assert await sync.run_once() == []


async def test_registry_sync_after_routing_started(fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream(models=("gpt-4o-mini",))
    mesh = await make_mesh(sync_config(a, interval="1h"))
    sync = next(d for d in mesh.discovery if isinstance(d, RegistrySync))
    await wait_for(lambda: sync.discovered == [] and len(a.calls) >= 1)
    # the pipeline has routed "chat" (and cached its members) before the new model appears
    assert (await mesh.router.complete("chat", CompletionRequest(messages=HI))).model == (
        "a.gpt-4o-mini")
    a.models = ("gpt-4o-mini", "llama-3-8b")
    seen = events(mesh)
    assert await sync.run_once() == ["a.llama-3-8b"]
    [event] = [e for e in seen if e.type == EventType.MODEL_DISCOVERED]
    assert event.model == "a.llama-3-8b" and event.data["pools"] == ["chat"]
    mesh.deactivate("a.gpt-4o-mini")
    reply = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert reply.model == "a.llama-3-8b"


async def test_registry_sync_filters(fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream(models=("gpt-4o-mini", "gpt-4o", "llama-3-8b", "llama-3-70b"))
    mesh = await make_mesh(sync_config(a, exclude=["*-70b"], max_new=1))
    sync = next(d for d in mesh.discovery if isinstance(d, RegistrySync))
    await wait_for(lambda: len(sync.discovered) == 1)
    assert "a.llama-3-70b" not in mesh.models
    assert list(sync.skipped.values()) == ["max_new reached"]
    assert await sync.run_once() == [next(iter(sync.skipped))]  # the next sync takes it


async def test_registry_sync_survives_a_failing_listing(fake_upstream: Any,
                                                        make_mesh: Any) -> None:
    a = await fake_upstream(models=("gpt-4o-mini", "llama-3-8b"))
    a.script(Fail(500))
    mesh = await make_mesh(sync_config(a))
    sync = next(d for d in mesh.discovery if isinstance(d, RegistrySync))
    await wait_for(lambda: len(a.calls) >= 1)
    await asyncio.sleep(0.05)
    assert sync.discovered == []
    assert await sync.run_once() == ["a.llama-3-8b"]


async def test_registry_sync_rule_with_unknown_capability() -> None:
    cfg = with_connectors({}, {"connector": SYNC, "config": {
        "rules": [{"match": "x-*", "capabilities": ["chat-completoin"]}]}})
    with pytest.raises(ConfigError) as err:
        ModelMesh(cfg).validate()
    assert "config.rules.0.capabilities.0: unknown capability 'chat-completoin'" in str(
        err.value)
