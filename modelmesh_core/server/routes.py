"""The proxy's request handlers and the state they share (:class:`ProxyServer`).

Everything a request needs that does not change per request (key tables, the model list, the
set of provider names, CORS flags) is computed once here, and again after a config reload.
The request path parses the body once (orjson), validates it once (:mod:`modelmesh_core.wire`),
routes it, and encodes the answer once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .. import keys
from .._log import logger
from ..config import ProxyConfig
from ..errors import CapabilityNotFoundError, ConfigError, ModelMeshError
from ..limits import MAX_NAME_LENGTH, cannot_be_too_deep, clip
from ..tracing import TRACE_CONTEXT_KEY, context_from_headers
from ..types import CompletionRequest, RoutingOptions
from ..wire import (
    WireError,
    completion_to_dict,
    completion_to_text_completion_dict,
    dumps,
    embeddings_to_dict,
    error_body,
    error_for_exception,
    include_usage,
    loads,
    parse_chat_request,
    parse_completion_request,
    parse_embeddings_request,
)
from .auth import Auth, KeyState
from .errors import REQUEST_ID, ROUTER_ID, ClientGone, too_large
from .metrics import ProxyMetrics
from .sse import StreamEncoder, frame

if TYPE_CHECKING:
    from ..mesh import ModelMesh
    from ..router import Router

__all__ = ["ProxyServer"]

T = TypeVar("T")

_JSON = "application/json"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_POOL_CACHE_LIMIT = 4096

SHALLOW: web.RequestKey[bool] = web.RequestKey("modelmesh_shallow_body", bool)
"""Set by :meth:`ProxyServer.read_json`: the body surely nests within the depth limit."""


class ProxyServer:
    """Request handlers and the state they share; one instance per application."""

    def __init__(self, mesh: ModelMesh, config: ProxyConfig | None) -> None:
        self.mesh = mesh
        self.explicit_config = config
        self.config: ProxyConfig = config or mesh_proxy_config(mesh)
        self.metrics = ProxyMetrics()
        self.router: Router | None = None
        self.ready = False
        self.draining = False
        self.started_at = int(time.time())
        self.owns_mesh = False
        self._pool_of_name: dict[tuple[str, str | None], str] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self.active_streams = 0
        self.auth = Auth(self.config)
        self.pool_names: list[str] = []
        self.model_names: list[str] = []
        self.pool_members: dict[str, frozenset[str]] = {}
        self.provider_names: frozenset[str] = frozenset()
        self.model_entries: dict[str, dict[str, Any]] = {}
        self._models_body = b""
        self.configure(self.config)

    # ----------------------------------------------------------------- configuration

    @property
    def keys(self) -> dict[str, KeyState]:
        """Virtual keys by key (for tests and the admin API)."""
        return self.auth.keys

    def configure(self, cfg: ProxyConfig) -> None:
        """Apply a proxy configuration (at start and after a reload)."""
        self.config = cfg
        self.auth = Auth(cfg, getattr(self, "auth", None))
        origins = tuple(cfg.cors.origins)
        self.cors_any = "*" in origins
        self.cors_origins = frozenset(origins)
        self.cors_enabled = bool(origins)
        limit = cfg.limits.max_concurrency
        self._semaphore = asyncio.Semaphore(limit) if limit else None
        self.max_body = int(cfg.limits.max_body_size)
        self.max_upload = int(cfg.limits.max_upload_size)
        self.body_timeout = float(cfg.limits.body_timeout)

    def reloaded(self) -> None:
        """The mesh reloaded its configuration (here or because another worker or replica
        asked): apply its proxy section and rebuild the model list."""
        if self.explicit_config is None:
            self.configure(self.mesh.config.proxy)
        self.refresh_catalogue()

    def refresh_catalogue(self) -> None:
        """Rebuild the model list and name tables from the mesh."""
        mesh = self.mesh
        self.router = mesh.router
        pools = dict(mesh.pools)
        models = dict(mesh.models)
        self.pool_names = list(pools)
        self.model_names = list(models)
        self.provider_names = frozenset(mesh.providers)
        self.pool_members = {name: frozenset(p.model_ids) for name, p in pools.items()}
        created = self.started_at
        entries: dict[str, dict[str, Any]] = {}
        for name, pool in pools.items():
            entries[name] = {"id": name, "object": "model", "created": created,
                             "owned_by": "modelmesh",
                             "modelmesh": {"kind": "pool", "capability": pool.capability,
                                           "models": list(pool.model_ids)}}
        for mid, model in models.items():
            entries.setdefault(mid, {
                "id": mid, "object": "model", "created": created, "owned_by": model.provider,
                "modelmesh": {"kind": "model", "capabilities": list(model.capabilities),
                              "upstream_id": model.upstream_id}})
        self.model_entries = entries
        self._models_body = dumps({"object": "list", "data": list(entries.values())})
        self._pool_of_name = {}

    # ----------------------------------------------------------------- lifetime

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: initialise the mesh when nobody did, subscribe metrics, clean up."""
        if not self.mesh.started:
            self.owns_mesh = True
            await self.mesh.initialize()
        if self.explicit_config is None:
            self.configure(mesh_proxy_config(self.mesh))
        self.refresh_catalogue()
        unsubscribe = self.mesh.events.subscribe(self.metrics.on_event)
        unlisten = self.mesh.add_reload_listener(self.reloaded)
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            unsubscribe()
            unlisten()
            if self.owns_mesh:
                await self.mesh.shutdown()

    async def on_shutdown(self, app: web.Application) -> None:
        """Stop reporting ready so load balancers drain us; in-flight streams continue."""
        self.draining = True
        if self.active_streams:
            logger.info("draining {} in-flight stream(s)", self.active_streams)

    # ----------------------------------------------------------------- edge helpers

    async def authorize_pool(self, key: KeyState, name: str, options: RoutingOptions) -> None:
        """403 unless ``key`` (limited to some pools) may use what ``name`` resolves to.

        A pool-limited key reaches a pool's models only through the pool (its budget and
        limits): naming a member model directly is refused, with the pool to use instead.
        """
        allowed = key.pools
        if allowed is None or name in allowed:
            return
        if name in self.model_entries and name not in self.pool_members:
            via = sorted(p for p in allowed if name in self.pool_members.get(p, ()))
            if via:
                raise WireError(f"Key {key.name!r} may use model {name!r} only through its "
                                f"pool: send model={via[0]!r}.", status=403,
                                code="model_not_allowed", param="model")
            pool = None
        else:
            cache_key = (name, options.preferred_provider)
            pool = self._pool_of_name.get(cache_key)
            if pool is None:
                # Which pool the name means, not which model is healthy right now: the answer
                # depends only on configuration, so successes are cached (preferred providers
                # are real ones and names are bounded; the table is capped anyway).
                try:
                    pool = await self._router().pool_for(name, options)
                except CapabilityNotFoundError:
                    raise  # an unknown model is a 404 for everyone, not a 403
                except ModelMeshError:
                    pool = None
                if pool is not None and len(self._pool_of_name) < _POOL_CACHE_LIMIT:
                    self._pool_of_name[cache_key] = pool
        if pool is None or pool not in allowed:
            raise WireError(
                f"Key {key.name!r} may not use model {clip(name)!r}; allowed pools: "
                + ", ".join(sorted(allowed)) + ".",
                status=403, code="model_not_allowed", param="model")

    def _router(self) -> Router:
        router = self.router
        if router is None:
            raise WireError("The proxy is still starting.", status=503, code="not_ready")
        return router

    def available_for(self, key: KeyState | None) -> list[str]:
        """Names a caller may put in ``model`` (for 404 messages)."""
        if key is None or key.pools is None:
            return self.pool_names + [m for m in self.model_names if m not in self.pool_members]
        return sorted(key.pools)

    async def read_json(self, request: web.Request) -> Any:
        """The request body as JSON: 413 beyond the limit, 408 when it arrives too slowly,
        400 when it is not JSON."""
        limit = self.max_body
        length = request.content_length
        if length is not None and length > limit:
            raise too_large(limit)
        content = request.content
        try:
            if content.is_eof():  # the whole body came with the head: nothing to wait for
                raw = content.read_nowait(-1)
            else:
                async with asyncio.timeout(self.body_timeout):
                    raw = await _read_capped(content, limit)
        except TimeoutError:
            raise WireError(f"The request body did not arrive within {self.body_timeout:g}s "
                            "(proxy.limits.body_timeout).", status=408,
                            code="request_timeout") from None
        except (web.HTTPException, RequestPayloadError, aiohttp.ClientPayloadError,
                aiohttp.http_exceptions.HttpProcessingError) as exc:
            if isinstance(exc, web.HTTPRequestEntityTooLarge):
                raise too_large(limit) from None
            raise WireError("The request body could not be read; check its Content-Encoding "
                            "and Transfer-Encoding.", code="invalid_body") from None
        if len(raw) > limit:
            raise too_large(limit)
        if not raw:
            raise WireError("The request body is empty; send a JSON object.",
                            code="invalid_body")
        try:
            body = loads(raw)
        except ValueError as exc:
            raise WireError(f"The request body is not valid JSON: {clip(str(exc))}.",
                            code="invalid_json") from None
        request[SHALLOW] = cannot_be_too_deep(raw)
        return body

    def options(self, request: web.Request, key: KeyState | None) -> RoutingOptions:
        """Routing hints from the request headers (bounded: an unknown preferred provider is
        ignored, an over-long session id refused)."""
        headers = request.headers
        metadata: dict[str, Any] = {"request_id": request[ROUTER_ID]}
        if key is not None:
            metadata["virtual_key"] = key.name
        trace = context_from_headers(headers)  # None unless tracing is on and one was sent
        if trace is not None:
            metadata[TRACE_CONTEXT_KEY] = trace
        preferred = headers.get("x-modelmesh-preferred-provider")
        if preferred is not None and preferred not in self.provider_names:
            preferred = None
        session = headers.get("x-modelmesh-session-id") or headers.get("x-session-id")
        if session is not None and len(session) > MAX_NAME_LENGTH:
            raise WireError(f"The session id is longer than {MAX_NAME_LENGTH} characters.",
                            param="x-modelmesh-session-id", code="invalid_value")
        return RoutingOptions(preferred_provider=preferred, session_id=session,
                              metadata=metadata)

    @staticmethod
    def result_headers(resp: Any, request_id: str) -> dict[str, str]:
        """The ``x-modelmesh-*`` headers for a response or first stream chunk."""
        meta = getattr(resp, "metadata", None) or {}
        headers = {
            "x-request-id": request_id,
            "x-modelmesh-model": resp.model,
            "x-modelmesh-provider": resp.provider,
        }
        attempts = meta.get("attempts")
        if attempts is not None:
            headers["x-modelmesh-attempts"] = str(attempts)
        pool = meta.get("pool")
        if pool:
            headers["x-modelmesh-pool"] = str(pool)
        overhead = meta.get("overhead_ms")
        if overhead is not None:
            headers["x-modelmesh-overhead-ms"] = f"{overhead:.3f}"
        return headers

    async def admit_key(self, key: KeyState) -> None:
        """Count one request of ``key`` in the admission ledger (shared by every worker and
        replica): a 429 over its rpm, :class:`BudgetExceededError` once its budget is spent."""
        await keys.admit_virtual_key(self.mesh.ledger, key.name, key.rpm, key.budget)
        key.requests += 1

    async def _admit(self, request: web.Request) -> tuple[KeyState | None, Any]:
        key = self.auth.authenticate(request)
        if key is not None:
            await self.admit_key(key)
        return key, await self.read_json(request)

    def _charge(self, key: KeyState | None, cost: Any) -> None:
        if key is not None and isinstance(cost, int | float) and cost:
            keys.charge_virtual_key(self.mesh.ledger, key.name, float(cost), key.budget)

    def key_usage(self, key: KeyState, now: float | None = None) -> dict[str, float]:
        """What ``key`` used, as counted by every process sharing the store (at ``now``,
        default the clock)."""
        return keys.virtual_key_usage(self.mesh.ledger, key.name, key.rpm, key.budget, now)

    # ----------------------------------------------------------------- /v1 handlers

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        key, body = await self._admit(request)
        name, creq = parse_chat_request(body, shallow=request[SHALLOW])
        options = self.options(request, key)
        if key is not None and key.pools is not None:
            await self.authorize_pool(key, name, options)
        router = self._router()
        if creq.stream:
            return await self._stream(request, name, creq, options, key, legacy=False)
        resp = await self._limited(router.complete(name, creq, options))
        self._charge(key, resp.metadata.get("cost"))
        return web.Response(body=dumps(completion_to_dict(resp)), content_type=_JSON,
                            headers=self.result_headers(resp, request[REQUEST_ID]))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions`` (legacy text completions over the chat router)."""
        key, body = await self._admit(request)
        name, creq = parse_completion_request(body, shallow=request[SHALLOW])
        options = self.options(request, key)
        if key is not None and key.pools is not None:
            await self.authorize_pool(key, name, options)
        router = self._router()
        if creq.stream:
            return await self._stream(request, name, creq, options, key, legacy=True)
        resp = await self._limited(router.complete(name, creq, options))
        self._charge(key, resp.metadata.get("cost"))
        return web.Response(body=dumps(completion_to_text_completion_dict(resp)),
                            content_type=_JSON,
                            headers=self.result_headers(resp, request[REQUEST_ID]))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings`` (charged to the key like chat, from the model's prices)."""
        key, body = await self._admit(request)
        name, ereq = parse_embeddings_request(body, shallow=request[SHALLOW])
        options = self.options(request, key)
        if key is not None and key.pools is not None:
            await self.authorize_pool(key, name, options)
        resp = await self._limited(self._router().embed(name, ereq, options))
        if key is not None:
            model = self.mesh.models.get(resp.model)
            if model is not None:
                self._charge(key, _embedding_cost(model.pricing, resp.usage))
        fmt = ereq.metadata.get("encoding_format", "float")
        return web.Response(body=dumps(embeddings_to_dict(resp, fmt)), content_type=_JSON,
                            headers=self.result_headers(resp, request[REQUEST_ID]))

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: pools (virtual models) first, then concrete models; a key
        limited to pools sees those pools."""
        key = self.auth.authenticate(request)
        if key is None or key.pools is None:
            return web.Response(body=self._models_body, content_type=_JSON)
        visible = [e for n, e in self.model_entries.items() if n in key.pools]
        return web.Response(body=dumps({"object": "list", "data": visible}),
                            content_type=_JSON)

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models/{id}``."""
        key = self.auth.authenticate(request)
        model_id = request.match_info["model"]
        entry = self.model_entries.get(model_id)
        if entry is None:
            raise CapabilityNotFoundError(f"The model {clip(model_id)!r} does not exist")
        if key is not None and key.pools is not None and model_id not in key.pools:
            raise WireError(f"Key {key.name!r} may not use model {model_id!r} directly; "
                            f"allowed pools: {', '.join(sorted(key.pools))}.", status=403,
                            code="model_not_allowed", param="model")
        return web.Response(body=dumps(entry), content_type=_JSON)

    # ----------------------------------------------------------------- running the work

    async def _limited(self, work: Awaitable[T]) -> T:
        """Await ``work`` under ``proxy.limits.max_concurrency`` (503 when at the limit).

        A client that leaves cancels the handler (the runner uses handler cancellation), which
        cancels ``work`` and with it the upstream request.
        """
        sem = self._semaphore
        if sem is None:
            return await work
        if sem.locked():
            if asyncio.iscoroutine(work):
                work.close()
            raise _overloaded()
        async with sem:
            return await work

    async def _stream(self, request: web.Request, name: str, creq: CompletionRequest,
                      options: RoutingOptions, key: KeyState | None, *, legacy: bool
                      ) -> web.StreamResponse:
        sem = self._semaphore
        if sem is not None and sem.locked():
            raise _overloaded()
        async with contextlib.AsyncExitStack() as stack:
            if sem is not None:
                await stack.enter_async_context(sem)
            self.active_streams += 1
            stack.callback(self._stream_done)
            agen = self._router().stream(name, creq, options)
            stack.push_async_callback(agen.aclose)  # type: ignore[attr-defined]
            try:
                first = await agen.__anext__()
            except StopAsyncIteration:
                raise WireError("The upstream ended the stream without any chunk.",
                                status=502, code="empty_stream") from None
            headers = self.result_headers(first, request[REQUEST_ID])
            headers.update(_SSE_HEADERS)
            resp = web.StreamResponse(status=200, headers=headers)
            await resp.prepare(request)
            encoder = StreamEncoder(first, include_usage=include_usage(creq), legacy=legacy)
            try:
                await _relay(resp, encoder, first, agen)
            finally:
                # However the stream ended (complete, broken, or the client gone), the router
                # leaves what it cost on its last chunk once the generator is closed.
                await agen.aclose()  # type: ignore[attr-defined]
                self._charge(key, encoder.cost)
            return resp
        raise ClientGone  # pragma: no cover - the exit stack never swallows

    def _stream_done(self) -> None:
        self.active_streams -= 1

    # ----------------------------------------------------------------- ops handlers

    async def health(self, request: web.Request) -> web.StreamResponse:
        """``GET /health``: the process is alive."""
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def ready_handler(self, request: web.Request) -> web.StreamResponse:
        """``GET /ready``: 200 once providers are initialised, 503 before and while draining."""
        providers = sorted(self.provider_names)
        if not self.ready or self.draining or not providers:
            reason = ("draining" if self.draining else
                      "no providers configured" if self.ready else "starting")
            return web.Response(status=503, content_type=_JSON, body=dumps(
                {"status": "not ready", "reason": reason,
                 **error_body(f"not ready: {reason}", "service_unavailable", None,
                              "not_ready")}))
        return web.Response(content_type=_JSON, body=dumps(
            {"status": "ready", "providers": providers, "models": len(self.model_names),
             "pools": self.pool_names}))

    async def metrics_handler(self, request: web.Request) -> web.StreamResponse:
        """``GET /metrics``: Prometheus text format (``proxy.metrics.auth`` decides who)."""
        self.auth.require_metrics(request)
        body, ctype = self.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp


