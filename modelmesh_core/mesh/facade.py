"""The ``ModelMesh`` facade: loads plugins and configuration, assembles everything once
(:mod:`.assembly`), owns the single ``aiohttp.ClientSession``, and exposes the router, the
lifecycle (async and, through :mod:`.loop_thread`, sync), reload, the admin controls and status.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import aiohttp
import attrs
import orjson

from .._log import logger
from ..capabilities import CapabilityTree
from ..config import MeshConfig
from ..errors import AuthenticationError, ProviderError
from ..errors import did_you_mean as _hint
from ..events import EventEmitter, EventType
from ..ledger import Ledger, LedgerBackend, MemoryLedger
from ..observability import RequestLogger
from ..pipeline import PipelineContext, RoutingPipeline
from ..plugins import PluginRegistry
from ..pools import CapabilityPool
from ..router import Router
from ..state import MemoryStateStore, StateStore
from ..tracing import Tracing, build_tracing
from ..types import Model, Provider, ProviderContext
from .assembly import Assembly, assemble, carry_strategy_state
from .assembly import open_secret_store as _open_secret_store
from .loop_thread import LoopThread

__all__ = ["ModelMesh"]

_PROBE_COOLDOWN = 60.0

T = TypeVar("T")


class ModelMesh:
    """The ModelMesh library facade.

    Example::

        async with ModelMesh("modelmesh.yaml") as mesh:
            response = await mesh.router.complete(
                "chat", CompletionRequest(messages=[{"role": "user", "content": "hi"}]))

    Args:
        config: a YAML path, YAML text, a dict, a ``MeshConfig``, or None (auto-detect
            providers from the environment).
        plugins: plugin objects or modules registered after the entry points.
        clock: wall-clock function (tests inject one to drive cooldowns without sleeping).
        env: environment used for ``${env:…}`` and auto-detection (default ``os.environ``).
        strict: re-raise plugin load failures (default: config ``plugins.strict`` or env
            ``MODELMESH_STRICT_PLUGINS``).
        entry_points: load installed plugins (default: config ``plugins.entry_points``).
        seed: seed for the router's random choices (jittered backoff).
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any] | MeshConfig | None = None,
        *,
        plugins: Iterable[object] = (),
        clock: Callable[[], float] | None = None,
        env: Mapping[str, str] | None = None,
        strict: bool | None = None,
        entry_points: bool | None = None,
        seed: int | None = None,
    ) -> None:
        self._source = config
        self._extra = tuple(plugins)
        self._clock: Callable[[], float] = clock or time.time
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._strict = strict
        self._entry_points = entry_points
        self._rng = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None
        self._loop_thread: LoopThread | None = None
        self._started = False
        self._sink_unsubs: list[Callable[[], None]] = []
        self.events = EventEmitter(self._clock)
        self.state: StateStore = MemoryStateStore()
        self._asm: Assembly | None = None
        self._router: Router | None = None
        self._validated: MeshConfig | None = None
        self._tracing: Tracing | None = None
        self._fallback_ledger: LedgerBackend | None = None
        self._reload_listeners: list[Callable[[], Any]] = []

    def _ledger_backend(self, state: StateStore) -> LedgerBackend:
        """The store's ledger backend (kept across reloads), else one in this process."""
        backend: LedgerBackend | None = getattr(state, "ledger_backend", None)
        if backend is None:
            if self._fallback_ledger is None:
                self._fallback_ledger = MemoryLedger()
            backend = self._fallback_ledger
        return backend

    @property
    def ledger(self) -> Ledger:
        """The admission ledger (limits, quotas and budgets as counted now)."""
        return self._assembly().ledger

    # -- lifecycle

    async def initialize(
        self, config: str | os.PathLike[str] | Mapping[str, Any] | MeshConfig | None = None
    ) -> ModelMesh:
        """Build everything from the configuration and open the HTTP session.

        Raises :class:`ConfigError` listing every problem, or :class:`PluginError`.
        """
        if self._started:
            raise RuntimeError("this ModelMesh is already initialized; use reload_config()")
        if config is not None:
            self._source = config
        asm = self._assemble(self._source, state=None)
        self.state = asm.services.state
        await self.state.load()
        coordinator = getattr(self.state, "coordinator", None)
        if coordinator is not None:
            coordinator.on_admin(self._remote_admin)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=512, limit_per_host=128, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )
        self._install(asm)
        if asm.config.discovery.probe_on_start:
            await self._probe(asm)
        for d in asm.discovery:
            await d.start()
        self._started = True
        logger.debug("mesh initialized: {} providers, {} models, {} pools",
                     len(asm.providers), len(asm.models), len(asm.pools))
        return self

    start = initialize

    async def _probe(self, asm: Assembly) -> None:
        """Ask every provider for its model list once; mark those that fail as down."""
        now = self._clock()

        async def one(provider: Provider) -> None:
            try:
                await provider.adapter.list_models(provider.timeouts)
            except AuthenticationError:
                asm.rotation.provider_down(provider.name, "authentication_rejected",
                                           now + _PROBE_COOLDOWN)
            except ProviderError as exc:
                logger.warning("probe of provider {} failed: {}", provider.name, exc)
                asm.rotation.provider_down(provider.name, "probe_failed", now + _PROBE_COOLDOWN)
            self.state.provider(provider.name).last_probe = now

        await asyncio.gather(*(one(p) for p in asm.providers.values() if p.enabled))

    async def shutdown(self) -> None:
        """Stop background work, cancel batches, flush state, close adapters and the session."""
        if not self._started:
            return
        self._started = False
        asm = self._asm
        assert asm is not None and self._router is not None
        for d in asm.discovery:
            await d.stop()
        await self._router.close()
        for provider in asm.providers.values():
            try:
                await provider.adapter.close()
            except Exception as exc:  # one adapter must not stop the others closing
                logger.warning("closing provider {} failed: {}", provider.name, exc)
        await self._close_sinks(asm)
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # flushes spans: blocking I/O
            self._tracing = None
        await self.state.flush()
        await self.state.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ModelMesh:
        return await self.initialize()

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def validate(
        self, config: str | os.PathLike[str] | Mapping[str, Any] | MeshConfig | None = None
    ) -> dict[str, int]:
        """Check a configuration against the installed plugins without starting anything.

        Builds every object the mesh would use (secrets resolved through the configured
        store) but opens no session and sends nothing. Raises :class:`ConfigError` listing
        every problem; returns counts of providers, models and pools.
        """
        asm = self._assemble(self._source if config is None else config, state=None)
        self._validated = asm.config
        return {"providers": len(asm.providers), "models": len(asm.models),
                "pools": len(asm.pools)}

    @property
    def validated_config(self) -> MeshConfig | None:
        """The configuration the last :meth:`validate` accepted (None before one ran)."""
        return self._validated

    def initialize_sync(self) -> ModelMesh:
        """Initialize on a private loop thread so the ``*_sync`` methods can be used."""
        if self._loop_thread is None:
            self._loop_thread = LoopThread()
        try:
            self._loop_thread.run(self.initialize())
        except BaseException:
            self._loop_thread.stop()
            self._loop_thread = None
            raise
        return self

    def shutdown_sync(self) -> None:
        """Blocking shutdown of a mesh started with :meth:`initialize_sync`."""
        if self._loop_thread is None:
            raise RuntimeError("shutdown_sync() is for meshes started with initialize_sync()")
        try:
            self._loop_thread.run(self.shutdown())
        finally:
            self._loop_thread.stop()
            self._loop_thread = None

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the mesh's loop thread and wait for it."""
        if self._loop_thread is None:
            coro.close()
            raise RuntimeError("the mesh was not started with initialize_sync()")
        return self._loop_thread.run(coro)

    async def reload_config(
        self, config: str | os.PathLike[str] | Mapping[str, Any] | MeshConfig,
        *, everywhere: bool = True,
    ) -> None:
        """Rebuild from a new configuration, keeping model and provider state.

        On any error the running configuration stays in place and the error is raised. With
        a store shared by several processes, ``everywhere`` (default) has every other worker
        and replica reload the same configuration (a path or a mapping; a ``MeshConfig``
        object reloads only here).
        """
        await self._reload(config)
        coordinator = getattr(self.state, "coordinator", None)
        if everywhere and coordinator is not None and isinstance(config, str | os.PathLike
                                                                 | Mapping):
            coordinator.publish_admin(
                "reload", os.fspath(config) if isinstance(config, str | os.PathLike)
                else dict(config))

    def add_reload_listener(self, listener: Callable[[], Any]) -> Callable[[], None]:
        """Call ``listener()`` (it may return an awaitable) after a reload that another
        process asked for (the proxy refreshes what it computed from the configuration).
        Returns the function that removes it."""
        self._reload_listeners.append(listener)

        def remove() -> None:
            if listener in self._reload_listeners:
                self._reload_listeners.remove(listener)

        return remove

    async def _remote_admin(self, action: str, arg: Any) -> None:
        """An admin action another worker or replica published."""
        if action == "rotate":
            self.rotate(arg, everywhere=False)
        elif action == "reload":
            await self._reload(arg)
            for listener in self._reload_listeners:
                result = listener()
                if inspect.isawaitable(result):
                    await result

    async def _reload(
        self, config: str | os.PathLike[str] | Mapping[str, Any] | MeshConfig
    ) -> None:
        old = self._asm
        old_tracing = self._tracing
        asm = self._assemble(config, state=self.state)
        if old is not None:
            carry_strategy_state(old, asm)
        self._source = config
        self._install(asm)
        if old_tracing is not None and old_tracing is not self._tracing:
            await asyncio.to_thread(old_tracing.shutdown)
        if old is not None:
            for d in old.discovery:
                await d.stop()
            for name, provider in old.providers.items():
                if asm.providers.get(name) is not provider:
                    await provider.adapter.close()
            await self._close_sinks(old)
        for d in asm.discovery:
            await d.start()

    # -- accessors

    def _assembly(self) -> Assembly:
        if self._asm is None:
            raise RuntimeError("the mesh is not initialized; call await mesh.initialize()")
        return self._asm

    @property
    def router(self) -> Router:
        """The router (after ``initialize``)."""
        if self._router is None:
            raise RuntimeError("the mesh is not initialized; call await mesh.initialize()")
        return self._router

    def get_router(self) -> Router:
        """The router (after ``initialize``)."""
        return self.router

    @property
    def config(self) -> MeshConfig:
        """The configuration in force."""
        return self._assembly().config

    @property
    def registry(self) -> PluginRegistry:
        """What the plugins registered, and the load report."""
        return self._assembly().registry

    @property
    def capabilities(self) -> CapabilityTree:
        """The capability tree (``list_all``, ``resolve``, ``search``, ``tree``)."""
        return self._assembly().capabilities

    @property
    def providers(self) -> dict[str, Provider]:
        """Configured providers by name."""
        return self._assembly().providers

    @property
    def models(self) -> dict[str, Model]:
        """Routable models by id."""
        return self._assembly().models

    @property
    def pools(self) -> dict[str, CapabilityPool]:
        """Pools by name (configured and implicit)."""
        return self._assembly().pools

    @property
    def pipeline(self) -> RoutingPipeline:
        """The routing pipeline."""
        return self._assembly().pipeline

    @property
    def discovery(self) -> list[Any]:
        """The running discovery connectors (``discovery.connectors``), in order."""
        return list(self._assembly().discovery)

    @property
    def secret_store(self) -> Any:
        """The configured secret store."""
        return self._assembly().secret_store

    @property
    def config_source(self) -> Any:
        """What the configuration was loaded from (a path, text, dict or MeshConfig)."""
        return self._source

    @property
    def started(self) -> bool:
        """True between initialize and shutdown."""
        return self._started

    def session(self) -> aiohttp.ClientSession:
        """The mesh's one HTTP session (exists between initialize and shutdown)."""
        if self._session is None:
            raise RuntimeError("the mesh is not initialized (no HTTP session)")
        return self._session

    # -- admin

    def pool_status(self) -> dict[str, Any]:
        """Per pool: capability, strategy, and each model's state (JSON-able)."""
        asm = self._assembly()
        out: dict[str, Any] = {}
        now = self._clock()
        for name, pool in asm.pools.items():
            models = []
            for m in pool.models:
                snap = self.state.model(m.id).snapshot()
                ps = self.state.provider(m.provider)
                snap["provider"] = m.provider
                snap["provider_available"] = ps.available
                cd = snap["cooldown_until"]
                snap["cooldown_remaining_s"] = round(max(cd - now, 0.0), 3) if cd else None
                models.append(snap)
            out[name] = {
                "capability": pool.capability,
                "mode": pool.mode,
                "strategy": pool.strategy_name,
                "active_models": sum(1 for s in models if s["status"] == "active"),
                "models": models,
            }
        return out

    def provider_status(self) -> dict[str, Any]:
        """Per provider state (JSON-able)."""
        asm = self._assembly()
        return {name: {**self.state.provider(name).snapshot(), "connector": p.connector}
                for name, p in asm.providers.items()}

    def rotate(self, pool: str, *, everywhere: bool = True) -> str:
        """Force ``pool`` to switch to its next model; returns the model now first in line.

        With a store shared by several processes, ``everywhere`` (default) rotates the pool
        in every worker and replica."""
        asm = self._assembly()
        try:
            p = asm.pools[pool]
        except KeyError:
            raise KeyError(f"no pool named {pool!r}; pools: {sorted(asm.pools)}") from None
        ctx = PipelineContext(capability=pool, pool=p, candidates=list(p.models),
                              now=self._clock())
        rotate = getattr(p.strategy, "rotate", None)
        if rotate is not None and p.models:
            p.strategy.order(p.models, ctx)  # let a fresh strategy learn the pool order first
            rotate()
        first = p.strategy.order(p.models, ctx)[0].id if p.models else ""
        coordinator = getattr(self.state, "coordinator", None)
        if everywhere and coordinator is not None:
            coordinator.publish_admin("rotate", pool)
        if self.events.enabled:
            self.events.emit(EventType.POOL_ROTATED, pool=pool, model=first, manual=True)
        return first

    def reactivate(self, model_id: str) -> None:
        """Bring a model (and its provider) out of standby now."""
        asm = self._assembly()
        try:
            model = asm.models[model_id]
        except KeyError:
            raise KeyError(f"no model {model_id!r}{_hint(model_id, asm.models)}") from None
        asm.rotation.reactivate(model)

    def deactivate(self, model_id: str, reason: str = "manual") -> None:
        """Put a model in standby until :meth:`reactivate` (``reason``: manual, maintenance…)."""
        asm = self._assembly()
        try:
            model = asm.models[model_id]
        except KeyError:
            raise KeyError(f"no model {model_id!r}{_hint(model_id, asm.models)}") from None
        asm.rotation.deactivate(model, reason, until=0.0)

    def describe(self) -> dict[str, Any]:
        """Providers, models and pools in force (JSON-able; no secrets)."""
        asm = self._assembly()
        return {
            "providers": {n: {"connector": p.connector, "enabled": p.enabled}
                          for n, p in asm.providers.items()},
            "models": {
                m.id: {"provider": m.provider, "upstream_id": m.upstream_id,
                       "capabilities": list(m.capabilities),
                       "delivery_modes": sorted(m.delivery_modes),
                       "features": sorted(m.features), "context_window": m.context_window,
                       "pricing": attrs.asdict(m.pricing)}
                for m in asm.models.values()
            },
            "pools": {n: {"capability": p.capability, "strategy": p.strategy_name,
                          "mode": p.mode, "models": p.model_ids}
                      for n, p in asm.pools.items()},
            "stages": asm.pipeline.stage_names(),
        }

    # -- assembly (built in .assembly, installed here)

    def _install(self, asm: Assembly) -> None:
        self._asm = asm
        for unsub in self._sink_unsubs:
            unsub()
        self._sink_unsubs = [self.events.subscribe(s) for s in asm.sinks]
        log = asm.config.observability.request_log
        tracing = asm.config.observability.tracing
        if self._tracing is None or self._tracing.config != tracing:
            self._tracing = build_tracing(tracing)  # the old one is shut down by the caller
        kwargs = dict(pipeline=asm.pipeline, pools=asm.pools, providers=asm.providers,
                      rotation=asm.rotation, budgets=asm.budgets, events=self.events,
                      clock=self._clock, rng=self._rng, middleware=asm.middleware,
                      request_logger=RequestLogger(self.events, log.level.value,
                                                   log.max_payload_chars),
                      tracing=self._tracing,
                      operations=asm.services.operations,
                      model_operations=asm.services.model_operations)
        if self._router is None:
            runner = self._loop_thread.run if self._loop_thread is not None else None
            self._router = Router(runner=runner, **kwargs)  # type: ignore[arg-type]
        else:
            self._router.configure(**kwargs)  # type: ignore[arg-type]
        self._router.batch_config = asm.config.batch

    async def _close_sinks(self, asm: Assembly) -> None:
        for sink in asm.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                await close()

    def _assemble(self, source: Any, state: StateStore | None) -> Assembly:
        return assemble(self, source, state)

    def open_secret_store(self) -> tuple[Any, str]:
        """The configured secret store and its connector id, built on its own.

        Only the ``plugins`` and ``secrets`` sections are read, so this works while the rest
        of the configuration still refers to secrets that are not set (``modelmesh secrets
        set`` is how they get set). Raises :class:`ConfigError`.
        """
        return _open_secret_store(self)

    def _provider_context(self, name: str) -> ProviderContext:
        return ProviderContext(name=name, session=self.session, json_dumps=orjson.dumps,
                               json_loads=orjson.loads)
