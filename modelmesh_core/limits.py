"""Limits on what a caller may send, decided once and shared by the edge and the adapters.

The proxy's request parser refuses a body that breaks one of these limits with a 400 naming
the field, before anything is routed; adapters that serialise a request for an upstream use
the same numbers, so a request the edge accepted can always be encoded (and a request built
in-process that cannot be encoded is the caller's error, never a provider failure).

Nesting depth counts containers: ``{"a": [1]}`` has depth 2. orjson refuses to serialise
beyond 254 levels and to parse beyond 1024; :data:`MAX_JSON_DEPTH` leaves room under the
first for the few levels an adapter wraps around what the caller sent.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MAX_ECHO_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_NAME_LENGTH",
    "OversizeReason",
    "cannot_be_too_deep",
    "clip",
    "too_deep",
]

MAX_JSON_DEPTH = 64
"""Deepest nesting of objects and arrays accepted in a request body (and sent upstream)."""

MAX_NAME_LENGTH = 256
"""Longest ``model`` name accepted (pools, capability paths and model ids are far shorter)."""

MAX_ECHO_CHARS = 120
"""Longest piece of caller input repeated back in an error message (names, paths)."""


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis) for echoing in a message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cannot_be_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text ``raw`` surely nests no deeper than ``limit`` (it opens no more
    containers than that in all): two C-speed counts that spare :func:`too_deep`'s walk for
    nearly every request."""
    return raw.count(b"{") + raw.count(b"[") <= limit


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """The path of the first container nested deeper than ``limit``, or None.

    Iterative (no recursion limit of its own) and cheap for ordinary requests: only dicts
    and lists are visited.
    """
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth, path = pop()
        if depth > limit:
            return path or "(body)"
        if isinstance(node, dict):
            for key, child in node.items():
                if isinstance(child, dict | list):
                    push((child, depth + 1, f"{path}.{key}" if path else str(key)))
        elif isinstance(node, list):
            for i, child in enumerate(node):
                if isinstance(child, dict | list):
                    push((child, depth + 1, f"{path}[{i}]"))
    return None


class OversizeReason(str):
    """A candidate filter's reason that says the *request* is too large for the model
    (prompt plus output beyond its context window, or ``max_tokens`` beyond its output
    limit); ``param`` names the field to blame.

    When every candidate of a pool was dropped for such a reason, no model can ever serve the
    request: the error is the caller's (400 ``context_length_exceeded``), not a 503.
    """

    param: str

    def __new__(cls, text: str, param: str) -> OversizeReason:
        self = super().__new__(cls, text)
        self.param = param
        return self
