"""Unit tests of the built-in selection strategies (``modelmesh_core.builtin.strategies``)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from modelmesh_core.builtin import strategies as S
from modelmesh_core.pools import CapabilityPool, SelectionStrategy, Services
from modelmesh_core.state import MemoryStateStore
from modelmesh_core.types import (
    CompletionRequest,
    Limits,
    Model,
    PipelineContext,
    PipelineRequest,
    Pricing,
    RateLimitInfo,
    StrategySpec,
)

CHAT = "generation.text-generation.chat-completion"


def model(mid: str, **kw: Any) -> Model:
    provider, _, name = mid.partition(".")
    return Model(id=mid, provider=provider, upstream_id=name, capabilities=(CHAT,), **kw)


class FakeClock:
    """An injectable wall clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state() -> MemoryStateStore:
    return MemoryStateStore()


@pytest.fixture
def services(state: MemoryStateStore, clock: FakeClock) -> Services:
    return Services(
        state=state,
        clock=clock,
        capabilities=None,  # type: ignore[arg-type]
        events=None,  # type: ignore[arg-type]
        providers={},
        models={},
        pools={},
        rng=random.Random(0),
    )


def specs() -> dict[str, StrategySpec]:
    return {spec.name: spec for spec in S.modelmesh_strategies()}


def build(name: str, services: Services, **config: Any) -> Any:
    spec = specs()[f"modelmesh.{name}.v1"]
    cfg = spec.config_type(**config) if spec.config_type is not None else None
    strategy = spec.factory(cfg, services)
    assert isinstance(strategy, SelectionStrategy)
    return strategy


def make_pool(models: list[Model]) -> CapabilityPool:
    return CapabilityPool(
        name="chat",
        capability=CHAT,
        models=models,
        strategy=None,  # type: ignore[arg-type]
        strategy_name="test",
        config=None,  # type: ignore[arg-type]
        retry=None,  # type: ignore[arg-type]
    )


def ctx(
    pool: CapabilityPool | None = None,
    *,
    session_id: str | None = None,
    estimated_tokens: int = 0,
    messages: list[dict[str, Any]] | None = None,
    max_tokens: int | None = None,
) -> PipelineContext:
    request = None
    if messages is not None or max_tokens is not None:
        request = CompletionRequest(messages=messages or [], max_tokens=max_tokens)
    preq = PipelineRequest(
        capability=CHAT,
        session_id=session_id,
        estimated_tokens=estimated_tokens,
        request=request,
    )
    return PipelineContext(capability=CHAT, pool=pool, request=preq)


def ids(models: Sequence[Model]) -> list[str]:
    return [m.id for m in models]


A, B, C, D = model("a.x"), model("b.y"), model("c.z"), model("d.w")
ABCD = [A, B, C, D]


# --------------------------------------------------------------------------- registration


def test_hookimpl_registers_nine_unique_strategies() -> None:
    result = S.modelmesh_strategies()
    assert len(result) == 9
    names = [s.name for s in result]
    aliases = [a for s in result for a in s.aliases]
    assert len(set(names)) == 9
    assert len(set(aliases)) == 9
    assert not set(names) & set(aliases)
    for spec in result:
        assert isinstance(spec, StrategySpec)
        assert spec.aliases == (spec.name.removeprefix("modelmesh.").removesuffix(".v1"),)
        assert spec.description
    assert S.DEFAULT_STRATEGY in names


@pytest.mark.parametrize("spec", S.modelmesh_strategies(), ids=lambda s: s.aliases[0])
def test_every_strategy_builds_with_defaults_and_leaves_input_alone(
    spec: StrategySpec, services: Services
) -> None:
    cfg = spec.config_type() if spec.config_type is not None else None
    strategy = spec.factory(cfg, services)
    candidates = [A, B, C]
    snapshot = list(candidates)
    out = strategy.order(candidates, ctx(make_pool(ABCD), session_id="s"))
    assert candidates == snapshot
    assert sorted(ids(out)) == ["a.x", "b.y", "c.z"]
    assert out is not candidates
    assert strategy.order([], ctx(make_pool(ABCD), session_id="s")) == []


# --------------------------------------------------------------------------- stick-until-failure


