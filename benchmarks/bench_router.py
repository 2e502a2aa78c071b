"""Router overhead benchmark: ModelMesh's router against a bare aiohttp call, same upstream.

What it measures (all at concurrency 1, against :class:`modelmesh_core.fakes.FakeUpstream`
running in a *separate process* so the upstream's CPU time is not charged to the client):

* ``complete``: latency of ``mesh.router.complete("chat", request)`` vs a bare
  ``session.post(url, data=orjson.dumps(body))`` + ``orjson.loads(await resp.read())`` with the
  same body and headers. Requests alternate between the two sides (A B, then B A, …) so drift
  of the machine (CPU frequency, other load) hits both equally. The difference of the two
  percentiles is the router's overhead. The router's own ``metadata["overhead_ms"]``
  (router time excluding the provider call) is reported too.
* ``stream`` time to first chunk: ``router.stream`` vs bare aiohttp reading the SSE body up to
  the first ``data:`` event with content (decoded with orjson; the router holds back the
  role-only chunk before it); each stream is read to its end.
* failover: a request whose first candidate answers 500 and whose second answers, vs a
  request straight to the healthy upstream (informative).
* per-chunk stream overhead: a 200-word stream read to its end through ``router.stream`` vs
  bare aiohttp reading and decoding every SSE event; (router - bare) / chunks.
* stream continuation: a stream cut after 20 words and continued (prefill) on a second
  upstream; the time from the last chunk before the break to the first continued chunk,
  against a bare request of that continuation (its time to the first content event).
* RSS of this process after 10,000 requests through the router, and its growth between
  request 1,000 and request 10,000 (a leak check).
* pluggy hook calls made during the measured loops (``HookCaller.__call__`` is wrapped):
  the request path must make none.

Run ``python benchmarks/bench_router.py`` (``--quick`` for a smoke run, ``--json`` for
machine-readable output, ``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import orjson
from benchlib import interleaved, pct, serve_fakes, upstream_process

API_KEY = "sk-bench-0000000000"
MODEL = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello in five words."},
]
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "Authorization": f"Bearer {API_KEY}",
}
STREAM_HEADERS = {**HEADERS, "Accept": "text/event-stream"}
LONG_ANSWER = " ".join(f"word{i}" for i in range(200))
CUT_WORDS = 20

perf_ns = time.perf_counter_ns


# --------------------------------------------------------------------------- the upstream process


def serve_upstreams() -> None:
    """Child process: a healthy and a failing FakeUpstream; prints their ports, runs until
    stdin closes (so it never outlives the benchmark)."""
    from modelmesh_core.fakes import CutStream, Fail, FakeUpstream, Prefill, Reply

    async def main() -> None:
        ok = FakeUpstream(default=Reply("Hello there, how are you today?"), rpm_limit=10**9,
                          tpm_limit=10**12)
        bad = FakeUpstream(default=Fail(500), rpm_limit=10**9, tpm_limit=10**12)
        long = FakeUpstream(default=Reply(LONG_ANSWER), rpm_limit=10**9, tpm_limit=10**12)
        # ``cut`` breaks every stream after CUT_WORDS words of LONG_ANSWER; ``cont`` continues
        # a prefill of it.
        cut = FakeUpstream(default=Reply(LONG_ANSWER), rpm_limit=10**9, tpm_limit=10**12)
        cont = FakeUpstream(default=Reply(LONG_ANSWER), rpm_limit=10**9, tpm_limit=10**12,
                            prefill=Prefill.CONTINUE)
        fakes = {"ok": ok, "bad": bad, "long": long, "cut": cut, "cont": cont}

        def refill() -> None:
            if cut.pending < 1000:
                cut.script(*[CutStream(after_words=CUT_WORDS)] * 10_000)

        await serve_fakes(fakes, tick=refill)

    asyncio.run(main())


# --------------------------------------------------------------------------- measuring helpers


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


class HookCounter:
    """Counts every pluggy hook call (``pm.hook.name(...)``, ``call_extra``,
    ``call_historic``) while active."""

    def __init__(self) -> None:
        self.calls = 0
        self.names: dict[str, int] = {}

    @contextlib.contextmanager
    def counting(self) -> Iterator[HookCounter]:
        from pluggy import HookCaller

        originals = {
            name: getattr(HookCaller, name) for name in ("__call__", "call_extra", "call_historic")
        }

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def counted(caller: Any, *args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                self.names[caller.name] = self.names.get(caller.name, 0) + 1
                return original(caller, *args, **kwargs)

            return counted

        for name, original in originals.items():
            setattr(HookCaller, name, wrap(original))
        try:
            yield self
        finally:
            for name, original in originals.items():
                setattr(HookCaller, name, original)


def hook_counter_works() -> bool:
    """Canary: the counter sees a hook called on a plugin manager of our own."""
    import pluggy

    from modelmesh_core import hookspecs

    pm = pluggy.PluginManager("modelmesh")
    pm.add_hookspecs(hookspecs)
    counter = HookCounter()
    with counter.counting():
        pm.hook.modelmesh_providers()
    return counter.calls == 1


class PathTracer:
    """Records every Python function entered while active (``sys.setprofile``), to show
    what the request path touches: no pluggy, no hook implementation, no config loading."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            key = (frame.f_code.co_filename, frame.f_code.co_name)
            self.seen[key] = self.seen.get(key, 0) + 1

    @contextlib.contextmanager
    def tracing(self) -> Iterator[PathTracer]:
        sys.setprofile(self._profile)
        try:
            yield self
        finally:
            sys.setprofile(None)

    def offenders(self) -> dict[str, list[str]]:
        """Functions entered that the request path must not touch, by kind."""
        sep = os.sep
        kinds: dict[str, list[str]] = {"pluggy": [], "hookimpl": [], "config": []}
        for (filename, name), count in sorted(self.seen.items()):
            where = f"{filename}:{name} x{count}"
            if f"{sep}pluggy{sep}" in filename:
                kinds["pluggy"].append(where)
            elif name.startswith("modelmesh_"):
                kinds["hookimpl"].append(where)
            elif filename.endswith(f"modelmesh_core{sep}config.py") or any(
                f"{sep}{pkg}{sep}" in filename for pkg in ("yaml", "cattrs", "cattr")
            ):
                kinds["config"].append(where)
        return kinds


