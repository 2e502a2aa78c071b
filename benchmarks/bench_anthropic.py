"""Per-chunk streaming overhead of the Anthropic adapter, measured like ``bench_router.py``.

The fake upstreams (:class:`modelmesh_anthropic.fake.FakeAnthropic` and, for reference,
:class:`modelmesh_core.fakes.FakeUpstream`) run in a *separate process*, each answering the
same text as a stream of ``--words`` text deltas. For each protocol, at concurrency 1, rounds
alternate (A B, then B A, …):

* A: ``adapter.stream(model, request, timeouts)`` read to its end (``AnthropicAdapter`` /
  ``OpenAIAdapter``: request translation, SSE parsing, event translation into
  ``CompletionResponse`` chunks);
* B: a bare ``aiohttp`` POST of the same body and headers, reading the SSE body line by line
  and decoding every ``data:`` line with orjson (what any client must do anyway).

Per-chunk overhead = (p50 of A - p50 of B) / chunks the adapter yielded. A third figure is
CPU only: the Anthropic event translator fed pre-decoded events in a loop (µs per event).

Run ``python benchmarks/bench_anthropic.py`` (``--quick`` for a smoke run, ``--json``).
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
from benchlib import bare_stream, pct, serve_fakes, upstream_process

KEY = "sk-bench-0000000000"
perf_ns = time.perf_counter_ns


def text(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words))


def serve(words: int) -> None:
    """Child process: both fakes streaming ``words`` deltas; runs until stdin closes."""
    from modelmesh_anthropic.fake import FakeAnthropic
    from modelmesh_anthropic.fake import Reply as AReply

    from modelmesh_core.fakes import FakeUpstream, Reply

    fakes = {"anthropic": FakeAnthropic(default=AReply(text(words)), rpm_limit=10**9),
             "openai": FakeUpstream(default=Reply(text(words)), rpm_limit=10**9,
                                    tpm_limit=10**12)}
    asyncio.run(serve_fakes(fakes))


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> dict[str, Any]:
    from modelmesh_anthropic import AnthropicAdapter, AnthropicConfig
    from modelmesh_openai import OpenAIConfig, modelmesh_providers

    from modelmesh_core.types import CompletionRequest, Model, ProviderContext, Timeouts

    connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300)
    out: dict[str, Any] = {"words": args.words, "n": args.n}
    async with aiohttp.ClientSession(connector=connector) as session:
        context = ProviderContext(name="bench", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        timeouts = Timeouts()
        request = CompletionRequest(messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Count words."}], max_tokens=1024, stream=True)
        claude = Model(id="bench.claude-haiku-4-5", provider="bench",
                       upstream_id="claude-haiku-4-5", capabilities=("x",))
        gpt = Model(id="bench.gpt-4o-mini", provider="bench", upstream_id="gpt-4o-mini",
                    capabilities=("x",))
        anthropic = AnthropicAdapter(context, AnthropicConfig(base_url=urls["anthropic"],
                                                              api_key=KEY))
        openai_spec = next(s for s in modelmesh_providers() if s.name == "openai.llm.v1")
        openai = openai_spec.factory(context, OpenAIConfig(base_url=urls["openai"],
                                                           api_key=KEY))
        a_body = orjson.dumps({"model": "claude-haiku-4-5", "max_tokens": 1024,
                               "system": "You are terse.",
                               "messages": [{"role": "user", "content": "Count words."}],
                               "stream": True})
        a_headers = {"content-type": "application/json", "accept": "text/event-stream",
                     "anthropic-version": "2023-06-01", "x-api-key": KEY}
        o_body = orjson.dumps({"model": "gpt-4o-mini", "messages": request.messages,
                               "max_tokens": 1024, "stream": True,
                               "stream_options": {"include_usage": True}})
        o_headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                     "Authorization": f"Bearer {KEY}"}
        sides = {
            "anthropic": (anthropic, claude, f"{urls['anthropic']}/v1/messages", a_body,
                          a_headers),
            "openai": (openai, gpt, f"{urls['openai']}/v1/chat/completions", o_body, o_headers),
        }
        for name, (adapter, model, url, body, headers) in sides.items():
            chunks = 0

            async def via_adapter(adapter: Any = adapter, model: Model = model) -> float:
                nonlocal chunks
                t = perf_ns()
                count = 0
                async for _ in adapter.stream(model, request, timeouts):
                    count += 1
                chunks = count
                return (perf_ns() - t) / 1000.0

            async def via_bare(url: str = url, body: bytes = body,
                               headers: dict[str, str] = headers) -> float:
                t = perf_ns()
                await bare_stream(session, url, body, headers)
                return (perf_ns() - t) / 1000.0

            for _ in range(args.warmup):
                await via_adapter()
                await via_bare()
            a_times: list[float] = []
            b_times: list[float] = []
            for i in range(args.n):
                if i % 2:
                    b_times.append(await via_bare())
                    a_times.append(await via_adapter())
                else:
                    a_times.append(await via_adapter())
                    b_times.append(await via_bare())
            diffs = [a - b for a, b in zip(a_times, b_times, strict=True)]
            out[name] = {
                "chunks": chunks,
                "adapter_p50_us": pct(a_times, 0.5),
                "bare_p50_us": pct(b_times, 0.5),
                "per_chunk_us": (pct(a_times, 0.5) - pct(b_times, 0.5)) / chunks,
                "per_chunk_us_median_of_diffs": pct(diffs, 0.5) / chunks,
            }
    out["anthropic_translate_cpu_us_per_event"] = translate_cpu(args.words)
    return out


def translate_cpu(words: int) -> float:
    """The event translator alone: pre-decoded events, no I/O."""
    from modelmesh_anthropic._adapter import _StreamState
    from modelmesh_anthropic.fake import FakeAnthropic, Reply, _stream_events

    fake = FakeAnthropic()
    message = fake._message({"model": "claude-haiku-4-5", "messages": []}, Reply(text(words)))
    events = [{k: v for k, v in e.items() if k != "_delay"}
              for e in _stream_events(message, Reply(text(words)))]

    class _Adapter:
        name = "bench"

    loop = asyncio.new_event_loop()
    try:
        rounds = 200
        t = perf_ns()
        for _ in range(rounds):
            state = _StreamState(_Adapter(), "bench.claude", None, None, 0.0, loop)  # type: ignore[arg-type]
            translate = state.translate
            for event in events:
                translate(event["type"], event)
        return (perf_ns() - t) / 1000.0 / (rounds * len(events))
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=400, help="streams per side (default 400)")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--words", type=int, default=200, help="text deltas per stream")
    parser.add_argument("--quick", action="store_true", help="-n 60 --warmup 10")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.quick:
        args.n, args.warmup = 60, 10
    with upstream_process(__file__, ["--serve", str(args.words)]) as urls:
        res = asyncio.run(measure(args, urls))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{args.n} streams per side, {args.words} text deltas each, concurrency 1")
    for name in ("anthropic", "openai"):
        r = res[name]
        print(f"{name:9} adapter p50 {r['adapter_p50_us']:8.0f} us  bare p50 "
              f"{r['bare_p50_us']:8.0f} us  chunks {r['chunks']:4d}  per chunk "
              f"{r['per_chunk_us']:5.2f} us (median of diffs "
              f"{r['per_chunk_us_median_of_diffs']:5.2f})")
    print(f"anthropic event translation alone: "
          f"{res['anthropic_translate_cpu_us_per_event']:.2f} us per event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