def test_stick_until_failure_stays_on_success(services: Services) -> None:
    s = build("stick-until-failure", services)
    pool = make_pool(ABCD)
    for _ in range(5):
        c = ctx(pool)
        out = s.order(ABCD, c)
        assert ids(out) == ["a.x", "b.y", "c.z", "d.w"]
        s.record(out[0], True, c)
    assert s.current == "a.x"


def test_stick_until_failure_switches_after_failure_and_wraps(services: Services) -> None:
    s = build("stick-until-failure", services)
    pool = make_pool(ABCD)
    c = ctx(pool)
    s.order(ABCD, c)
    s.record(A, False, c)
    assert ids(s.order(ABCD, ctx(pool))) == ["b.y", "c.z", "d.w", "a.x"]
    # A failure of a model that is not current changes nothing.
    s.record(D, False, ctx(pool))
    assert s.current == "b.y"
    s.record(B, False, ctx(pool))
    s.record(C, False, None)  # no context: the last pool order seen is used
    s.record(D, False, ctx(pool))
    assert ids(s.order(ABCD, ctx(pool))) == ["a.x", "b.y", "c.z", "d.w"]


def test_stick_until_failure_rotate(services: Services) -> None:
    s = build("stick-until-failure", services)
    pool = make_pool(ABCD)
    s.order(ABCD, ctx(pool))
    s.rotate()
    assert ids(s.order(ABCD, ctx(pool))) == ["b.y", "c.z", "d.w", "a.x"]
    s.rotate()
    s.rotate()
    s.rotate()
    assert s.current == "a.x"


def test_stick_until_failure_filtered_current_is_skipped_not_abandoned(
    services: Services,
) -> None:
    s = build("stick-until-failure", services)
    pool = make_pool(ABCD)
    s.order(ABCD, ctx(pool))
    s.rotate()  # current = b
    # b filtered out (e.g. over budget): start after it in pool order, wrapping.
    assert ids(s.order([A, C, D], ctx(pool))) == ["c.z", "d.w", "a.x"]
    assert ids(s.order([A, D], ctx(pool))) == ["d.w", "a.x"]
    assert s.current == "b.y"
    # b routable again: it is back in front.
    assert ids(s.order(ABCD, ctx(pool)))[0] == "b.y"


def test_stick_until_failure_filtered_current_at_pool_end_wraps(services: Services) -> None:
    s = build("stick-until-failure", services)
    pool = make_pool(ABCD)
    c = ctx(pool)
    s.order(ABCD, c)
    for m in (A, B, C):
        s.record(m, False, c)
    assert s.current == "d.w"
    assert ids(s.order([B, C], ctx(pool))) == ["b.y", "c.z"]


def test_stick_until_failure_without_pool_uses_candidate_order(services: Services) -> None:
    s = build("stick-until-failure", services)
    s.order([A, B, C], ctx())
    s.record(A, False, ctx())
    assert ids(s.order([A, B, C], ctx())) == ["b.y", "c.z", "a.x"]


# --------------------------------------------------------------------------- priority-selection


def test_priority_selection_order(services: Services) -> None:
    m1 = model("p.one", priority=0)
    m2 = model("q.two", priority=5)
    m3 = model("r.three", priority=1)
    m4 = model("q.four", priority=1)
    m5 = model("p.five", priority=9)
    s = build(
        "priority-selection",
        services,
        model_priority=("r.three",),
        provider_priority=("q", "p"),
    )
    out = s.order([m1, m2, m3, m4, m5], ctx())
    # r.three listed first; then provider q (priority desc), then provider p (priority desc).
    assert ids(out) == ["r.three", "q.two", "q.four", "p.five", "p.one"]


def test_priority_selection_ties_keep_pool_order(services: Services) -> None:
    s = build("priority-selection", services)
    assert ids(s.order(ABCD, ctx())) == ["a.x", "b.y", "c.z", "d.w"]
    hi = model("z.hi", priority=3)
    assert ids(s.order([A, hi, B], ctx())) == ["z.hi", "a.x", "b.y"]


# --------------------------------------------------------------------------- round-robin


