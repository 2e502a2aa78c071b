"""The application factory, the edge middleware, the runner and :func:`serve`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._log import logger
from ..config import ProxyConfig
from ..errors import CapabilityNotFoundError
from ..limits import clip
from ..wire import WireError
from .admin import AdminAPI
from .auth import token
from .batches import BatchesAPI
from .errors import (
    REQUEST_ID,
    ROUTER_ID,
    ClientGone,
    error_response,
    http_exception_response,
)
from .protocol import ProxyRunner, route_aiohttp_logs
from .routes import ProxyServer
from .status import StatusPage

if TYPE_CHECKING:
    from ..mesh import ModelMesh

__all__ = ["SERVER_STATE", "create_app", "create_runner", "serve"]

_EXPOSED = ("x-request-id, x-modelmesh-model, x-modelmesh-provider, x-modelmesh-pool, "
            "x-modelmesh-attempts, x-modelmesh-overhead-ms, retry-after")
_BODY_BACKSTOP = 1 << 30  # the real limit is proxy.limits.max_body_size, checked per request
_REQUEST_ID_CHARS = 128

SERVER_STATE: web.AppKey[ProxyServer] = web.AppKey("modelmesh_proxy", ProxyServer)
"""Where the :class:`ProxyServer` of an application lives (``app[SERVER_STATE]``)."""


def _make_middleware(server: ProxyServer) -> Any:
    metrics = server.metrics
    new_id = os.urandom

    @web.middleware
    async def edge(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        client_id = request.headers.get("x-request-id")
        own = new_id(12).hex()
        if client_id:
            client_id = client_id[:_REQUEST_ID_CHARS]
            request[REQUEST_ID] = client_id
            request[ROUTER_ID] = f"{client_id}.{own}"
        else:
            request[REQUEST_ID] = request[ROUTER_ID] = own
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = _preflight(server, request)
        else:
            try:
                response = await handler(request)
            except asyncio.CancelledError:
                raise
            except ClientGone:
                return web.Response(status=499)
            except web.HTTPException as exc:
                response = http_exception_response(request, exc, server.max_body)
            except Exception as exc:
                available = None
                if isinstance(exc, CapabilityNotFoundError):
                    key = (server.auth.keys.get(token(request) or "")
                           if server.auth.required else None)
                    available = server.available_for(key)
                response = error_response(request, exc, available)
        metrics.observe_http(route, response.status, time.perf_counter() - started)
        return response

    return edge


def _preflight(server: ProxyServer, request: web.Request) -> web.Response:
    origin = request.headers.get("Origin", "")
    if not server.cors_enabled or not (server.cors_any or origin in server.cors_origins):
        return error_response(request, WireError(
            f"Origin {clip(origin)!r} is not allowed (proxy.cors.origins).", status=403,
            code="cors_origin_not_allowed"))
    headers = {
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": request.headers.get(
            "Access-Control-Request-Headers", "authorization, content-type")[:1000],
        "Access-Control-Max-Age": "600",
    }
    return web.Response(status=204, headers=headers)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    server = request.app[SERVER_STATE]
    rid = request.get(REQUEST_ID)
    if rid and "x-request-id" not in response.headers:
        response.headers["x-request-id"] = rid
    if not server.cors_enabled:
        return
    origin = request.headers.get("Origin")
    if origin and (server.cors_any or origin in server.cors_origins):
        response.headers["Access-Control-Allow-Origin"] = "*" if server.cors_any else origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED
        if not server.cors_any:
            response.headers["Vary"] = "Origin"


def create_app(mesh: ModelMesh, config: ProxyConfig | None = None) -> web.Application:
    """Build the proxy application in front of ``mesh``.

    ``config`` overrides ``mesh.config.proxy``. The application initialises the mesh on
    start-up when it is not initialised yet (and then also shuts it down on cleanup); a mesh
    the caller initialised stays the caller's to shut down. Serve it with
    :func:`create_runner` (or :func:`serve`): that runner bounds connections and cancels the
    work of a client that disconnects.
    """
    route_aiohttp_logs()
    server = ProxyServer(mesh, config)
    admin = AdminAPI(server)
    batches = BatchesAPI(server)
    app = web.Application(client_max_size=_BODY_BACKSTOP,
                          middlewares=[_make_middleware(server)])
    app[SERVER_STATE] = server
    app.cleanup_ctx.append(server.lifecycle)
    app.on_shutdown.append(server.on_shutdown)
    app.on_response_prepare.append(_on_prepare)
    r = app.router
    r.add_post("/v1/chat/completions", server.chat_completions)
    r.add_post("/v1/completions", server.completions)
    r.add_post("/v1/embeddings", server.embeddings)
    r.add_get("/v1/models", server.list_models, allow_head=False)
    r.add_get("/v1/models/{model:.+}", server.get_model, allow_head=False)
    batches.add_routes(app)
    r.add_get("/health", server.health)
    r.add_get("/ready", server.ready_handler)
    r.add_get("/metrics", server.metrics_handler)
    r.add_get("/admin/pools", admin.pools, allow_head=False)
    r.add_get("/admin/pools/{pool}", admin.pool, allow_head=False)
    r.add_post("/admin/pools/{pool}/rotate", admin.rotate)
    r.add_post("/admin/models/{model:.+}/reactivate", admin.reactivate)
    r.add_post("/admin/reload", admin.reload)
    r.add_get("/admin/keys", admin.keys, allow_head=False)
    StatusPage(server).add_routes(app)
    return app


def create_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """The runner for a proxy application: at most ``proxy.limits.max_connections``
    connections, ``header_timeout`` to deliver each request head, parse errors in the OpenAI
    shape, handlers cancelled when their client disconnects. ``kwargs`` go to
    :class:`aiohttp.web.AppRunner` (``shutdown_timeout``, ``handle_signals`` …)."""
    limits = app[SERVER_STATE].config.limits
    kwargs.setdefault("access_log", None)
    kwargs.setdefault("keepalive_timeout", float(limits.header_timeout))
    kwargs.setdefault("handler_cancellation", True)
    return ProxyRunner(app, max_connections=int(limits.max_connections), **kwargs)


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """``asyncio``, ``uvloop``, or ``auto`` (uvloop when it is installed)."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise RuntimeError("uvloop is not installed: pip install "
                                   "'modelmesh-core[uvloop]'") from None
        else:
            return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def serve(
    mesh: ModelMesh,
    *,
    host: str | None = None,
    port: int | None = None,
    config: ProxyConfig | None = None,
    reuse_port: bool = False,
    print_banner: Callable[..., None] | None = None,
    loop: str = "auto",
) -> None:
    """Run the proxy until SIGINT / SIGTERM, then drain and flush.

    On a signal the listening socket closes, ``/ready`` turns 503, in-flight requests and
    streams get ``proxy.shutdown_timeout`` seconds to finish (then they are cancelled, which
    closes their upstream requests), and the mesh is shut down (state flushed). ``reuse_port``
    lets several worker processes share one port (SO_REUSEPORT). ``loop`` picks the event
    loop: ``auto`` (uvloop when installed), ``asyncio`` or ``uvloop``.
    """
    app = create_app(mesh, config)
    cfg = app[SERVER_STATE].config
    event_loop = _loop_factory(loop)()
    asyncio.set_event_loop(event_loop)
    main = event_loop.create_task(_run(app, host or cfg.host,
                                       cfg.port if port is None else port, cfg,
                                       reuse_port, print_banner))
    try:
        event_loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, web.GracefulExit):
            event_loop.run_until_complete(main)
        pending = asyncio.all_tasks(event_loop)
        for task in pending:
            task.cancel()
        event_loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        event_loop.close()


async def _run(app: web.Application, host: str, port: int, cfg: ProxyConfig, reuse_port: bool,
               print_banner: Callable[..., None] | None) -> None:
    runner = create_runner(app, handle_signals=True,
                           shutdown_timeout=float(cfg.shutdown_timeout))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        if print_banner is not None:
            names = []
            for address in runner.addresses:
                name, bound = str(address[0]), address[1]
                names.append(f"http://{'[' + name + ']' if ':' in name else name}:{bound}")
            print_banner(f"======== Running on {', '.join(names)} ========\n"
                         "(Press CTRL+C to quit)")
        logger.debug("proxy listening on {}:{}", host, port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
