"""Free-tier simulator: one day of bursty traffic against four free quotas, compressed into
seconds with a manual clock.

Four fake OpenAI-compatible upstreams (Groq style: two keys of one vendor, plus two other
vendors) each *enforce* their own requests-per-minute (rolling 60 s), requests-per-day (UTC)
and tokens-per-minute, answering over quota with a 429 carrying ``retry-after`` and the
``x-ratelimit-*`` headers Groq sends (``limit/remaining/reset-requests`` for the day,
``-tokens`` for the minute). The mesh routes through the ``modelmesh.free-tier.v1``
strategy with ``paid: never``. Three of the quotas are declared in the configuration; the
fourth (``delta``) declares none and is learnt from the headers and 429s alone.

The clock moves only when the load generator says: 24 h in ticks, a diurnal Poisson
load plus bursts (7 s ticks: 24 h is about 12 000 of them, run in a few seconds). Reported:

* **answered while quota remained**: requests answered / (answered + those refused with a
  429 while at least one upstream, by its own count, had room for them);
* **pooled free quota used**: requests the upstreams served / the sum of their daily quotas;
* **upstream 429s absorbed**: 429s the upstreams sent (each one was retried on another
  candidate; a caller saw a failure only when none was left, counted above).

    python benchmarks/free_tier_sim.py [--seed 7] [--demand 1.6]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections import Counter, deque
from typing import Any

from aiohttp import web

from modelmesh_core import CompletionRequest, ModelMeshError
from modelmesh_core.fakes import ManualClock, format_reset
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.quota import timegm

DAY = 86400.0
TICK = 7.0  # does not divide a minute: arrivals do not all sit on a window's edge
MODEL = "llama-3.1-8b-instant"

# name: (rpm, rpd, tpm, declared in the config)
QUOTAS: dict[str, tuple[int, int, int, bool]] = {
    "alpha": (30, 900, 6000, True),
    "groq1": (10, 500, 4000, True),
    "groq2": (10, 500, 4000, True),
    "delta": (15, 400, 5000, False),
}


class QuotaUpstream:
    """A fake upstream that enforces rpm (rolling 60 s), rpd (UTC day) and tpm."""

    def __init__(self, name: str, rpm: int, rpd: int, tpm: int, clock: ManualClock) -> None:
        self.name, self.rpm, self.rpd, self.tpm, self.clock = name, rpm, rpd, tpm, clock
        self.minute: deque[tuple[float, int]] = deque()
        self.day = -1
        self.day_requests = 0
        self.served = 0
        self.refused = 0
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    def _roll(self, now: float) -> None:
        while self.minute and self.minute[0][0] + 60.0 <= now:
            self.minute.popleft()
        day = int(now // DAY)
        if day != self.day:
            self.day, self.day_requests = day, 0

    def room(self, tokens: int) -> bool:
        """Whether this upstream would accept a request of ``tokens`` tokens now."""
        now = self.clock()
        self._roll(now)
        used = sum(t for _, t in self.minute)
        return (len(self.minute) < self.rpm and self.day_requests < self.rpd
                and used + tokens <= self.tpm)

    def _headers(self, now: float) -> dict[str, str]:
        used = sum(t for _, t in self.minute)
        reset_tokens = (self.minute[0][0] + 60.0 - now) if self.minute else 0.0
        reset_day = (self.day + 1) * DAY - now
        return {
            "x-ratelimit-limit-requests": str(self.rpd),
            "x-ratelimit-remaining-requests": str(max(self.rpd - self.day_requests, 0)),
            "x-ratelimit-reset-requests": format_reset(reset_day),
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-tokens": str(max(self.tpm - used, 0)),
            "x-ratelimit-reset-tokens": format_reset(reset_tokens),
        }

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = sum(len(str(m.get("content", ""))) for m in body["messages"]) // 4 + 4
        completion = int((body.get("max_tokens") or 256) * 0.6)
        tokens = prompt + completion
        now = self.clock()
        self._roll(now)
        used = sum(t for _, t in self.minute)
        what = None
        if self.day_requests >= self.rpd:
            what, limit, wait = "requests per day (RPD)", self.rpd, (self.day + 1) * DAY - now
        elif len(self.minute) >= self.rpm:
            what, limit, wait = ("requests per minute (RPM)", self.rpm,
                                 self.minute[0][0] + 60.0 - now)
        elif used + tokens > self.tpm:
            what, limit, wait = "tokens per minute (TPM)", self.tpm, self.minute[0][0] + 60 - now
        if what is not None:
            self.refused += 1
            headers = self._headers(now)
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            return web.json_response({"error": {
                "message": f"Rate limit reached for model `{MODEL}` in organization "
                           f"`org_sim` service tier `on_demand` on {what}: Limit {limit}, "
                           f"Used {limit}, Requested 1. Please try again in "
                           f"{format_reset(wait)}.",
                "type": "requests" if "requests" in what else "tokens",
                "code": "rate_limit_exceeded"}}, status=429, headers=headers)
        self.minute.append((now, tokens))
        self.day_requests += 1
        self.served += 1
        return web.json_response({
            "id": f"chatcmpl-{self.served}", "object": "chat.completion",
            "created": int(now), "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": tokens}}, headers=self._headers(now))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/openai/v1"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def config(ups: dict[str, QuotaUpstream]) -> dict[str, Any]:
    providers: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for name, up in ups.items():
        rpm, rpd, tpm, declared = QUOTAS[name]
        providers[name] = {"connector": "groq.api.v1",
                           "config": {"base_url": up.base_url, "api_key": f"gsk-{name}-0000"}}
        limits: dict[str, Any] = {"free": True}
        if declared:
            limits.update(rpm=rpm, rpd=rpd, tpm=tpm)
        models[f"{name}.{MODEL}"] = {"limits": limits}
    return {
        "providers": providers,
        "models": models,
        "pools": {"chat": {"models": list(models), "failure_threshold": 1000,
                           "strategy": {"connector": "free-tier", "config": {"paid": "never"}},
                           "retry": {"max_attempts": 8}}},
    }


def load(rng: random.Random, demand: float) -> list[int]:
    """Requests per tick over the day: a diurnal Poisson rate scaled so that the day's demand
    is ``demand`` times the pooled daily quota, a third of it in bursts of 20-60 requests."""
    ticks = int(DAY / TICK)
    pooled = sum(q[1] for q in QUOTAS.values())
    shape = [1.0 + 0.8 * math.sin((i / ticks) * 2 * math.pi - math.pi / 2) for i in range(ticks)]
    # A third of the day's demand arrives in bursts of 20-60 simultaneous requests.
    p_burst = pooled * demand / 3 / 40 / ticks
    bursts = [rng.randint(20, 60) if rng.random() < p_burst else 0 for _ in range(ticks)]
    base = max(pooled * demand - sum(bursts), 0) / sum(shape)
    out = []
    for i in range(ticks):
        lam = base * shape[i]
        # Poisson by inversion (small rates)
        k, p, u = 0, math.exp(-lam), rng.random()
        s = p
        while u > s:
            k += 1
            p *= lam / k
            s += p
        out.append(k + bursts[i])
    return out


async def run(seed: int, demand: float) -> dict[str, Any]:
    rng = random.Random(seed)
    clock = ManualClock(start=timegm(2026, 3, 2))
    ups = {n: QuotaUpstream(n, q[0], q[1], q[2], clock) for n, q in QUOTAS.items()}
    for up in ups.values():
        await up.start()
    mesh = ModelMesh(config(ups), clock=clock)
    await mesh.initialize()
    answered = refused_with_room = refused_spent = 0
    why: Counter[str] = Counter()
    wall = time.perf_counter()
    try:
        for n in load(rng, demand):
            async def one() -> tuple[int, ModelMeshError] | None:
                max_tokens = rng.randint(40, 300)
                req = CompletionRequest(messages=[{"role": "user", "content": "x" * 200}],
                                        max_tokens=max_tokens)
                try:
                    await mesh.router.complete("chat", req)
                except ModelMeshError as error:
                    return 54 + int(max_tokens * 0.6), error
                return None

            if not n:
                clock.advance(TICK)
                continue
            results = await asyncio.gather(*(one() for _ in range(n)))
            # Every failure the caller saw counts: once this burst is over (nothing in
            # flight), would an upstream, by its own count, have answered that request?
            for got in results:
                if got is None:
                    answered += 1
                    continue
                need, exc = got
                if any(up.room(need) for up in ups.values()):
                    refused_with_room += 1
                    reasons = getattr(exc, "reasons", None) or {}
                    why["; ".join(f"{m.split('.')[0]}: {r.split(' (')[0]}"
                                  for m, r in reasons.items()) or str(exc)[:200]] += 1
                else:
                    refused_spent += 1
            clock.advance(TICK)
    finally:
        await mesh.shutdown()
        for up in ups.values():
            await up.stop()
    pooled = sum(q[1] for q in QUOTAS.values())
    served = sum(up.served for up in ups.values())
    upstream_429 = sum(up.refused for up in ups.values())
    return {
        "requests": answered + refused_with_room + refused_spent,
        "answered": answered,
        "refused_with_quota_left": refused_with_room,
        "refused_quota_spent": refused_spent,
        "answered_while_quota_remained": answered / max(answered + refused_with_room, 1),
        "pooled_quota_used": served / pooled,
        "upstream_429s": upstream_429,
        "per_upstream_served": {n: up.served for n, up in ups.items()},
        "wall_seconds": time.perf_counter() - wall,
        "why": why,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--demand", type=float, default=1.6,
                        help="the day's requests as a multiple of the pooled daily quota")
    parser.add_argument("--verbose", action="store_true",
                        help="show why requests were refused while quota remained")
    args = parser.parse_args()
    r = asyncio.run(run(args.seed, args.demand))
    print(f"requests {r['requests']}: answered {r['answered']}, refused with quota left "
          f"{r['refused_with_quota_left']}, refused with every quota spent "
          f"{r['refused_quota_spent']}")
    print(f"answered while quota remained: {r['answered_while_quota_remained']:.2%} "
          f"(goal >= 98%)")
    print(f"pooled free quota used:        {r['pooled_quota_used']:.2%} (goal >= 90%)")
    print(f"upstream 429s absorbed:        {r['upstream_429s']}")
    print(f"served per upstream:           {r['per_upstream_served']}")
    print(f"wall time:                     {r['wall_seconds']:.1f}s")
    if args.verbose:
        for text, n in r["why"].most_common(10):
            print(f"  {n:5d} x {text}")


if __name__ == "__main__":
    main()
