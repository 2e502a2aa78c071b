"""Request-path cost of OpenTelemetry tracing: ``router.complete`` with tracing off and on.

Two meshes in one process, each with one in-process mock provider (no HTTP, so the numbers
are the router's own time): one with ``observability.tracing`` off, one with it on
(``export: global`` into an SDK ``TracerProvider`` whose ``BatchSpanProcessor`` feeds an
exporter that drops the spans, so exporting costs nothing on the measured path; with
``--metrics`` the three OTel instruments are recorded too, into an in-memory reader).
Requests alternate between the two meshes so machine drift hits both alike; each line is
the latency of one ``await router.complete(...)`` in microseconds. A warm-up precedes the
measurement.

Run ``python benchmarks/bench_tracing.py`` (``--requests N``, ``--metrics``, ``--failover``
to make every request fail over once, i.e. two attempt spans, ``--json``). ``--off-only``
measures only the off side, also against a checkout without tracing (``PYTHONPATH=<checkout>``)
to show what the ``None`` checks cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from modelmesh_core import CompletionRequest, ModelMesh
from modelmesh_core.errors import ProviderError
from modelmesh_core.testing import MockPlugin, mock_config

MESSAGES = [{"role": "user", "content": "Say hello in five words."}]


class _Drop(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, max(0, round(q * (len(data) - 1))))]


async def _mesh(tracing: bool, with_metrics: bool, failover: bool) -> tuple[ModelMesh, Any]:
    plugin = MockPlugin()
    config = mock_config(("a", "b"))
    config["pools"] = {"chat": {"capability": "chat-completion", "failure_threshold": 10**9,
                                "strategy": {"connector": "priority-selection",
                                             "config": {"provider_priority": ["a", "b"]}}}}
    if tracing:
        config["observability"] = {"tracing": {"enabled": True, "export": "global",
                                               "metrics": with_metrics}}
    mesh = ModelMesh(config, plugins=[plugin])
    await mesh.initialize()
    if failover:
        plugin.adapters["a"].script(*[ProviderError("boom", status=503)] * 10**6)
    return mesh, plugin


async def run_off_only(requests: int, failover: bool) -> dict[str, Any]:
    """Tracing off only (no ``observability.tracing`` key): runs on a checkout without the
    tracing code too, to compare the off path against it."""
    mesh, plugin = await _mesh(False, False, failover)
    request = CompletionRequest(messages=MESSAGES)
    values: list[float] = []
    perf = time.perf_counter_ns
    try:
        for i in range(requests + requests // 10):
            t = perf()
            await mesh.router.complete("chat", request)
            if i >= requests // 10:
                values.append((perf() - t) / 1000.0)
            if i % 1000 == 0:
                for adapter in plugin.adapters.values():
                    adapter.calls.clear()
    finally:
        await mesh.shutdown()
    return {"requests": requests, "failover": failover,
            "off": {"p50_us": round(_pct(values, 0.5), 1), "p90_us": round(_pct(values, 0.9), 1),
                    "mean_us": round(sum(values) / len(values), 1)}}


async def run(requests: int, with_metrics: bool, failover: bool) -> dict[str, Any]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1 << 16))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    off, off_plugin = await _mesh(False, with_metrics, failover)
    on, on_plugin = await _mesh(True, with_metrics, failover)
    request = CompletionRequest(messages=MESSAGES)
    samples: dict[str, list[float]] = {"off": [], "on": []}
    perf = time.perf_counter_ns
    try:
        for i in range(requests + requests // 10):
            warm = i < requests // 10
            pairs = (("off", off), ("on", on)) if i % 2 == 0 else (("on", on), ("off", off))
            for name, mesh in pairs:
                t = perf()
                await mesh.router.complete("chat", request)
                if not warm:
                    samples[name].append((perf() - t) / 1000.0)
            if i % 1000 == 0:  # the mock records calls; keep memory flat
                for plugin in (off_plugin, on_plugin):
                    for adapter in plugin.adapters.values():
                        adapter.calls.clear()
    finally:
        await off.shutdown()
        await on.shutdown()
        provider.shutdown()
    out: dict[str, Any] = {"requests": requests, "metrics": with_metrics, "failover": failover,
                           "python": platform.python_version()}
    for name, values in samples.items():
        out[name] = {"p50_us": round(_pct(values, 0.5), 1), "p90_us": round(_pct(values, 0.9), 1),
                     "mean_us": round(sum(values) / len(values), 1)}
    out["cost_p50_us"] = round(out["on"]["p50_us"] - out["off"]["p50_us"], 1)
    out["cost_mean_us"] = round(out["on"]["mean_us"] - out["off"]["mean_us"], 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per side")
    parser.add_argument("--metrics", action="store_true", help="record OTel metrics too")
    parser.add_argument("--failover", action="store_true",
                        help="every request fails over once (two attempt spans)")
    parser.add_argument("--off-only", action="store_true",
                        help="measure tracing off only (to compare checkouts)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.off_only:
        off = asyncio.run(run_off_only(args.requests, args.failover))
        print(json.dumps(off, indent=2))
        return 0
    result = asyncio.run(run(args.requests, args.metrics, args.failover))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    extra = (", metrics on" if args.metrics else "") + (
        ", one failover each" if args.failover else "")
    print(f"router.complete, mock provider, {result['requests']} requests per side{extra}")
    for name in ("off", "on"):
        r = result[name]
        print(f"  tracing {name:>3}: p50 {r['p50_us']:8.1f} µs   p90 {r['p90_us']:8.1f} µs   "
              f"mean {r['mean_us']:8.1f} µs")
    print(f"  cost of tracing: p50 {result['cost_p50_us']:+.1f} µs, "
          f"mean {result['cost_mean_us']:+.1f} µs per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
