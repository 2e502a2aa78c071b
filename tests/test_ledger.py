"""The admission ledger: limits, quotas and budgets reserved at admission, one window
implementation, one cost function."""

from __future__ import annotations

import asyncio
import calendar
from typing import Any

import pytest

from modelmesh_core import CompletionRequest, NoActiveModelError
from modelmesh_core.attempts import cost_of
from modelmesh_core.config import BudgetConfig
from modelmesh_core.events import EventType
from modelmesh_core.fakes import Fail, Reply
from modelmesh_core.ledger import COST, REQUESTS, TOKENS, Counter, MemoryLedger
from modelmesh_core.testing import openai_config
from modelmesh_core.types import Model, Pricing, Usage
from modelmesh_core.windows import (
    DAY,
    MINUTE,
    MONTH,
    next_utc_day,
    window_end,
    window_id,
)

HI = [{"role": "user", "content": "hi"}]


def req(**kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=HI, **kw)


# --------------------------------------------------------------------------- windows


def test_day_month_and_reset_hour_windows() -> None:
    t = calendar.timegm((2025, 1, 31, 23, 30, 0))
    assert window_end(DAY, window_id(DAY, t), 0) == calendar.timegm((2025, 2, 1, 0, 0, 0))
    assert next_utc_day(t) == calendar.timegm((2025, 2, 1, 0, 0, 0))
    # A provider whose day starts at 08:00 UTC: 23:30 belongs to the day that ends at 08:00.
    assert window_end(DAY, window_id(DAY, t, 8), 8) == calendar.timegm((2025, 2, 1, 8, 0, 0))
    early = calendar.timegm((2025, 2, 1, 7, 59, 0))
    assert window_id(DAY, early, 8) == window_id(DAY, t, 8)
    assert window_id(DAY, early + 60, 8) == window_id(DAY, t, 8) + 1
    # Calendar months, December rolling into January.
    assert window_end(MONTH, window_id(MONTH, t), 0) == calendar.timegm((2025, 2, 1, 0, 0, 0))
    dec = calendar.timegm((2024, 12, 15, 0, 0, 0))
    assert window_end(MONTH, window_id(MONTH, dec), 0) == calendar.timegm((2025, 1, 1, 0, 0, 0))


def test_rolling_minute_never_lets_more_than_the_limit_through_any_60_seconds() -> None:
    ledger = MemoryLedger()
    c = Counter("x:rpm", REQUESTS, MINUTE, 3.0, "rpm")
    amounts = (1.0, 0.0, 0.0)
    admitted: list[float] = []
    t = 1000.0
    while t < 1300.0:
        index, _ = ledger.admit((c,), amounts, t)
        if index == -1:
            admitted.append(t)
        t += 0.7
    assert admitted
    for start in admitted:
        assert sum(1 for a in admitted if start <= a < start + 60.0) <= 3
    # And it is not stingy: about 3 per 61 s over 300 s.
    assert len(admitted) >= 3 * int(300 / 61)


def test_refusal_says_when_to_come_back() -> None:
    ledger = MemoryLedger()
    c = Counter("x:rpm", REQUESTS, MINUTE, 2.0, "rpm")
    assert ledger.admit((c,), (1, 0, 0), 100.2)[0] == -1
    assert ledger.admit((c,), (1, 0, 0), 130.5)[0] == -1
    index, retry = ledger.admit((c,), (1, 0, 0), 140.0)
    assert index == 0
    assert retry == pytest.approx(100 + 61 - 140.0)
    day = Counter("x:rpd", REQUESTS, DAY, 1.0, "rpd")
    assert ledger.admit((day,), (1, 0, 0), 86400 * 3 + 10)[0] == -1
    assert ledger.admit((day,), (1, 0, 0), 86400 * 3 + 20) == (0, pytest.approx(86400 - 20))


