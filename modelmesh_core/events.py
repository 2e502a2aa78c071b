"""Events: what the router reports to observability sinks and callbacks.

Emitting costs one attribute check when nobody listens; an :class:`Event` is only built when
at least one sink or callback is attached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from attrs import Factory, frozen

from ._log import logger

__all__ = ["Event", "EventEmitter", "EventType", "Sink"]


class EventType:
    """Event type names."""

    REQUEST_ROUTED = "request.routed"
    REQUEST_SUCCEEDED = "request.succeeded"
    REQUEST_FAILED = "request.failed"
    ATTEMPT_FAILED = "attempt.failed"
    MODEL_DEACTIVATED = "model.deactivated"
    MODEL_RECOVERED = "model.recovered"
    POOL_ROTATED = "pool.rotated"
    POOL_EXHAUSTED = "pool.exhausted"
    PROVIDER_DOWN = "provider.down"
    PROVIDER_UP = "provider.up"
    BUDGET_ALERT = "budget.alert"
    REQUEST_LOG = "request.log"
    REQUEST_CANCELLED = "request.cancelled"
    STREAM_CONTINUED = "stream.continued"
    MODEL_DISCOVERED = "model.discovered"

    ALL: tuple[str, ...] = (
        REQUEST_ROUTED, REQUEST_SUCCEEDED, REQUEST_FAILED, ATTEMPT_FAILED, MODEL_DEACTIVATED,
        MODEL_RECOVERED, POOL_ROTATED, POOL_EXHAUSTED, PROVIDER_DOWN, PROVIDER_UP, BUDGET_ALERT,
        REQUEST_LOG, REQUEST_CANCELLED, STREAM_CONTINUED, MODEL_DISCOVERED,
    )


@frozen(kw_only=True)
class Event:
    """One observability event."""

    type: str
    timestamp: float
    pool: str | None = None
    model: str | None = None
    provider: str | None = None
    request_id: str | None = None
    data: dict[str, Any] = Factory(dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "type": self.type, "timestamp": self.timestamp, "pool": self.pool,
            "model": self.model, "provider": self.provider, "request_id": self.request_id,
            **({"data": self.data} if self.data else {}),
        }


class Sink(Protocol):
    """What a ``SinkSpec.factory`` returns."""

    def emit(self, event: Event) -> None: ...


class EventEmitter:
    """Fans events out to sinks and callbacks; a failing sink is logged, never raised."""

    __slots__ = ("_clock", "_listeners", "enabled")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._listeners: list[Callable[[Event], None]] = []
        self.enabled = False

    def subscribe(self, listener: Callable[[Event], None] | Sink) -> Callable[[], None]:
        """Attach a callback (or a sink's ``emit``); returns a function that detaches it."""
        emit = getattr(listener, "emit", None)
        fn: Callable[[Event], None] = emit if emit is not None else listener  # type: ignore[assignment]
        self._listeners.append(fn)
        self.enabled = True

        def unsubscribe() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)
            self.enabled = bool(self._listeners)

        return unsubscribe

    def emit(
        self,
        type: str,
        *,
        pool: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        request_id: str | None = None,
        **data: Any,
    ) -> None:
        """Build and deliver an event (callers check ``enabled`` first on hot paths)."""
        if not self.enabled:
            return
        event = Event(type=type, timestamp=self._clock(), pool=pool, model=model,
                      provider=provider, request_id=request_id, data=data)
        for fn in self._listeners:
            try:
                fn(event)
            except Exception as exc:
                logger.opt(exception=exc).warning("event sink failed on {}", type)
