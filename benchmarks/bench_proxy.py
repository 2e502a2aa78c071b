"""Benchmark: what the ModelMesh proxy adds in front of an OpenAI-compatible upstream.

Separate processes, so no one steals the others' GIL: the FakeUpstreams, the proxy started
with the real CLI (``modelmesh serve``), a bare aiohttp pass-through proxy (read the body, one
``ClientSession`` call upstream, write the body back; no parsing) as the floor any Python
proxy stands on, and this client (raw aiohttp, lean on purpose).

Measured:

* added latency at concurrency 1: proxy vs direct to the fake upstream, interleaved in
  rounds (direct and proxied batches alternate), median per round, median of rounds;
* throughput and p50 / p99 latency at concurrency 32 and 128: direct, the pass-through and
  the proxy, with the proxy's ratio to the pass-through (req/s and p99);
* streaming time-to-first-chunk overhead (interleaved like the latency test), and the time
  the proxy adds per streamed chunk (a 200-chunk stream against a short one, both direct and
  proxied: the difference of differences, per extra chunk);
* with uvloop installed, the proxy's throughput on the plain asyncio loop as well (what
  uvloop gives);
* the proxy process's RSS after the run.

The proxy and the pass-through run on the same event loop (``--loop``; ``auto`` is uvloop
when installed).

Run: ``python benchmarks/bench_proxy.py`` (about a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
BODY = orjson.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
DIRECT_BODY = orjson.dumps({"model": "gpt-4o-mini",
                            "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = orjson.dumps({"model": "chat", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]})
DIRECT_STREAM_BODY = orjson.dumps({"model": "gpt-4o-mini", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]})
LONG_STREAM_BODY = orjson.dumps({"model": "long", "stream": True,
                                 "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-0123456789"}


# --------------------------------------------------------------------------- child roles


LONG_WORDS = 200


async def _upstream_role() -> None:
    from modelmesh_core.fakes import FakeUpstream, Reply

    # limits high enough that the ledger never predicts exhaustion during the run
    long = Reply(content=" ".join(["word"] * LONG_WORDS))
    async with FakeUpstream(rpm_limit=10**9, tpm_limit=10**12) as fake, \
            FakeUpstream(rpm_limit=10**9, tpm_limit=10**12, default=long) as long_fake:
        print(fake.port, long_fake.port, flush=True)
        while True:  # forget recorded calls so the upstream does not grow during the run
            await asyncio.sleep(5)
            fake.calls.clear()
            long_fake.calls.clear()


def _passthrough_role(upstream: str, port: int) -> None:
    """A bare aiohttp pass-through proxy: read the body, call upstream, write the body."""
    from aiohttp import web

    async def make_app() -> web.Application:
        app = web.Application()
        session_key = web.AppKey("session", aiohttp.ClientSession)

        async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
            app[session_key] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=128))
            yield
            await app[session_key].close()

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {"Authorization": request.headers.get("Authorization", ""),
                       "Content-Type": "application/json"}
            async with request.app[session_key].post(upstream, data=body,
                                                     headers=headers) as up:
                if up.content_type == "text/event-stream":
                    resp = web.StreamResponse(status=up.status, headers={
                        "Content-Type": "text/event-stream"})
                    await resp.prepare(request)
                    async for data in up.content.iter_any():
                        await resp.write(data)
                    await resp.write_eof()
                    return resp
                data = await up.read()
                return web.Response(body=data, status=up.status,
                                    content_type="application/json")

        app.cleanup_ctx.append(session_ctx)
        app.router.add_post("/v1/chat/completions", handle)
        app.router.add_get("/health", lambda r: _ok())
        return app

    async def _ok() -> web.Response:
        return web.Response(text="ok")

    from modelmesh_core.server.app import _loop_factory

    loop = _loop_factory(os.environ.get("BENCH_LOOP", "auto"))()
    web.run_app(make_app(), host="127.0.0.1", port=port, print=None, access_log=None,
                loop=loop)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# --------------------------------------------------------------------------- measurements


async def _one(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as r:
        data = await r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status} from {url}: {data[:300]!r}")
    return (time.perf_counter() - t0) * 1000


async def _first_chunk(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status} from {url}")
        async for line in r.content:
            if line.startswith(b"data: "):
                ttfc = (time.perf_counter() - t0) * 1000
                break
        else:
            raise RuntimeError("stream without data")
        await r.read()
    return ttfc


async def _interleaved(session: aiohttp.ClientSession, fn, pairs, rounds: int, n: int
                       ) -> tuple[float, float, float]:
    """Median of per-round medians: (direct, proxied, added)."""
    direct_meds, proxy_meds, added = [], [], []
    for r in range(rounds):
        meds = {}
        order = pairs if r % 2 == 0 else pairs[::-1]
        for name, url, body in order:
            samples = [await fn(session, url, body) for _ in range(n)]
            meds[name] = statistics.median(samples)
        direct_meds.append(meds["direct"])
        proxy_meds.append(meds["proxy"])
        added.append(meds["proxy"] - meds["direct"])
    return (statistics.median(direct_meds), statistics.median(proxy_meds),
            statistics.median(added))


async def _stream_time(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status} from {url}")
        await r.read()
    return (time.perf_counter() - t0) * 1000


async def _per_chunk(session: aiohttp.ClientSession, direct: str, long_direct: str,
                     proxied: str, rounds: int, n: int) -> float:
    """Microseconds the proxy adds per streamed chunk (difference of differences)."""
    bodies = {"short": (direct, DIRECT_STREAM_BODY, proxied, STREAM_BODY),
              "long": (long_direct, DIRECT_STREAM_BODY, proxied, LONG_STREAM_BODY)}
    per: list[float] = []
    for r in range(rounds):
        added = {}
        for kind in (("short", "long") if r % 2 == 0 else ("long", "short")):
            d_url, d_body, p_url, p_body = bodies[kind]
            d = statistics.median([await _stream_time(session, d_url, d_body)
                                   for _ in range(n)])
            p = statistics.median([await _stream_time(session, p_url, p_body)
                                   for _ in range(n)])
            added[kind] = p - d
        per.append((added["long"] - added["short"]) * 1000 / (LONG_WORDS - 5))
    return statistics.median(per)


async def _load(url: str, body: bytes, concurrency: int, total: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) for ``total`` requests at ``concurrency``."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    remaining = total
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(concurrency, 50)):  # warm the connections
            await _one(session, url, body)

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                latencies.append(await _one(session, url, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return len(latencies) / elapsed, p(0.5), p(0.99)


def _start_proxy(config: Path, port: int, loop: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modelmesh_core.cli", "serve", "-c", str(config),
         "--port", str(port), "--loop", loop], stdout=subprocess.DEVNULL, env=_env())


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


async def _bench(args: argparse.Namespace) -> int:
    import psutil

    loop = args.loop
    if loop == "auto":
        loop = "uvloop" if _has_uvloop() else "asyncio"
    upstream = subprocess.Popen([sys.executable, __file__, "--role", "upstream"],
                                stdout=subprocess.PIPE, text=True, env=_env())
    procs: list[subprocess.Popen[str]] = []
    tmp = tempfile.TemporaryDirectory()
    try:
        assert upstream.stdout is not None
        up_port, long_port = (int(p) for p in upstream.stdout.readline().split())
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        long_direct = f"http://127.0.0.1:{long_port}/v1/chat/completions"
        port = _free_port()
        config = Path(tmp.name) / "bench.yaml"
        config.write_text(
            "providers:\n"
            "  fake:\n"
            "    connector: openai.llm.v1\n"
            f"    config: {{base_url: 'http://127.0.0.1:{up_port}/v1', "
            "api_key: sk-bench-0123456789}\n"
            "  longfake:\n"
            "    connector: openai.llm.v1\n"
            f"    config: {{base_url: 'http://127.0.0.1:{long_port}/v1', "
            "api_key: sk-bench-0123456789}\n"
            "models:\n  fake.gpt-4o-mini: {}\n  longfake.gpt-4o-mini: {}\n"
            "pools:\n  chat: {models: [fake.gpt-4o-mini]}\n"
            "  long: {models: [longfake.gpt-4o-mini]}\n"
            "discovery: {auto_detect: false}\n")
        proxy = _start_proxy(config, port, loop)
        procs.append(proxy)
        pt_port = _free_port()
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--role", "passthrough", "--upstream", direct,
             "--pt-port", str(pt_port)], env={**_env(), "BENCH_LOOP": loop}))
        other = None
        if loop == "uvloop":
            other_port = _free_port()
            procs.append(_start_proxy(config, other_port, "asyncio"))
            other = f"http://127.0.0.1:{other_port}/v1/chat/completions"
            await _wait(f"http://127.0.0.1:{other_port}/health")
        base = f"http://127.0.0.1:{port}"
        await _wait(base + "/health")
        passthrough = f"http://127.0.0.1:{pt_port}/v1/chat/completions"
        await _wait(f"http://127.0.0.1:{pt_port}/health")
        proxied = base + "/v1/chat/completions"
        rows: list[tuple[str, str, str, str]] = []

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            for _ in range(100):  # warm-up both paths
                await _one(s, direct, DIRECT_BODY)
                await _one(s, proxied, BODY)
            d, p, added = await _interleaved(
                s, _one, [("direct", direct, DIRECT_BODY), ("proxy", proxied, BODY)],
                args.rounds, args.n)
            rows.append(("latency, concurrency 1 (median of round medians)",
                         f"{d:.3f} ms", f"{p:.3f} ms", f"+{added:.3f} ms"))
            await _one(s, passthrough, DIRECT_BODY)
            d, p, added = await _interleaved(
                s, _one, [("direct", direct, DIRECT_BODY),
                          ("proxy", passthrough, DIRECT_BODY)],
                args.rounds, args.n)
            rows.append(("  bare aiohttp pass-through, concurrency 1", "", f"{p:.3f} ms",
                         f"+{added:.3f} ms (the floor)"))
            d, p, added = await _interleaved(
                s, _first_chunk, [("direct", direct, DIRECT_STREAM_BODY),
                                  ("proxy", proxied, STREAM_BODY)],
                args.rounds, max(20, args.n // 2))
            rows.append(("stream time to first chunk, concurrency 1",
                         f"{d:.3f} ms", f"{p:.3f} ms", f"+{added:.3f} ms"))
            per_chunk = await _per_chunk(s, direct, long_direct, proxied, args.rounds,
                                         max(10, args.n // 10))
            rows.append(("streaming, added per chunk (200-chunk stream)", "", "",
                         f"+{per_chunk:.1f} µs"))

        for conc in (32, 128):
            rd, d50, d99 = await _load(direct, DIRECT_BODY, conc, args.total)
            rt, t50, t99 = await _load(passthrough, DIRECT_BODY, conc, args.total)
            rp, p50, p99 = await _load(proxied, BODY, conc, args.total)
            rows.append((f"throughput, concurrency {conc}", f"{rd:,.0f} req/s",
                         f"{rp:,.0f} req/s", f"{100 * rp / rd:.0f}% of direct"))
            rows.append((f"  bare aiohttp pass-through, concurrency {conc}", "",
                         f"{rt:,.0f} req/s", f"proxy = {rp / rt:.2f}x pass-through"))
            rows.append((f"p50 / p99, concurrency {conc}", f"{d50:.1f} / {d99:.1f} ms",
                         f"{p50:.1f} / {p99:.1f} ms", f"p99 = {p99 / t99:.2f}x pass-through"))
            rows.append((f"  pass-through p50 / p99, concurrency {conc}", "",
                         f"{t50:.1f} / {t99:.1f} ms", ""))
            if other is not None and conc == 32:
                ra, _, _ = await _load(other, BODY, conc, args.total)
                rows.append(("  proxy on the asyncio loop, concurrency 32", "",
                             f"{ra:,.0f} req/s", f"uvloop gives {rp / ra:.2f}x"))

        rss = psutil.Process(proxy.pid).memory_info().rss / 2**20
        rows.append(("proxy RSS after the run", "", f"{rss:.1f} MiB", ""))

        widths = [max(len(r[i]) for r in [*rows, ("measure", "direct", "proxy", "added")])
                  for i in range(4)]
        head = ("measure", "direct", "proxy", "added")
        print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        print(f"\n{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, loop {loop}; "
              f"rounds={args.rounds}, n={args.n}, total per load run={args.total}")
        return 0
    finally:
        for proc in (*procs, upstream):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if upstream.stdout is not None:
            upstream.stdout.close()
        tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one of its child roles)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["upstream", "passthrough"], help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--pt-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--n", type=int, default=200, help="requests per batch in a round")
    parser.add_argument("--total", type=int, default=3000,
                        help="requests per throughput run")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                        help="event loop of the proxy and the pass-through")
    parser.add_argument("--quick", action="store_true", help="small numbers (smoke run)")
    args = parser.parse_args(argv)
    if args.role == "upstream":
        asyncio.run(_upstream_role())
        return 0
    if args.role == "passthrough":
        _passthrough_role(args.upstream, args.pt_port)
        return 0
    if args.quick:
        args.rounds, args.n, args.total = 3, 30, 300
    return asyncio.run(_bench(args))


if __name__ == "__main__":
    sys.exit(main())
