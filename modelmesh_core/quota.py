"""What providers tell the ledger: maintenance windows (cron) and the quota an upstream
reports in its rate-limit headers.

* :class:`Cron` — a five-field cron expression (``minute hour day-of-month month
  day-of-week``, UTC) with ``*``, numbers, ranges ``a-b``, lists ``a,b``, steps ``*/n`` /
  ``a-b/n`` and English names (``sun``…``sat``, ``jan``…``dec``); when both day fields are
  restricted a day matching either one matches (as in Vixie cron). No dependency: the
  schedule is looked up once per window boundary, not per request.
* :class:`Maintenance` — ``providers.<name>.maintenance: [{cron, duration}]``: when a cron
  time fires, the provider is in maintenance for ``duration`` seconds.
* :class:`UpstreamQuota` — the remaining requests / tokens an upstream reported for one
  provider entry and model (one API key), and when they reset.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .types import Limits

if TYPE_CHECKING:
    from .config import ProviderConfig
    from .types import ModelInfo

__all__ = ["Cron", "CronError", "Maintenance", "UpstreamQuota", "catalogue_limits",
           "cron_error"]

_NO_LIMITS = Limits()

_DOW = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MON = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                    "sep", "oct", "nov", "dec"), start=1)}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MON), ("day of week", 0, 7, _DOW))
_SEARCH_DAYS = 366 * 5


class CronError(ValueError):
    """A cron expression that cannot be parsed (the message says which field and why)."""


def _value(text: str, names: dict[str, int], name: str) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise CronError(f"{name}: {text!r} is not a number")
    return int(text)


def _field(text: str, name: str, lo: int, hi: int, names: dict[str, int]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            left, _, right = rng.partition("-")
            a, b = _value(left, names, name), _value(right, names, name)
        else:
            a = _value(rng, names, name)
            b = hi if step_text else a
        if not lo <= a <= hi or not lo <= b <= hi or a > b:
            raise CronError(f"{name}: {part!r} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return frozenset(out)


class Cron:
    """A parsed five-field cron expression in UTC (see the module docstring)."""

    __slots__ = ("any_dom", "any_dow", "dom", "dow", "hours", "minutes", "months", "text")

    def __init__(self, text: str) -> None:
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"{text!r} needs five fields (minute hour day-of-month month "
                            f"day-of-week), found {len(parts)}")
        sets = [_field(p, n, lo, hi, names) for p, (n, lo, hi, names) in zip(parts, _FIELDS,
                                                                                 strict=True)]
        self.text = text
        self.minutes = sorted(sets[0])
        self.hours = sorted(sets[1])
        self.dom, self.months = sets[2], sets[3]
        self.dow = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
        self.any_dom, self.any_dow = parts[2] == "*", parts[4] == "*"

    def _day_matches(self, t: time.struct_time) -> bool:
        if t.tm_mon not in self.months:
            return False
        dom = t.tm_mday in self.dom
        dow = (t.tm_wday + 1) % 7 in self.dow  # struct_time: Monday is 0
        if self.any_dom or self.any_dow:
            return dom and dow
        return dom or dow

    def next_after(self, ts: float) -> float | None:
        """The first time this expression fires strictly after ``ts`` (None within five
        years: an impossible date such as February 30th)."""
        start = int(ts // 60) * 60 + 60
        day0 = start - start % 86400
        for d in range(_SEARCH_DAYS):
            day = day0 + d * 86400
            if not self._day_matches(time.gmtime(day)):
                continue
            for h in self.hours:
                for m in self.minutes:
                    at = day + h * 3600 + m * 60
                    if at >= start:
                        return float(at)
        return None

    def last_at_or_before(self, ts: float, horizon: float) -> float | None:
        """The last time this expression fired at or before ``ts``, if within ``horizon``
        seconds."""
        end = int(ts // 60) * 60
        day_end = end - end % 86400
        days = int(horizon // 86400) + 1
        for d in range(days + 1):
            day = day_end - d * 86400
            if not self._day_matches(time.gmtime(day)):
                continue
            for h in reversed(self.hours):
                for m in reversed(self.minutes):
                    at = day + h * 3600 + m * 60
                    if at <= end:
                        return float(at) if ts - at < horizon else None
        return None


def cron_error(text: str) -> str | None:
    """Why ``text`` is not a cron expression (None when it is one)."""
    try:
        Cron(text)
    except CronError as exc:
        return str(exc)
    return None


class Maintenance:
    """The maintenance windows of one provider: ``(cron, seconds)`` pairs.

    :meth:`until` answers per request from a cached boundary: it recomputes only when the
    clock passes the end of the current window or the start of the next one.
    """

    __slots__ = ("_boundary", "_until", "windows")

    def __init__(self, windows: Sequence[tuple[Cron, float]]) -> None:
        self.windows = tuple(windows)
        self._boundary = -1.0
        self._until: float | None = None

    def until(self, now: float) -> float | None:
        """When the maintenance window holding ``now`` ends (None outside one)."""
        if now < self._boundary:
            return self._until
        until: float | None = None
        for cron, span in self.windows:
            last = cron.last_at_or_before(now, span)
            if last is not None and last + span > now:
                until = max(until or 0.0, last + span)
        if until is not None:
            self._until, self._boundary = until, until
            return until
        starts = [s for s in (c.next_after(now) for c, _ in self.windows) if s is not None]
        self._until = None
        self._boundary = min(starts) if starts else now + 86400.0
        return None


class UpstreamQuota:
    """What an upstream last said about one provider entry and model (one API key):
    requests and tokens remaining until their reset times. Admissions since then are taken
    off locally; the next answer's headers replace the numbers."""

    __slots__ = ("requests", "requests_until", "tokens", "tokens_until")

    def __init__(self) -> None:
        self.requests: float | None = None
        self.requests_until = 0.0
        self.tokens: float | None = None
        self.tokens_until = 0.0

    def refusal(self, now: float, tokens: float) -> tuple[str, float] | None:
        """``(reason, seconds to wait)`` when the upstream has no room for one more request
        of ``tokens`` tokens, else None."""
        if self.requests is not None and now < self.requests_until and self.requests < 1:
            return (f"upstream reports no requests left (resets in "
                    f"{self.requests_until - now:.0f}s)", self.requests_until - now)
        if (self.tokens is not None and now < self.tokens_until and tokens
                and self.tokens < tokens):
            return (f"upstream reports {max(self.tokens, 0):g} tokens left (resets in "
                    f"{self.tokens_until - now:.0f}s)", self.tokens_until - now)
        return None

    def take(self, now: float, tokens: float) -> None:
        """An admitted attempt uses one request and ``tokens`` tokens of what is left."""
        if self.requests is not None and now < self.requests_until:
            self.requests -= 1
        if self.tokens is not None and now < self.tokens_until:
            self.tokens -= tokens


def utc_text(ts: float) -> str:
    """``2026-01-31 03:00 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def timegm(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """Epoch seconds of a UTC date and time (for tests and the simulator)."""
    return float(calendar.timegm((year, month, day, hour, minute, 0)))


def catalogue_limits(info: ModelInfo | None, provider: ProviderConfig | None) -> Limits:
    """A model's limits when its configuration sets none: the catalogue's published free-tier
    quotas when its provider is configured with ``free_tier: true``, else none."""
    if info is not None and info.free_limits is not None and provider is not None \
            and provider.free_tier:
        return info.free_limits
    return _NO_LIMITS
