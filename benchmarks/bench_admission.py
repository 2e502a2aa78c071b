"""Admission cost per request with the memory, SQLite and Redis ledgers.

One admission checks and reserves five counters (provider rpm / tpm / rpd, model rpd, a
global daily budget), the way a configured candidate does in ``AttemptLoop.next``; the
settlement replaces the estimate with the real usage. Limits are high so that every
admission succeeds.

    python benchmarks/bench_admission.py [--n 5000] [--redis-url redis://127.0.0.1:6379/0]

Without ``--redis-url`` a ``redis-server`` on a free port is started when one is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from modelmesh_core.config import BudgetConfig
from modelmesh_core.events import EventEmitter
from modelmesh_core.ledger import Ledger, MemoryLedger
from modelmesh_core.types import (
    CompletionRequest,
    Limits,
    Model,
    PipelineRequest,
    Pricing,
    Provider,
)

BIG = 10**12


def ledger(backend: Any) -> tuple[Ledger, Model, PipelineRequest]:
    provider = Provider(name="p", connector="bench", adapter=None,  # type: ignore[arg-type]
                        limits=Limits(rpm=BIG, tpm=BIG, rpd=BIG))
    model = Model(id="p.m", provider="p", upstream_id="m", capabilities=("chat",),
                  pricing=Pricing(input=1.0, output=2.0), limits=Limits(rpd=BIG))
    led = Ledger(backend=backend, providers={"p": provider}, global_budget=BudgetConfig(
        daily=float(BIG)), provider_budgets={}, pool_budgets={}, events=EventEmitter(time.time),
        clock=time.time)
    preq = PipelineRequest(capability="chat", estimated_tokens=50, request=CompletionRequest(
        messages=[{"role": "user", "content": "hi"}], max_tokens=100))
    return led, model, preq


async def measure(name: str, backend: Any, n: int) -> dict[str, float]:
    led, model, preq = ledger(backend)
    assert len(led.plan(None, model).counters) == 5
    for _ in range(50):  # warm up (scripts loaded, pages cached)
        r = await led.admit_async(None, model, preq)
        led.settle(r, 140, 0.0002)  # type: ignore[arg-type]
    t = time.perf_counter()
    for _ in range(n):
        await led.admit_async(None, model, preq)
    admit = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        r = await led.admit_async(None, model, preq)
        led.settle(r, 140, 0.0002)  # type: ignore[arg-type]
    both = (time.perf_counter() - t) / n * 1e6
    # Concurrent admissions (32 at a time), as a busy proxy does them.
    t = time.perf_counter()

    async def worker(k: int) -> None:
        for _ in range(k):
            await led.admit_async(None, model, preq)

    await asyncio.gather(*(worker(n // 32) for _ in range(32)))
    concurrent = (time.perf_counter() - t) / (n // 32 * 32) * 1e6
    print(f"{name:8s} admit {admit:8.1f} us   admit+settle {both:8.1f} us   "
          f"32 concurrent: {concurrent:8.1f} us/admission")
    return {"admit": admit, "admit_settle": both, "concurrent": concurrent}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--redis-url")
    args = ap.parse_args()
    await measure("memory", MemoryLedger(), args.n * 4)

    from modelmesh_core.builtin.sqlite_store import SQLiteConfig, SQLiteStateStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStateStore(SQLiteConfig(path=str(Path(tmp) / "bench.db")))
        await store.load()
        await measure("sqlite", store.ledger_backend, args.n)
        await store.close()

    url, proc = args.redis_url, None
    if url is None and shutil.which("redis-server"):
        port = free_port()
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        await asyncio.sleep(0.5)
    if url is None:
        print("redis    skipped (no redis-server, no --redis-url)")
        return
    from modelmesh_core.builtin.redis_store import RedisConfig, RedisStateStore

    try:
        rstore = RedisStateStore(RedisConfig(url=url, prefix=f"bench{time.time_ns()}:"))
        await rstore.load()
        await measure("redis", rstore.ledger_backend, args.n)
        await rstore.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
