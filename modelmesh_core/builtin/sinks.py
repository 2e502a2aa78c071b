"""Built-in observability sinks: null, console, JSON-lines file, Python callback, Prometheus
metrics for an application's registry, and a batching webhook."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import importlib
import random
import sys
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import orjson
from attrs import Factory, frozen

from .._log import logger
from ..config import Duration
from ..errors import ConfigError
from ..events import Event, EventType
from ..hookspecs import hookimpl
from ..redaction import redact
from ..types import SinkSpec

__all__ = [
    "CallbackSink",
    "ConsoleSink",
    "JsonLogSink",
    "NullSink",
    "PrometheusSink",
    "WebhookSink",
    "failover_reason",
    "status_class",
]


class NullSink:
    """Drops every event (``modelmesh.null.v1``)."""

    def __init__(self, config: Any) -> None:
        pass

    def emit(self, event: Event) -> None:
        """Do nothing."""


@frozen(kw_only=True)
class ConsoleConfig:
    """Which stream (``stderr`` or ``stdout``) and which event types (empty = all)."""

    stream: str = "stderr"
    events: tuple[str, ...] = ()


class ConsoleSink:
    """One human-readable line per event (``modelmesh.console.v1``)."""

    def __init__(self, config: ConsoleConfig | None) -> None:
        config = config or ConsoleConfig()
        self._stream: TextIO = sys.stdout if config.stream == "stdout" else sys.stderr
        self._types = frozenset(config.events)

    def emit(self, event: Event) -> None:
        """Write the event as one line."""
        if self._types and event.type not in self._types:
            return
        parts = [event.type]
        for key in ("pool", "model", "provider", "request_id"):
            value = getattr(event, key)
            if value:
                parts.append(f"{key}={value}")
        parts.extend(f"{k}={v}" for k, v in event.data.items())
        self._stream.write(redact(" ".join(parts)) + "\n")


@frozen(kw_only=True)
class JsonLogConfig:
    """JSON-lines file ``path``; ``events`` filters types (empty = all)."""

    path: str
    events: tuple[str, ...] = ()


class JsonLogSink:
    """Appends one JSON object per event to a file (``modelmesh.json-log.v1``)."""

    def __init__(self, config: JsonLogConfig) -> None:
        path = Path(config.path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("ab")
        self._types = frozenset(config.events)

    def emit(self, event: Event) -> None:
        """Write the event as one JSON line."""
        if self._types and event.type not in self._types:
            return
        line = orjson.dumps(event.as_dict(), default=str).decode()
        self._fh.write(redact(line).encode() + b"\n")
        self._fh.flush()

    async def close(self) -> None:
        """Close the file."""
        self._fh.close()


@frozen(kw_only=True)
class CallbackConfig:
    """``target``: ``"package.module:function"`` called with each event."""

    target: str


class CallbackSink:
    """Calls a Python function with each event (``modelmesh.callback.v1``)."""

    def __init__(self, config: CallbackConfig) -> None:
        module, _, attr = config.target.partition(":")
        try:
            fn: Callable[[Event], None] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError([f"observability.sinks.config.target: cannot import "
                               f"{config.target!r} ({exc})"]) from None
        self._fn = fn

    def emit(self, event: Event) -> None:
        """Call the target."""
        self._fn(event)


# --------------------------------------------------------------------------- failure labels


def status_class(status: Any) -> str:
    """``"4xx"`` / ``"5xx"`` … for an HTTP status, ``"none"`` when the attempt got no HTTP
    answer (timeout, connection error, a stream cut short)."""
    if isinstance(status, int) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return "none"


_REASON_BY_ERROR = {
    "RateLimitError": "rate_limit",
    "ProviderTimeoutError": "timeout",
    "StreamInterruptedError": "stream_interrupted",
    "AuthenticationError": "auth",
    "ContextLengthError": "context_length",
    "ContentFilterError": "content_filter",
    "BudgetExceededError": "budget",
}


def failover_reason(error: Any, status: Any) -> str:
    """Why an attempt failed, as a small closed set of label values: ``rate_limit``,
    ``timeout``, ``stream_interrupted``, ``auth``, ``context_length``, ``content_filter``,
    ``budget``, ``server_error`` (5xx), ``client_error`` (other 4xx), ``transport`` (no
    HTTP answer)."""
    reason = _REASON_BY_ERROR.get(str(error))
    if reason is not None:
        return reason
    if status == 429:
        return "rate_limit"
    if status == 408:
        return "timeout"
    if status in (401, 403):
        return "auth"
    if isinstance(status, int):
        return "server_error" if status >= 500 else "client_error"
    return "transport"


# --------------------------------------------------------------------------- Prometheus

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")
_PENDING_LIMIT = 10_000


class _Metrics:
    """The metric families of one registry (shared by every sink writing to it, so that a
    hot reload, which builds the new sink before closing the old, keeps counting)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        labels = ("pool", "model", "provider")
        r = registry
        self.requests = Counter("modelmesh_requests", "Routed requests by outcome",
                                (*labels, "outcome"), registry=r)
        self.attempt_failures = Counter(
            "modelmesh_attempt_failures",
            "Failed upstream attempts by error, status class and failover reason",
            (*labels, "error", "status_class", "reason"), registry=r)
        self.failovers = Counter(
            "modelmesh_failovers",
            "Requests that moved from a failed model to another one, by reason",
            ("pool", "model", "reason"), registry=r)
        self.latency = Histogram("modelmesh_request_latency_seconds",
                                 "Upstream latency of successful requests", labels,
                                 registry=r, buckets=_LATENCY_BUCKETS)
        self.tokens = Counter("modelmesh_tokens", "Tokens by kind", (*labels, "kind"),
                              registry=r)
        self.cost = Counter("modelmesh_cost_usd", "Cost in USD", labels, registry=r)
        self.rotations = Counter("modelmesh_rotations", "Pool rotations", ("pool",), registry=r)
        self.deactivations = Counter("modelmesh_model_deactivations", "Model deactivations",
                                     ("pool", "model", "reason"), registry=r)
        self.recoveries = Counter("modelmesh_model_recoveries", "Model recoveries",
                                  ("pool", "model"), registry=r)
        self.provider_down = Counter("modelmesh_provider_down", "Provider outages",
                                     ("provider",), registry=r)
        self.success_children: dict[tuple[str, str, str], tuple[Any, ...]] = {}


