"""OpenTelemetry tracing: spans captured by the SDK's in-memory exporter (through the global
provider, ``export: global``) and by a local OTLP/HTTP receiver on 127.0.0.1 that decodes the
protobuf export requests (``export: otlp``); a ``traceparent`` sent to the proxy is continued;
nothing is built when tracing is off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import metrics, trace
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from modelmesh_core import (
    CompletionRequest,
    ConfigError,
    EmbeddingRequest,
    ModelMesh,
    NoActiveModelError,
)
from modelmesh_core import tracing as mm_tracing
from modelmesh_core.fakes import CutStream, Fail, FakeUpstream, Prefill, Reply
from modelmesh_core.server import create_app
from modelmesh_core.testing import openai_config

HI = [{"role": "user", "content": "hi"}]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


# --------------------------------------------------------------------------- in-memory capture


class Captured:
    """The process-wide SDK providers the ``export: global`` tests record into."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        meter_provider = MeterProvider(metric_readers=[self.metrics])
        metrics.set_meter_provider(meter_provider)
        self.meter_provider = meter_provider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())


_CAPTURED: Captured | None = None


@pytest.fixture
def otel() -> Iterator[Captured]:
    global _CAPTURED
    if _CAPTURED is None:  # the global providers can be set once per process
        _CAPTURED = Captured()
    _CAPTURED.spans.clear()
    yield _CAPTURED
    _CAPTURED.spans.clear()


def traced(config: dict[str, Any], **tracing: Any) -> dict[str, Any]:
    config["observability"] = {"tracing": {"enabled": True, "export": "global", **tracing}}
    config["discovery"] = {"auto_detect": False}
    return config


def prioritised(a: FakeUpstream, b: FakeUpstream, **pool: Any) -> dict[str, Any]:
    return openai_config([("a", a), ("b", b)], strategy={
        "connector": "priority-selection",
        "config": {"model_priority": ["a.gpt-4o-mini", "b.gpt-4o-mini"]}}, **pool)


