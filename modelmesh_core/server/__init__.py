"""The OpenAI-compatible HTTP proxy (aiohttp).

``create_app(mesh)`` builds a fresh :class:`aiohttp.web.Application` in front of a
:class:`~modelmesh_core.mesh.ModelMesh`; ``create_runner(app)`` runs it with bounded
connections; :func:`serve` runs it with signal handling and a graceful drain. Any OpenAI SDK
pointed at it with ``base_url=http://host:port/v1`` just works.

Routes: ``POST /v1/chat/completions`` (incremental SSE when ``stream``), ``POST
/v1/completions``, ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /health``, ``GET /ready``, ``GET /metrics`` (Prometheus text), the Files and Batch APIs
(``/v1/files``, ``/v1/batches``: see :mod:`.batches`), and the admin API:
``GET /admin/pools``, ``GET /admin/pools/{pool}``, ``POST /admin/pools/{pool}/rotate``,
``POST /admin/models/{model}/reactivate``, ``POST /admin/reload``, ``GET /admin/keys``,
``GET /admin/status``; and the status page, ``GET /status`` (with ``/status/status.js``,
``/status/status.css`` and ``/status/favicon.svg``).

Every answer that is not a success is an OpenAI-shaped JSON error (see
:mod:`modelmesh_core.wire` for the status table), including the HTTP parser's own
rejections. Responses from a model carry ``x-modelmesh-model``, ``x-modelmesh-provider``,
``x-modelmesh-pool``, ``x-modelmesh-attempts``, ``x-modelmesh-overhead-ms`` and
``x-request-id``.

Authentication (``proxy.auth``): with no key configured the ``/v1`` routes are open (the
default bind address is 127.0.0.1) and the admin API is off unless
``proxy.admin.open_on_loopback`` opens it to this machine. Otherwise every ``/v1`` route needs
``Authorization: Bearer <key>`` (``api-key`` / ``x-api-key`` headers are accepted too); a
virtual key may be limited to some pools (reached only through those pools), a
requests-per-minute rate and a daily / monthly budget (kept in this process's memory);
``/admin`` routes need a key from ``admin_keys`` or one marked ``admin``; ``/metrics`` follows
``proxy.metrics.auth``.

Rooms: :mod:`.app` (factory, middleware, runner, ``serve``), :mod:`.routes` (the handlers),
:mod:`.batches` (files and batches), :mod:`.admin`, :mod:`.auth` (keys and the admin guard),
:mod:`.metrics`, :mod:`.errors` (the error shape), :mod:`.sse` (stream encoding, shared with
the in-process client), :mod:`.protocol` (the connection layer), :mod:`.status` (the status
page) and :mod:`.activity` (its per-model counters).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import SERVER_STATE, create_app, create_runner, serve
    from .errors import REQUEST_ID, ROUTER_ID
    from .routes import ProxyServer

_WHERE = {"SERVER_STATE": "app", "create_app": "app", "create_runner": "app", "serve": "app",
          "REQUEST_ID": "errors", "ROUTER_ID": "errors", "ProxyServer": "routes"}

__all__ = ["REQUEST_ID", "ROUTER_ID", "SERVER_STATE", "ProxyServer", "create_app",
           "create_runner", "serve"]


def __getattr__(name: str) -> Any:
    # The aiohttp server loads on first use: the in-process client imports only .sse.
    room = _WHERE.get(name)
    if room is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{room}"), name)
