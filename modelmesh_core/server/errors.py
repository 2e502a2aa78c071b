"""The error shape of every answer that is not a success: OpenAI's
``{"error": {"message", "type", "param", "code"}}`` with an ``x-request-id``.

Caller input is echoed only clipped (:func:`~modelmesh_core.limits.clip`), messages pass
through :func:`~modelmesh_core.redaction.redact`, and a bug is a 500 with a message only (the
traceback goes to the debug log).
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from .._log import logger
from ..errors import ModelMeshError
from ..limits import clip
from ..redaction import redact
from ..wire import WireError, dumps, error_body, error_for_exception

__all__ = [
    "REQUEST_ID",
    "ROUTER_ID",
    "ClientGone",
    "error_response",
    "http_exception_response",
    "json_error",
    "too_large",
    "unknown_pool",
]

_JSON = "application/json"

REQUEST_ID: web.RequestKey[str] = web.RequestKey("modelmesh_request_id", str)
"""The request id of a request (incoming ``x-request-id`` or a new one), echoed back."""

ROUTER_ID: web.RequestKey[str] = web.RequestKey("modelmesh_router_id", str)
"""The id the router, events and logs use: unique even when clients reuse x-request-id (the
client's id plus a suffix, so the two stay easy to correlate)."""


class ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


_HTTP_MESSAGES = {
    404: ("Unknown path {path}. The proxy serves /v1/chat/completions, /v1/completions, "
          "/v1/embeddings, /v1/models, /v1/files, /v1/batches, /health, /ready, /metrics "
          "and /admin/.", "not_found"),
    405: ("Method {method} is not allowed on {path}.", "method_not_allowed"),
}


def too_large(limit: int) -> WireError:
    """The 413 for a body beyond ``proxy.limits.max_body_size``."""
    return WireError(f"The request body is larger than the limit of {limit} bytes "
                     "(proxy.limits.max_body_size).", status=413, code="request_too_large")


def unknown_pool(pool: str, known: list[str]) -> WireError:
    """The 404 for a pool name the admin API does not know."""
    return WireError(f"Unknown pool {clip(pool)!r}; pools: {', '.join(known) or '(none)'}.",
                     status=404, code="pool_not_found", param="pool")


def json_error(status: int, message: str, code: str, *, type: str | None = None,
               param: str | None = None, headers: dict[str, str] | None = None
               ) -> web.Response:
    """An OpenAI-shaped error response built from parts (no exception needed)."""
    exc = WireError(message, status=status, code=code, type=type, param=param)
    return web.Response(status=status, body=dumps(error_body(redact(message), exc.type, param,
                                                             code)),
                        content_type=_JSON, headers=headers)


def http_exception_response(request: web.Request, exc: web.HTTPException, max_body: int,
                            ) -> web.StreamResponse:
    """aiohttp's own HTTP exceptions (404, 405, 413 …) in the OpenAI shape."""
    if exc.status == 413:
        return error_response(request, too_large(max_body))
    if exc.status < 400:
        return exc
    template, code = _HTTP_MESSAGES.get(exc.status, ("{reason}", "http_error"))
    message = template.format(path=clip(request.path), method=clip(request.method, 20),
                              reason=exc.reason)
    return error_response(request, WireError(message, status=exc.status, code=code))


def error_response(request: web.Request, exc: BaseException,
                   available: Sequence[str] | None = None) -> web.Response:
    """The response for an exception raised while handling ``request``."""
    status, body, headers = error_for_exception(exc, available=available)
    if status >= 500 and not isinstance(exc, ModelMeshError):
        logger.opt(exception=exc).debug("unexpected error on {} {}", request.method,
                                        clip(request.path))
        logger.warning("internal error on {} {}: {}", request.method, clip(request.path),
                       redact(repr(exc))[:300])
    else:
        logger.opt(lazy=True).debug("{} {} -> {}: {}", lambda: request.method,
                                    lambda: clip(request.path), lambda: status,
                                    lambda: body["error"]["message"][:300])
    headers = dict(headers)
    headers["x-request-id"] = request.get(REQUEST_ID, "")
    return web.Response(status=status, body=dumps(body), content_type=_JSON, headers=headers)
