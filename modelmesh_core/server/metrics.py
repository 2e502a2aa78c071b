"""Prometheus metrics of the proxy, on a registry of its own per application."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..events import Event, EventType

__all__ = ["ProxyMetrics"]

_TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


class ProxyMetrics:
    """Prometheus metrics on a per-app ``CollectorRegistry`` (never the global one).

    Fed by subscribing to ``mesh.events`` (requests, failures, latency, tokens, cost,
    rotations, deactivations) and by the HTTP middleware (requests by route and status).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("pool", "model", "provider")
        r = self.registry
        self.requests = Counter("modelmesh_requests", "Routed requests by outcome",
                                (*labels, "outcome"), registry=r)
        self.attempt_failures = Counter("modelmesh_attempt_failures",
                                        "Failed upstream attempts", (*labels, "error"),
                                        registry=r)
        self.latency = Histogram(
            "modelmesh_request_latency_seconds", "Upstream latency of successful requests",
            labels, registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
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
        self.http = Counter("modelmesh_http_requests", "HTTP requests by route and status",
                            ("route", "status"), registry=r)
        self.http_latency = Histogram(
            "modelmesh_http_request_duration_seconds",
            "Time to handle a request (for a stream: until its last chunk was sent)",
            ("route",), registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self._success_cache: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._http_cache: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._dispatch: dict[str, Callable[[Event], None]] = {
            EventType.REQUEST_SUCCEEDED: self._succeeded,
            EventType.REQUEST_FAILED: self._failed,
            EventType.ATTEMPT_FAILED: self._attempt_failed,
            EventType.POOL_ROTATED: self._rotated,
            EventType.MODEL_DEACTIVATED: self._deactivated,
            EventType.MODEL_RECOVERED: self._recovered,
            EventType.PROVIDER_DOWN: self._down,
        }

    def on_event(self, event: Event) -> None:
        """Event listener: update the metrics an event touches."""
        fn = self._dispatch.get(event.type)
        if fn is not None:
            fn(event)

    @staticmethod
    def _labels(e: Event) -> tuple[str, str, str]:
        return e.pool or "", e.model or "", e.provider or ""

    def _success_children(self, labels: tuple[str, str, str]) -> tuple[Any, ...]:
        children = self._success_cache.get(labels)
        if children is None:
            children = (
                self.requests.labels(*labels, "success"),
                self.latency.labels(*labels),
                self.cost.labels(*labels),
                tuple((kind, self.tokens.labels(*labels, kind.removesuffix("_tokens")))
                      for kind in _TOKEN_KINDS),
            )
            self._success_cache[labels] = children
        return children

    def _succeeded(self, e: Event) -> None:
        requests, latency_child, cost_child, token_children = self._success_children(
            self._labels(e))
        data = e.data
        requests.inc()
        latency = data.get("latency_ms")
        if isinstance(latency, int | float):
            latency_child.observe(latency / 1000.0)
        usage = data.get("usage")
        if usage:
            for kind, child in token_children:
                n = usage.get(kind)
                if n:
                    child.inc(n)
        cost = data.get("cost")
        if isinstance(cost, int | float) and cost > 0:
            cost_child.inc(cost)

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        """Count one HTTP answer (label children cached: this runs on every request)."""
        key = (route, status)
        children = self._http_cache.get(key)
        if children is None:
            children = (self.http.labels(route, str(status)), self.http_latency.labels(route))
            self._http_cache[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def _failed(self, e: Event) -> None:
        self.requests.labels(*self._labels(e), "failure").inc()

    def _attempt_failed(self, e: Event) -> None:
        error = e.data.get("error_type") or e.data.get("error") or "error"
        self.attempt_failures.labels(*self._labels(e), str(error)[:60]).inc()

    def _rotated(self, e: Event) -> None:
        self.rotations.labels(e.pool or "").inc()

    def _deactivated(self, e: Event) -> None:
        self.deactivations.labels(e.pool or "", e.model or "",
                                  str(e.data.get("reason", ""))).inc()

    def _recovered(self, e: Event) -> None:
        self.recoveries.labels(e.pool or "", e.model or "").inc()

    def _down(self, e: Event) -> None:
        self.provider_down.labels(e.provider or "").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