_BY_REGISTRY: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()


@frozen(kw_only=True)
class PrometheusConfig:
    """``registry``: the ``prometheus_client.CollectorRegistry`` to write into, given as the
    object itself (a config built in Python) or as ``"package.module:attribute"``; default
    ``prometheus_client.REGISTRY`` (what ``start_http_server`` serves)."""

    registry: Any = None


def _resolve_registry(value: Any) -> Any:
    from prometheus_client import REGISTRY, CollectorRegistry

    if value is None:
        return REGISTRY
    if isinstance(value, str):
        module, _, attr = value.partition(":")
        try:
            value = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError([f"observability.sinks.config.registry: cannot import "
                               f"{value!r} ({exc})"]) from None
    if not isinstance(value, CollectorRegistry):
        raise ConfigError([f"observability.sinks.config.registry: must be a prometheus_client "
                           f"CollectorRegistry, not {type(value).__name__}"])
    return value


class PrometheusSink:
    """Prometheus metrics in the application's registry (``modelmesh.prometheus.v1``).

    The metric names are the proxy's (``modelmesh_requests_total``,
    ``modelmesh_attempt_failures_total``, ``modelmesh_request_latency_seconds`` …) plus
    ``modelmesh_failovers_total``: a request that moved on from a failed model, labelled with
    the pool, the model it left and the reason. Attempt failures carry ``error``,
    ``status_class`` and ``reason`` labels. Sinks writing to the same registry share the
    metric families (counters survive a hot reload).
    """

    def __init__(self, config: PrometheusConfig | None) -> None:
        registry = _resolve_registry((config or PrometheusConfig()).registry)
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = _Metrics(registry)
        self.registry = registry
        self._m = metrics
        # request id -> (pool, model, reason) of its last failed attempt
        self._pending: dict[str, tuple[str, str, str]] = {}
        self._dispatch: dict[str, Callable[[Event], None]] = {
            EventType.REQUEST_SUCCEEDED: self._succeeded,
            EventType.REQUEST_FAILED: self._failed,
            EventType.ATTEMPT_FAILED: self._attempt_failed,
            EventType.POOL_ROTATED: self._rotated,
            EventType.MODEL_DEACTIVATED: self._deactivated,
            EventType.MODEL_RECOVERED: self._recovered,
            EventType.PROVIDER_DOWN: self._down,
        }

    def emit(self, event: Event) -> None:
        """Update the metrics the event touches."""
        fn = self._dispatch.get(event.type)
        if fn is not None:
            fn(event)

    @staticmethod
    def _labels(e: Event) -> tuple[str, str, str]:
        return e.pool or "", e.model or "", e.provider or ""

    def _failover_from(self, e: Event) -> None:
        """Count a failover when a request that failed on one model goes on with another."""
        rid = e.request_id
        if rid is None:
            return
        prev = self._pending.pop(rid, None)
        if prev is not None and prev[1] != (e.model or ""):
            self._m.failovers.labels(*prev).inc()

    def _succeeded(self, e: Event) -> None:
        if self._pending:
            self._failover_from(e)
        labels = self._labels(e)
        children = self._m.success_children.get(labels)
        m = self._m
        if children is None:
            children = (m.requests.labels(*labels, "success"), m.latency.labels(*labels),
                        m.cost.labels(*labels),
                        tuple((k, m.tokens.labels(*labels, k.removesuffix("_tokens")))
                              for k in _TOKEN_KINDS))
            m.success_children[labels] = children
        requests, latency, cost_child, tokens = children
        requests.inc()
        data = e.data
        ms = data.get("latency_ms")
        if isinstance(ms, int | float):
            latency.observe(ms / 1000.0)
        usage = data.get("usage")
        if usage:
            for kind, child in tokens:
                n = usage.get(kind)
                if n:
                    child.inc(n)
        cost = data.get("cost")
        if isinstance(cost, int | float) and cost > 0:
            cost_child.inc(cost)

    def _failed(self, e: Event) -> None:
        if e.request_id is not None:
            self._pending.pop(e.request_id, None)
        self._m.requests.labels(*self._labels(e), "failure").inc()

    def _attempt_failed(self, e: Event) -> None:
        status = e.data.get("status")
        error = str(e.data.get("error_type") or e.data.get("error") or "error")[:60]
        reason = failover_reason(error, status)
        self._m.attempt_failures.labels(*self._labels(e), error, status_class(status),
                                        reason).inc()
        self._failover_from(e)
        if e.request_id is not None:
            if len(self._pending) >= _PENDING_LIMIT:  # requests that never finished
                self._pending.pop(next(iter(self._pending)))
            self._pending[e.request_id] = (e.pool or "", e.model or "", reason)

    def _rotated(self, e: Event) -> None:
        self._m.rotations.labels(e.pool or "").inc()

    def _deactivated(self, e: Event) -> None:
        self._m.deactivations.labels(e.pool or "", e.model or "",
                                     str(e.data.get("reason", ""))).inc()

    def _recovered(self, e: Event) -> None:
        self._m.recoveries.labels(e.pool or "", e.model or "").inc()

    def _down(self, e: Event) -> None:
        self._m.provider_down.labels(e.provider or "").inc()


