"""The one implementation of time windows: rolling minute, UTC day, calendar month, and the
same shifted to a provider-specific reset hour.

Every counter that has a window (the admission ledger, budgets, virtual keys, model usage
statistics, quota cooldowns) takes its window id and its end from here.

* ``MINUTE`` is a *rolling* 60 s window kept in one-second buckets: a unit counted at ``t``
  counts until ``floor(t) + 61`` — between 60 and 61 seconds, never less, so a limit is
  never exceeded over any 60 s span.
* ``DAY`` is the UTC day, or the 24 h starting at ``reset_hour`` (UTC) each day.
* ``MONTH`` is the calendar month in UTC, or starting at ``reset_hour`` on the 1st.
"""

from __future__ import annotations

import calendar
import time

__all__ = [
    "DAY",
    "MINUTE",
    "MONTH",
    "ROLLING_SPAN",
    "bucket_alive",
    "next_utc_day",
    "utc_day",
    "utc_month",
    "window_end",
    "window_id",
]

MINUTE = 0
DAY = 1
MONTH = 2

ROLLING_SPAN = 61
"""Seconds after the start of its one-second bucket that a unit stays in a rolling minute."""

_NAMES = {MINUTE: "minute", DAY: "day", MONTH: "month"}


def utc_day(ts: float) -> int:
    """Days since the epoch, UTC (the daily window key)."""
    return int(ts // 86400)


def utc_month(ts: float) -> int:
    """``year * 12 + month - 1`` in UTC (the monthly window key)."""
    t = time.gmtime(ts)
    return t.tm_year * 12 + t.tm_mon - 1


def next_utc_day(ts: float, reset_hour: float = 0.0) -> float:
    """The epoch second at which the daily window holding ``ts`` ends."""
    return window_end(DAY, window_id(DAY, ts, reset_hour), reset_hour)


def window_id(kind: int, now: float, reset_hour: float = 0.0) -> int:
    """The id of the ``kind`` window holding ``now`` (for ``MINUTE``: its one-second
    bucket)."""
    if kind == MINUTE:
        return int(now)
    shifted = now - reset_hour * 3600.0
    if kind == DAY:
        return int(shifted // 86400)
    return utc_month(shifted)


def window_end(kind: int, wid: int, reset_hour: float = 0.0) -> float:
    """When window ``wid`` of ``kind`` ends (for ``MINUTE``: when the bucket leaves the
    rolling minute)."""
    if kind == MINUTE:
        return float(wid + ROLLING_SPAN)
    if kind == DAY:
        return (wid + 1) * 86400.0 + reset_hour * 3600.0
    year, month = divmod(wid + 1, 12)
    return float(calendar.timegm((year, month + 1, 1, 0, 0, 0))) + reset_hour * 3600.0


def bucket_alive(bucket: int, now: float) -> bool:
    """Whether a rolling-minute bucket still counts at ``now``."""
    return bucket + ROLLING_SPAN > now


def window_name(kind: int) -> str:
    """``minute``, ``day`` or ``month``."""
    return _NAMES[kind]