def test_admission_is_all_or_nothing_and_release_gives_back() -> None:
    ledger = MemoryLedger()
    rpm = Counter("p:rpm", REQUESTS, MINUTE, 10.0, "rpm")
    tpd = Counter("p:tpd", TOKENS, DAY, 100.0, "tpd")
    usd = Counter("b:daily", COST, DAY, 1.0, "daily")
    both = (rpm, tpd, usd)
    assert ledger.admit(both, (1, 60, 0.5), 50.0)[0] == -1
    assert ledger.admit(both, (1, 60, 0.1), 51.0)[0] == 1  # tokens refuse: nothing is added
    assert ledger.usage(rpm, 52.0) == 1 and ledger.usage(usd, 52.0) == 0.5
    ledger.adjust(both, 50.0, (-1, -60, -0.5))
    assert (ledger.usage(rpm, 52.0), ledger.usage(tpd, 52.0), ledger.usage(usd, 52.0)) == (0, 0, 0)


# --------------------------------------------------------------------------- one cost formula


def test_one_cost_function() -> None:
    p = Pricing(input=2.0, output=8.0, cached_input=0.5, reasoning=4.0, per_request=0.001)
    usage = {"prompt_tokens": 1000, "cached_tokens": 400, "completion_tokens": 500,
             "reasoning_tokens": 200}
    expected = (600 * 2.0 + 400 * 0.5 + 300 * 8.0 + 200 * 4.0) / 1e6 + 0.001
    assert p.cost(usage) == pytest.approx(expected)
    assert p.cost(Usage(prompt_tokens=1000, cached_tokens=400, completion_tokens=500,
                        reasoning_tokens=200)) == pytest.approx(expected)
    assert p.cost(None) == 0.001 and p.cost({}) == 0.001
    m = Model(id="a.m", provider="a", upstream_id="m", capabilities=("x",), pricing=p)
    assert cost_of(m, usage) == p.cost(usage)
    # Without a reasoning price, reasoning tokens are output tokens.
    assert Pricing(output=8.0).cost(usage) == pytest.approx(500 * 8.0 / 1e6)


# --------------------------------------------------------------------------- through the router


async def test_forty_concurrent_requests_against_rpm_5(fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream(default=Reply(delay=0.2))
    cfg = openai_config([("a", a)])
    cfg["providers"]["a"]["limits"] = {"rpm": 5}
    mesh = await make_mesh(cfg)
    results = await asyncio.gather(*(mesh.router.complete("chat", req()) for _ in range(40)),
                                   return_exceptions=True)
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, NoActiveModelError)]
    assert len(a.calls) == 5
    assert len(answered) == 5 and len(refused) == 35
    for err in refused:
        # A 429 that says when to come back, not a 503 advising reactivation.
        assert err.rate_limited
        assert err.retry_after is not None and 59.0 < err.retry_after <= 61.0
        assert "requests-per-minute" in str(err)


async def test_forty_concurrent_requests_spill_to_a_second_provider(
    fake_upstream: Any, make_mesh: Any
) -> None:
    a = await fake_upstream(default=Reply(delay=0.2))
    b = await fake_upstream(default=Reply(delay=0.05))
    cfg = openai_config([("a", a), ("b", b)])
    cfg["providers"]["a"]["limits"] = {"rpm": 5}
    mesh = await make_mesh(cfg)
    results = await asyncio.gather(*(mesh.router.complete("chat", req()) for _ in range(40)))
    assert len(results) == 40
    assert len(a.calls) == 5 and len(b.calls) == 35
    explained = await mesh.router.explain("chat", req())
    assert explained["selected"] == "b.gpt-4o-mini"
    assert "provider 'a': requests-per-minute" in explained["dropped"]["a.gpt-4o-mini"]