def test_round_robin_rotates_and_distributes_evenly(services: Services) -> None:
    s = build("round-robin", services)
    assert ids(s.order([A, B, C], ctx())) == ["a.x", "b.y", "c.z"]
    assert ids(s.order([A, B, C], ctx())) == ["b.y", "c.z", "a.x"]
    assert ids(s.order([A, B, C], ctx())) == ["c.z", "a.x", "b.y"]
    firsts = Counter(s.order([A, B, C], ctx())[0].id for _ in range(300))
    assert firsts == {"a.x": 100, "b.y": 100, "c.z": 100}


def test_round_robin_rotate_skips_one(services: Services) -> None:
    s = build("round-robin", services)
    s.order([A, B, C], ctx())
    s.rotate()
    assert s.order([A, B, C], ctx())[0] is C


# --------------------------------------------------------------------------- cost-first

# Cheap tokens but a per-request fee vs. no fee but expensive tokens.
FEE = model("fee.m", pricing=Pricing(input=0.1, output=0.1, per_request=0.001))
TOKENS = model("tok.m", pricing=Pricing(input=10.0, output=10.0))


def test_cost_first_short_prompt_prefers_no_fee(services: Services) -> None:
    s = build("cost-first", services)
    c = ctx(messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    assert ids(s.order([FEE, TOKENS], c)) == ["tok.m", "fee.m"]
    # 0 prompt tokens (2 chars / 4), 10 output tokens at $10/M.
    assert c.scores["tok.m"] == pytest.approx(-10 * 10.0 / 1e6)
    assert c.scores["fee.m"] == pytest.approx(-(10 * 0.1 / 1e6 + 0.001))


def test_cost_first_long_prompt_prefers_cheap_tokens(services: Services) -> None:
    s = build("cost-first", services)
    long_text = "x" * 40_000  # ~10k tokens
    c = ctx(messages=[{"role": "user", "content": [{"type": "text", "text": long_text}]}])
    assert ids(s.order([TOKENS, FEE], c)) == ["fee.m", "tok.m"]
    assert c.scores["tok.m"] == pytest.approx(-(10_000 + 256) * 10.0 / 1e6)


def test_cost_first_uses_estimated_tokens_and_default_output(services: Services) -> None:
    s = build("cost-first", services, default_output_tokens=1000)
    in_heavy = model("i.m", pricing=Pricing(input=1.0, output=20.0))
    out_heavy = model("o.m", pricing=Pricing(input=20.0, output=1.0))
    # 5000 prompt tokens, 1000 output: input-cheap model wins.
    assert s.order([out_heavy, in_heavy], ctx(estimated_tokens=5000))[0] is in_heavy
    # 10 prompt tokens, 1000 output: output-cheap model wins.
    assert s.order([in_heavy, out_heavy], ctx(estimated_tokens=10))[0] is out_heavy


def test_cost_first_ties_keep_pool_order(services: Services) -> None:
    s = build("cost-first", services)
    assert ids(s.order([C, A, B], ctx(estimated_tokens=100))) == ["c.z", "a.x", "b.y"]


# --------------------------------------------------------------------------- latency-first


def test_latency_first_unmeasured_first_then_fastest(
    services: Services, state: MemoryStateStore
) -> None:
    s = build("latency-first", services)
    state.model("a.x").record_latency(300.0)
    state.model("c.z").record_latency(100.0)
    state.model("d.w").record_latency(200.0)
    c = ctx()
    assert ids(s.order(ABCD, c)) == ["b.y", "c.z", "d.w", "a.x"]
    assert c.scores == {"a.x": -300.0, "b.y": 0.0, "c.z": -100.0, "d.w": -200.0}
    state.model("b.y").record_latency(150.0)
    assert ids(s.order(ABCD, ctx())) == ["c.z", "b.y", "d.w", "a.x"]


def test_latency_first_min_samples(services: Services, state: MemoryStateStore) -> None:
    s = build("latency-first", services, min_samples=3)
    state.model("a.x").record_latency(50.0)
    for _ in range(3):
        state.model("b.y").record_latency(80.0)
    # a has only one sample: still treated as unmeasured, so it is tried first.
    assert ids(s.order([B, A], ctx())) == ["a.x", "b.y"]
    state.model("a.x").record_latency(500.0)
    state.model("a.x").record_latency(500.0)
    assert ids(s.order([A, B], ctx())) == ["b.y", "a.x"]


# --------------------------------------------------------------------------- session-stickiness


def test_session_stickiness_keeps_model_per_session(services: Services) -> None:
    s = build("session-stickiness", services)
    assert s.order([A, B, C], ctx(session_id="s1"))[0] is A
    # s1 was pinned to a; even with b listed first, a stays in front.
    assert ids(s.order([B, A, C], ctx(session_id="s1"))) == ["a.x", "b.y", "c.z"]
    # a filtered: s2 gets pinned to b and keeps it when a comes back.
    assert s.order([B, C], ctx(session_id="s2"))[0] is B
    assert ids(s.order([A, B, C], ctx(session_id="s2"))) == ["b.y", "a.x", "c.z"]
    assert s.order([A, B, C], ctx(session_id="s1"))[0] is A
    # No session: plain pool order.
    assert ids(s.order([C, A, B], ctx())) == ["c.z", "a.x", "b.y"]


def test_session_stickiness_repins_after_failure(services: Services) -> None:
    s = build("session-stickiness", services)
    s.order([A, B], ctx(session_id="s1"))
    s.order([A, B], ctx(session_id="s2"))
    s.order([B, A], ctx(session_id="s3"))  # pinned to b
    s.record(A, False, ctx(session_id="s1"))
    assert s.pinned("s1") is None and s.pinned("s2") is None
    assert s.pinned("s3") == "b.y"
    # a is in cooldown (filtered): s1 repins to b and stays there after a recovers.
    assert s.order([B], ctx(session_id="s1"))[0] is B
    assert s.order([A, B], ctx(session_id="s1"))[0] is B
    # A success does not unpin.
    s.record(B, True, None)
    assert s.pinned("s1") == "b.y"


def test_session_stickiness_lru_bound(services: Services) -> None:
    s = build("session-stickiness", services, max_sessions=2)
    s.order([A, B], ctx(session_id="s1"))
    s.order([B, A], ctx(session_id="s2"))
    s.order([A, B], ctx(session_id="s1"))  # s1 used most recently
    s.order([A, B], ctx(session_id="s3"))  # evicts s2
    assert s.session_count == 2
    assert s.pinned("s2") is None
    assert s.pinned("s1") == "a.x"
    assert s.pinned("s3") == "a.x"
    # s2 is new again: pinned to the first candidate, not to its old b.
    assert s.order([A, B], ctx(session_id="s2"))[0] is A


def test_session_stickiness_ttl_expiry(services: Services, clock: FakeClock) -> None:
    s = build("session-stickiness", services, ttl=100.0)
    s.order([B, A], ctx(session_id="s1"))
    clock.now += 90
    assert s.order([A, B], ctx(session_id="s1"))[0] is B  # refreshes last use
    clock.now += 90
    assert s.pinned("s1") == "b.y"
    clock.now += 101
    assert s.pinned("s1") is None
    assert s.order([A, B], ctx(session_id="s1"))[0] is A
    assert s.pinned("s1") == "a.x"


def test_session_stickiness_purges_expired_sessions(services: Services, clock: FakeClock) -> None:
    s = build("session-stickiness", services, ttl=10.0)
    for i in range(5):
        s.order([A], ctx(session_id=f"old{i}"))
    clock.now += 11
    s.order([A], ctx(session_id="new"))
    assert s.session_count == 1


# --------------------------------------------------------------------------- rate-limit-aware


def test_rate_limit_aware_uses_headers(
    services: Services, state: MemoryStateStore, clock: FakeClock
) -> None:
    s = build("rate-limit-aware", services)
    sa, sb = state.model("a.x"), state.model("b.y")
    sa.rate_limit = RateLimitInfo(limit_requests=100, remaining_requests=10)
    sa.rate_limit_at = clock.now - 5
    sb.rate_limit = RateLimitInfo(
        limit_requests=100, remaining_requests=90, limit_tokens=1000, remaining_tokens=500
    )
    sb.rate_limit_at = clock.now - 5
    c = ctx()
    assert ids(s.order([A, B, C], c)) == ["c.z", "b.y", "a.x"]
    assert c.scores == {"a.x": pytest.approx(0.1), "b.y": pytest.approx(0.5), "c.z": 1.0}


def test_rate_limit_aware_header_freshness(
    services: Services, state: MemoryStateStore, clock: FakeClock
) -> None:
    s = build("rate-limit-aware", services, header_ttl=30.0)
    sa, sb = state.model("a.x"), state.model("b.y")
    sa.rate_limit = RateLimitInfo(limit_requests=100, remaining_requests=1)
    sa.rate_limit_at = clock.now - 31  # older than header_ttl: ignored
    sb.rate_limit = RateLimitInfo(limit_requests=100, remaining_requests=1, reset_requests=120.0)
    sb.rate_limit_at = clock.now - 60  # within its reset window: still trusted
    c = ctx()
    assert ids(s.order([B, A], c)) == ["a.x", "b.y"]
    assert c.scores["a.x"] == 1.0
    clock.now += 61  # past b's reset: its quota has been restored
    assert s.headroom(B, clock.now) == 1.0


def test_rate_limit_aware_uses_configured_limits(
    services: Services, state: MemoryStateStore, clock: FakeClock
) -> None:
    s = build("rate-limit-aware", services)
    rpm = model("a.rpm", limits=Limits(rpm=10))
    tpd = model("b.tpd", limits=Limits(tpd=1000))
    free = model("c.free")
    sr = state.model("a.rpm")
    sr.roll_windows(clock.now)
    sr.minute_requests = 8  # 20% left
    st = state.model("b.tpd")
    st.roll_windows(clock.now)
    st.day_tokens = 400  # 60% left
    c = ctx()
    assert ids(s.order([rpm, tpd, free], c)) == ["c.free", "b.tpd", "a.rpm"]
    assert c.scores["a.rpm"] == pytest.approx(0.2)
    assert c.scores["b.tpd"] == pytest.approx(0.6)
    # The minute window rolls over: rpm counters reset, a.rpm is back to full headroom.
    clock.now += 60
    assert s.headroom(rpm, clock.now) == 1.0


def test_rate_limit_aware_takes_tightest_of_headers_and_limits(
    services: Services, state: MemoryStateStore, clock: FakeClock
) -> None:
    s = build("rate-limit-aware", services)
    m = model("a.both", limits=Limits(rpm=100))
    st = state.model("a.both")
    st.roll_windows(clock.now)
    st.minute_requests = 50  # 0.5 from config
    st.rate_limit = RateLimitInfo(limit_tokens=1000, remaining_tokens=300)  # 0.3 from headers
    st.rate_limit_at = clock.now
    assert s.headroom(m, clock.now) == pytest.approx(0.3)
    st.retry_after_until = clock.now + 5
    assert s.headroom(m, clock.now) == 0.0


def test_rate_limit_aware_ties_keep_pool_order(services: Services) -> None:
    s = build("rate-limit-aware", services)
    assert ids(s.order([D, B, A], ctx())) == ["d.w", "b.y", "a.x"]


# --------------------------------------------------------------------------- load-balanced


def test_load_balanced_exact_proportions_with_config_weights(services: Services) -> None:
    s = build("load-balanced", services, weights={"a.x": 3.0, "b.y": 1.0})
    firsts = [s.order([A, B], ctx())[0].id for _ in range(100)]
    assert Counter(firsts) == {"a.x": 75, "b.y": 25}
    # Smooth: b is interleaved, never more than three a's in a row.
    assert firsts[:4] == ["a.x", "a.x", "b.y", "a.x"]


def test_load_balanced_model_weights_and_fallback_order(services: Services) -> None:
    s = build("load-balanced", services)
    heavy = model("h.m", weight=5.0)
    mid = model("m.m", weight=3.0)
    light = model("l.m", weight=2.0)
    zero = model("z.m", weight=0.0)
    outs = [s.order([light, zero, mid, heavy], ctx()) for _ in range(100)]
    assert Counter(o[0].id for o in outs) == {"h.m": 50, "m.m": 30, "l.m": 20}
    for o in outs:
        rest = ids(o[1:])
        expected = [mid_id for mid_id in ["h.m", "m.m", "l.m", "z.m"] if mid_id != o[0].id]
        assert rest == expected


def test_load_balanced_all_zero_weights_round_robins(services: Services) -> None:
    s = build("load-balanced", services, weights={"a.x": 0.0, "b.y": 0.0})
    firsts = Counter(s.order([A, B], ctx())[0].id for _ in range(10))
    assert firsts == {"a.x": 5, "b.y": 5}