def by_kind(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    roots = [s for s in spans if s.kind is SpanKind.INTERNAL]
    assert len(roots) == 1, [s.name for s in spans]
    attempts = sorted((s for s in spans if s.kind is SpanKind.CLIENT),
                      key=lambda s: s.attributes["modelmesh.attempt"])
    return roots[0], attempts


async def test_failover_spans_follow_the_genai_conventions(otel: Captured, fake_upstream: Any,
                                                          make_mesh: Any) -> None:
    a = await fake_upstream(default=Fail(503))
    b = await fake_upstream(default=Reply("hello there"))
    mesh = await make_mesh(traced(prioritised(a, b)))
    reply = await mesh.router.complete("chat", CompletionRequest(
        messages=HI, max_tokens=7, temperature=0.5, extra={"top_p": 0.9}))
    assert reply.model == "b.gpt-4o-mini" or reply.provider == "b"

    root, attempts = by_kind(otel.finished())
    assert root.name == "chat chat"
    assert root.parent is None
    assert root.status.status_code is StatusCode.UNSET
    ra = root.attributes
    assert ra["gen_ai.operation.name"] == "chat"
    assert ra["gen_ai.request.model"] == "chat"
    assert ra["gen_ai.response.model"] == "gpt-4o-mini"
    assert ra["gen_ai.system"] == "openai"
    assert ra["gen_ai.usage.input_tokens"] == reply.usage["prompt_tokens"]
    assert ra["gen_ai.usage.output_tokens"] == reply.usage["completion_tokens"]
    assert ra["modelmesh.pool"] == "chat"
    assert ra["modelmesh.model"] == "b.gpt-4o-mini"
    assert ra["modelmesh.attempts"] == 2
    assert ra["modelmesh.request_id"] == reply.metadata["request_id"]
    assert ra["modelmesh.cost"] == pytest.approx(reply.metadata["cost"])
    [event] = root.events
    assert event.name == "modelmesh.failover"
    assert event.attributes["modelmesh.model"] == "a.gpt-4o-mini"
    assert event.attributes["modelmesh.failover.reason"] == "server_error"

    first, second = attempts
    for span in attempts:
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert span.name == "chat gpt-4o-mini"
        assert span.attributes["gen_ai.system"] == "openai"
        assert span.attributes["gen_ai.request.model"] == "gpt-4o-mini"
        assert span.attributes["gen_ai.request.max_tokens"] == 7
        assert span.attributes["gen_ai.request.temperature"] == 0.5
        assert span.attributes["gen_ai.request.top_p"] == 0.9
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
    assert first.attributes["modelmesh.model"] == "a.gpt-4o-mini"
    assert first.attributes["modelmesh.attempt"] == 1
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["error.type"] == "ProviderError"
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["modelmesh.failover.reason"] == "server_error"
    assert first.attributes["modelmesh.failover.outcome"] == "rotate"
    assert second.attributes["modelmesh.model"] == "b.gpt-4o-mini"
    assert second.attributes["modelmesh.attempt"] == 2
    assert second.attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert second.attributes["gen_ai.usage.output_tokens"] == reply.usage["completion_tokens"]
    assert "error.type" not in second.attributes


async def test_stream_spans_and_a_continued_break(otel: Captured, fake_upstream: Any,
                                                 make_mesh: Any) -> None:
    answer = "one two three four five six seven eight"
    a = await fake_upstream(default=Reply(answer))
    a.script(CutStream(after_words=3))
    b = await fake_upstream(default=Reply(answer), prefill=Prefill.CONTINUE)
    mesh = await make_mesh(traced(prioritised(a, b)))
    text = ""
    async for chunk in mesh.router.stream("chat", CompletionRequest(messages=HI, stream=True)):
        text += chunk.content or ""
    assert text.split() == answer.split()
    root, attempts = by_kind(otel.finished())
    assert root.attributes["modelmesh.stream"] is True
    assert root.attributes["modelmesh.model"] == "b.gpt-4o-mini"
    assert [s.attributes["modelmesh.model"] for s in attempts] == ["a.gpt-4o-mini",
                                                                  "b.gpt-4o-mini"]
    assert attempts[0].attributes["error.type"] == "StreamInterruptedError"
    assert attempts[0].attributes["modelmesh.failover.reason"] == "stream_interrupted"
    assert attempts[0].attributes["modelmesh.failover.outcome"] == "continue"
    assert attempts[1].status.status_code is StatusCode.UNSET


async def test_embeddings_span(otel: Captured, fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream()
    config = traced(openai_config([("a", a)]))
    config["models"] = {"a.text-embedding-3-small": {"capabilities": ["text-embeddings"]}}
    config["pools"] = {"vectors": {"capability": "text-embeddings"}}
    mesh = await make_mesh(config)
    await mesh.router.embed("vectors", EmbeddingRequest(input=["a", "b"]))
    root, [attempt] = by_kind(otel.finished())
    assert root.name == "embeddings vectors"
    assert root.attributes["gen_ai.operation.name"] == "embeddings"
    assert attempt.name == "embeddings text-embedding-3-small"
    assert attempt.attributes["gen_ai.request.model"] == "text-embedding-3-small"


async def test_refused_and_failed_requests_end_in_an_error_span(otel: Captured,
                                                               fake_upstream: Any,
                                                               make_mesh: Any) -> None:
    a = await fake_upstream(default=Fail(500))
    mesh = await make_mesh(traced(openai_config([("a", a)], failure_threshold=1,
                                                retry={"max_attempts": 1})))
    with pytest.raises(Exception) as failed:
        await mesh.router.complete("chat", CompletionRequest(messages=HI))
    root, attempts = by_kind(otel.finished())
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == type(failed.value).__name__
    assert root.attributes["modelmesh.attempts"] == 1
    assert len(attempts) == 1 and attempts[0].attributes["modelmesh.failover.outcome"] == (
        "give_up")
    otel.spans.clear()
    with pytest.raises(NoActiveModelError):  # the model is in cooldown now
        await mesh.router.complete("chat", CompletionRequest(messages=HI))
    [span] = otel.finished()
    assert span.name == "chat chat"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "NoActiveModelError"
    assert span.attributes["modelmesh.attempts"] == 0


async def test_cancelled_request_ends_its_spans(otel: Captured, fake_upstream: Any,
                                               make_mesh: Any) -> None:
    a = await fake_upstream(default=Reply("slow", delay=5.0))
    mesh = await make_mesh(traced(openai_config([("a", a)])))
    task = asyncio.ensure_future(mesh.router.complete("chat", CompletionRequest(messages=HI)))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if a.calls:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    root, [attempt] = by_kind(otel.finished())
    assert root.attributes["modelmesh.cancelled"] is True
    assert attempt.attributes["modelmesh.attempt.outcome"] == "released"


async def test_library_caller_span_is_the_parent(otel: Captured, fake_upstream: Any,
                                                make_mesh: Any) -> None:
    a = await fake_upstream()
    mesh = await make_mesh(traced(openai_config([("a", a)])))
    with trace.get_tracer("app").start_as_current_span("handle-order") as app_span:
        await mesh.router.complete("chat", CompletionRequest(messages=HI))
    root, _ = by_kind([s for s in otel.finished() if s.name != "handle-order"])
    assert root.parent is not None
    assert root.parent.span_id == app_span.get_span_context().span_id
    assert root.context.trace_id == app_span.get_span_context().trace_id


async def test_proxy_continues_an_incoming_traceparent(otel: Captured,
                                                       fake_upstream: Any) -> None:
    a = await fake_upstream()
    mesh = ModelMesh(traced(openai_config([("a", a)])))
    runner = web.AppRunner(create_app(mesh))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession() as session:
            for headers in ({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                             "tracestate": "vendor=1"},
                            {"traceparent": "garbage"}):
                async with session.post(f"http://{host}:{port}/v1/chat/completions",
                                        json={"model": "chat", "messages": HI},
                                        headers=headers) as resp:
                    assert resp.status == 200
                    await resp.read()
    finally:
        await runner.cleanup()
    roots = [s for s in otel.finished() if s.kind is SpanKind.INTERNAL]
    assert len(roots) == 2
    continued, fresh = roots
    assert format(continued.context.trace_id, "032x") == TRACE_ID
    assert continued.parent is not None and format(continued.parent.span_id, "016x") == (
        PARENT_ID)
    assert continued.parent.is_remote
    assert continued.context.trace_state.get("vendor") == "1"
    # an invalid traceparent starts a new trace instead of failing the request
    assert fresh.parent is None and format(fresh.context.trace_id, "032x") != TRACE_ID


async def test_metrics(otel: Captured, fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream(default=Fail(503))
    b = await fake_upstream()
    mesh = await make_mesh(traced(prioritised(a, b), metrics=True))
    before = _points(otel)
    reply = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    after = _points(otel)
    failovers = after.get(("modelmesh.failovers", "a.gpt-4o-mini"), 0) - before.get(
        ("modelmesh.failovers", "a.gpt-4o-mini"), 0)
    assert failovers == 1
    out = after[("gen_ai.client.token.usage", "output")] - before.get(
        ("gen_ai.client.token.usage", "output"), 0)
    assert out == reply.usage["completion_tokens"]
    durations = after[("gen_ai.client.operation.duration", "count")] - before.get(
        ("gen_ai.client.operation.duration", "count"), 0)
    assert durations == 2  # one failed attempt, one answer


def _points(otel: Captured) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    data = otel.metrics.get_metrics_data()
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    attrs = dict(p.attributes)
                    if metric.name == "modelmesh.failovers":
                        key = (metric.name, attrs["modelmesh.model"])
                        out[key] = out.get(key, 0) + p.value
                    elif metric.name == "gen_ai.client.token.usage":
                        key = (metric.name, attrs["gen_ai.token.type"])
                        out[key] = out.get(key, 0) + p.sum
                    elif metric.name == "gen_ai.client.operation.duration":
                        key = (metric.name, "count")
                        out[key] = out.get(key, 0) + p.count
    return out


# --------------------------------------------------------------------------- off


async def test_off_builds_nothing(otel: Captured, fake_upstream: Any, make_mesh: Any) -> None:
    a = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a)]))
    assert mesh.router._tracing is None
    live = mm_tracing._live
    await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert otel.finished() == []
    if live == 0:
        assert mm_tracing.context_from_headers(
            {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}) is None


