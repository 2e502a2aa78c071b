"""Per-chunk translation overhead of the Gemini adapter, next to the OpenAI adapter's.

Two measurements, both at concurrency 1:

* **Over HTTP** (the method of ``bench_router.py``): a streamed answer of ``--words`` chunks
  from a fake upstream running in a *separate process* (``FakeGemini`` for Gemini,
  ``FakeUpstream`` for OpenAI), consumed through ``adapter.stream()`` (side A) and by a bare
  aiohttp client that reads the same SSE body line by line and decodes each ``data:`` event
  with orjson (side B), same body, same headers, same session settings. A and B alternate
  (A B, B A, …). Per-chunk overhead = (A p50 - B p50) / chunks per stream; the median of the
  per-round differences is printed as a cross-check.
* **In process**: the same events as bytes, pre-built, fed through the adapter's per-event
  translation (Gemini: ``orjson.loads`` + ``_Stream.event``; OpenAI: ``orjson.loads`` +
  ``OpenAIAdapter._chunk``) vs ``orjson.loads`` alone: the translation cost with no I/O.

Run ``python benchmarks/bench_gemini_chunks.py`` (``--quick`` for a smoke run, ``--json`` for
machine-readable output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

import aiohttp
import orjson
from benchlib import interleaved, pct, serve_fakes, upstream_process

GEMINI_KEY = "AIzaSyBENCH-000000000000000000000000000"
OPENAI_KEY = "sk-bench-0000000000"
MODEL_GEMINI = "gemini-2.5-flash"
MODEL_OPENAI = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
perf_ns = time.perf_counter_ns


def serve(words: int) -> None:
    """Child process: a FakeGemini and a FakeUpstream answering ``words``-chunk streams;
    prints their base URLs, runs until stdin closes."""
    from modelmesh_gemini.fake import FakeGemini

    from modelmesh_core.fakes import FakeUpstream, Reply

    text = " ".join(f"word{i}" for i in range(words))

    fakes = {"gemini": FakeGemini(default=Reply(text)),
             "openai": FakeUpstream(default=Reply(text), rpm_limit=10**9, tpm_limit=10**12)}
    asyncio.run(serve_fakes(fakes))


def _context(session: aiohttp.ClientSession) -> Any:
    from modelmesh_core.types import ProviderContext

    return ProviderContext(name="bench", session=lambda: session, json_dumps=orjson.dumps,
                           json_loads=orjson.loads)


def _adapters(session: aiohttp.ClientSession, urls: dict[str, str]) -> dict[str, Any]:
    from modelmesh_gemini import GeminiAdapter, GeminiConfig
    from modelmesh_openai import OpenAIConfig, modelmesh_providers

    from modelmesh_core.types import CompletionRequest, Model

    openai_spec = next(s for s in modelmesh_providers() if s.name == "openai.llm.v1")
    gemini = GeminiAdapter(_context(session), GeminiConfig(base_url=urls["gemini"],
                                                           api_key=GEMINI_KEY))
    openai = openai_spec.factory(_context(session), OpenAIConfig(base_url=urls["openai"],
                                                                 api_key=OPENAI_KEY))
    caps = ("generation.text-generation.chat-completion",)
    return {
        "gemini": (gemini, Model(id=f"bench.{MODEL_GEMINI}", provider="bench",
                                 upstream_id=MODEL_GEMINI, capabilities=caps)),
        "openai": (openai, Model(id=f"bench.{MODEL_OPENAI}", provider="bench",
                                 upstream_id=MODEL_OPENAI, capabilities=caps)),
        "request": CompletionRequest(messages=MESSAGES, stream=True),
    }


async def over_http(args: argparse.Namespace, urls: dict[str, str]) -> dict[str, Any]:
    from modelmesh_core.types import Timeouts

    timeouts = Timeouts()
    out: dict[str, Any] = {}
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512, limit_per_host=128, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )
    try:
        built = _adapters(session, urls)
        request = built["request"]
        sides = {
            "gemini": (
                f"{urls['gemini']}/models/{MODEL_GEMINI}:streamGenerateContent?alt=sse",
                orjson.dumps({"contents": [{"role": "user", "parts": [
                    {"text": MESSAGES[0]["content"]}]}]}),
                {"Content-Type": "application/json", "Accept": "text/event-stream",
                 "x-goog-api-key": GEMINI_KEY},
            ),
            "openai": (
                f"{urls['openai']}/chat/completions",
                orjson.dumps({"model": MODEL_OPENAI, "messages": MESSAGES, "stream": True,
                              "stream_options": {"include_usage": True}}),
                {"Content-Type": "application/json", "Accept": "text/event-stream",
                 "Authorization": f"Bearer {OPENAI_KEY}"},
            ),
        }
        for name, (url, body, headers) in sides.items():
            adapter, model = built[name]
            counts: list[int] = []
            bare_counts: list[int] = []

            async def via_adapter(adapter: Any = adapter, model: Any = model,
                                  counts: list[int] = counts) -> float:
                t = perf_ns()
                n = 0
                async for chunk in adapter.stream(model, request, timeouts):
                    n += 1 if chunk.content else 0
                dt = (perf_ns() - t) / 1000.0
                counts.append(n)
                return dt

            async def via_bare(url: str = url, body: bytes = body, headers: Any = headers,
                               counts: list[int] = bare_counts) -> float:
                t = perf_ns()
                n = 0
                async with session.post(url, data=body, headers=headers) as resp:
                    async for line in resp.content:
                        if line.startswith(b"data:"):
                            payload = line[5:].strip()
                            if payload != b"[DONE]":
                                orjson.loads(payload)
                                n += 1
                dt = (perf_ns() - t) / 1000.0
                counts.append(n)
                return dt

            a, b = await interleaved(via_adapter, via_bare, args.rounds, args.warmup)
            chunks = statistics.median(counts[args.warmup:])
            diffs = [(x - y) / chunks for x, y in zip(a, b, strict=True)]
            out[name] = {
                "chunks_per_stream": chunks,
                "events_per_stream": statistics.median(bare_counts[args.warmup:]),
                "adapter_p50_us": pct(a, 0.5),
                "bare_p50_us": pct(b, 0.5),
                "per_chunk_overhead_us": (pct(a, 0.5) - pct(b, 0.5)) / chunks,
                "per_chunk_overhead_median_of_diffs_us": statistics.median(diffs),
            }
    finally:
        await session.close()
    return out


def in_process(args: argparse.Namespace) -> dict[str, Any]:
    """Translation only: pre-built event bytes through each adapter's per-event code."""
    from modelmesh_gemini._stream import AnswerState
    from modelmesh_gemini.fake._answer import Answer

    from modelmesh_core.fakes import Reply

    text = " ".join(f"word{i}" for i in range(args.words))
    gemini_events = [orjson.dumps(e) for e in Answer(
        {"contents": [{"parts": [{"text": "hi"}]}]}, Reply(text), MODEL_GEMINI, 1).events()]
    openai_events = [
        orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                      "created": 1700000000, "model": MODEL_OPENAI, "system_fingerprint": "fp",
                      "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                   "finish_reason": None}], "usage": None})
        for piece in text.split(" ")
    ]

    async def measure() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session:
            built = _adapters(session, {"gemini": "http://127.0.0.1:9/v1beta",
                                        "openai": "http://127.0.0.1:9/v1"})
            openai_adapter, _ = built["openai"]
            loads = orjson.loads

            def gemini_translate() -> None:
                state = AnswerState("bench", "bench.m", 0.0)
                for raw in gemini_events:
                    state.event(loads(raw), 1.0)

            def openai_translate() -> None:
                chunk = openai_adapter._chunk
                for raw in openai_events:
                    chunk(loads(raw), "bench.m", 0.0, loop, None)

            def decode(events: list[bytes]) -> None:
                for raw in events:
                    loads(raw)

            def best(fn: Any, *a: Any) -> float:
                times = []
                for _ in range(args.repeat):
                    t = perf_ns()
                    fn(*a)
                    times.append(perf_ns() - t)
                return min(times) / 1000.0

            g, gd = best(gemini_translate), best(decode, gemini_events)
            o, od = best(openai_translate), best(decode, openai_events)
            return {
                "gemini": {"events": len(gemini_events),
                           "decode_and_translate_us_per_chunk": g / len(gemini_events),
                           "decode_only_us_per_chunk": gd / len(gemini_events),
                           "translate_us_per_chunk": (g - gd) / len(gemini_events)},
                "openai": {"events": len(openai_events),
                           "decode_and_translate_us_per_chunk": o / len(openai_events),
                           "decode_only_us_per_chunk": od / len(openai_events),
                           "translate_us_per_chunk": (o - od) / len(openai_events)},
            }

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--words", type=int, default=200, help="chunks per streamed answer")
    parser.add_argument("--rounds", type=int, default=300, help="streams per side over HTTP")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=300, help="in-process repetitions")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    if args.quick:
        args.rounds, args.warmup, args.repeat = 40, 5, 30
    t0 = time.perf_counter()
    results: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "words": args.words, "rounds": args.rounds}
    results["in_process"] = in_process(args)
    with upstream_process(__file__, ["--serve", str(args.words)]) as urls:
        results["over_http"] = asyncio.run(over_http(args, urls))
    results["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"Python {results['python']}, {results['cpus']} CPUs, {args.words} chunks per "
          f"stream, {args.rounds} streams per side")
    print("\nin process (no I/O), µs per chunk    decode+translate   decode only   translate")
    for name, r in results["in_process"].items():
        print(f"  {name:<34} {r['decode_and_translate_us_per_chunk']:>10.2f} "
              f"{r['decode_only_us_per_chunk']:>13.2f} {r['translate_us_per_chunk']:>11.2f}")
    print("\nover HTTP, adapter vs bare aiohttp      adapter p50   bare p50   per-chunk overhead"
          " (p50 diff / median of diffs)")
    for name, r in results["over_http"].items():
        print(f"  {name:<34} {r['adapter_p50_us']:>9.0f}µs {r['bare_p50_us']:>8.0f}µs "
              f"{r['per_chunk_overhead_us']:>8.2f}µs / "
              f"{r['per_chunk_overhead_median_of_diffs_us']:.2f}µs "
              f"({r['chunks_per_stream']:.0f} chunks)")
    print(f"\nwhole run {results['seconds']:.1f}s")


if __name__ == "__main__":
    main()
