"""Secret masking: values that came from ``${env:…}`` / ``${secrets:…}`` never reach logs.

:class:`SecretStr` is a ``str`` (so it works as a header value) whose ``repr`` is masked.
Every interpolated value is also registered here so :func:`redact` can scrub it from any text
(log records, error messages, upstream error bodies) before it leaves the process.
"""

from __future__ import annotations

import re
import threading

__all__ = ["SecretStr", "redact", "register_secret"]

_MASK = "***"
_lock = threading.Lock()
_known: set[str] = set()
_pattern: re.Pattern[str] | None = None
_KEYLIKE = re.compile(r"\b(sk|pk|rk|gsk|xai|key)-[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")


class SecretStr(str):
    """A string whose ``repr`` does not show its value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "SecretStr('***')"


def register_secret(value: str) -> None:
    """Remember ``value`` so that :func:`redact` masks it (short values are ignored)."""
    global _pattern
    if len(value) < 6:
        return
    with _lock:
        if value in _known:
            return
        _known.add(value)
        ordered = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def redact(text: str) -> str:
    """``text`` with every registered secret, bearer token and key-like string masked."""
    # Whole key-shaped tokens first, so that a registered secret matching part of one cannot
    # leave the rest of it readable.
    text = _KEYLIKE.sub(_MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + _MASK, text)
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(_MASK, text)
    return text
