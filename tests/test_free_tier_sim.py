"""The free-tier simulator (benchmarks/free_tier_sim.py) meets the issue's goals: one
simulated day, four enforcing fake upstreams, the default seed (deterministic)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SIM = Path(__file__).resolve().parents[1] / "benchmarks" / "free_tier_sim.py"


async def test_a_simulated_day_uses_the_free_quotas_to_the_last_request() -> None:
    spec = importlib.util.spec_from_file_location("free_tier_sim", SIM)
    assert spec is not None and spec.loader is not None
    sim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sim)
    r = await sim.run(seed=7, demand=1.6)
    assert r["answered_while_quota_remained"] >= 0.98
    assert r["pooled_quota_used"] >= 0.90
    # Every upstream 429 was absorbed: the quota without declared limits (delta) sends some.
    assert r["upstream_429s"] > 0
    assert r["per_upstream_served"] == {"alpha": 900, "groq1": 500, "groq2": 500,
                                        "delta": 400}