# --------------------------------------------------------------------------- webhook

SIGNATURE_HEADER = "X-ModelMesh-Signature"
DELIVERY_HEADER = "X-ModelMesh-Delivery"


@frozen(kw_only=True)
class WebhookConfig:
    """Where and how events are posted; see :class:`WebhookSink`."""

    url: str
    events: tuple[str, ...] = ()
    batch_size: int = 100
    flush_interval: Duration = Duration(1.0)
    max_queue: int = 10_000
    max_retries: int = 5
    initial_backoff: Duration = Duration(0.5)
    max_backoff: Duration = Duration(30.0)
    timeout: Duration = Duration(10.0)
    drain_timeout: Duration = Duration(5.0)
    secret: str | None = None
    headers: Mapping[str, str] = Factory(dict)

    def __attrs_post_init__(self) -> None:
        problems = [f"{name}: must be at least 1" for name in ("batch_size", "max_queue")
                    if getattr(self, name) < 1]
        if self.max_retries < 0:
            problems.append("max_retries: must not be negative")
        if not self.url.startswith(("http://", "https://")):
            problems.append("url: must be an http:// or https:// URL")
        if problems:
            raise ValueError("; ".join(problems))



class WebhookSink:
    """Posts events in batches to an HTTP endpoint (``modelmesh.webhook.v1``).

    ``emit`` only appends to a bounded queue: the request path never waits for the network.
    When the queue holds ``max_queue`` events, new ones are dropped and counted
    (:attr:`dropped`). A background task (started on the first event) posts
    ``{"events": [...]}`` (JSON, secrets redacted) when ``batch_size`` events are waiting or
    ``flush_interval`` after the first one; a connection error, a timeout, a 408, 429 or 5xx
    is retried up to ``max_retries`` times with exponential backoff and jitter (a
    ``Retry-After`` is honoured up to ``max_backoff``); after that the batch is dropped and
    counted (:attr:`failed`). With ``secret`` each post carries
    ``X-ModelMesh-Signature: sha256=<hex HMAC-SHA256 of the body>``; every post carries
    ``X-ModelMesh-Delivery`` (the same id on each retry of a batch). ``close()`` sends what is
    queued, for at most ``drain_timeout``.
    """

    def __init__(self, config: WebhookConfig) -> None:
        self._config = config
        self._types = frozenset(config.events)
        self._queue: collections.deque[Event] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._closing = False
        self._rng = random.Random()
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.retries = 0
        self.batches = 0

    def __repr__(self) -> str:
        return f"WebhookSink(url={redact(self._config.url)!r}, queued={len(self._queue)})"

    @property
    def stats(self) -> dict[str, int]:
        """Events sent, dropped (queue full), failed (retries exhausted); retries; queued."""
        return {"sent": self.sent, "dropped": self.dropped, "failed": self.failed,
                "retries": self.retries, "batches": self.batches, "queued": len(self._queue)}

    def emit(self, event: Event) -> None:
        """Queue the event (never blocks; drops and counts when the queue is full)."""
        if self._types and event.type not in self._types:
            return
        queue = self._queue
        if len(queue) >= self._config.max_queue or self._closing:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("webhook sink queue full: {} events dropped so far",
                               self.dropped)
            return
        queue.append(event)
        if self._task is None:
            self._start()
        if self._wake is not None:
            if len(queue) == 1:
                self._wake.set()
            if len(queue) >= self._config.batch_size:
                self._full.set()  # type: ignore[union-attr]

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (an event outside the mesh's loop): queued for later
        self._wake, self._full = asyncio.Event(), asyncio.Event()
        if self._queue:
            self._wake.set()
        self._task = loop.create_task(self._run(), name="modelmesh-webhook-sink")

    async def _run(self) -> None:
        import aiohttp

        cfg = self._config
        assert self._wake is not None and self._full is not None
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout),
                                        trust_env=False)
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if len(self._queue) < cfg.batch_size and not self._closing:
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), cfg.flush_interval)
                    except TimeoutError:
                        pass
                n = min(cfg.batch_size, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                await self._deliver(session, batch)
        finally:
            await session.close()

    def _body(self, batch: list[Event]) -> bytes:
        raw = orjson.dumps({"events": [e.as_dict() for e in batch]}, default=str)
        return redact(raw.decode()).encode()

    async def _deliver(self, session: Any, batch: list[Event]) -> None:
        import aiohttp

        cfg = self._config
        body = self._body(batch)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: uuid.uuid4().hex,
                   **{str(k): str(v) for k, v in cfg.headers.items()}}
        if cfg.secret:
            digest = hmac.new(str(cfg.secret).encode(), body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
        self.batches += 1
        why = ""
        for attempt in range(cfg.max_retries + 1):
            retry_after: float | None = None
            try:
                async with session.post(cfg.url, data=body, headers=headers) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.sent += len(batch)
                        return
                    why = f"HTTP {resp.status}"
                    if resp.status not in (408, 429) and resp.status < 500:
                        break  # the receiver refuses this batch; retrying will not help
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if attempt == cfg.max_retries or self._closing:
                break
            delay = min(cfg.max_backoff, cfg.initial_backoff * 2 ** attempt)
            delay *= 0.5 + self._rng.random() / 2
            if retry_after is not None:
                delay = min(max(delay, retry_after), cfg.max_backoff)
            self.retries += 1
            await asyncio.sleep(delay)
        self.failed += len(batch)
        logger.warning("webhook sink dropped a batch of {} events: {}", len(batch),
                       redact(why))

    async def close(self) -> None:
        """Send what is queued (at most ``drain_timeout``), then stop."""
        self._closing = True
        if self._task is None and self._queue:
            self._start()
        task = self._task
        if task is None:
            return
        assert self._wake is not None and self._full is not None
        self._wake.set()
        self._full.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self._config.drain_timeout)
        except TimeoutError:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        lost = len(self._queue)
        if lost:
            self.dropped += lost
            self._queue.clear()
            logger.warning("webhook sink closed with {} events unsent", lost)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


@hookimpl
def modelmesh_sinks() -> list[SinkSpec]:
    """The built-in sinks."""
    return [
        SinkSpec(name="modelmesh.null.v1", factory=NullSink, description="drops events"),
        SinkSpec(name="modelmesh.console.v1", factory=ConsoleSink, config_type=ConsoleConfig,
                 description="one line per event on stderr/stdout"),
        SinkSpec(name="modelmesh.json-log.v1", factory=JsonLogSink, config_type=JsonLogConfig,
                 description="JSON lines file"),
        SinkSpec(name="modelmesh.file.v1", factory=JsonLogSink, config_type=JsonLogConfig,
                 description="alias of json-log"),
        SinkSpec(name="modelmesh.callback.v1", factory=CallbackSink, config_type=CallbackConfig,
                 description="a Python function"),
        SinkSpec(name="modelmesh.prometheus.v1", factory=PrometheusSink,
                 config_type=PrometheusConfig,
                 description="Prometheus metrics in the application's registry"),
        SinkSpec(name="modelmesh.webhook.v1", factory=WebhookSink, config_type=WebhookConfig,
                 description="batched, signed HTTP posts of events"),
    ]
