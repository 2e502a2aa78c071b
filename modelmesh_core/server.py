"""The OpenAI-compatible HTTP proxy (aiohttp).

``create_app(mesh)`` builds a fresh :class:`aiohttp.web.Application` in front of a
:class:`~modelmesh_core.mesh.ModelMesh`; :func:`serve` runs it with signal handling and a
graceful drain. Any OpenAI SDK pointed at it with ``base_url=http://host:port/v1`` just works.

Routes: ``POST /v1/chat/completions`` (incremental SSE when ``stream``), ``POST
/v1/completions``, ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``GET /health``, ``GET /ready``, ``GET /metrics`` (Prometheus text), and the admin API:
``GET /admin/pools``, ``GET /admin/pools/{pool}``, ``POST /admin/pools/{pool}/rotate``,
``POST /admin/models/{model}/reactivate``, ``POST /admin/reload``, ``GET /admin/keys``.

Every answer that is not a success is an OpenAI-shaped JSON error (see
:mod:`modelmesh_core.wire` for the status table). Responses from a model carry
``x-modelmesh-model``, ``x-modelmesh-provider``, ``x-modelmesh-pool``,
``x-modelmesh-attempts``, ``x-modelmesh-overhead-ms`` and ``x-request-id``.

Authentication (``proxy.auth``): with no key configured the proxy is open (admin routes too;
the default bind address is 127.0.0.1). Otherwise every ``/v1`` route needs ``Authorization:
Bearer <key>`` (``api-key`` / ``x-api-key`` headers are accepted too); a virtual key may be
limited to some pools, a requests-per-minute rate and a daily / monthly budget (kept in this
process's memory); ``/admin`` routes need a key from ``admin_keys`` or one marked ``admin``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import aiohttp.http_exceptions
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ._log import logger
from .config import ProxyConfig
from .errors import (
    BudgetExceededError,
    CapabilityNotFoundError,
    ConfigError,
    ModelMeshError,
)
from .events import Event, EventType
from .redaction import redact
from .tracing import TRACE_CONTEXT_KEY, context_from_headers
from .types import CompletionRequest, CompletionResponse, RoutingOptions
from .wire import (
    WireError,
    chunk_to_dict,
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
    text_chunk_to_dict,
    usage_chunk_dict,
)

__all__ = ["SERVER_STATE", "ProxyServer", "create_app", "serve"]

_JSON = "application/json"
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_DONE = b"data: [DONE]\n\n"
_EXPOSED = ("x-request-id, x-modelmesh-model, x-modelmesh-provider, x-modelmesh-pool, "
            "x-modelmesh-attempts, x-modelmesh-overhead-ms, retry-after")
_DISCONNECT_POLL = 0.25
_TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")


# --------------------------------------------------------------------------- metrics


class ProxyMetrics:
    """Prometheus metrics on a per-app ``CollectorRegistry`` (never the global one).

    Fed by subscribing to ``mesh.events`` (requests, failures, latency, tokens, cost,
    rotations, deactivations) and by the HTTP middleware (requests by route and status).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("pool", "model", "provider")
        r = self.registry
        self.requests = Counter("modelmesh_requests", "Routed requests by outcome",
                                (*labels, "outcome"), registry=r)
        self.attempt_failures = Counter("modelmesh_attempt_failures",
                                        "Failed upstream attempts", (*labels, "error"),
                                        registry=r)
        self.latency = Histogram(
            "modelmesh_request_latency_seconds", "Upstream latency of successful requests",
            labels, registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.tokens = Counter("modelmesh_tokens", "Tokens by kind", (*labels, "kind"),
                              registry=r)
        self.cost = Counter("modelmesh_cost_usd", "Cost in USD", labels, registry=r)
        self.rotations = Counter("modelmesh_rotations", "Pool rotations", ("pool",), registry=r)
        self.deactivations = Counter("modelmesh_model_deactivations", "Model deactivations",
                                     ("pool", "model", "reason"), registry=r)
        self.recoveries = Counter("modelmesh_model_recoveries", "Model recoveries",
                                  ("pool", "model"), registry=r)
        self.provider_down = Counter("modelmesh_provider_down", "Provider outages",
                                     ("provider",), registry=r)
        self.http = Counter("modelmesh_http_requests", "HTTP requests by route and status",
                            ("route", "status"), registry=r)
        self.http_latency = Histogram(
            "modelmesh_http_request_duration_seconds",
            "Time to handle a request (for a stream: until its last chunk was sent)",
            ("route",), registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self._success_cache: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._http_cache: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._dispatch: dict[str, Callable[[Event], None]] = {
            EventType.REQUEST_SUCCEEDED: self._succeeded,
            EventType.REQUEST_FAILED: self._failed,
            EventType.ATTEMPT_FAILED: self._attempt_failed,
            EventType.POOL_ROTATED: self._rotated,
            EventType.MODEL_DEACTIVATED: self._deactivated,
            EventType.MODEL_RECOVERED: self._recovered,
            EventType.PROVIDER_DOWN: self._down,
        }

    def on_event(self, event: Event) -> None:
        """Event listener: update the metrics an event touches."""
        fn = self._dispatch.get(event.type)
        if fn is not None:
            fn(event)

    @staticmethod
    def _labels(e: Event) -> tuple[str, str, str]:
        return e.pool or "", e.model or "", e.provider or ""

    def _success_children(self, labels: tuple[str, str, str]) -> tuple[Any, ...]:
        children = self._success_cache.get(labels)
        if children is None:
            children = (
                self.requests.labels(*labels, "success"),
                self.latency.labels(*labels),
                self.cost.labels(*labels),
                tuple((kind, self.tokens.labels(*labels, kind.removesuffix("_tokens")))
                      for kind in _TOKEN_KINDS),
            )
            self._success_cache[labels] = children
        return children

    def _succeeded(self, e: Event) -> None:
        requests, latency_child, cost_child, token_children = self._success_children(
            self._labels(e))
        data = e.data
        requests.inc()
        latency = data.get("latency_ms")
        if isinstance(latency, int | float):
            latency_child.observe(latency / 1000.0)
        usage = data.get("usage")
        if usage:
            for kind, child in token_children:
                n = usage.get(kind)
                if n:
                    child.inc(n)
        cost = data.get("cost")
        if isinstance(cost, int | float) and cost > 0:
            cost_child.inc(cost)

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        """Count one HTTP answer (label children cached: this runs on every request)."""
        key = (route, status)
        children = self._http_cache.get(key)
        if children is None:
            children = (self.http.labels(route, str(status)), self.http_latency.labels(route))
            self._http_cache[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def _failed(self, e: Event) -> None:
        self.requests.labels(*self._labels(e), "failure").inc()

    def _attempt_failed(self, e: Event) -> None:
        error = e.data.get("error_type") or e.data.get("error") or "error"
        self.attempt_failures.labels(*self._labels(e), str(error)[:60]).inc()

    def _rotated(self, e: Event) -> None:
        self.rotations.labels(e.pool or "").inc()

    def _deactivated(self, e: Event) -> None:
        self.deactivations.labels(e.pool or "", e.model or "",
                                  str(e.data.get("reason", ""))).inc()

    def _recovered(self, e: Event) -> None:
        self.recoveries.labels(e.pool or "", e.model or "").inc()

    def _down(self, e: Event) -> None:
        self.provider_down.labels(e.provider or "").inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- auth


class _KeyState:
    """A virtual key and its in-memory counters (rpm window, daily / monthly spend)."""

    __slots__ = ("admin", "budget", "day", "day_spend", "month", "month_spend", "name",
                 "pools", "requests", "rpm", "window")

    def __init__(self, name: str, pools: frozenset[str] | None, rpm: int | None,
                 budget: Any, admin: bool) -> None:
        self.name = name
        self.pools = pools
        self.rpm = rpm
        self.budget = budget
        self.admin = admin
        self.window: collections.deque[float] = collections.deque()
        self.requests = 0
        self.day = self.month = -1
        self.day_spend = self.month_spend = 0.0

    def adopt(self, other: _KeyState) -> None:
        """Take over the counters of the same key before a config reload."""
        self.window, self.requests = other.window, other.requests
        self.day, self.day_spend = other.day, other.day_spend
        self.month, self.month_spend = other.month, other.month_spend

    def admit(self, now: float) -> None:
        """Count one request; raise a 429 ``WireError`` when over rpm or budget."""
        if self.rpm is not None:
            window = self.window
            cutoff = now - 60.0
            while window and window[0] <= cutoff:
                window.popleft()
            if len(window) >= self.rpm:
                wait = window[0] + 60.0 - now
                raise WireError(
                    f"Rate limit of {self.rpm} requests per minute reached for key "
                    f"{self.name!r}; retry in {wait:.1f}s.",
                    status=429, code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                )
            window.append(now)
        budget = self.budget
        if budget is not None and budget.enforce:
            self._roll(now)
            if budget.daily is not None and self.day_spend >= budget.daily:
                raise BudgetExceededError("daily", budget.daily, self.day_spend,
                                          scope=f"key:{self.name}")
            if budget.monthly is not None and self.month_spend >= budget.monthly:
                raise BudgetExceededError("monthly", budget.monthly, self.month_spend,
                                          scope=f"key:{self.name}")
        self.requests += 1

    def _roll(self, now: float) -> None:
        day = int(now // 86400)
        if day != self.day:
            self.day, self.day_spend = day, 0.0
        t = time.gmtime(now)
        month = t.tm_year * 12 + t.tm_mon
        if month != self.month:
            self.month, self.month_spend = month, 0.0

    def spend(self, cost: float, now: float) -> None:
        """Add the cost of an answered request."""
        if cost:
            self._roll(now)
            self.day_spend += cost
            self.month_spend += cost

    def snapshot(self) -> dict[str, Any]:
        """JSON-able usage (never the key itself)."""
        return {"name": self.name, "requests": self.requests,
                "pools": sorted(self.pools) if self.pools is not None else None,
                "rpm": self.rpm, "day_spend": round(self.day_spend, 8),
                "month_spend": round(self.month_spend, 8), "admin": self.admin}


# --------------------------------------------------------------------------- the server


class ProxyServer:
    """Request handlers and the state they share; one instance per application.

    Everything a request needs that does not change per request (auth tables, CORS headers,
    the model list) is computed once here, and again after an admin config reload.
    """

    def __init__(self, mesh: Any, config: ProxyConfig | None) -> None:
        self.mesh = mesh
        self._explicit_config = config
        self.config: ProxyConfig = config or _mesh_proxy_config(mesh)
        self.metrics = ProxyMetrics()
        self.router: Any = None
        self.ready = False
        self.draining = False
        self.started_at = int(time.time())
        self._owns_mesh = False
        self._unsubscribe: Callable[[], None] | None = None
        self._pool_of_name: dict[tuple[str, str | None], str | None] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self.active_streams = 0
        self._configure(self.config)

    # ----------------------------------------------------------------- configuration

    def _configure(self, cfg: ProxyConfig) -> None:
        self.config = cfg
        keys: dict[str, _KeyState] = {}
        old = getattr(self, "keys", {})
        for i, vk in enumerate(cfg.auth.keys):
            state = _KeyState(
                vk.name or f"key-{i}", frozenset(vk.pools) if vk.pools is not None else None,
                vk.rpm, vk.budget, vk.admin,
            )
            previous = old.get(str(vk.key))
            if previous is not None:  # a reload keeps what the key already used
                state.adopt(previous)
            keys[str(vk.key)] = state
        self.keys = keys
        self.admin_tokens = frozenset(str(k) for k in cfg.auth.admin_keys) | frozenset(
            k for k, s in keys.items() if s.admin)
        self.auth_required = bool(keys or self.admin_tokens)
        origins = tuple(cfg.cors.origins)
        self.cors_any = "*" in origins
        self.cors_origins = frozenset(origins)
        self.cors_enabled = bool(origins)
        limit = cfg.limits.max_concurrency
        self._semaphore = asyncio.Semaphore(limit) if limit else None
        self.max_body = int(cfg.limits.max_body_size)

    def _refresh_catalogue(self) -> None:
        mesh = self.mesh
        self.router = mesh.router
        pools = dict(getattr(mesh, "pools", {}) or {})
        models = dict(getattr(mesh, "models", {}) or {})
        self.pool_names = list(pools)
        self.model_names = list(models)
        self.pool_members = {name: frozenset(getattr(p, "model_ids", ()) or ())
                             for name, p in pools.items()}
        created = self.started_at
        entries: dict[str, dict[str, Any]] = {}
        for name, pool in pools.items():
            entries[name] = {"id": name, "object": "model", "created": created,
                             "owned_by": "modelmesh",
                             "modelmesh": {"kind": "pool",
                                           "capability": getattr(pool, "capability", None),
                                           "models": list(getattr(pool, "model_ids", ()))}}
        for mid, model in models.items():
            entries.setdefault(mid, {
                "id": mid, "object": "model", "created": created,
                "owned_by": getattr(model, "provider", mid.partition(".")[0]),
                "modelmesh": {"kind": "model",
                              "capabilities": list(getattr(model, "capabilities", ())),
                              "upstream_id": getattr(model, "upstream_id", None)}})
        self.model_entries = entries
        self._models_body = dumps({"object": "list", "data": list(entries.values())})
        self._pool_of_name = {}

    # ----------------------------------------------------------------- lifetime

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: initialise the mesh when nobody did, subscribe metrics, clean up."""
        if not _mesh_initialized(self.mesh):
            self._owns_mesh = True
            await self.mesh.initialize()
        if self._explicit_config is None:
            self._configure(_mesh_proxy_config(self.mesh))
        self._refresh_catalogue()
        events = getattr(self.mesh, "events", None)
        if events is not None:
            metrics_listener = self.metrics.on_event
            self._unsubscribe = events.subscribe(metrics_listener)
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            if self._owns_mesh:
                await self.mesh.shutdown()

    async def on_shutdown(self, app: web.Application) -> None:
        """Stop reporting ready so load balancers drain us; in-flight streams continue."""
        self.draining = True
        if self.active_streams:
            logger.info("draining {} in-flight stream(s)", self.active_streams)

    # ----------------------------------------------------------------- edge helpers

    def authenticate(self, request: web.Request) -> _KeyState | None:
        """The caller's virtual key (None when the proxy is open); 401 when missing/unknown."""
        if not self.auth_required:
            return None
        token = _token(request)
        if token is None:
            raise WireError(
                "Missing API key. Send an Authorization header with the Bearer scheme and a "
                "key configured in proxy.auth.", status=401, code="missing_api_key")
        key = self.keys.get(token)
        if key is None:
            if token in self.admin_tokens:
                raise WireError("Admin keys are for the /admin API; use a proxy key "
                                "(proxy.auth.keys) for /v1.", status=403,
                                code="admin_key_not_allowed")
            raise WireError("Incorrect API key provided.", status=401,
                            code="invalid_api_key")
        return key

    def require_admin(self, request: web.Request) -> None:
        """401 without a key, 403 with a non-admin key. With no key configured at all, the
        admin API answers only callers on this machine (it can reload the configuration)."""
        if not self.auth_required:
            if not _is_loopback(request.remote):
                raise WireError("The admin API is only open to this machine while no "
                                "proxy.auth keys are configured.", status=403,
                                code="admin_requires_auth")
            return
        token = _token(request)
        if token is None:
            raise WireError("Missing admin API key.", status=401, code="missing_api_key")
        if token in self.admin_tokens:
            return
        if token in self.keys:
            raise WireError("This key may not use the admin API.", status=403,
                            code="admin_key_required")
        raise WireError("Incorrect API key provided.", status=401, code="invalid_api_key")

    async def authorize_pool(self, key: _KeyState | None, name: str,
                             options: RoutingOptions) -> None:
        """403 unless ``key`` may use whatever pool ``name`` resolves to."""
        if key is None or key.pools is None:
            return
        allowed = key.pools
        if name in allowed:
            return
        cache_key = (name, options.preferred_provider)
        pool = self._pool_of_name.get(cache_key, "")
        if pool == "":
            if name in self.model_entries and name not in self.pool_members:
                pool = next((p for p in allowed if name in self.pool_members.get(p, ())), None)
            else:
                try:
                    # Which pool the name means, not which model is healthy right now:
                    # the answer depends only on configuration, so it is cached.
                    pool = await self.router.pool_for(name, options)
                except CapabilityNotFoundError:
                    raise  # an unknown model is a 404 for everyone, not a 403
                except ModelMeshError:
                    pool = None
            if pool is not None:
                self._pool_of_name[cache_key] = pool
        if pool is None or pool not in allowed:
            raise WireError(
                f"Key {key.name!r} may not use model {name!r}; allowed pools: "
                + ", ".join(sorted(allowed)) + ".",
                status=403, code="model_not_allowed", param="model")

    def available_for(self, key: _KeyState | None) -> list[str]:
        """Names a caller may put in ``model`` (for 404 messages)."""
        if key is None or key.pools is None:
            return self.pool_names + [m for m in self.model_names if m not in self.pool_members]
        return sorted(key.pools)

    async def read_json(self, request: web.Request) -> Any:
        """The request body as JSON; 413 beyond the limit, 400 when it is not JSON."""
        limit = self.max_body
        length = request.content_length
        if length is not None and length > limit:
            raise _too_large(limit)
        try:
            # Read with our own cap (it follows config reloads; the app's client_max_size is
            # only a backstop) — also for chunked or compressed bodies.
            parts: list[bytes] = []
            size = 0
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                parts.append(chunk)
            raw = parts[0] if len(parts) == 1 else b"".join(parts)
        except (web.HTTPException, RequestPayloadError, aiohttp.ClientPayloadError,
                aiohttp.http_exceptions.HttpProcessingError) as exc:
            if isinstance(exc, web.HTTPRequestEntityTooLarge):
                raise _too_large(limit) from None
            raise WireError(f"The request body could not be read ({exc}); check its "
                            "Content-Encoding and Transfer-Encoding.",
                            code="invalid_body") from None
        if not raw:
            raise WireError("The request body is empty; send a JSON object.",
                            code="invalid_body")
        try:
            return loads(raw)
        except ValueError as exc:
            raise WireError(f"The request body is not valid JSON: {exc}.",
                            code="invalid_json") from None

    @staticmethod
    def options(request: web.Request, key: _KeyState | None) -> RoutingOptions:
        """Routing hints from the request headers."""
        headers = request.headers
        metadata: dict[str, Any] = {"request_id": request[ROUTER_ID]}
        if key is not None:
            metadata["virtual_key"] = key.name
        trace = context_from_headers(headers)  # None unless tracing is on and one was sent
        if trace is not None:
            metadata[TRACE_CONTEXT_KEY] = trace
        return RoutingOptions(
            preferred_provider=headers.get("x-modelmesh-preferred-provider"),
            session_id=headers.get("x-modelmesh-session-id") or headers.get("x-session-id"),
            metadata=metadata,
        )

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

    async def _admit(self, request: web.Request) -> tuple[_KeyState | None, Any]:
        key = self.authenticate(request)
        if key is not None:
            key.admit(time.time())
        return key, await self.read_json(request)

    def _charge(self, key: _KeyState | None, meta: Mapping[str, Any] | None) -> None:
        if key is not None and meta:
            cost = meta.get("cost")
            if isinstance(cost, int | float):
                key.spend(float(cost), time.time())

    # ----------------------------------------------------------------- /v1 handlers

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``."""
        key, body = await self._admit(request)
        name, creq = parse_chat_request(body)
        options = self.options(request, key)
        await self.authorize_pool(key, name, options)
        if creq.stream:
            return await self._stream(request, name, creq, options, key, legacy=False)
        resp = await self._guarded(request, self.router.complete(name, creq, options))
        self._charge(key, resp.metadata)
        return web.Response(body=dumps(completion_to_dict(resp)), content_type=_JSON,
                            headers=self.result_headers(resp, request[REQUEST_ID]))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions`` (legacy text completions over the chat router)."""
        key, body = await self._admit(request)
        name, creq = parse_completion_request(body)
        options = self.options(request, key)
        await self.authorize_pool(key, name, options)
        if creq.stream:
            return await self._stream(request, name, creq, options, key, legacy=True)
        resp = await self._guarded(request, self.router.complete(name, creq, options))
        self._charge(key, resp.metadata)
        return web.Response(body=dumps(completion_to_text_completion_dict(resp)),
                            content_type=_JSON,
                            headers=self.result_headers(resp, request[REQUEST_ID]))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/embeddings``."""
        key, body = await self._admit(request)
        name, ereq = parse_embeddings_request(body)
        options = self.options(request, key)
        await self.authorize_pool(key, name, options)
        resp = await self._guarded(request, self.router.embed(name, ereq, options))
        self._charge(key, getattr(resp, "metadata", None))
        fmt = ereq.metadata.get("encoding_format", "float")
        return web.Response(body=dumps(embeddings_to_dict(resp, fmt)), content_type=_JSON,
                            headers=self.result_headers(resp, request[REQUEST_ID]))

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models``: pools (virtual models) first, then concrete models."""
        key = self.authenticate(request)
        if key is None or key.pools is None:
            return web.Response(body=self._models_body, content_type=_JSON)
        allowed = key.pools
        visible = [e for n, e in self.model_entries.items()
                   if n in allowed or any(n in self.pool_members.get(p, ()) for p in allowed)]
        return web.Response(body=dumps({"object": "list", "data": visible}),
                            content_type=_JSON)

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/models/{id}``."""
        key = self.authenticate(request)
        model_id = request.match_info["model"]
        entry = self.model_entries.get(model_id)
        if entry is None:
            raise CapabilityNotFoundError(f"The model {model_id!r} does not exist")
        if key is not None and key.pools is not None and model_id not in key.pools and not any(
                model_id in self.pool_members.get(p, ()) for p in key.pools):
            raise WireError(f"Key {key.name!r} may not use model {model_id!r}.", status=403,
                            code="model_not_allowed", param="model")
        return web.Response(body=dumps(entry), content_type=_JSON)

    # ----------------------------------------------------------------- streaming

    async def _guarded(self, request: web.Request, work: Awaitable[Any]) -> Any:
        """Await ``work`` under the concurrency limit, cancelling it if the client goes away."""
        sem = self._semaphore
        if sem is not None:
            if sem.locked():
                if asyncio.iscoroutine(work):
                    work.close()
                raise WireError("The proxy is at its concurrency limit; retry shortly.",
                                status=503, code="overloaded", headers={"Retry-After": "1"})
            async with sem, _DisconnectWatch(request):
                return await work
            raise _ClientGone
        async with _DisconnectWatch(request):
            return await work
        raise _ClientGone

    async def _stream(self, request: web.Request, name: str, creq: CompletionRequest,
                      options: RoutingOptions, key: _KeyState | None, *, legacy: bool
                      ) -> web.StreamResponse:
        sem = self._semaphore
        if sem is not None and sem.locked():
            raise WireError("The proxy is at its concurrency limit; retry shortly.",
                            status=503, code="overloaded", headers={"Retry-After": "1"})
        async with contextlib.AsyncExitStack() as stack:
            if sem is not None:
                await stack.enter_async_context(sem)
            await stack.enter_async_context(_DisconnectWatch(request))
            self.active_streams += 1
            stack.callback(self._stream_done)
            agen = self.router.stream(name, creq, options)
            stack.push_async_callback(agen.aclose)
            try:
                first: CompletionResponse | None = await agen.__anext__()
            except StopAsyncIteration:
                first = None
            if first is None:
                raise WireError("The upstream ended the stream without any chunk.",
                                status=502, code="empty_stream")
            headers = self.result_headers(first, request[REQUEST_ID])
            headers.update(_SSE_HEADERS)
            resp = web.StreamResponse(status=200, headers=headers)
            await resp.prepare(request)
            last = await self._pump(resp, first, agen, include_usage(creq), legacy)
            # The router puts the stream's cost on its last chunk once it has finished.
            self._charge(key, last.metadata if last is not None else None)
            return resp
        raise _ClientGone  # the watch swallowed its own cancellation: the client left

    def _stream_done(self) -> None:
        self.active_streams -= 1

    async def _pump(self, resp: web.StreamResponse, first: CompletionResponse, agen: Any,
                    want_usage: bool, legacy: bool) -> CompletionResponse | None:
        """Write the stream; return its last chunk when it completed, else None."""
        stream_id = first.id or f"{'cmpl' if legacy else 'chatcmpl'}-{uuid.uuid4().hex}"
        created = first.created or int(time.time())
        model = first.model
        usage: dict[str, int] | None = None
        chunk: CompletionResponse | None = first
        last: CompletionResponse | None = first
        is_first = True
        try:
            while chunk is not None:
                last = chunk
                if chunk.usage:
                    usage = chunk.usage
                if (is_first or chunk.content or chunk.tool_calls or chunk.finish_reason
                        or chunk.refusal is not None):
                    if legacy:
                        obj = text_chunk_to_dict(chunk, id=stream_id, created=created,
                                                 include_usage=want_usage)
                    else:
                        obj = chunk_to_dict(chunk, want_usage, first=is_first, id=stream_id,
                                            created=created)
                    await resp.write(b"data: " + dumps(obj) + b"\n\n")
                    is_first = False
                try:
                    chunk = await agen.__anext__()
                except StopAsyncIteration:
                    chunk = None
            if want_usage:
                obj = usage_chunk_dict(usage, id=stream_id, created=created, model=model,
                                       object="text_completion" if legacy
                                       else "chat.completion.chunk")
                await resp.write(b"data: " + dumps(obj) + b"\n\n")
            await resp.write(_DONE)
        except ConnectionResetError:
            logger.debug("client went away mid-stream; upstream request cancelled")
            return None
        except Exception as exc:
            status, body, _ = error_for_exception(exc)
            logger.opt(exception=exc).debug("stream failed after the first chunk ({})", status)
            with contextlib.suppress(ConnectionResetError):
                await resp.write(b"data: " + dumps(body) + b"\n\n")
            last = None
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return last

    # ----------------------------------------------------------------- ops handlers

    async def health(self, request: web.Request) -> web.StreamResponse:
        """``GET /health``: the process is alive."""
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def ready_handler(self, request: web.Request) -> web.StreamResponse:
        """``GET /ready``: 200 once providers are initialised, 503 before and while draining."""
        providers = list(getattr(self.mesh, "providers", {}) or {})
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
        """``GET /metrics``: Prometheus text format."""
        body, ctype = self.metrics.render()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    # ----------------------------------------------------------------- admin handlers

    async def admin_pools(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/pools``: ``mesh.pool_status()``."""
        self.require_admin(request)
        return web.Response(body=dumps(self.mesh.pool_status(), default=str),
                            content_type=_JSON)

    async def admin_pool(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/pools/{pool}``."""
        self.require_admin(request)
        pool = request.match_info["pool"]
        status = self.mesh.pool_status()
        pools = status.get("pools", status) if isinstance(status, dict) else {}
        if pool not in pools:
            raise _unknown_pool(pool, self.pool_names)
        return web.Response(body=dumps(pools[pool], default=str), content_type=_JSON)

    async def admin_rotate(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/pools/{pool}/rotate``: force the pool onto its next model."""
        self.require_admin(request)
        pool = request.match_info["pool"]
        if pool not in self.pool_members:
            raise _unknown_pool(pool, self.pool_names)
        result = self.mesh.rotate(pool)
        if asyncio.iscoroutine(result):
            result = await result
        return web.Response(body=dumps({"pool": pool, "active_model": result}),
                            content_type=_JSON)

    async def admin_reactivate(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/models/{model}/reactivate``."""
        self.require_admin(request)
        model = request.match_info["model"]
        if model not in self.model_names:
            raise WireError(f"Unknown model {model!r}.", status=404, code="model_not_found",
                            param="model")
        result = self.mesh.reactivate(model)
        if asyncio.iscoroutine(result):
            await result
        return web.Response(body=dumps({"model": model, "status": "active"}),
                            content_type=_JSON)

    async def admin_reload(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/reload``: body ``{"config": {...}}``, ``{"path": "..."}`` or empty
        (re-read the mesh's own config source). Keeps state; 400 listing every problem."""
        self.require_admin(request)
        raw = await request.read()
        source: Any = None
        if raw.strip():
            try:
                body = loads(raw)
            except ValueError as exc:
                raise WireError(f"The request body is not valid JSON: {exc}.",
                                code="invalid_json") from None
            if not isinstance(body, dict):
                raise WireError("The body must be a JSON object.", code="invalid_body")
            source = body.get("config", body.get("path"))
            if source is None and body:
                source = body
        if source is None:
            source = getattr(self.mesh, "config_source", None)
            if source is None:
                raise WireError("No config given and the mesh has no config file to re-read;"
                                " send {\"config\": {...}} or {\"path\": \"...\"}.",
                                code="missing_required_parameter", param="config")
        try:
            await self.mesh.reload_config(source)
        except ConfigError as exc:
            raise WireError("Invalid configuration: " + "; ".join(exc.errors),
                            code="invalid_config", param="config") from None
        if self._explicit_config is None:
            self._configure(_mesh_proxy_config(self.mesh))
        self._refresh_catalogue()
        return web.Response(body=dumps({"status": "reloaded", "pools": self.pool_names,
                                        "models": self.model_names}), content_type=_JSON)

    async def admin_keys(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/keys``: usage per virtual key (never the key itself)."""
        self.require_admin(request)
        return web.Response(body=dumps([k.snapshot() for k in self.keys.values()]),
                            content_type=_JSON)


# --------------------------------------------------------------------------- helpers


class _ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


class _DisconnectWatch:
    """Cancel the current task when the client's connection closes.

    aiohttp does not cancel handlers on disconnect unless the runner was created with
    ``handler_cancellation=True``; polling the transport (one timer per request, no task)
    makes an abandoned stream or slow request release its upstream connection either way.
    """

    __slots__ = ("_handle", "_loop", "_request", "_task", "gone")

    def __init__(self, request: web.Request) -> None:
        self._request = request
        self.gone = False
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> _DisconnectWatch:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(_DISCONNECT_POLL, self._check)
        return self

    def _check(self) -> None:
        if _client_gone(self._request):
            self.gone = True
            self._handle = None
            if self._task is not None:
                self._task.cancel()
            return
        self._handle = self._loop.call_later(_DISCONNECT_POLL, self._check)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.gone and exc_type is asyncio.CancelledError and self._task is not None:
            # We cancelled ourselves: swallow it so aiohttp sees an ordinary end.
            self._task.uncancel()
            return True
        return False


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _token(request: web.Request) -> str | None:
    headers = request.headers
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return headers.get("api-key") or headers.get("x-api-key")


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return remote == "localhost"


_BODY_BACKSTOP = 1 << 30  # the real limit is proxy.limits.max_body_size, checked per request


def _too_large(limit: int) -> WireError:
    return WireError(f"The request body is larger than the limit of {limit} bytes "
                     "(proxy.limits.max_body_size).", status=413,
                     code="request_too_large")


def _unknown_pool(pool: str, known: list[str]) -> WireError:
    return WireError(f"Unknown pool {pool!r}; pools: {', '.join(known) or '(none)'}.",
                     status=404, code="pool_not_found", param="pool")


def _mesh_proxy_config(mesh: Any) -> ProxyConfig:
    """``mesh.config.proxy`` once the mesh is built; before that, from its config source."""
    if mesh.started:
        return mesh.config.proxy
    source = getattr(mesh, "_source", None)
    if source is None:
        return ProxyConfig()
    from .config import MeshConfig, load_config

    try:
        config = source if isinstance(source, MeshConfig) else load_config(source)
    except ConfigError:
        return ProxyConfig()  # initialize() reports the problems
    return config.proxy


def _mesh_initialized(mesh: Any) -> bool:
    return bool(mesh.started)


_HTTP_MESSAGES = {
    404: ("Unknown path {path}. The proxy serves /v1/chat/completions, /v1/completions, "
          "/v1/embeddings, /v1/models, /health, /ready, /metrics and /admin/.", "not_found"),
    405: ("Method {method} is not allowed on {path}.", "method_not_allowed"),
}

REQUEST_ID: web.RequestKey[str] = web.RequestKey("modelmesh_request_id", str)
"""The request id of a request (incoming ``x-request-id`` or a new one), echoed back."""

ROUTER_ID: web.RequestKey[str] = web.RequestKey("modelmesh_router_id", str)
"""The id the router, events and logs use: unique even when clients reuse x-request-id (the
client's id plus a suffix, so the two stay easy to correlate)."""

SERVER_STATE: web.AppKey[ProxyServer] = web.AppKey("modelmesh_proxy", ProxyServer)
"""Where the :class:`ProxyServer` of an application lives (``app[SERVER_STATE]``)."""


def _make_middleware(server: ProxyServer) -> Any:
    metrics = server.metrics

    @web.middleware
    async def edge(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        client_id = request.headers.get("x-request-id")
        if client_id:
            request[REQUEST_ID] = client_id
            request[ROUTER_ID] = f"{client_id}.{uuid.uuid4().hex[:12]}"
        else:
            request[REQUEST_ID] = request[ROUTER_ID] = uuid.uuid4().hex
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = _preflight(server, request)
        else:
            try:
                response = await handler(request)
            except asyncio.CancelledError:
                raise
            except _ClientGone:
                logger.opt(lazy=True).debug("client left before the answer: {}",
                                            lambda: request.path)
                return web.Response(status=499)
            except web.HTTPException as exc:
                response = _http_exception_response(server, request, exc)
            except Exception as exc:
                response = _error_response(server, request, exc)
        metrics.observe_http(route, response.status, time.perf_counter() - started)
        return response

    return edge


def _http_exception_response(server: ProxyServer, request: web.Request,
                             exc: web.HTTPException) -> web.StreamResponse:
    if exc.status == 413:
        return _error_response(server, request, _too_large(server.max_body))
    if exc.status < 400:
        return exc
    template, code = _HTTP_MESSAGES.get(exc.status, ("{reason}", "http_error"))
    message = template.format(path=request.path, method=request.method, reason=exc.reason)
    return _error_response(server, request, WireError(message, status=exc.status, code=code))


def _error_response(server: ProxyServer, request: web.Request,
                    exc: BaseException) -> web.Response:
    key_available = None
    from .errors import CapabilityNotFoundError

    if isinstance(exc, CapabilityNotFoundError):
        key = server.keys.get(_token(request) or "") if server.auth_required else None
        key_available = server.available_for(key)
    status, body, headers = error_for_exception(exc, available=key_available)
    if status >= 500 and not isinstance(exc, ModelMeshError):
        logger.opt(exception=exc).debug("unexpected error on {} {}", request.method,
                                        request.path)
        logger.warning("internal error on {} {}: {}", request.method, request.path,
                       redact(repr(exc))[:300])
    else:
        logger.opt(lazy=True).debug("{} {} -> {}: {}", lambda: request.method,
                                    lambda: request.path, lambda: status,
                                    lambda: body["error"]["message"][:300])
    headers = dict(headers)
    headers["x-request-id"] = request.get(REQUEST_ID, "")
    return web.Response(status=status, body=dumps(body), content_type=_JSON, headers=headers)


def _preflight(server: ProxyServer, request: web.Request) -> web.Response:
    origin = request.headers.get("Origin", "")
    if not server.cors_enabled or not (server.cors_any or origin in server.cors_origins):
        return _error_response(server, request, WireError(
            f"Origin {origin!r} is not allowed (proxy.cors.origins).", status=403,
            code="cors_origin_not_allowed"))
    headers = {
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": request.headers.get(
            "Access-Control-Request-Headers", "authorization, content-type"),
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


def create_app(mesh: Any, config: ProxyConfig | None = None) -> web.Application:
    """Build the proxy application in front of ``mesh``.

    ``config`` overrides ``mesh.config.proxy``. The application initialises the mesh on
    start-up when it is not initialised yet (and then also shuts it down on cleanup); a mesh
    the caller initialised stays the caller's to shut down.
    """
    server = ProxyServer(mesh, config)
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
    r.add_get("/health", server.health)
    r.add_get("/ready", server.ready_handler)
    r.add_get("/metrics", server.metrics_handler)
    r.add_get("/admin/pools", server.admin_pools, allow_head=False)
    r.add_get("/admin/pools/{pool}", server.admin_pool, allow_head=False)
    r.add_post("/admin/pools/{pool}/rotate", server.admin_rotate)
    r.add_post("/admin/models/{model:.+}/reactivate", server.admin_reactivate)
    r.add_post("/admin/reload", server.admin_reload)
    r.add_get("/admin/keys", server.admin_keys, allow_head=False)
    return app


def serve(
    mesh: Any,
    *,
    host: str | None = None,
    port: int | None = None,
    config: ProxyConfig | None = None,
    reuse_port: bool = False,
    print_banner: Callable[..., None] | None = None,
) -> None:
    """Run the proxy until SIGINT / SIGTERM, then drain and flush.

    On a signal the listening socket closes, ``/ready`` turns 503, in-flight requests and
    streams get ``proxy.shutdown_timeout`` seconds to finish (then they are cancelled, which
    closes their upstream requests), and the mesh is shut down (state flushed). ``reuse_port``
    lets several worker processes share one port (SO_REUSEPORT).
    """
    app = create_app(mesh, config)
    cfg = app[SERVER_STATE].config
    web.run_app(
        app,
        host=host or cfg.host,
        port=cfg.port if port is None else port,
        shutdown_timeout=float(cfg.shutdown_timeout),
        handler_cancellation=True,
        reuse_port=reuse_port or None,
        access_log=None,
        print=print_banner,
    )
