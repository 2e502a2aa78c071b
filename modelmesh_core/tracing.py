"""OpenTelemetry traces and metrics for the request path (the ``otel`` extra).

Off by default: the router and the attempt loop then hold ``None`` where a :class:`Tracing`
would be, and the request path pays one ``is not None`` check per hook. With
``observability.tracing.enabled: true`` every request gets one span and every upstream attempt
a child span, named and attributed after the OpenTelemetry GenAI semantic conventions:

* request span ``"{operation} {name asked}"`` (kind ``INTERNAL``): ``gen_ai.operation.name``
  (``chat`` / ``embeddings``), ``gen_ai.request.model`` (the pool, capability or model id the
  caller asked for), on success ``gen_ai.response.model``, ``gen_ai.system`` and
  ``gen_ai.usage.input_tokens`` / ``output_tokens`` of the answer; ``modelmesh.request_id``,
  ``modelmesh.pool``, ``modelmesh.attempts``, ``modelmesh.cost``; one
  ``modelmesh.failover`` span event per failed attempt; ``error.type`` and an error status
  when the request fails.
* attempt span ``"{operation} {upstream model}"`` (kind ``CLIENT``): ``gen_ai.system``,
  ``gen_ai.request.model`` (the upstream model name), ``gen_ai.request.max_tokens`` /
  ``temperature`` / ``top_p`` when set, ``modelmesh.model``, ``modelmesh.provider``,
  ``modelmesh.pool``, ``modelmesh.attempt``; on success ``gen_ai.response.model`` and the
  usage; on failure ``error.type``, ``http.response.status_code``,
  ``modelmesh.failover.reason`` (``rate_limit``, ``timeout``, ``server_error`` …) and
  ``modelmesh.failover.outcome`` (``retry``, ``rotate``, ``continue``, ``raise``, ``give_up``).

With ``metrics: true``: ``gen_ai.client.operation.duration`` (s, per attempt),
``gen_ai.client.token.usage`` (per attempt and token type) and ``modelmesh.failovers``.

A request continues the trace it arrives in: the proxy reads the W3C ``traceparent`` header
(:func:`context_from_headers`) into ``RoutingOptions.metadata["trace_context"]``; a library
caller's current OpenTelemetry context is used otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter, time_ns
from typing import TYPE_CHECKING, Any

from ._log import logger

if TYPE_CHECKING:
    from .attempts import AttemptLoop
    from .config import TracingConfig
    from .errors import ProviderError
    from .pipeline import PipelineRequest, PipelineResult
    from .retry import Outcome
    from .types import Model

# OpenTelemetry is imported on first use (a mesh with tracing on), so that importing
# ModelMesh costs nothing more when it is off.
_trace: Any = None
_propagate: Any = None
SpanKind: Any = None
Status: Any = None
StatusCode: Any = None


def _load() -> bool:
    """Import the OpenTelemetry API; False when it is not installed."""
    global _trace, _propagate, SpanKind, Status, StatusCode
    if _trace is not None:
        return True
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return False
    _propagate = propagate
    SpanKind, Status, StatusCode = trace.SpanKind, trace.Status, trace.StatusCode
    _trace = trace
    return True


__all__ = [
    "TRACE_CONTEXT_KEY",
    "RequestTrace",
    "Tracing",
    "available",
    "build_tracing",
    "context_from_headers",
    "gen_ai_system",
]

TRACE_CONTEXT_KEY = "trace_context"
"""The ``RoutingOptions.metadata`` key of an OpenTelemetry context to continue."""

_INSTRUMENTATION = "modelmesh_core"
_OPERATIONS = {"complete": "chat", "stream": "chat", "embed": "embeddings"}
# gen_ai.system values of the semantic conventions, by connector vendor prefix; any other
# vendor is reported under its own prefix.
_SYSTEMS = {
    "gemini": "gcp.gemini", "google": "gcp.gemini", "vertex": "gcp.vertex_ai",
    "azure": "az.ai.openai", "mistral": "mistral_ai", "bedrock": "aws.bedrock",
    "watsonx": "ibm.watsonx.ai",
}
_live = 0  # Tracing objects alive in this process; 0 makes context_from_headers free


def available() -> bool:
    """True when the OpenTelemetry API is importable."""
    return _load()


def gen_ai_system(connector: str) -> str:
    """The ``gen_ai.system`` value for a provider connector id (``openai.llm.v1`` → openai)."""
    vendor = connector.split(".", 1)[0]
    return _SYSTEMS.get(vendor, vendor)


def context_from_headers(headers: Mapping[str, str]) -> Any | None:
    """The OpenTelemetry context an incoming request's W3C ``traceparent`` (and
    ``tracestate``) header carries, or None: no header, an invalid one, no mesh in this process
    has tracing on, or OpenTelemetry is not installed. Uses the globally configured
    propagator (W3C trace context by default)."""
    if not _live or "traceparent" not in headers:
        return None
    ctx = _propagate.extract(headers)
    if not _trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def _reason(exc: ProviderError) -> str:
    from .builtin.sinks import failover_reason

    return failover_reason(type(exc).__name__, exc.status)


class Tracing:
    """The tracer (and meter) of one mesh; builds a :class:`RequestTrace` per request.

    ``tracer`` and ``meter`` are OpenTelemetry API objects; ``owned`` are SDK providers this
    object created and shuts down (none when the application's global providers are used).
    """

    def __init__(self, config: TracingConfig, tracer: Any, meter: Any = None,
                 owned: tuple[Any, ...] = ()) -> None:
        global _live
        self.config = config
        self.tracer = tracer
        self._owned = owned
        self._systems: dict[str, str] = {}
        self.duration = self.tokens = self.failovers = None
        if meter is not None:
            self.duration = meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s",
                description="GenAI operation duration (one upstream attempt)")
            self.tokens = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}",
                description="Input and output tokens used per upstream attempt")
            self.failovers = meter.create_counter(
                "modelmesh.failovers", unit="{failover}",
                description="Failed attempts after which the request moved on or retried")
        self._closed = False
        _live += 1

    def system(self, connector: str) -> str:
        """``gen_ai.system`` of a connector (memoised)."""
        value = self._systems.get(connector)
        if value is None:
            value = self._systems[connector] = gen_ai_system(connector)
        return value

    def begin(self, preq: PipelineRequest, request_id: str, kind: str, t0: float,
              result: PipelineResult) -> RequestTrace:
        """Start the request span (back-dated to ``t0``, when the router got the request)."""
        return RequestTrace(self, preq, request_id, kind, t0, result.pool.name)

    def refused(self, preq: PipelineRequest, request_id: str, kind: str, t0: float,
                exc: BaseException) -> None:
        """A request that no model could take (``NoActiveModelError``): one failed span."""
        trace = RequestTrace(self, preq, request_id, kind, t0, None)
        trace.end_error(exc, 0)

    def shutdown(self) -> None:
        """Flush and shut down the providers this object created (blocking: run it in a
        thread from async code)."""
        global _live
        if self._closed:
            return
        self._closed = True
        _live -= 1
        for provider in self._owned:
            try:
                provider.shutdown()
            except Exception as exc:  # an unreachable collector must not break shutdown
                logger.warning("OpenTelemetry shutdown failed: {}", exc)


class RequestTrace:
    """The spans of one request (built only when tracing is on)."""

    __slots__ = ("_attempt", "_attempt_t0", "_ctx", "_op", "_pool", "_preq", "_tracing", "span")

    def __init__(self, tracing: Tracing, preq: PipelineRequest, request_id: str, kind: str,
                 t0: float, pool: str | None) -> None:
        self._tracing = tracing
        self._preq = preq
        self._pool = pool or ""
        op = self._op = _OPERATIONS.get(kind, kind)
        parent = preq.metadata.get(TRACE_CONTEXT_KEY) if preq.metadata else None
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": op,
            "gen_ai.request.model": preq.capability,
            "modelmesh.request_id": request_id,
        }
        if pool is not None:
            attributes["modelmesh.pool"] = pool
        if kind == "stream":
            attributes["modelmesh.stream"] = True
        start = time_ns() - int((perf_counter() - t0) * 1e9)
        self.span = tracing.tracer.start_span(
            f"{op} {preq.capability}", context=parent, kind=SpanKind.INTERNAL,
            attributes=attributes, start_time=start)
        self._ctx = _trace.set_span_in_context(self.span, parent)
        self._attempt: Any = None
        self._attempt_t0 = 0.0

    # -- attempts

    def attempt(self, loop: AttemptLoop) -> None:
        """An attempt starts on ``loop.model``."""
        if self._attempt is not None:  # a previous attempt left without an outcome
            self._attempt.end()
        model = loop.model
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self._op,
            "gen_ai.system": self._tracing.system(loop.provider.connector),
            "gen_ai.request.model": model.upstream_id,
            "modelmesh.model": model.id,
            "modelmesh.provider": model.provider,
            "modelmesh.pool": loop.pool.name,
            "modelmesh.attempt": loop.attempts,
        }
        req = self._preq.request
        if req is not None:
            if req.max_tokens is not None:
                attributes["gen_ai.request.max_tokens"] = req.max_tokens
            if req.temperature is not None:
                attributes["gen_ai.request.temperature"] = req.temperature
            top_p = req.extra.get("top_p") if req.extra else None
            if isinstance(top_p, int | float):
                attributes["gen_ai.request.top_p"] = top_p
        self._attempt = self._tracing.tracer.start_span(
            f"{self._op} {model.upstream_id}", context=self._ctx, kind=SpanKind.CLIENT,
            attributes=attributes)
        self._attempt_t0 = perf_counter()

    def attempt_failed(self, loop: AttemptLoop, exc: ProviderError, outcome: Outcome) -> None:
        """The attempt failed; ``outcome`` is what the retry policy decided."""
        span = self._attempt
        if span is None:
            return
        self._attempt = None
        reason = _reason(exc)
        error_type = type(exc).__name__
        attributes: dict[str, Any] = {"error.type": error_type,
                                      "modelmesh.failover.reason": reason,
                                      "modelmesh.failover.outcome": outcome.value}
        if exc.status is not None:
            attributes["http.response.status_code"] = exc.status
        span.set_attributes(attributes)
        span.set_status(Status(StatusCode.ERROR, str(exc)[:300]))
        span.end()
        self.span.add_event("modelmesh.failover", {
            "modelmesh.model": loop.model.id, "modelmesh.attempt": loop.attempts,
            "modelmesh.failover.reason": reason, "modelmesh.failover.outcome": outcome.value,
            "error.type": error_type})
        tracing = self._tracing
        if tracing.duration is not None:
            labels = self._metric_labels(loop.model, loop.provider.connector)
            labels["error.type"] = error_type
            tracing.duration.record(perf_counter() - self._attempt_t0, labels)
            if tracing.failovers is not None and outcome.value in ("retry", "rotate", "continue"):
                tracing.failovers.add(1, {"modelmesh.pool": loop.pool.name,
                                          "modelmesh.model": loop.model.id,
                                          "modelmesh.failover.reason": reason})

    def released(self, loop: AttemptLoop) -> None:
        """The attempt ended without an outcome (the caller left, or a prefill was
        rejected and the same model is tried again without it)."""
        span = self._attempt
        if span is not None:
            self._attempt = None
            span.set_attribute("modelmesh.attempt.outcome", "released")
            span.end()

    # -- the end

    def succeeded(self, loop: AttemptLoop, model: Model, usage: Mapping[str, int] | None,
                  cost: float) -> None:
        """The request was answered by ``model`` (its last attempt succeeded)."""
        system = self._tracing.system(loop.provider.connector)
        prompt = usage.get("prompt_tokens") if usage else None
        completion = usage.get("completion_tokens") if usage else None
        result: dict[str, Any] = {"gen_ai.response.model": model.upstream_id,
                                  "modelmesh.cost": cost}
        if prompt is not None:
            result["gen_ai.usage.input_tokens"] = prompt
        if completion is not None:
            result["gen_ai.usage.output_tokens"] = completion
        span = self._attempt
        if span is not None:
            self._attempt = None
            span.set_attributes(result)
            span.end()
        result["gen_ai.system"] = system
        result["modelmesh.model"] = model.id
        result["modelmesh.attempts"] = loop.attempts
        root = self.span
        root.set_attributes(result)
        root.end()
        tracing = self._tracing
        if tracing.duration is not None:
            labels = self._metric_labels(model, loop.provider.connector)
            labels["gen_ai.response.model"] = model.upstream_id
            tracing.duration.record(perf_counter() - self._attempt_t0, labels)
            if tracing.tokens is not None:
                if prompt is not None:
                    tracing.tokens.record(prompt, {**labels, "gen_ai.token.type": "input"})
                if completion is not None:
                    tracing.tokens.record(completion,
                                          {**labels, "gen_ai.token.type": "output"})

    def failed(self, loop: AttemptLoop, exc: BaseException) -> None:
        """The request failed for the caller."""
        self.end_error(exc, loop.attempts)

    def cancelled(self, loop: AttemptLoop) -> None:
        """The caller went away before the answer was complete."""
        self.released(loop)
        self.span.set_attributes({"modelmesh.cancelled": True,
                                  "modelmesh.attempts": loop.attempts})
        self.span.end()

    def end_error(self, exc: BaseException, attempts: int) -> None:
        """End the request span with ``exc`` as its error."""
        span = self._attempt
        if span is not None:
            self._attempt = None
            span.end()
        root = self.span
        root.set_attributes({"error.type": type(exc).__name__, "modelmesh.attempts": attempts})
        root.set_status(Status(StatusCode.ERROR, str(exc)[:300]))
        root.end()

    def _metric_labels(self, model: Model, connector: str) -> dict[str, Any]:
        return {"gen_ai.operation.name": self._op,
                "gen_ai.system": self._tracing.system(connector),
                "gen_ai.request.model": model.upstream_id,
                "modelmesh.pool": self._pool}


def validate(config: TracingConfig, errors: list[str]) -> None:
    """Add a ``path: message`` line to ``errors`` when ``config`` cannot be honoured here."""
    if not config.enabled:
        return
    if not _load():
        errors.append("observability.tracing.enabled: OpenTelemetry is not installed; "
                      "pip install 'modelmesh-core[otel]'")
        return
    if config.export == "otlp":
        try:
            import opentelemetry.exporter.otlp.proto.http
            import opentelemetry.sdk  # noqa: F401
        except ImportError:
            errors.append("observability.tracing.export: 'otlp' needs the OpenTelemetry SDK "
                          "and OTLP/HTTP exporter; pip install 'modelmesh-core[otel]'")


def build_tracing(config: TracingConfig) -> Tracing | None:
    """The :class:`Tracing` for ``config`` (None when tracing is off).

    ``export: otlp`` builds this mesh's own SDK providers: a batching span processor and (with
    ``metrics``) a periodic metric reader, both exporting OTLP/HTTP protobuf to
    ``endpoint`` (``/v1/traces``, ``/v1/metrics``; without an endpoint the SDK's
    ``OTEL_EXPORTER_OTLP_*`` variables and defaults apply). ``export: global`` uses the
    application's global providers (``opentelemetry.trace.set_tracer_provider``…).
    """
    if not config.enabled or not _load():
        return None
    from . import __version__

    if config.export == "global":
        tracer = _trace.get_tracer(_INSTRUMENTATION, __version__)
        meter = None
        if config.metrics:
            from opentelemetry import metrics

            meter = metrics.get_meter(_INSTRUMENTATION, __version__)
        return Tracing(config, tracer, meter)

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": config.service_name})
    base = config.endpoint.rstrip("/") if config.endpoint else None
    headers = {str(k): str(v) for k, v in config.headers.items()} or None
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"{base}/v1/traces" if base else None, headers=headers,
        timeout=config.timeout)))
    owned: list[Any] = [provider]
    meter = None
    if config.metrics:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{base}/v1/metrics" if base else None,
                               headers=headers, timeout=config.timeout),
            export_interval_millis=config.metrics_interval * 1000.0)
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        owned.append(meter_provider)
        meter = meter_provider.get_meter(_INSTRUMENTATION, __version__)
    return Tracing(config, provider.get_tracer(_INSTRUMENTATION, __version__), meter,
                   tuple(owned))
