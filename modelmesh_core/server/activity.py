"""Per-model activity over the last hour: a ring of per-minute counters fed by mesh events.

The proxy subscribes :meth:`Activity.on_event` to ``mesh.events`` at start-up. Each event
costs a dict lookup and a few integer stores: one fixed ring per model (60 minute slots of
:data:`FIELDS` counters, preallocated when the model is first seen), a slot reset when its
minute comes round again, nothing kept per request.

What is counted, per model:

* ``served``: requests the model answered (``request.succeeded``);
* ``failed``: upstream attempts that failed on it (``attempt.failed``, retries included);
* ``failovers``: answered requests that had failed on this model and were then answered by
  another one (each ``pool.rotated`` counts once for every distinct earlier model);
* ``continued``: streams that broke on this model mid-answer and were continued elsewhere
  (``stream.continued``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..events import Event, EventType

__all__ = ["FIELDS", "MINUTES", "Activity", "ModelActivity"]

MINUTES = 60
"""The window: this many one-minute slots, the current minute included."""

FIELDS = ("served", "failed", "failovers", "continued")
"""The counters of one slot, in slot order."""

_SERVED, _FAILED, _FAILOVERS, _CONTINUED = range(len(FIELDS))
_WIDTH = len(FIELDS)
_MAX_MODELS = 4096  # model ids come from configuration; the bound is a backstop


class ModelActivity:
    """One model's ring: ``MINUTES`` slots of ``FIELDS`` counters, each slot tagged with the
    minute (seconds since the epoch // 60) it counts."""

    __slots__ = ("counts", "minutes")

    def __init__(self) -> None:
        self.minutes = [-1] * MINUTES
        self.counts = [0] * (MINUTES * _WIDTH)

    def add(self, minute: int, field: int) -> None:
        """Count one ``field`` in ``minute`` (a slot from an hour ago is reset first)."""
        i = minute % MINUTES
        base = i * _WIDTH
        counts = self.counts
        if self.minutes[i] != minute:
            self.minutes[i] = minute
            for j in range(base, base + _WIDTH):
                counts[j] = 0
        counts[base + field] += 1

    def totals(self, now_minute: int) -> dict[str, int]:
        """Each counter summed over the ``MINUTES`` minutes ending with ``now_minute``."""
        sums = [0] * _WIDTH
        oldest = now_minute - MINUTES
        for i, minute in enumerate(self.minutes):
            if oldest < minute <= now_minute:
                base = i * _WIDTH
                for f in range(_WIDTH):
                    sums[f] += self.counts[base + f]
        return dict(zip(FIELDS, sums, strict=True))

    def series(self, now_minute: int, field: int) -> list[int]:
        """One counter per minute, oldest first, the last entry being ``now_minute``."""
        out = [0] * MINUTES
        for k in range(MINUTES):
            minute = now_minute - MINUTES + 1 + k
            i = minute % MINUTES
            if self.minutes[i] == minute:
                out[k] = self.counts[i * _WIDTH + field]
        return out


class Activity:
    """Every model's :class:`ModelActivity`, fed by :meth:`on_event`."""

    __slots__ = ("_dispatch", "models")

    def __init__(self) -> None:
        self.models: dict[str, ModelActivity] = {}
        self._dispatch: dict[str, Callable[[Event], None]] = {
            EventType.REQUEST_SUCCEEDED: self._succeeded,
            EventType.ATTEMPT_FAILED: self._attempt_failed,
            EventType.POOL_ROTATED: self._rotated,
            EventType.STREAM_CONTINUED: self._continued,
        }

    def on_event(self, event: Event) -> None:
        """Event listener (subscribe it to ``mesh.events``)."""
        fn = self._dispatch.get(event.type)
        if fn is not None:
            fn(event)

    def _ring(self, model: str) -> ModelActivity | None:
        ring = self.models.get(model)
        if ring is None and len(self.models) < _MAX_MODELS:
            ring = self.models[model] = ModelActivity()
        return ring

    def _count(self, model: str | None, ts: float, field: int) -> None:
        if model:
            ring = self._ring(model)
            if ring is not None:
                ring.add(int(ts // 60), field)

    def _succeeded(self, e: Event) -> None:
        self._count(e.model, e.timestamp, _SERVED)

    def _attempt_failed(self, e: Event) -> None:
        self._count(e.model, e.timestamp, _FAILED)

    def _continued(self, e: Event) -> None:
        self._count(e.model, e.timestamp, _CONTINUED)

    def _rotated(self, e: Event) -> None:
        previous = e.data.get("previous")
        if not isinstance(previous, list):
            return
        served = e.model
        for k, model in enumerate(previous):
            # A retry on the same model is not a failover; each earlier model counts once.
            if model != served and previous.index(model) == k:
                self._count(model, e.timestamp, _FAILOVERS)

    def totals(self, model: str, now: float) -> dict[str, int]:
        """``model``'s counters over the last hour (zeros for a model never seen)."""
        ring = self.models.get(model)
        if ring is None:
            return dict.fromkeys(FIELDS, 0)
        return ring.totals(int(now // 60))

    def series(self, model: str, now: float, field: str = "served") -> list[int]:
        """``model``'s per-minute ``field`` counts over the last hour, oldest first."""
        ring = self.models.get(model)
        if ring is None:
            return [0] * MINUTES
        return ring.series(int(now // 60), FIELDS.index(field))
