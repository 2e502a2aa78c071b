"""A small HTTP base for provider adapters of vendors with plain JSON (or bytes) APIs.

:class:`VendorHTTP` (built on :class:`~modelmesh_core.http.HTTPAdapter`, the HTTP adapter
toolkit) does what every such adapter needs and nothing vendor-specific: it sends
through the mesh's shared session with explicit timeouts (``connect`` on the socket,
``first_byte`` for the headers, ``idle`` for each body read, ``total`` for the call), reads
JSON or bytes, and turns every failure into the ModelMesh error tree — statuses (401/403 →
:class:`AuthenticationError`, 429 → :class:`RateLimitError` with ``Retry-After``, 408/409/5xx →
retryable, other 4xx → the caller's), transport errors and cut bodies (retryable), wrong
content types and malformed JSON (retryable, naming the base URL). The vendor's error body is
read by :meth:`VendorHTTP.error_message` (override it); messages pass through
:func:`~modelmesh_core.redaction.redact`, so keys never reach logs or errors.

Used by the ``modelmesh-elevenlabs``, ``modelmesh-assemblyai``, ``modelmesh-jina`` and
``modelmesh-websearch`` plugins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

from .errors import AuthenticationError, ProviderError, ProviderTimeoutError, RateLimitError
from .http import HTTPAdapter, bound, call_window
from .http import parse_retry_after as retry_after_seconds
from .redaction import redact, register_secret
from .types import ProviderContext, Timeouts

__all__ = ["Deadline", "VendorHTTP", "retry_after_seconds"]


class Deadline:
    """The deadlines of one call: ``total`` from its start, ``first_byte`` and ``idle`` from
    now. ``bound(span)`` is the earlier of now + span and the total deadline, and which of
    the two it is."""

    __slots__ = ("end", "loop", "timeouts")

    def __init__(self, timeouts: Timeouts) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeouts = timeouts
        self.end = call_window(timeouts)[1]

    def bound(self, span: float | None) -> tuple[float | None, bool]:
        """``(when, is_total)``."""
        return bound(self.loop.time(), span, self.end)


class VendorHTTP(HTTPAdapter):
    """The transport of a vendor adapter (see the module docstring).

    Args:
        context: what the core hands the provider factory (name, shared session, JSON
            codec).
        base_url: the vendor's base URL (no trailing slash).
        headers: sent with every request (the auth header among them).
        secrets: values to mask wherever text is logged or raised (API keys).
        vendor: the vendor's name for messages (``"Jina"``).
    """

    def __init__(self, context: ProviderContext, *, base_url: str, headers: Mapping[str, str],
                 secrets: tuple[str, ...] = (), vendor: str) -> None:
        for secret in secrets:
            if secret:
                register_secret(secret)
        super().__init__(context, base_url=base_url.rstrip("/"), api=f"the {vendor} API")
        self.vendor = vendor
        self.dumps = self._dumps
        self.loads = self._loads
        self._headers = {"Accept": "application/json", **headers}
        self._json_headers = {**self._headers, "Content-Type": "application/json"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, base_url={self.base_url!r})"
    # ------------------------------------------------------------------ errors

    def error_message(self, payload: Any, raw: bytes) -> str:
        """The message of a vendor error body (override for the vendor's shape)."""
        if isinstance(payload, dict):
            for key in ("message", "error", "detail"):
                value = payload.get(key)
                if isinstance(value, str) and value:
                    return value
                if isinstance(value, dict):
                    inner = value.get("message") or value.get("error")
                    if isinstance(inner, str) and inner:
                        return inner
        return raw[:300].decode("utf-8", "replace").strip() or "(no error message)"

    def error_from(self, status: int, raw: bytes, headers: Mapping[str, str],
                   model_id: str | None) -> ProviderError:
        """An error answer as a ModelMesh error."""
        try:
            payload = self.loads(raw) if raw else None
        except ValueError:
            payload = None
        message = redact(self.error_message(payload, raw))
        common: dict[str, Any] = {"provider_id": self.name, "model_id": model_id,
                                  "status": status}
        kept = {k.lower(): v for k, v in headers.items() if k.lower() == "retry-after"}
        if status in (401, 403):
            return AuthenticationError(f"{message}; check the {self.vendor} API key of "
                                       f"provider {self.name!r}", headers=kept, **common)
        if status == 429:
            return RateLimitError(message, retry_after=retry_after_seconds(headers),
                                  headers=kept, **common)
        if status == 402:
            return RateLimitError(f"{message} (payment required: the account is out of "
                                  "credits)", quota=True, headers=kept, **common)
        retryable = status in (408, 409, 425) or status >= 500
        return ProviderError(message, retryable=retryable, headers=kept,
                             retry_after=retry_after_seconds(headers) if retryable else None,
                             **common)

    def timeout_error(self, phase: str, model_id: str | None,
                      timeouts: Timeouts) -> ProviderTimeoutError:
        """The call overran its ``phase`` timeout."""
        return ProviderTimeoutError(
            f"{self.vendor} did not answer within the {phase} timeout of "
            f"{getattr(timeouts, phase)}s", phase=phase, provider_id=self.name,
            model_id=model_id)

    def transport_error(self, exc: BaseException, model_id: str | None, *,
                        interrupted: bool = False) -> ProviderError:
        """A connection or body failure (retryable)."""
        return ProviderError(f"{type(exc).__name__}: {redact(str(exc)) or 'no detail'} "
                             f"(base URL {self.base_url})", provider_id=self.name,
                             model_id=model_id, retryable=True)

    # ------------------------------------------------------------------ calls

    async def send(self, method: str, url: URL | str, *, model_id: str | None,
                   timeouts: Timeouts, deadline: Deadline, json: Any = None,
                   data: bytes | None = None, headers: Mapping[str, str] | None = None,
                   params: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """Send one request; a response with status < 400 (headers read), else the error."""
        if json is not None:
            data = self.dumps(json)
            sent = self._json_headers if headers is None else {**self._json_headers, **headers}
        else:
            sent = self._headers if headers is None else {**self._headers, **headers}
        resp = await self.request(method, url, data, sent, timeouts, model_id,
                                  deadline.loop.time(), deadline.end, params)
        if resp.status >= 400:
            raw = b""
            try:
                raw = await self.read_bytes(resp, model_id=model_id, timeouts=timeouts,
                                            deadline=deadline)
            except ProviderError:
                pass
            raise self.error_from(resp.status, raw, resp.headers, model_id)
        return resp

    async def read_bytes(self, resp: aiohttp.ClientResponse, *, model_id: str | None,
                         timeouts: Timeouts, deadline: Deadline) -> bytes:
        """The whole body, each read bounded by ``idle`` and the total deadline; a cut body
        raises (retryable), never returns short."""
        return await self.read_chunked(resp, timeouts, model_id, deadline.end)

    async def read_json(self, resp: aiohttp.ClientResponse, *, model_id: str | None,
                        timeouts: Timeouts, deadline: Deadline) -> Any:
        """The body as JSON (a non-JSON content type or malformed JSON is retryable)."""
        ctype = resp.headers.get("Content-Type", "")
        raw = await self.read_bytes(resp, model_id=model_id, timeouts=timeouts,
                                    deadline=deadline)
        if "json" not in ctype:
            raise self.bad_payload(f"expected JSON, got content type {ctype or 'none'!r}",
                                   model_id)
        try:
            return self.loads(raw)
        except ValueError:
            raise self.bad_payload(f"the answer is not valid JSON ({len(raw)} bytes)",
                                   model_id) from None

    async def call_json(self, method: str, url: URL | str, *, model_id: str | None,
                        timeouts: Timeouts, deadline: Deadline | None = None,
                        json: Any = None, data: bytes | None = None,
                        headers: Mapping[str, str] | None = None,
                        params: Mapping[str, str] | None = None) -> Any:
        """Send and read a JSON object back (anything else is a retryable error)."""
        deadline = deadline or Deadline(timeouts)
        resp = await self.send(method, url, model_id=model_id, timeouts=timeouts,
                               deadline=deadline, json=json, data=data, headers=headers,
                               params=params)
        payload = await self.read_json(resp, model_id=model_id, timeouts=timeouts,
                                       deadline=deadline)
        if not isinstance(payload, dict):
            raise self.bad_payload("the answer is not a JSON object", model_id)
        return payload

    async def close(self) -> None:
        """Nothing to release: the session belongs to the mesh."""
