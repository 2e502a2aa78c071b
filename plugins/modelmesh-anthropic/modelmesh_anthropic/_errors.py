"""Anthropic error bodies and rate-limit headers → the ModelMesh error tree and RateLimitInfo.

Anthropic answers errors as ``{"type": "error", "error": {"type": ..., "message": ...},
"request_id": ...}``; the same ``error`` object arrives in-stream as an ``event: error``.
Types and their documented statuses: ``invalid_request_error`` 400, ``authentication_error``
401, ``billing_error`` 402, ``permission_error`` 403, ``not_found_error`` 404,
``request_too_large`` 413, ``rate_limit_error`` 429, ``api_error`` 500, ``timeout_error``
504, ``overloaded_error`` 529.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from modelmesh_core.errors import (
    AuthenticationError,
    ContextLengthError,
    ProviderError,
    RateLimitError,
)
from modelmesh_core.http import header_int, parse_retry_after
from modelmesh_core.http import kept_headers as keep
from modelmesh_core.redaction import redact
from modelmesh_core.types import RateLimitInfo

__all__ = [
    "STATUS_OF",
    "error_fields",
    "kept_headers",
    "make_error",
    "parse_rate_limit",
    "parse_retry_after",
]

STATUS_OF: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""Anthropic error ``type`` → the HTTP status Anthropic documents for it."""

_PREFIX = "anthropic-ratelimit-"
_SPEND_LIMIT = "enforced_spend_limit_reached"


# --------------------------------------------------------------------------- headers


@lru_cache(maxsize=256)
def _epoch(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.strip()).timestamp()
    except ValueError:
        return None


def _until(value: str | None) -> float | None:
    """Seconds from now until an RFC 3339 reset time (None when absent or unparsable)."""
    if not value:
        return None
    when = _epoch(value)
    return None if when is None else max(when - time.time(), 0.0)


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """``anthropic-ratelimit-*`` and ``retry-after`` as a ``RateLimitInfo`` (None if absent).

    Requests come from ``anthropic-ratelimit-requests-*``; tokens from
    ``anthropic-ratelimit-tokens-*`` (Anthropic reports there the most restrictive token limit
    in effect), else from ``anthropic-ratelimit-input-tokens-*``. Resets are RFC 3339 times,
    turned into seconds from now.
    """
    get = headers.get
    limit_requests = get(_PREFIX + "requests-limit")
    remaining_requests = get(_PREFIX + "requests-remaining")
    kind = "tokens" if get(_PREFIX + "tokens-limit") is not None else "input-tokens"
    limit_tokens = get(f"{_PREFIX}{kind}-limit")
    remaining_tokens = get(f"{_PREFIX}{kind}-remaining")
    retry = get("retry-after")
    if (
        limit_requests is None
        and remaining_requests is None
        and limit_tokens is None
        and remaining_tokens is None
        and retry is None
    ):
        return None
    return RateLimitInfo(
        limit_requests=header_int(limit_requests),
        remaining_requests=header_int(remaining_requests),
        reset_requests=_until(get(_PREFIX + "requests-reset")),
        limit_tokens=header_int(limit_tokens),
        remaining_tokens=header_int(remaining_tokens),
        reset_tokens=_until(get(f"{_PREFIX}{kind}-reset")),
        retry_after=parse_retry_after(headers) if retry is not None else None,
    )


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The rate-limit headers worth keeping on a ``ProviderError`` (lower-case names)."""
    return keep(headers, ("retry-after",), (_PREFIX,))


# --------------------------------------------------------------------------- bodies


def error_fields(
    raw: bytes | Mapping[str, Any], loads: Callable[[bytes], Any]
) -> tuple[str, str | None, str | None, str | None]:
    """``(message, type, request_id, details.error_code)`` of an Anthropic error body."""
    data: Any
    if isinstance(raw, Mapping):
        data = raw
    else:
        try:
            data = loads(raw) if raw else None
        except ValueError:
            data = None
    if isinstance(data, Mapping):
        error = data.get("error")
        request_id = data.get("request_id")
        if isinstance(error, Mapping):
            details = error.get("details")
            code = details.get("error_code") if isinstance(details, Mapping) else None
            kind = error.get("type")
            return (
                str(error.get("message") or ""),
                str(kind) if kind else None,
                str(request_id) if request_id else None,
                str(code) if code else None,
            )
    text = raw[:300].decode("utf-8", "replace").strip() if isinstance(raw, bytes) else ""
    return text, None, None, None


def make_error(
    status: int | None,
    raw: bytes | Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    provider: str,
    model_id: str | None,
    loads: Callable[[bytes], Any],
    prefill: bool = False,
) -> ProviderError:
    """Translate an Anthropic error (HTTP answer or in-stream ``error`` event)."""
    message, kind, request_id, code = error_fields(raw, loads)
    message = redact(message) if message else "(no error message)"
    if status is None and kind is not None:
        status = STATUS_OF.get(kind)
    tags = ", ".join(f"{k}={v}" for k, v in (("type", kind), ("request_id", request_id)) if v)
    text = f"{message} [{tags}]" if tags else message
    kept = kept_headers(headers)
    common: dict[str, Any] = {
        "provider_id": provider,
        "model_id": model_id,
        "status": status,
        "headers": kept,
        "rate_limit": parse_rate_limit(kept) if kept else None,
    }
    lowered = message.lower()
    if kind == "overloaded_error" or status == 529:
        return ProviderError(
            f"{text}; Anthropic is overloaded, another model may answer", retryable=True, **common
        )
    if kind == "rate_limit_error" or status == 429:
        quota = code == _SPEND_LIMIT or "spend limit" in lowered
        return RateLimitError(
            text, retry_after=parse_retry_after(kept), quota=quota, retryable=not quota, **common
        )
    if kind == "billing_error" or status == 402:
        return RateLimitError(
            f"{text}; check the billing of the Anthropic account of provider {provider!r}",
            quota=True,
            retryable=False,
            **common,
        )
    if status == 403 and "model" in lowered:
        # No access to this one model: the key is fine, the provider's other models stay.
        return ProviderError(
            f"{text}; this key may not use model {model_id!r}", retryable=False, **common
        )
    if kind in ("authentication_error", "permission_error") or status in (401, 403):
        return AuthenticationError(
            f"{text}; check the API key of provider {provider!r} (ANTHROPIC_API_KEY)",
            retryable=False,
            **common,
        )
    if "prompt is too long" in lowered or "context window" in lowered:
        return ContextLengthError(
            f"{text}; shorten the prompt or route to a model with a larger context window",
            retryable=False,
            **common,
        )
    if prefill and status == 400:
        text = (
            f"{text}; the request ended with an assistant prefill (a trailing assistant "
            "message) that this model may not accept"
        )
    retryable = status is None or status in (408, 409, 425) or status >= 500
    return ProviderError(text, retryable=retryable, **common)
