"""Free-tier aggregation: catalogue free quotas, ``modelmesh.free-tier.v1`` (configured order,
several keys of one vendor, prediction, paid fallback or never)."""

from __future__ import annotations

from typing import Any

import pytest

from modelmesh_core import CompletionRequest, NoActiveModelError
from modelmesh_core.fakes import FakeUpstream
from modelmesh_core.types import Limits

MSG = [{"role": "user", "content": "hi"}]
M = "llama-3.1-8b-instant"


def req(**kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=MSG, **kw)


def groq(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    return {"connector": "groq.api.v1",
            "config": {"base_url": fake.base_url, "api_key": "gsk-test-0000"}, **extra}


def config(fakes: dict[str, FakeUpstream], free: dict[str, dict[str, Any]],
           **strategy: Any) -> dict[str, Any]:
    models = {f"{n}.{M}": ({"limits": free[n]} if n in free else {}) for n in fakes}
    return {
        "providers": {n: groq(f) for n, f in fakes.items()},
        "models": models,
        "pools": {"chat": {"models": list(models), "failure_threshold": 100,
                           "strategy": {"connector": "free-tier", "config": strategy}}},
    }


async def test_catalogue_free_quotas_apply_to_free_tier_providers(
        make_mesh: Any, fake_upstream: Any) -> None:
    a, b = await fake_upstream(), await fake_upstream()
    mesh = await make_mesh({
        "providers": {"free": groq(a, free_tier=True), "paid": groq(b)},
        "models": {f"free.{M}": {}, f"paid.{M}": {},
                   "free.llama-3.3-70b-versatile": {"limits": {"rpm": 5}}},
    })
    # Groq's published Free Plan for the model; a paid key gets none; config overrides.
    assert mesh.models[f"free.{M}"].limits == Limits(rpm=30, rpd=14_400, tpm=6_000,
                                                      tpd=500_000, free=True)
    assert mesh.models[f"paid.{M}"].limits == Limits()
    assert mesh.models["free.llama-3.3-70b-versatile"].limits == Limits(rpm=5)


async def test_free_quotas_first_spread_over_keys_then_paid(
        make_mesh: Any, fake_upstream: Any) -> None:
    k1, k2, paid = await fake_upstream(), await fake_upstream(), await fake_upstream()
    free = {"rpm": 3, "free": True}
    mesh = await make_mesh(config({"k1": k1, "k2": k2, "paid": paid},
                                  {"k1": free, "k2": free}))
    got = [(await mesh.router.complete("chat", req())).model for _ in range(6)]
    # Two keys of one vendor serving one model: most headroom first, so they alternate.
    assert got == [f"k1.{M}", f"k2.{M}"] * 3
    assert (await mesh.router.complete("chat", req())).model == f"paid.{M}"
    assert (len(k1.calls), len(k2.calls), len(paid.calls)) == (3, 3, 1)


async def test_configured_order_across_vendors(make_mesh: Any, fake_upstream: Any) -> None:
    a, b = await fake_upstream(), await fake_upstream()
    mesh = await make_mesh({
        "providers": {"b": groq(b), "a": {"connector": "openai.llm.v1", "config": {
            "base_url": a.base_url, "api_key": "sk-test-0000"}}},
        "models": {"b.m": {"capabilities": ["chat-completion"],
                           "limits": {"rpd": 2, "free": True}},
                   "a.m": {"capabilities": ["chat-completion"],
                           "limits": {"rpd": 2, "free": True}}},
        "pools": {"chat": {"models": ["b.m", "a.m"], "strategy": "free-tier"}},
    })
    got = [(await mesh.router.complete("chat", req())).model for _ in range(4)]
    assert got == ["b.m", "b.m", "a.m", "a.m"]  # the pool's order, each to its last request


async def test_predicted_exhaustion_sends_nothing_to_a_spent_quota(
        make_mesh: Any, fake_upstream: Any) -> None:
    k1, k2 = await fake_upstream(), await fake_upstream()
    mesh = await make_mesh(config({"k1": k1, "k2": k2},
                                  {"k1": {"tpm": 300, "free": True},
                                   "k2": {"tpm": 5000, "free": True}}))
    decision = await mesh.router.explain("chat", req(max_tokens=1000))
    assert decision["selected"] == f"k2.{M}"  # 1000 tokens do not fit k1's minute
    await mesh.router.complete("chat", req(max_tokens=1000))
    assert not k1.calls and len(k2.calls) == 1


async def test_paid_never_answers_429_with_retry_after_once_free_is_spent(
        make_mesh: Any, fake_upstream: Any) -> None:
    k1, paid = await fake_upstream(), await fake_upstream()
    mesh = await make_mesh(config({"k1": k1, "paid": paid}, {"k1": {"rpm": 2, "free": True}},
                                  paid="never"))
    for _ in range(2):
        await mesh.router.complete("chat", req())
    with pytest.raises(NoActiveModelError) as exc:
        await mesh.router.complete("chat", req())
    assert exc.value.rate_limited
    assert exc.value.retry_after is not None and 59 <= exc.value.retry_after <= 61
    assert not paid.calls and len(k1.calls) == 2
