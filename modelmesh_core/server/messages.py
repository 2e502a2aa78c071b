"""The Anthropic-compatible front door: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``.

A client written for Anthropic's Messages API (the official ``anthropic`` SDK, and the tools
built on it) points its base URL at the proxy and is served by the same router as
``/v1/chat/completions``: the body is translated to the OpenAI-shaped
:class:`~modelmesh_core.types.CompletionRequest` (:mod:`.anthropic_wire`), routed to any
vendor with failover, and the answer translated back — a ``message`` object, or Anthropic's
SSE event sequence when ``stream`` is true. The same virtual keys (``x-api-key`` or
``Authorization: Bearer``), pool scoping, rate limits and budgets apply, and answers carry
the ``x-modelmesh-*`` headers plus Anthropic's ``request-id``.

Errors are Anthropic-shaped (``{"type": "error", "error": {"type", "message"},
"request_id"}``, see :func:`~.anthropic_wire.anthropic_error`), before a stream starts as an
HTTP status, after it started as an in-band ``event: error``.

``count_tokens`` answers ``{"input_tokens": n}`` from the router's own estimate (characters /
4 plus a small per-message overhead, the tool definitions included): ModelMesh holds no
tokenizer for the vendors behind it, so the count is an approximation, marked by the header
``x-modelmesh-token-count: estimate``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._log import logger
from ..redaction import redact
from ..router import estimate_request
from ..types import CompletionRequest, RoutingOptions
from ..wire import WireError, dumps
from .anthropic_wire import (
    EventEncoder,
    anthropic_error,
    error_event,
    message_to_dict,
    parse_count_tokens_request,
    parse_messages_request,
)
from .auth import KeyState
from .errors import REQUEST_ID, ClientGone
from .routes import SHALLOW

if TYPE_CHECKING:
    from .routes import ProxyServer

__all__ = ["MESSAGES_PREFIX", "MessagesAPI", "anthropic_error_response"]

MESSAGES_PREFIX = "/v1/messages"
"""Paths under this prefix answer errors in Anthropic's shape."""

_JSON = "application/json"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def anthropic_error_response(request: web.Request, exc: BaseException,
                             available: Sequence[str] | None = None) -> web.Response:
    """The Anthropic-shaped error response for an exception raised while handling
    ``request`` (the counterpart of :func:`.errors.error_response`)."""
    rid = request.get(REQUEST_ID, "")
    status, body, headers = anthropic_error(exc, available=available, request_id=rid)
    if status >= 500 and status not in (502, 504, 529) and not isinstance(exc, WireError):
        logger.opt(exception=exc).debug("unexpected error on {}", request.path[:120])
        logger.warning("internal error on {} {}: {}", request.method, request.path[:120],
                       redact(repr(exc))[:300])
    headers = dict(headers)
    headers["x-request-id"] = headers["request-id"] = rid
    return web.Response(status=status, body=dumps(body), content_type=_JSON, headers=headers)


class MessagesAPI:
    """The ``/v1/messages`` handlers of one :class:`~modelmesh_core.server.routes.ProxyServer`
    (its keys, limits, router and metrics)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    async def _prepare(self, request: web.Request, parse: Any
                       ) -> tuple[KeyState | None, str, CompletionRequest, RoutingOptions]:
        server = self.server
        key, body = await server._admit(request)
        name, creq = parse(body, shallow=request[SHALLOW])
        options = server.options(request, key)
        if key is not None and key.pools is not None:
            await server.authorize_pool(key, name, options)
        return key, name, creq, options

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages``."""
        server = self.server
        key, name, creq, options = await self._prepare(request, parse_messages_request)
        router = server._router()
        if creq.stream:
            return await self._stream(request, name, creq, options, key)
        resp = await server._limited(router.complete(name, creq, options))
        server._charge(key, resp.metadata.get("cost"))
        headers = server.result_headers(resp, request[REQUEST_ID])
        headers["request-id"] = request[REQUEST_ID]
        return web.Response(body=dumps(message_to_dict(resp)), content_type=_JSON,
                            headers=headers)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages/count_tokens``: an estimate for a model the caller may use."""
        _, name, creq, options = await self._prepare(request, parse_count_tokens_request)
        await self.server._router().pool_for(name, options)  # 404 for an unknown model
        tokens, _ = estimate_request(creq)
        if creq.tools:
            tokens += len(dumps(creq.tools)) // 4
        return web.Response(body=dumps({"input_tokens": tokens}), content_type=_JSON,
                            headers={"request-id": request[REQUEST_ID],
                                     "x-modelmesh-token-count": "estimate"})

    async def _stream(self, request: web.Request, name: str, creq: CompletionRequest,
                      options: RoutingOptions, key: KeyState | None) -> web.StreamResponse:
        server = self.server
        sem = server._semaphore
        if sem is not None and sem.locked():
            raise WireError("The proxy is at its concurrency limit; retry shortly.",
                            status=503, code="overloaded", headers={"Retry-After": "1"})
        async with contextlib.AsyncExitStack() as stack:
            if sem is not None:
                await stack.enter_async_context(sem)
            server.active_streams += 1
            stack.callback(server._stream_done)
            agen = server._router().stream(name, creq, options)
            stack.push_async_callback(agen.aclose)  # type: ignore[attr-defined]
            try:
                first = await agen.__anext__()
            except StopAsyncIteration:
                raise WireError("The upstream ended the stream without any chunk.",
                                status=502, code="empty_stream") from None
            headers = server.result_headers(first, request[REQUEST_ID])
            headers["request-id"] = request[REQUEST_ID]
            headers.update(_SSE_HEADERS)
            resp = web.StreamResponse(status=200, headers=headers)
            await resp.prepare(request)
            encoder = EventEncoder(first, input_estimate=estimate_request(creq)[0])
            try:
                await _relay(resp, encoder, first, agen)
            finally:
                # However the stream ended, the router leaves its cost on the last chunk once
                # the generator is closed: the key pays for what was used.
                await agen.aclose()  # type: ignore[attr-defined]
                server._charge(key, encoder.cost)
            return resp
        raise ClientGone  # pragma: no cover - the exit stack never swallows


async def _relay(resp: web.StreamResponse, encoder: EventEncoder, first: Any,
                 agen: AsyncIterator[Any]) -> bool:
    """Write the event stream; True when it completed, False when it broke or the client
    left (a break after the start is reported in-band, as Anthropic does)."""
    write = resp.write
    try:
        await write(encoder.opening() + encoder.frames(first))
        async for chunk in agen:
            data = encoder.frames(chunk)
            if data:
                await write(data)
        await write(encoder.closing())
    except ConnectionResetError:
        logger.debug("client went away mid-stream; upstream request cancelled")
        return False
    except Exception as exc:
        logger.opt(exception=exc).debug("messages stream failed after it started")
        with contextlib.suppress(ConnectionResetError):
            await write(error_event(exc))
            await resp.write_eof()
        return False
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return True