async def _relay(resp: web.StreamResponse, encoder: StreamEncoder, first: Any,
                 agen: AsyncIterator[Any]) -> bool:
    """Write the stream; True when it completed (the caller bills it), else False.

    Whatever the router yields is passed on; chunks with nothing to say are held back.
    """
    write = resp.write
    try:
        data = encoder.frame(first)
        if data is not None:
            await write(data)
        async for chunk in agen:
            data = encoder.frame(chunk)
            if data is not None:
                await write(data)
        await write(encoder.closing_frames())
    except ConnectionResetError:
        logger.debug("client went away mid-stream; upstream request cancelled")
        return False
    except Exception as exc:
        status, body, _ = error_for_exception(exc)
        logger.opt(exception=exc).debug("stream failed after the first chunk ({})", status)
        with contextlib.suppress(ConnectionResetError):
            await write(frame(body))
            await resp.write_eof()
        return False
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return True


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Read a body with our own cap (it follows config reloads; the app's client_max_size
    is only a backstop) — also for chunked or compressed bodies."""
    parts: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _overloaded() -> WireError:
    return WireError("The proxy is at its concurrency limit; retry shortly.", status=503,
                     code="overloaded", headers={"Retry-After": "1"})


def _embedding_cost(pricing: Any, usage: Mapping[str, int]) -> float:
    if not (pricing.input or pricing.per_request):
        return 0.0
    return float(usage.get("prompt_tokens", 0) * pricing.input / 1_000_000
                 + pricing.per_request)


def mesh_proxy_config(mesh: ModelMesh) -> ProxyConfig:
    """``mesh.config.proxy`` once the mesh is built; before that, from its config source."""
    if mesh.started:
        return mesh.config.proxy
    source = mesh.config_source
    if source is None:
        return ProxyConfig()
    from ..config import MeshConfig, load_config

    try:
        config = source if isinstance(source, MeshConfig) else load_config(source)
    except ConfigError:
        return ProxyConfig()  # initialize() reports the problems
    return config.proxy
