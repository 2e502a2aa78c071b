"""Built-in observability sinks: null, console, JSON-lines file, Python callback."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import orjson
from attrs import frozen

from ..errors import ConfigError
from ..events import Event
from ..hookspecs import hookimpl
from ..redaction import redact
from ..types import SinkSpec

__all__ = ["CallbackSink", "ConsoleSink", "JsonLogSink", "NullSink"]


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
    ]
