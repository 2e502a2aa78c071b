"""The scaffolding the chunk and overhead benchmarks share.

* :func:`serve_fakes` — the child process's side: start fake upstreams, print their URLs as
  one JSON line, forget their recorded calls every second (the benchmark must not measure
  that growth), run until stdin closes (so the child never outlives the benchmark);
* :func:`upstream_process` — the benchmark's side: run a script's ``--serve`` mode in a
  subprocess (the upstream's CPU time is not charged to the measured process) and yield the
  URLs it printed;
* :func:`pct`, :func:`interleaved` (A B, then B A, … so drift hits both sides equally) and
  :func:`bare_stream` (the bare-aiohttp side of a stream measurement).

Imported by the benchmark scripts as ``import benchlib`` (they run as
``python benchmarks/bench_x.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

__all__ = ["bare_stream", "interleaved", "pct", "serve_fakes", "upstream_process"]


async def serve_fakes(fakes: Mapping[str, Any], *,
                      url: Callable[[str, Any], str] = lambda name, fake: fake.base_url,
                      tick: Callable[[], None] | None = None) -> None:
    """Start ``fakes``, print ``{name: url(name, fake)}``, then every second forget their
    calls (and call ``tick``) until stdin closes; stop them."""
    for fake in fakes.values():
        await fake.start()
    if tick is not None:
        tick()

    async def trim() -> None:
        while True:
            await asyncio.sleep(1.0)
            for fake in fakes.values():
                fake.calls.clear()
            if tick is not None:
                tick()

    trimmer = asyncio.get_running_loop().create_task(trim())
    print(json.dumps({name: url(name, fake) for name, fake in fakes.items()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    trimmer.cancel()
    for fake in fakes.values():
        await fake.stop()


@contextlib.contextmanager
def upstream_process(script: str, args: Sequence[str]) -> Iterator[dict[str, str]]:
    """Run ``python script *args`` (its serve mode); yield the JSON object it prints first."""
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the upstream process did not start (see its stderr above)")
        yield json.loads(line)
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank on sorted data."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = min(len(data) - 1, max(0, round(q * (len(data) - 1))))
    return data[k]


async def interleaved(
    a: Callable[[], Awaitable[float]], b: Callable[[], Awaitable[float]], n: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` alternately (A B, B A, …) ``n`` times each; their results."""
    for _ in range(warmup):
        await a()
        await b()
    xs: list[float] = []
    ys: list[float] = []
    for i in range(n):
        if i & 1:
            ys.append(await b())
            xs.append(await a())
        else:
            xs.append(await a())
            ys.append(await b())
    return xs, ys


async def bare_stream(session: aiohttp.ClientSession, url: str, body: bytes,
                      headers: dict[str, str]) -> int:
    """Read an SSE body: split lines, decode every ``data:`` payload; return the event count."""
    events = 0
    async with session.post(url, data=body, headers=headers) as resp:
        async for line in resp.content:
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload != b"[DONE]":
                    orjson.loads(payload)
                    events += 1
    return events
