"""Per-chunk translation overhead of the Cohere adapter's ``stream()`` (and, for reference,
the OpenAI adapter's), measured the way ``bench_router.py`` measures the router.

Both fake upstreams (:class:`modelmesh_cohere.fake.FakeCohere` and
:class:`modelmesh_core.fakes.FakeUpstream`) run in a *separate process* and answer one long
stream (``--words`` content events). For each protocol, side A reads the stream through the
adapter (``async for chunk in adapter.stream(...)``: SSE framing, JSON decoding, event
translation, ``CompletionResponse`` construction) and side B reads the same stream with a
bare aiohttp session (read lines, ``orjson.loads`` each ``data:`` payload, nothing else).
Rounds alternate A B / B A after a warm-up. Per-chunk overhead =
(p50 adapter - p50 bare) / events in the stream, in µs.

Run ``python benchmarks/bench_cohere.py`` (``--quick`` for a smoke run, ``--json`` for
machine-readable output). Needs ``modelmesh-cohere`` and ``modelmesh-openai`` installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import orjson
from benchlib import bare_stream, interleaved, pct, serve_fakes, upstream_process

KEY = "bench-key-0000000000"
MESSAGES = [{"role": "user", "content": "Say many words."}]
perf_ns = time.perf_counter_ns


def serve(words: int) -> None:
    """Child process: one FakeCohere and one FakeUpstream answering ``words``-word streams."""
    from modelmesh_cohere.fake import FakeCohere

    from modelmesh_core.fakes import FakeUpstream, Reply

    text = " ".join(f"w{i}" for i in range(words))

    fakes = {"cohere": FakeCohere(default=Reply(text)),
             "openai": FakeUpstream(default=Reply(text), rpm_limit=10**9, tpm_limit=10**12)}
    asyncio.run(serve_fakes(
        fakes, url=lambda name, fake: fake.url if name == "cohere" else fake.base_url))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from modelmesh_cohere import CohereAdapter, CohereConfig
    from modelmesh_openai import OpenAIAdapter, OpenAIConfig
    from modelmesh_openai._catalogue import CONNECTORS

    from modelmesh_core.types import CompletionRequest, Model, ProviderContext, Timeouts

    request = CompletionRequest(messages=MESSAGES, stream=True)
    timeouts = Timeouts()
    results: dict[str, Any] = {"words": args.words, "n": args.n}
    with upstream_process(__file__, ["--serve", str(args.words)]) as urls:
        connector = aiohttp.TCPConnector(limit=10)
        async with aiohttp.ClientSession(connector=connector) as session:
            ctx = ProviderContext(name="bench", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
            cohere = CohereAdapter(ctx, CohereConfig(base_url=urls["cohere"], api_key=KEY))
            openai_conn = next(c for c in CONNECTORS if c.name == "openai.llm.v1")
            openai = OpenAIAdapter(ctx, OpenAIConfig(base_url=urls["openai"], api_key=KEY),
                                   openai_conn)
            sides = {
                "cohere": (cohere, Model(id="bench.command-r-08-2024", provider="bench",
                                         upstream_id="command-r-08-2024", capabilities=()),
                           f"{urls['cohere']}/v2/chat", cohere._stream_headers),
                "openai": (openai, Model(id="bench.gpt-4o-mini", provider="bench",
                                         upstream_id="gpt-4o-mini", capabilities=()),
                           f"{urls['openai']}/chat/completions", openai._stream_headers[0]),
            }
            for name, (adapter, model, url, headers) in sides.items():
                body = adapter._body(model, request, stream=True)
                counted: dict[str, int] = {}

                async def via_adapter(adapter: Any = adapter, model: Any = model,
                                      counted: dict[str, int] = counted) -> float:
                    t0 = perf_ns()
                    n = 0
                    async for _chunk in adapter.stream(model, request, timeouts):
                        n += 1
                    counted["chunks"] = n
                    return (perf_ns() - t0) / 1000.0

                async def via_bare(url: str = url, body: bytes = body,
                                   headers: dict[str, str] = headers,
                                   counted: dict[str, int] = counted) -> float:
                    t0 = perf_ns()
                    counted["events"] = await bare_stream(session, url, body, headers)
                    return (perf_ns() - t0) / 1000.0

                xs, ys = await interleaved(via_adapter, via_bare, args.n, args.warmup)
                events = counted["events"]
                p50a, p50b = pct(xs, 0.5), pct(ys, 0.5)
                diffs = sorted(x - y for x, y in zip(xs, ys, strict=True))
                results[name] = {
                    "events": events,
                    "chunks_yielded": counted["chunks"],
                    "adapter_p50_us": round(p50a, 1),
                    "bare_p50_us": round(p50b, 1),
                    "per_chunk_overhead_us": round((p50a - p50b) / events, 2),
                    "per_chunk_overhead_us_median_diff": round(
                        diffs[len(diffs) // 2] / events, 2),
                }
    return results


def render(res: dict[str, Any]) -> str:
    lines = [f"stream of {res['words']} words, {res['n']} streams per side (interleaved)", ""]
    lines.append(f"{'adapter':<8} {'events':>7} {'adapter p50':>13} {'bare p50':>11} "
                 f"{'µs/chunk':>9} {'(median diff)':>14}")
    for name in ("cohere", "openai"):
        r = res[name]
        lines.append(f"{name:<8} {r['events']:>7} {r['adapter_p50_us']:>11.0f}µs "
                     f"{r['bare_p50_us']:>9.0f}µs {r['per_chunk_overhead_us']:>9.2f} "
                     f"{r['per_chunk_overhead_us_median_diff']:>14.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--words", type=int, default=500, help="content events per stream")
    parser.add_argument("-n", type=int, default=200, help="streams per side")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.quick:
        args.n, args.warmup, args.words = 20, 3, 200
    res = asyncio.run(run(args))
    print(json.dumps(res, indent=2) if args.json else render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
