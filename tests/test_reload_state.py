"""Hot reload keeps strategy state for pools that survive it: the sticky model, round-robin
counters, session pins, weighted round-robin counters; a pool whose strategy changes (or that
is new) starts fresh."""

from __future__ import annotations

from typing import Any

from modelmesh_core import CompletionRequest, RoutingOptions
from modelmesh_core.builtin.strategies import (
    LoadBalanced,
    LoadBalancedConfig,
    RoundRobin,
    SessionStickiness,
    SessionStickinessConfig,
    StickUntilFailure,
)
from modelmesh_core.fakes import Fail
from modelmesh_core.testing import openai_config


def req() -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": "hi"}])


async def three(fake_upstream: Any) -> list[Any]:
    return [await fake_upstream() for _ in range(3)]


def config(fakes: list[Any], **pool: Any) -> dict[str, Any]:
    cfg = openai_config(list(zip("abc", fakes, strict=True)), **pool)
    cfg["discovery"] = {"auto_detect": False}
    return cfg


async def test_reload_keeps_the_sticky_model(fake_upstream: Any, make_mesh: Any) -> None:
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(config([a, b, c], failure_threshold=5))
    a.script(Fail(500))  # a fails once: the pool sticks to b from now on
    assert (await mesh.router.complete("chat", req())).provider == "b"
    assert (await mesh.router.complete("chat", req())).provider == "b"
    # a reload that changes something else (the cooldown) keeps the pool on b although a is
    # healthy and first in pool order
    await mesh.reload_config(config([a, b, c], failure_threshold=5, cooldown="90s"))
    assert mesh.pools["chat"].config.cooldown == 90.0
    assert isinstance(mesh.pools["chat"].strategy, StickUntilFailure)
    assert mesh.pools["chat"].strategy.current == "b.gpt-4o-mini"
    assert (await mesh.router.complete("chat", req())).provider == "b"


async def test_a_changed_strategy_starts_fresh(fake_upstream: Any, make_mesh: Any) -> None:
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(config([a, b, c], failure_threshold=5))
    a.script(Fail(500))
    assert (await mesh.router.complete("chat", req())).provider == "b"
    await mesh.reload_config(config([a, b, c], failure_threshold=5, strategy="round-robin"))
    assert (await mesh.router.complete("chat", req())).provider == "a"


async def test_reload_keeps_round_robin_position(fake_upstream: Any, make_mesh: Any) -> None:
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(config([a, b, c], strategy="round-robin"))
    got = [(await mesh.router.complete("chat", req())).provider for _ in range(2)]
    assert got == ["a", "b"]
    await mesh.reload_config(config([a, b, c], strategy="round-robin", cooldown="10s"))
    got = [(await mesh.router.complete("chat", req())).provider for _ in range(2)]
    assert got == ["c", "a"]  # goes on where it was instead of starting again at a


async def test_reload_keeps_session_pins(fake_upstream: Any, make_mesh: Any) -> None:
    a, b, c = await three(fake_upstream)
    cfg = config([a, b, c], strategy="session-stickiness")
    mesh = await make_mesh(cfg)
    mesh.deactivate("a.gpt-4o-mini")  # the session gets pinned to b while a is out
    opts = RoutingOptions(session_id="user-42")
    assert (await mesh.router.complete("chat", req(), opts)).provider == "b"
    mesh.reactivate("a.gpt-4o-mini")
    await mesh.reload_config(config([a, b, c], strategy="session-stickiness", cooldown="5s"))
    strategy = mesh.pools["chat"].strategy
    assert isinstance(strategy, SessionStickiness)
    assert strategy.pinned("user-42") == "b.gpt-4o-mini"
    assert (await mesh.router.complete("chat", req(), opts)).provider == "b"
    # a new session still starts at the top of the pool
    other = RoutingOptions(session_id="user-7")
    assert (await mesh.router.complete("chat", req(), other)).provider == "a"


async def test_a_model_that_left_the_pool_is_dropped(fake_upstream: Any,
                                                    make_mesh: Any) -> None:
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(config([a, b, c], failure_threshold=5))
    a.script(Fail(500))
    assert (await mesh.router.complete("chat", req())).provider == "b"
    smaller = openai_config([("a", a), ("c", c)], failure_threshold=5)
    smaller["discovery"] = {"auto_detect": False}
    await mesh.reload_config(smaller)
    assert (await mesh.router.complete("chat", req())).provider == "a"


def test_inherit_methods_copy_state() -> None:
    rr, rr2 = RoundRobin(), RoundRobin()
    rr.rotate()
    rr.rotate()
    rr2.inherit(rr)
    assert rr2._counter == 2
    rr2.inherit(object())  # another strategy type: ignored
    assert rr2._counter == 2

    lb, lb2 = LoadBalanced(LoadBalancedConfig()), LoadBalanced(LoadBalancedConfig())
    lb._current["m"] = 1.5
    lb2.inherit(lb)
    assert lb2._current == {"m": 1.5}
    lb._current["m"] = 9.0
    assert lb2._current == {"m": 1.5}  # a copy, not shared

    clock = iter(range(1000)).__next__
    small = SessionStickiness(SessionStickinessConfig(max_sessions=2), lambda: 0.0)
    big = SessionStickiness(SessionStickinessConfig(max_sessions=10), lambda: 0.0)
    from modelmesh_core.builtin.strategies import _Pin

    for sid in ("s1", "s2", "s3"):
        big._sessions[sid] = _Pin("m", 0, float(clock()))
    small.inherit(big)
    assert list(small._sessions) == ["s2", "s3"]  # the most recent ones, within the bound