async def test_daily_budget_holds_under_concurrency(fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream(default=Reply(delay=0.2))
    cfg = openai_config([("a", a)])
    cfg["models"]["a.gpt-4o-mini"]["pricing"] = {"per_request": 0.01}
    cfg["budget"] = {"daily": 0.05}
    mesh = await make_mesh(cfg)
    results = await asyncio.gather(*(mesh.router.complete("chat", req()) for _ in range(40)),
                                   return_exceptions=True)
    assert len(a.calls) == 5
    assert sum(not isinstance(r, BaseException) for r in results) == 5
    assert mesh.ledger.spent()["global"]["day"] == pytest.approx(0.05)


async def test_failed_attempt_releases_its_reservation(fake_upstream: Any,
                                                       make_mesh: Any) -> None:
    a = await fake_upstream()
    a.script(Fail(status=500), Fail(status=500))
    cfg = openai_config([("a", a)], retry={"max_attempts": 1}, failure_threshold=10)
    cfg["providers"]["a"]["limits"] = {"rpm": 2}
    mesh = await make_mesh(cfg)
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 - any failure: the upstream said 500
            await mesh.router.complete("chat", req())
    # Both failures gave their slot back: two requests still fit in this minute.
    await mesh.router.complete("chat", req())
    await mesh.router.complete("chat", req())
    assert len(a.calls) == 4
    with pytest.raises(NoActiveModelError):
        await mesh.router.complete("chat", req())


async def test_tokens_are_reserved_then_settled_with_real_usage(
    fake_upstream: Any, make_mesh: Any
) -> None:
    a = await fake_upstream(default=Reply(usage={"prompt_tokens": 10, "completion_tokens": 20}))
    cfg = openai_config([("a", a)])
    cfg["providers"]["a"]["limits"] = {"tpm": 1000}
    mesh = await make_mesh(cfg)
    ledger = mesh.ledger
    (tpm,) = ledger.plan(None, mesh.models["a.gpt-4o-mini"]).limits
    await mesh.router.complete("chat", req(max_tokens=500))
    assert ledger.backend.usage(tpm, mesh._clock()) == 30
    # A request reserving 500 output tokens does not fit in the 970 left twice.
    r1 = ledger.admit(mesh.pools["chat"], mesh.models["a.gpt-4o-mini"],
                      mesh.router._pipeline_request("chat", req(max_tokens=500), None, "sync"))
    assert ledger.backend.usage(tpm, mesh._clock()) > 500
    r2 = ledger.admit(mesh.pools["chat"], mesh.models["a.gpt-4o-mini"],
                      mesh.router._pipeline_request("chat", req(max_tokens=500), None, "sync"))
    assert "tokens-per-minute" in r2.reason  # type: ignore[union-attr]
    ledger.release(r1)  # type: ignore[arg-type]
    assert ledger.backend.usage(tpm, mesh._clock()) == 30


async def test_budget_alert_once_per_window(make_mesh: Any, fake_upstream: Any) -> None:
    a = await fake_upstream()
    cfg = openai_config([("a", a)])
    cfg["models"]["a.gpt-4o-mini"]["pricing"] = {"per_request": 0.3}
    cfg["budget"] = {"daily": 10.0, "alert_threshold": 0.05}
    mesh = await make_mesh(cfg)
    events: list[Any] = []
    mesh.events.subscribe(events.append)
    for _ in range(3):
        await mesh.router.complete("chat", req())
    alerts = [e for e in events if e.type == EventType.BUDGET_ALERT]
    assert len(alerts) == 1 and alerts[0].data["scope"] == "global"


async def test_virtual_key_counters(make_mesh: Any, fake_upstream: Any) -> None:
    a = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a)]))
    ledger = mesh.ledger
    budget = BudgetConfig(daily=0.02)
    assert await ledger.admit_key("team", 2, budget) is None
    assert await ledger.admit_key("team", 2, budget) is None
    refused = await ledger.admit_key("team", 2, budget)
    assert refused is not None and "requests-per-minute" in refused.reason
    assert refused.retry_after is not None and refused.retry_after > 59
    ledger.spend_key("team", 0.03)
    assert ledger.key_usage("team")["day_spend"] == pytest.approx(0.03)


async def test_virtual_key_admission_for_the_proxy(make_mesh: Any, fake_upstream: Any) -> None:
    from modelmesh_core.errors import BudgetExceededError
    from modelmesh_core.keys import admit_virtual_key, charge_virtual_key, virtual_key_usage
    from modelmesh_core.wire import WireError

    a = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a)]))
    budget = BudgetConfig(daily=0.05)
    await admit_virtual_key(mesh.ledger, "k", 2, budget)
    await admit_virtual_key(mesh.ledger, "k", 2, budget)
    with pytest.raises(WireError) as exc:
        await admit_virtual_key(mesh.ledger, "k", 2, budget)
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "61"
    charge_virtual_key(mesh.ledger, "k", 0.06)
    assert virtual_key_usage(mesh.ledger, "k")["day_spend"] == pytest.approx(0.06)
    with pytest.raises(BudgetExceededError):
        await admit_virtual_key(mesh.ledger, "k", None, budget)
