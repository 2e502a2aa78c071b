"""Read deadlines for streamed upstream bodies, with one lazily re-armed timer.

A streaming adapter reads an answer line by line under three deadlines: the first event must
come within ``first_byte``, each later line within ``idle`` of the previous one, and
everything within ``total``. Wrapping every ``readline()`` in ``asyncio.timeout_at`` costs a
timer handle (a heap push and a cancel) per line — two per SSE event. :class:`ReadDeadline`
keeps one timer instead: reading only records the time of progress, and when the timer fires
it either finds progress and re-arms itself for the new deadline, or fails the stream reader
with :class:`ReadTimeout` (``phase`` says which deadline passed). Time spent while the
consumer is not reading (a slow caller applying back-pressure) is never held against the
upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ReadDeadline", "ReadTimeout"]


class ReadTimeout(Exception):
    """A read deadline passed; ``phase`` is ``first_byte``, ``idle`` or ``total``."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"no data within the {phase} timeout")
        self.phase = phase


class ReadDeadline:
    """The deadlines of one streamed body (see the module docstring).

    ``content`` is the body's ``aiohttp.StreamReader`` (anything with ``set_exception``);
    ``start`` is the loop time the request was sent; ``first_byte`` / ``idle`` are spans in
    seconds and ``total`` an absolute loop time (each None to disable it). Call
    :meth:`reading` before awaiting a read and :meth:`read` after it returns; call
    :meth:`close` when the body is done with.
    """

    __slots__ = ("_content", "_first", "_handle", "_idle", "_last", "_loop", "_reading",
                 "_total", "started")

    def __init__(self, content: Any, *, start: float, first_byte: float | None,
                 idle: float | None, total: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._content = content
        self._first = None if first_byte is None else start + first_byte
        self._idle = idle
        self._total = total
        self._last: float | None = None
        self._reading = False
        self.started = False
        self._handle: asyncio.TimerHandle | None = None
        self._arm()

    def _deadline(self) -> tuple[float | None, str]:
        if self._last is None:
            when, phase = self._first, "first_byte"
        elif self._idle is None:
            when, phase = None, "idle"
        else:
            when, phase = self._last + self._idle, "idle"
        total = self._total
        if total is not None and (when is None or total <= when):
            return total, "total"
        return when, phase

    def _arm(self) -> None:
        when, _ = self._deadline()
        self._handle = None if when is None else self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        if not self._reading:
            # The consumer is not waiting on the upstream: nothing to hold against it yet.
            if self._last is not None:
                self._last = now
            self._handle = self._loop.call_at(now + (self._idle or 1.0), self._fire)
            return
        when, phase = self._deadline()
        if when is None:
            return
        if now < when:  # progress since the timer was set: look again at the new deadline
            self._handle = self._loop.call_at(when, self._fire)
            return
        self._content.set_exception(ReadTimeout(phase))

    def reading(self) -> None:
        """A read is about to wait on the upstream."""
        self._reading = True

    def read(self) -> None:
        """A read returned data: the idle deadline runs from now (once the stream started)."""
        self._reading = False
        if self.started:
            self._last = self._loop.time()

    def start(self) -> None:
        """The first event was delivered: the first-byte deadline gives way to the idle one."""
        if not self.started:
            self.started = True
            self._last = self._loop.time()
            # The only time a deadline can move earlier: re-arm (once per stream).
            if self._handle is not None:
                self._handle.cancel()
            self._arm()

    def close(self) -> None:
        """Stop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