async def test_reload_keeps_or_replaces_the_tracer(otel: Captured, fake_upstream: Any,
                                                   make_mesh: Any) -> None:
    a = await fake_upstream()
    config = traced(openai_config([("a", a)]))
    mesh = await make_mesh(config)
    first = mesh.router._tracing
    await mesh.reload_config(config)
    assert mesh.router._tracing is first
    off = openai_config([("a", a)])
    off["discovery"] = {"auto_detect": False}
    await mesh.reload_config(off)
    assert mesh.router._tracing is None
    assert first._closed


def test_gen_ai_system_names() -> None:
    assert mm_tracing.gen_ai_system("openai.llm.v1") == "openai"
    assert mm_tracing.gen_ai_system("anthropic.messages.v1") == "anthropic"
    assert mm_tracing.gen_ai_system("gemini.api.v1") == "gcp.gemini"
    assert mm_tracing.gen_ai_system("mistral.api.v1") == "mistral_ai"


def test_unknown_export_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        ModelMesh({"observability": {"tracing": {"enabled": True, "export": "zipkin"}},
                   "discovery": {"auto_detect": False}}).validate()
    assert "observability.tracing.export" in str(err.value)


# --------------------------------------------------------------------------- OTLP/HTTP


class Receiver:
    """An OTLP/HTTP collector stand-in: decodes protobuf export requests."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""

    async def on_traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        self.headers.append(dict(request.headers))
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(await request.read())
        self.traces.append(msg)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def on_metrics(self, request: web.Request) -> web.Response:
        msg = ExportMetricsServiceRequest()
        msg.ParseFromString(await request.read())
        self.metrics.append(msg)
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        out = []
        for req in self.traces:
            for rs in req.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((resource, span) for span in ss.spans)
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", rec.on_traces)
    app.router.add_post("/v1/metrics", rec.on_metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}"
    yield rec
    await runner.cleanup()


def _attr(span: Any, key: str) -> Any:
    for kv in span.attributes:
        if kv.key == key:
            value = kv.value
            return getattr(value, value.WhichOneof("value"))
    raise KeyError(key)


async def test_otlp_http_export(receiver: Receiver, fake_upstream: Any) -> None:
    a = await fake_upstream(default=Fail(500))
    b = await fake_upstream(default=Reply("exported"))
    config = prioritised(a, b)
    config["observability"] = {"tracing": {
        "enabled": True, "export": "otlp", "endpoint": receiver.url,
        "service_name": "checkout-api", "headers": {"x-collector-token": "tok-123"},
        "metrics": True, "metrics_interval": "1h"}}
    config["discovery"] = {"auto_detect": False}
    mesh = ModelMesh(config)
    await mesh.initialize()
    try:
        await mesh.router.complete("chat", CompletionRequest(messages=HI))
    finally:
        await mesh.shutdown()  # flushes the batch processor and the metric reader
    spans = receiver.spans()
    assert {r["service.name"] for r, _ in spans} == {"checkout-api"}
    assert all(h.get("x-collector-token") == "tok-123" for h in receiver.headers)
    by_name: dict[str, list[Any]] = {}
    for _, span in spans:
        by_name.setdefault(span.name, []).append(span)
    [root] = by_name["chat chat"]
    attempts = by_name["chat gpt-4o-mini"]
    assert len(attempts) == 2
    assert {s.parent_span_id for s in attempts} == {root.span_id}
    assert {s.trace_id for s in attempts} == {root.trace_id}
    assert _attr(root, "gen_ai.response.model") == "gpt-4o-mini"
    assert _attr(root, "modelmesh.attempts") == 2
    failed = next(s for s in attempts if _attr(s, "modelmesh.attempt") == 1)
    assert _attr(failed, "http.response.status_code") == 500
    assert _attr(failed, "modelmesh.failover.reason") == "server_error"
    names = {m.name for req in receiver.metrics for rm in req.resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert {"gen_ai.client.operation.duration", "gen_ai.client.token.usage",
            "modelmesh.failovers"} <= names

