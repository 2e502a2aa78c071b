"""The request log and the router's tracer (seed ``Router._request_logger`` and
``Router._observability``).

The request log turns each finished request into one ``request.log`` event for the configured
sinks, at a level chosen in ``observability.request_log``:

* ``metadata`` — ids, pool, model, provider, attempts, latency, overhead, tokens, cost, outcome;
* ``summary`` — plus a short preview of the last user message and of the answer;
* ``full`` — plus the messages and the answer, each capped at ``max_payload_chars``;
* ``off`` — nothing.

Every text is passed through :func:`~modelmesh_core.redaction.redact`. Nothing is built when no
sink listens. The tracer writes the router's traces to loguru at DEBUG / INFO / WARNING /
ERROR with structured fields (silent unless the application enables ``modelmesh_core``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ._log import logger
from .events import EventEmitter, EventType
from .redaction import redact

__all__ = ["PREVIEW_CHARS", "RequestLogger", "Tracer"]

PREVIEW_CHARS = 200
_LEVELS = ("off", "metadata", "summary", "full")


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def _last_user_text(messages: Any) -> str:
    for msg in reversed(messages or ()):
        if isinstance(msg, Mapping) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content
                                if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


class RequestLogger:
    """Emits one ``request.log`` event per finished request (when a sink listens)."""

    __slots__ = ("_events", "_level", "_limit")

    def __init__(self, events: EventEmitter, level: str = "metadata",
                 max_payload_chars: int = 2000) -> None:
        if level not in _LEVELS:
            raise ValueError(f"request log level must be one of {', '.join(_LEVELS)}")
        self._events = events
        self._level = _LEVELS.index(level)
        self._limit = max_payload_chars

    @property
    def active(self) -> bool:
        """True when a record would reach a sink."""
        return self._level > 0 and self._events.enabled

    def log(
        self,
        *,
        request_id: str,
        name: str,
        kind: str,
        pool: str | None,
        model: str | None,
        provider: str | None,
        attempts: int,
        latency_ms: float,
        overhead_ms: float | None,
        usage: Mapping[str, int] | None,
        cost: float,
        error: BaseException | None,
        request: Any = None,
        content: str | None = None,
    ) -> None:
        """Record one finished request (callers check :attr:`active` first)."""
        data: dict[str, Any] = {
            "name": name, "kind": kind, "attempts": attempts,
            "latency_ms": round(latency_ms, 3),
            "overhead_ms": round(overhead_ms, 3) if overhead_ms is not None else None,
            "prompt_tokens": (usage or {}).get("prompt_tokens", 0),
            "completion_tokens": (usage or {}).get("completion_tokens", 0),
            "cost": cost,
            "outcome": "ok" if error is None else type(error).__name__,
        }
        if error is not None:
            data["error"] = redact(str(error))[:500]
        messages = getattr(request, "messages", None)
        if self._level >= 2:
            data["prompt_preview"] = redact(_cap(_last_user_text(messages), PREVIEW_CHARS))
            if content is not None:
                data["response_preview"] = redact(_cap(content, PREVIEW_CHARS))
        if self._level >= 3:
            if messages is not None:
                raw = orjson.dumps(messages, default=str).decode()
                data["messages"] = redact(_cap(raw, self._limit))
            if content is not None:
                data["response"] = redact(_cap(content, self._limit))
        self._events.emit(EventType.REQUEST_LOG, pool=pool, model=model, provider=provider,
                          request_id=request_id, **data)


class Tracer:
    """The router's traces, through loguru with structured ``extra`` fields."""

    __slots__ = ()

    def debug(self, message: str, **fields: Any) -> None:
        """A trace useful when debugging routing (formatted only if DEBUG is on)."""
        logger.bind(**fields).opt(lazy=True).debug("{}", lambda: redact(message))

    def info(self, message: str, **fields: Any) -> None:
        """A notable but expected event."""
        logger.bind(**fields).info(redact(message))

    def warning(self, message: str, exc: BaseException | None = None, **fields: Any) -> None:
        """Something went wrong and was handled (failover, adapter bug)."""
        logger.bind(**fields).opt(exception=exc).warning(redact(message))

    def error(self, message: str, **fields: Any) -> None:
        """A request failed for good."""
        logger.bind(**fields).error(redact(message))
