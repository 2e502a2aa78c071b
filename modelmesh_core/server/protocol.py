"""The HTTP connection layer under the proxy: bounded, quiet, and in the OpenAI error shape.

aiohttp's own request handler is kept, with four changes:

* **a cap on connections** (``proxy.limits.max_connections``): one more gets a 503 in the
  OpenAI shape and is closed;
* **a deadline for the request head** (``proxy.limits.header_timeout``): aiohttp's keep-alive
  timer, started when a connection opens and again after each answer, closes a connection
  that has not delivered a complete request head in time — a slow-loris client or an idle
  connection;
* **the parser's own rejections** (a malformed request line or header, a header beyond
  8190 bytes …) are answered as OpenAI-shaped JSON that repeats nothing of the request, and
  logged in one line at debug level instead of aiohttp's traceback (which may hold a key);
* **aiohttp's loggers** are routed through ModelMesh's logger, one line per record, every
  message redacted; nothing reaches stderr unless the application enabled ModelMesh's log.

The body of a request is bounded by the handlers (``max_body_size``, ``body_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from .._log import logger
from ..redaction import redact
from ..wire import dumps, error_body

__all__ = ["ProxyRunner", "route_aiohttp_logs"]

_BUSY = dumps(error_body("The proxy has too many open connections; retry shortly.",
                         "service_unavailable", None, "too_many_connections"))
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
                  + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)


class _Handler(RequestHandler):
    """aiohttp's request handler with the connection cap and JSON parse errors."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, _Server) and manager.open >= manager.max_connections:
            self._manager = None  # never registered: connection_lost has nothing to undo
            self._force_close = True
            transport.write(_BUSY_RESPONSE)  # type: ignore[attr-defined]
            transport.close()
            logger.opt(lazy=True).debug("connection refused: {} open", lambda: manager.open)
            return
        super().connection_made(transport)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """Answer a request aiohttp could not parse or handle, in the OpenAI error shape."""
        kind = type(exc).__name__ if exc is not None else "error"
        if status >= 500:
            logger.warning("internal error in the HTTP layer from {}: {} ({})",
                           request.remote, kind, status)
        else:
            logger.opt(lazy=True).debug("malformed HTTP request from {}: {} ({})",
                                        lambda: request.remote, lambda: kind, lambda: status)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started")
        if status == 504:
            text, code, type_ = "The request timed out.", "timeout", "timeout_error"
        elif status >= 500:
            text, code, type_ = ("Internal error in ModelMesh; see the server log.",
                                 "internal_error", "server_error")
        elif isinstance(exc, LineTooLong):
            text, code, type_ = ("A request line or header is too long.", "header_too_large",
                                 "invalid_request_error")
        else:
            text, code, type_ = ("The request is not valid HTTP/1.1 (request line, headers or"
                                 " framing).", "invalid_http", "invalid_request_error")
        resp = web.Response(status=status, body=dumps(error_body(text, type_, None, code)),
                            content_type="application/json")
        resp.force_close()
        return resp


class _Server(web.Server):
    """aiohttp's connection manager, counting connections for the cap."""

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.open = 0

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.open += 1
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None
                        ) -> None:
        self.open -= 1
        super().connection_lost(handler, exc)

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


class ProxyRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections are bounded (see the module)."""

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(plain.request_handler, request_factory=plain.request_factory,
                       handler_cancellation=plain.handler_cancellation,
                       loop=asyncio.get_running_loop(), max_connections=self._max_connections,
                       **plain._kwargs)


class _Bridge(logging.Handler):
    """Forwards stdlib log records to ModelMesh's logger: one redacted line, no traceback."""

    _LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING",
               logging.ERROR: "ERROR", logging.CRITICAL: "CRITICAL"}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format
            text = str(record.msg)
        line = redact(text.partition("\n")[0])[:300]
        if record.exc_info and record.exc_info[1] is not None:
            line += f" ({type(record.exc_info[1]).__name__})"
        level = self._LEVELS.get(record.levelno, "INFO")
        logger.log(level, "{}: {}", record.name, line)


def route_aiohttp_logs() -> None:
    """Send aiohttp's log records through ModelMesh's (masked) logger only (idempotent)."""
    log = logging.getLogger("aiohttp")
    if not any(isinstance(h, _Bridge) for h in log.handlers):
        log.addHandler(_Bridge())
    log.propagate = False
