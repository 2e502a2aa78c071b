"""The quota ledger listens to providers: rate-limit headers (OpenAI / Groq ``x-ratelimit-*``,
``anthropic-ratelimit-*``, ``retry-after``) correct it; calendar quotas (month, reset hour);
maintenance windows (cron)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from modelmesh_core import CompletionRequest, ConfigError, NoActiveModelError
from modelmesh_core.fakes import ManualClock, RateLimited, Reply
from modelmesh_core.ledger import Refusal
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.quota import Cron, CronError, Maintenance, cron_error, timegm
from modelmesh_core.testing import openai_config

MSG = [{"role": "user", "content": "hi"}]


def req(**kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=MSG, **kw)


# --------------------------------------------------------------------------- cron


def test_cron_parses_fields_names_ranges_and_steps() -> None:
    c = Cron("*/15 3,4 * jan-mar mon-fri")
    assert c.minutes == [0, 15, 30, 45] and c.hours == [3, 4]
    assert c.months == frozenset({1, 2, 3}) and c.dow == frozenset({1, 2, 3, 4, 5})
    assert Cron("0 3 * * 7").dow == frozenset({0})  # 7 is Sunday too
    assert Cron("5-20/5 * * * *").minutes == [5, 10, 15, 20]
    for bad, why in (("0 3 * *", "five fields"), ("60 * * * *", "minute"),
                     ("* 24 * * *", "hour"), ("* * 0 * *", "day of month"),
                     ("* * * * funday", "day of week"), ("*/0 * * * *", "step")):
        with pytest.raises(CronError, match=why):
            Cron(bad)
    assert cron_error("0 3 * * sun") is None
    assert "five fields" in (cron_error("nope") or "")


def test_cron_next_and_last_fire_times() -> None:
    sunday_3am = timegm(2026, 3, 1, 3, 0)  # 2026-03-01 is a Sunday
    c = Cron("0 3 * * sun")
    assert c.next_after(sunday_3am - 1) == sunday_3am
    assert c.next_after(sunday_3am) == sunday_3am + 7 * 86400
    assert c.last_at_or_before(sunday_3am + 3600, 7200) == sunday_3am
    assert c.last_at_or_before(sunday_3am + 7200, 7200) is None  # the window is over
    # Both day fields restricted: either matches (the 1st, or any Friday).
    either = Cron("0 0 1 * fri")
    assert either.next_after(timegm(2026, 3, 1, 12, 0)) == timegm(2026, 3, 6)  # a Friday
    assert either.next_after(timegm(2026, 3, 27, 1, 0)) == timegm(2026, 4, 1)
    assert Cron("0 0 30 feb *").next_after(0) is None  # never


def test_maintenance_until_caches_its_boundaries() -> None:
    sunday_3am = timegm(2026, 3, 1, 3, 0)
    m = Maintenance([(Cron("0 3 * * sun"), 7200.0)])
    assert m.until(sunday_3am - 60) is None
    assert m.until(sunday_3am) == sunday_3am + 7200
    assert m.until(sunday_3am + 7199) == sunday_3am + 7200
    assert m.until(sunday_3am + 7200) is None
    assert m.until(sunday_3am + 7 * 86400 + 1) == sunday_3am + 7 * 86400 + 7200


async def test_a_bad_maintenance_cron_is_a_config_error(fake_upstream: Any) -> None:
    a = await fake_upstream()
    cfg = openai_config([("a", a)])
    cfg["providers"]["a"]["maintenance"] = [{"cron": "0 25 * * *", "duration": "2h"}]
    with pytest.raises(ConfigError) as exc:
        ModelMesh(cfg).validate()
    assert "providers.a.maintenance.0.cron" in str(exc.value)
    assert "hour" in str(exc.value)


async def test_maintenance_window_skips_the_provider_with_its_reason(
        make_mesh: Any, fake_upstream: Any) -> None:
    a, b = await fake_upstream(), await fake_upstream()
    clock = ManualClock(start=timegm(2026, 3, 1, 3, 30))  # Sunday 03:30 UTC
    cfg = openai_config([("a", a), ("b", b)], strategy="priority-selection")
    cfg["providers"]["a"]["maintenance"] = [{"cron": "0 3 * * sun", "duration": "2h"}]
    mesh = await make_mesh(cfg, clock=clock)
    resp = await mesh.router.complete("chat", req())
    assert resp.model == "b.gpt-4o-mini" and not a.calls and len(b.calls) == 1
    explained = await mesh.router.explain("chat")
    why = str(explained)
    assert "maintenance window until 2026-03-01 05:00 UTC" in why
    clock.advance(2 * 3600)  # 05:30: over
    resp = await mesh.router.complete("chat", req())
    assert resp.model == "a.gpt-4o-mini" and len(a.calls) == 1


async def test_maintenance_of_the_only_provider_is_a_503_with_retry_after(
        make_mesh: Any, fake_upstream: Any) -> None:
    a = await fake_upstream()
    clock = ManualClock(start=timegm(2026, 3, 1, 4, 0))
    cfg = openai_config([("a", a)])
    cfg["providers"]["a"]["maintenance"] = [{"cron": "0 3 * * sun", "duration": "2h"}]
    mesh = await make_mesh(cfg, clock=clock)
    with pytest.raises(NoActiveModelError) as exc:
        await mesh.router.complete("chat", req())
    assert not exc.value.rate_limited  # not a rate limit: the proxy answers 503
    assert exc.value.retry_after == pytest.approx(3600)
    assert "maintenance" in str(exc.value.reasons)
    assert not a.calls


# --------------------------------------------------------------------------- calendar quotas


async def test_monthly_quota_resets_with_the_calendar_month(
        make_mesh: Any, fake_upstream: Any) -> None:
    a = await fake_upstream()
    clock = ManualClock(start=timegm(2026, 1, 31, 23, 0))
    cfg = openai_config([("a", a)])
    cfg["models"]["a.gpt-4o-mini"]["limits"] = {"monthly_requests": 2}
    mesh = await make_mesh(cfg, clock=clock)
    await mesh.router.complete("chat", req())
    await mesh.router.complete("chat", req())
    with pytest.raises(NoActiveModelError) as exc:
        await mesh.router.complete("chat", req())
    assert exc.value.rate_limited and exc.value.retry_after == pytest.approx(3600)
    assert "monthly request quota used (2/2)" in str(exc.value.reasons)
    clock.advance(3600)  # February
    await mesh.router.complete("chat", req())
    assert len(a.calls) == 3


async def test_provider_reset_hour_moves_the_daily_window(
        make_mesh: Any, fake_upstream: Any) -> None:
    a = await fake_upstream()
    clock = ManualClock(start=timegm(2026, 3, 2, 6, 0))
    cfg = openai_config([("a", a)])
    cfg["providers"]["a"]["limits"] = {"rpd": 1, "reset_hour": 7}
    mesh = await make_mesh(cfg, clock=clock)
    await mesh.router.complete("chat", req())
    with pytest.raises(NoActiveModelError) as exc:
        await mesh.router.complete("chat", req())
    assert exc.value.retry_after == pytest.approx(3600)  # 07:00 UTC, not midnight
    clock.advance(3600)
    await mesh.router.complete("chat", req())
    assert len(a.calls) == 2


# --------------------------------------------------------------------------- upstream headers


async def test_openai_headers_with_nothing_left_hold_the_model_until_reset(
        make_mesh: Any, fake_upstream: Any) -> None:
    # The fake reports x-ratelimit-limit-requests: 3 and counts down; no limit configured.
    a = await fake_upstream(rpm_limit=3)
    b = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a), ("b", b)], strategy="priority-selection"))
    for _ in range(3):
        assert (await mesh.router.complete("chat", req())).model == "a.gpt-4o-mini"
    # The third answer said "x-ratelimit-remaining-requests: 0": a is skipped, not called.
    assert (await mesh.router.complete("chat", req())).model == "b.gpt-4o-mini"
    assert len(a.calls) == 3
    refused = mesh.ledger.admit(mesh.pools["chat"], mesh.models["a.gpt-4o-mini"], None)
    assert type(refused) is Refusal
    assert "upstream reports no requests left" in refused.reason
    assert refused.retry_after is not None and 50 < refused.retry_after <= 60


async def test_openai_headers_correct_a_configured_counter_shared_by_the_store(
        make_mesh: Any, fake_upstream: Any) -> None:
    a = await fake_upstream(rpm_limit=10, tpm_limit=1_000_000)
    # Another client of the same key used 6 of the 10 requests of this minute.
    async with aiohttp.ClientSession() as s:
        for _ in range(6):
            async with s.post(f"{a.base_url}/chat/completions",
                              headers={"Authorization": "Bearer sk-test-0000000000"},
                              json={"model": "gpt-4o-mini", "messages": MSG}) as r:
                assert r.status == 200
    cfg = openai_config([("a", a)])
    cfg["models"]["a.gpt-4o-mini"]["limits"] = {"rpm": 10}
    mesh = await make_mesh(cfg)
    await mesh.router.complete("chat", req())
    rpm = mesh.ledger.plan(None, mesh.models["a.gpt-4o-mini"]).limits[0]
    assert rpm.key == "m:a.gpt-4o-mini:rpm"
    assert mesh.ledger.backend.usage(rpm, mesh._clock()) == 7  # 1 of ours + 6 reported
    for _ in range(3):
        await mesh.router.complete("chat", req())
    with pytest.raises(NoActiveModelError) as exc:
        await mesh.router.complete("chat", req())
    assert exc.value.rate_limited
    assert len(a.calls) == 10  # the upstream's 10, not 6 + 10


async def test_tokens_remaining_below_the_estimate_skip_the_model(
        make_mesh: Any, fake_upstream: Any) -> None:
    a = await fake_upstream(tpm_limit=500)  # each answer uses ~20 tokens
    b = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a), ("b", b)], strategy="priority-selection"))
    assert (await mesh.router.complete("chat", req(max_tokens=10))).model == "a.gpt-4o-mini"
    # About 480 tokens left: a request reserving 600 goes to b without calling a.
    assert (await mesh.router.complete("chat", req(max_tokens=600))).model == "b.gpt-4o-mini"
    assert len(a.calls) == 1
    assert (await mesh.router.complete("chat", req(max_tokens=10))).model == "a.gpt-4o-mini"


async def test_a_429_with_ratelimit_headers_is_absorbed_and_remembered(
        make_mesh: Any, fake_upstream: Any) -> None:
    clock = ManualClock(start=1_000.0)
    a = await fake_upstream(default=RateLimited(rpm=2, then=Reply()), clock=clock)
    b = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a), ("b", b)], strategy="priority-selection",
                                         failure_threshold=100))
    models = [(await mesh.router.complete("chat", req())).model for _ in range(6)]
    # Two answers, one 429 (x-ratelimit-remaining-requests: 0, reset ~60 s) failed over to
    # b, then a is held back until its reset: no second 429.
    assert models == ["a.gpt-4o-mini"] * 2 + ["b.gpt-4o-mini"] * 4
    assert len(a.calls) == 3


async def test_anthropic_headers_hold_the_model(make_mesh: Any) -> None:
    from modelmesh_anthropic.fake import FakeAnthropic

    from modelmesh_core.fakes import FakeUpstream

    async with FakeAnthropic(api_keys={"sk-ant-test"}) as claude, FakeUpstream() as gpt:
        claude.rpm_limit = 2
        cfg = {
            "providers": {
                "claude": {"connector": "anthropic.claude.v1",
                           "config": {"base_url": claude.base_url, "api_key": "sk-ant-test"}},
                "gpt": {"connector": "openai.llm.v1",
                        "config": {"base_url": gpt.base_url, "api_key": "sk-test-0000"}},
            },
            "models": {"claude.claude-haiku-4-5": {}, "gpt.gpt-4o-mini": {}},
            "pools": {"chat": {"capability": "chat-completion", "strategy": "priority-selection",
                               "models": ["claude.claude-haiku-4-5", "gpt.gpt-4o-mini"]}},
        }
        mesh = await make_mesh(cfg)
        got = [(await mesh.router.complete("chat", req(max_tokens=10))).model
               for _ in range(3)]
        assert got == ["claude.claude-haiku-4-5"] * 2 + ["gpt.gpt-4o-mini"]
        assert len(claude.calls) == 2
        refused = mesh.ledger.admit(mesh.pools["chat"], mesh.models["claude.claude-haiku-4-5"],
                                    None)
        assert type(refused) is Refusal and 0 < (refused.retry_after or 0) <= 60