# --------------------------------------------------------------------------- the benchmark


def mesh_config(urls: dict[str, str]) -> dict[str, Any]:
    """Two pools: ``chat`` (the healthy upstream only) and ``failover`` (failing first)."""
    provider = {"connector": "openai.llm.v1"}
    return {
        "providers": {
            name: {**provider, "config": {"base_url": url, "api_key": API_KEY}}
            for name, url in urls.items()
        },
        "models": {
            **{f"{name}.{MODEL}": {"capabilities": ["chat-completion"]} for name in urls},
            f"cont.{MODEL}": {"capabilities": ["chat-completion"],
                              "features": ["assistant_prefill"]},
        },
        "pools": {
            "chat": {"models": [f"ok.{MODEL}"]},
            "failover": {
                "models": [f"bad.{MODEL}", f"ok.{MODEL}"],
                "strategy": {
                    "connector": "modelmesh.priority-selection.v1",
                    "config": {"provider_priority": ["bad", "ok"]},
                },
                # keep the failing model active so every request fails over
                "failure_threshold": 1_000_000_000,
            },
            "long": {"models": [f"long.{MODEL}"]},
            "continue": {
                "models": [f"cut.{MODEL}", f"cont.{MODEL}"],
                "strategy": {
                    "connector": "modelmesh.priority-selection.v1",
                    "config": {"provider_priority": ["cut", "cont"]},
                },
                "failure_threshold": 1_000_000_000,
            },
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from modelmesh_core import CompletionRequest
    from modelmesh_core.mesh import ModelMesh

    n, warmup, n_stream = args.n, args.warmup, args.n_stream
    n_fail, n_rss = args.n_failover, args.rss
    results: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "n": n,
        "warmup": warmup,
    }
    t_start = time.perf_counter()
    with upstream_process(__file__, ["--serve-upstreams"]) as urls:
        chat_url = urls["ok"] + "/chat/completions"
        body = orjson.dumps({"model": MODEL, "messages": MESSAGES})
        stream_body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "stream": True})
        request = CompletionRequest(messages=MESSAGES)
        stream_request = CompletionRequest(messages=MESSAGES, stream=True)

        mesh = ModelMesh(mesh_config(urls))
        await mesh.initialize()
        bare = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512, limit_per_host=128, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )
        router = mesh.router
        overheads: list[float] = []
        stream_overheads: list[float] = []
        hooks = HookCounter()
        try:
            # ---- complete
            async def via_router() -> float:
                t = perf_ns()
                resp = await router.complete("chat", request)
                dt = (perf_ns() - t) / 1000.0
                overheads.append(resp.metadata["overhead_ms"] * 1000.0)
                return dt

            async def via_bare() -> float:
                t = perf_ns()
                async with bare.post(chat_url, data=body, headers=HEADERS) as resp:
                    payload = orjson.loads(await resp.read())
                dt = (perf_ns() - t) / 1000.0
                assert payload["choices"][0]["message"]["content"]
                return dt

            with hooks.counting():
                r, b = await interleaved(via_router, via_bare, n, warmup)
            overheads = overheads[warmup:]
            results["complete"] = summary(r, b, overheads)

            # ---- stream: time to first chunk
            async def stream_router() -> float:
                t = perf_ns()
                gen = router.stream("chat", stream_request)
                first = await gen.__anext__()
                dt = (perf_ns() - t) / 1000.0
                stream_overheads.append(first.metadata["overhead_ms"] * 1000.0)
                async for _ in gen:
                    pass
                return dt

            async def stream_bare() -> float:
                t = perf_ns()
                dt = 0.0
                async with bare.post(chat_url, data=stream_body, headers=STREAM_HEADERS) as resp:
                    async for line in resp.content:
                        # The first event with content: the router holds back the role-only
                        # chunk before it (a failure before any text fails over invisibly),
                        # so both sides are timed to the first text.
                        if line.startswith(b"data:"):
                            obj = orjson.loads(line[6:])
                            if obj["choices"] and obj["choices"][0]["delta"].get("content"):
                                dt = (perf_ns() - t) / 1000.0
                                break
                    async for _ in resp.content:
                        pass
                return dt

            with hooks.counting():
                r, b = await interleaved(stream_router, stream_bare, n_stream, warmup // 2)
            stream_overheads = stream_overheads[warmup // 2 :]
            results["stream_ttfc"] = summary(r, b, stream_overheads)

            # ---- failover
            async def failover() -> float:
                t = perf_ns()
                resp = await router.complete("failover", request)
                dt = (perf_ns() - t) / 1000.0
                assert resp.metadata["attempts"] == 2, resp.metadata
                return dt

            async def healthy() -> float:
                t = perf_ns()
                await router.complete("chat", request)
                return (perf_ns() - t) / 1000.0

            with hooks.counting():
                f, h = await interleaved(failover, healthy, n_fail, min(warmup, 50))
            results["failover"] = {
                "failover_p50_us": pct(f, 0.5),
                "failover_p99_us": pct(f, 0.99),
                "healthy_p50_us": pct(h, 0.5),
                "healthy_p99_us": pct(h, 0.99),
                "extra_p50_us": pct(f, 0.5) - pct(h, 0.5),
            }

            # ---- per-chunk stream overhead (a long stream read to its end)
            long_url = urls["long"] + "/chat/completions"
            long_body = orjson.dumps({"model": MODEL, "messages": MESSAGES, "stream": True,
                                      "stream_options": {"include_usage": True}})
            chunk_counts: list[int] = []

            async def long_router() -> float:
                t = perf_ns()
                count = 0
                async for _ in router.stream("long", stream_request):
                    count += 1
                chunk_counts.append(count)
                return (perf_ns() - t) / 1000.0

            async def long_bare() -> float:
                t = perf_ns()
                async with bare.post(long_url, data=long_body, headers=STREAM_HEADERS) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data:") and line[6:12] != b"[DONE]":
                            orjson.loads(line[6:])
                return (perf_ns() - t) / 1000.0

            n_long = max(n_stream // 4, 20)
            with hooks.counting():
                r, b = await interleaved(long_router, long_bare, n_long, 10)
            chunks = max(pct(chunk_counts, 0.5), 1)
            paired = [(x - y) / chunks for x, y in zip(r, b, strict=False)]
            results["stream_per_chunk"] = {
                "chunks": chunks,
                "router_p50_us": pct(r, 0.5),
                "bare_p50_us": pct(b, 0.5),
                "per_chunk_p50_us": pct(paired, 0.5),
                "per_chunk_p99_us": pct(paired, 0.99),
            }

            # ---- continuation: from the break to the first continued chunk
            prefill = " ".join(LONG_ANSWER.split()[:CUT_WORDS])
            cont_url = urls["cont"] + "/chat/completions"
            cont_body = orjson.dumps({
                "model": MODEL, "stream": True, "stream_options": {"include_usage": True},
                "messages": [*MESSAGES, {"role": "assistant", "content": prefill}]})

            async def continued() -> float:
                before = after = 0
                async for chunk in router.stream("continue", stream_request):
                    if chunk.provider == "cut":
                        before = perf_ns()
                    elif not after:
                        after = perf_ns()
                assert before and after
                return (after - before) / 1000.0

            async def cont_bare() -> float:
                t = perf_ns()
                dt = 0.0
                async with bare.post(cont_url, data=cont_body, headers=STREAM_HEADERS) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data:") and b'"content":"' in line:
                            obj = orjson.loads(line[6:])
                            if obj["choices"] and obj["choices"][0]["delta"].get("content"):
                                dt = dt or (perf_ns() - t) / 1000.0
                return dt

            n_cont = max(n_stream // 4, 20)
            with hooks.counting():
                g, c = await interleaved(continued, cont_bare, n_cont, 10)
            gaps = [x - y for x, y in zip(g, c, strict=False)]
            results["continuation"] = {
                "gap_p50_us": pct(g, 0.5),
                "gap_p99_us": pct(g, 0.99),
                "bare_ttft_p50_us": pct(c, 0.5),
                "bare_ttft_p99_us": pct(c, 0.99),
                "router_p50_us": pct(gaps, 0.5),
                "router_p99_us": pct(gaps, 0.99),
            }

            # ---- RSS after n_rss requests (a fresh count: requests made before don't count)
            checkpoint = max(n_rss // 10, 1)
            rss: dict[int, int] = {}
            with hooks.counting():
                for i in range(1, n_rss + 1):
                    await router.complete("chat", request)
                    if i == checkpoint or i == n_rss:
                        gc.collect()
                        rss[i] = rss_bytes()
            results["rss"] = {
                "requests": n_rss,
                "checkpoint": checkpoint,
                "rss_at_checkpoint_mb": rss[checkpoint] / 2**20,
                "rss_after_mb": rss[n_rss] / 2**20,
                "growth_mb": (rss[n_rss] - rss[checkpoint]) / 2**20,
            }

            # ---- what the request path touches (traced after timing: tracing is slow)
            tracer = PathTracer()
            with tracer.tracing():
                for _ in range(args.traced):
                    await router.complete("chat", request)
                    async for _chunk in router.stream("chat", stream_request):
                        pass
                    await router.complete("failover", request)
            offenders = tracer.offenders()
            results["request_path"] = {
                "traced_rounds": args.traced,
                "functions_entered": len(tracer.seen),
                **{kind: len(found) for kind, found in offenders.items()},
                "offenders": offenders,
            }
        finally:
            await bare.close()
            await mesh.shutdown()
    results["hook_counter_canary_ok"] = hook_counter_works()
    results["hook_calls"] = hooks.calls
    results["hook_names"] = hooks.names
    results["seconds"] = time.perf_counter() - t_start
    return results


def summary(router: list[float], bare: list[float], self_measured: list[float]) -> dict[str, float]:
    """Percentiles of both sides, their difference, and the router's self-measured overhead."""
    out = {
        "router_p50_us": pct(router, 0.5),
        "router_p99_us": pct(router, 0.99),
        "bare_p50_us": pct(bare, 0.5),
        "bare_p99_us": pct(bare, 0.99),
    }
    out["overhead_p50_us"] = out["router_p50_us"] - out["bare_p50_us"]
    out["overhead_p99_us"] = out["router_p99_us"] - out["bare_p99_us"]
    # the median of per-round differences is steadier than a difference of medians
    paired = [x - y for x, y in zip(router, bare, strict=False)]
    out["paired_diff_p50_us"] = pct(paired, 0.5)
    out["self_overhead_p50_us"] = pct(self_measured, 0.5)
    out["self_overhead_p99_us"] = pct(self_measured, 0.99)
    return out


# --------------------------------------------------------------------------- output


def render(res: dict[str, Any]) -> str:
    """A plain-text report of :func:`run`'s results."""
    lines = [
        f"ModelMesh router benchmark — Python {res['python']}, {res['cpus']} CPUs, "
        f"{res['n']} requests per side (warm-up {res['warmup']}), concurrency 1, "
        "upstream in a separate process",
        "",
        f"{'':34}{'p50 µs':>10}{'p99 µs':>10}",
    ]

    def row(label: str, p50: float, p99: float | None = None) -> None:
        p99s = f"{p99:10.1f}" if p99 is not None else f"{'':10}"
        lines.append(f"{label:34}{p50:10.1f}{p99s}")

    for key, title in (("complete", "complete"), ("stream_ttfc", "stream time-to-first-chunk")):
        s = res[key]
        lines.append(title)
        row("  bare aiohttp", s["bare_p50_us"], s["bare_p99_us"])
        row("  through the router", s["router_p50_us"], s["router_p99_us"])
        row("  router overhead (difference)", s["overhead_p50_us"], s["overhead_p99_us"])
        row("  median of paired differences", s["paired_diff_p50_us"])
        row("  router self-measured overhead", s["self_overhead_p50_us"], s["self_overhead_p99_us"])
    pc = res["stream_per_chunk"]
    lines.append(f"stream read to its end ({pc['chunks']:.0f} chunks)")
    row("  bare aiohttp (whole stream)", pc["bare_p50_us"])
    row("  through the router (whole stream)", pc["router_p50_us"])
    row("  router overhead per chunk", pc["per_chunk_p50_us"], pc["per_chunk_p99_us"])
    co = res["continuation"]
    lines.append(f"stream cut after {CUT_WORDS} words, continued (prefill) on another upstream")
    row("  break → first continued chunk", co["gap_p50_us"], co["gap_p99_us"])
    row("  bare: continuation's first token", co["bare_ttft_p50_us"], co["bare_ttft_p99_us"])
    row("  router time (paired difference)", co["router_p50_us"], co["router_p99_us"])
    fo = res["failover"]
    lines.append("failover (500 from A, B answers)")
    row("  healthy request", fo["healthy_p50_us"], fo["healthy_p99_us"])
    row("  failed-over request", fo["failover_p50_us"], fo["failover_p99_us"])
    row("  cost of one failover", fo["extra_p50_us"])
    rss = res["rss"]
    rp = res["request_path"]
    lines += [
        "",
        f"RSS after {rss['requests']:,} router requests: {rss['rss_after_mb']:.1f} MiB "
        f"(growth from request {rss['checkpoint']:,} to {rss['requests']:,}: "
        f"{rss['growth_mb']:+.2f} MiB)",
        f"pluggy hook calls during the measured loops: {res['hook_calls']}"
        + (f" {res['hook_names']}" if res["hook_calls"] else "")
        + ("" if res["hook_counter_canary_ok"] else " (WARNING: the counter's canary failed)"),
        f"request path ({rp['traced_rounds']} traced complete+stream+failover rounds, "
        f"{rp['functions_entered']} distinct functions): pluggy {rp['pluggy']}, "
        f"hook implementations {rp['hookimpl']}, config loading {rp['config']}",
        *(f"  ! {kind}: {where}" for kind, found in rp["offenders"].items() for where in found),
        f"total time: {res['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="requests per side (complete)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up rounds per side")
    parser.add_argument("--n-stream", type=int, default=None, help="streams per side (= -n)")
    parser.add_argument("--n-failover", type=int, default=500, help="failover rounds")
    parser.add_argument("--rss", type=int, default=10_000, help="requests for the RSS check")
    parser.add_argument("--traced", type=int, default=20,
                        help="rounds traced with sys.setprofile for the request-path check")
    parser.add_argument("--quick", action="store_true", help="smoke run with small counts")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if the request path called pluggy, a hook "
                        "implementation or config loading")
    parser.add_argument("--serve-upstreams", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstreams:
        serve_upstreams()
        return 0
    if args.quick:
        args.n, args.warmup, args.n_failover, args.rss = 300, 50, 100, 2000
    if args.n_stream is None:
        args.n_stream = args.n
    res = asyncio.run(run(args))
    print(json.dumps(res, indent=2) if args.json else render(res))
    rp = res["request_path"]
    if args.strict and (res["hook_calls"] or rp["pluggy"] or rp["hookimpl"] or rp["config"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
