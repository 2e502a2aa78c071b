"""Prometheus metrics of the proxy, on a registry of its own per application.

The routing metrics are the ``modelmesh.prometheus.v1`` sink's (one implementation for the
proxy and for applications embedding the library: the same names, the ``status_class`` and
``reason`` labels on failed attempts, ``modelmesh_failovers_total``); the proxy adds its HTTP
metrics (requests by route and status, and how long each took).
"""

from __future__ import annotations

from typing import Any

from ..builtin.sinks import PrometheusConfig, PrometheusSink
from ..events import Event

__all__ = ["ProxyMetrics"]


class ProxyMetrics:
    """Prometheus metrics on a per-app ``CollectorRegistry`` (never the global one).

    Fed by subscribing :meth:`on_event` to ``mesh.events`` (requests, failures, failovers,
    latency, tokens, cost, rotations, deactivations) and by the HTTP middleware
    (:meth:`observe_http`).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self._sink = PrometheusSink(PrometheusConfig(registry=self.registry))
        r = self.registry
        self.http = Counter("modelmesh_http_requests", "HTTP requests by route and status",
                            ("route", "status"), registry=r)
        self.http_latency = Histogram(
            "modelmesh_http_request_duration_seconds",
            "Time to handle a request (for a stream: until its last chunk was sent)",
            ("route",), registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self._http_cache: dict[tuple[str, int], tuple[Any, Any]] = {}

    def on_event(self, event: Event) -> None:
        """Event listener: update the routing metrics an event touches."""
        self._sink.emit(event)

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        """Count one HTTP answer (label children cached: this runs on every request)."""
        key = (route, status)
        children = self._http_cache.get(key)
        if children is None:
            children = (self.http.labels(route, str(status)), self.http_latency.labels(route))
            self._http_cache[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
