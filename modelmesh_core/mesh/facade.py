"""The ``ModelMesh`` facade: loads plugins and configuration, assembles everything once, owns
the single ``aiohttp.ClientSession``, and exposes the router and the admin controls.

Assembly order (all at start-up, nothing per request): plugins (built-ins, entry points,
embedded) → registry (each hook called once) → secret store → interpolated, structured config →
validation against the registry (every problem collected, with its path) → capability tree,
providers, models, pools, filters, stages, pipeline, router.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import aiohttp
import attrs
import orjson
from attrs import define

from .._log import logger
from ..budget import BudgetTracker
from ..capabilities import CapabilityTree
from ..config import (
    ConnectorRef,
    MeshConfig,
    PluginsConfig,
    PoolConfig,
    RetryScope,
    TimeoutConfig,
    load_config_collect,
    read_source,
    structure,
    structure_plugin_config,
)
from ..errors import (
    AuthenticationError,
    CapabilityNotFoundError,
    ConfigError,
    PluginError,
    ProviderError,
    did_you_mean,
)
from ..events import EventEmitter, EventType
from ..ledger import Ledger, LedgerBackend, MemoryLedger
from ..observability import RequestLogger
from ..operations import serving_operations
from ..pipeline import PipelineContext, RoutingPipeline
from ..plugins import PluginRegistry, load_plugins
from ..pools import CandidateFilter, CapabilityPool, Services
from ..quota import catalogue_limits
from ..redaction import SecretStr, register_secret
from ..rotation import RotationManager
from ..router import Router
from ..state import MemoryStateStore, StateStore
from ..tracing import Tracing, build_tracing
from ..tracing import validate as validate_tracing
from ..types import (
    ALL_DELIVERY_MODES,
    ALL_FEATURES,
    FilterSpec,
    Limits,
    Model,
    ModelInfo,
    Pricing,
    Provider,
    ProviderContext,
    ProviderSpec,
    Timeouts,
)

__all__ = ["ModelMesh"]

_PROBE_COOLDOWN = 60.0

T = TypeVar("T")


def _hint(name: str, options: Iterable[str]) -> str:
    return did_you_mean(name, options)


def _timeouts(cfg: TimeoutConfig) -> Timeouts:
    return Timeouts(connect=cfg.connect, first_byte=cfg.first_byte, idle=cfg.idle,
                    total=cfg.total)


def _limits(cfg: Any) -> Limits:
    if cfg is None:
        return Limits()
    return Limits(rpm=cfg.rpm, tpm=cfg.tpm, rpd=cfg.rpd, tpd=cfg.tpd,
                  monthly_requests=cfg.monthly_requests, monthly_tokens=cfg.monthly_tokens,
                  reset_hour=cfg.reset_hour, free=cfg.free)


@define(kw_only=True)
class _Assembly:
    """Everything built from one configuration."""

    config: MeshConfig
    registry: PluginRegistry
    capabilities: CapabilityTree
    providers: dict[str, Provider]
    models: dict[str, Model]
    pools: dict[str, CapabilityPool]
    direct_pools: dict[str, CapabilityPool]
    pipeline: RoutingPipeline
    services: Services
    rotation: RotationManager
    budgets: BudgetTracker
    ledger: Ledger
    middleware: list[Any]
    sinks: list[Any]
    discovery: list[Any]
    secret_store: Any


def _carry_strategy_state(old: _Assembly, new: _Assembly) -> None:
    """Hot reload: a pool (configured, implicit or direct) that keeps its name and its strategy
    connector hands the old strategy instance to the new one's ``inherit(previous)`` (when the
    strategy has that method), so the sticky model, round-robin counters and session pins
    survive the reload."""
    for before, after in ((old.pools, new.pools), (old.direct_pools, new.direct_pools)):
        for name, pool in after.items():
            prev = before.get(name)
            if prev is None or prev.strategy_name != pool.strategy_name:
                continue
            inherit = getattr(pool.strategy, "inherit", None)
            if inherit is not None:
                inherit(prev.strategy)


class _LoopThread:
    """A private event loop on a daemon thread, for the synchronous API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="modelmesh-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "a synchronous ModelMesh call was made from inside the mesh's own event loop; "
                "use the async API (await ...) there"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


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
        self._loop_thread: _LoopThread | None = None
        self._started = False
        self._sink_unsubs: list[Callable[[], None]] = []
        self.events = EventEmitter(self._clock)
        self.state: StateStore = MemoryStateStore()
        self._asm: _Assembly | None = None
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

    async def _probe(self, asm: _Assembly) -> None:
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
            self._loop_thread = _LoopThread()
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
            _carry_strategy_state(old, asm)
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

    def _assembly(self) -> _Assembly:
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

    # -- assembly

    def _install(self, asm: _Assembly) -> None:
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

    async def _close_sinks(self, asm: _Assembly) -> None:
        for sink in asm.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                await close()

    def _assemble(self, source: Any, state: StateStore | None) -> _Assembly:
        errors: list[str] = []
        broken: dict[str, set[str]] = {}
        if isinstance(source, MeshConfig):
            raw: dict[str, Any] | None = None
            plugins_cfg = source.plugins
        else:
            raw = read_source(source)
            plugins_cfg, errs = structure(raw.get("plugins") or {}, PluginsConfig, "plugins")
            if errs:
                errors.extend(errs)
                raw = {k: v for k, v in raw.items() if k != "plugins"}
                plugins_cfg = PluginsConfig()
        strict = self._strict if self._strict is not None else plugins_cfg.strict
        entry_points = (self._entry_points if self._entry_points is not None
                        else plugins_cfg.entry_points)
        pm, report = load_plugins(extra=self._extra, entry_points=entry_points,
                                  blocked=plugins_cfg.block, required=plugins_cfg.require,
                                  strict=strict)
        registry = PluginRegistry.from_manager(pm, report)
        holder: dict[str, Any] = {}

        def secret_resolver(ref: ConnectorRef, errs: list[str]) -> Callable[[str], str | None]:
            store = self._secret_store(registry, ref, errs)
            holder["store"] = store
            return store.get if store is not None else (lambda name: None)

        if raw is not None:
            config, errs, broken = load_config_collect(raw, env=self._env,
                                                       secret_resolver=secret_resolver)
            errors.extend(errs)
            if errors and "plugins" not in raw:
                config = attrs.evolve(config, plugins=plugins_cfg)
        else:
            config = source
            holder["store"] = self._secret_store(registry, config.secrets, errors)
        builder = _Builder(self, config, registry, holder.get("store"), state)
        builder.errors.extend(errors)
        builder.broken = broken
        return builder.build()

    def open_secret_store(self) -> tuple[Any, str]:
        """The configured secret store and its connector id, built on its own.

        Only the ``plugins`` and ``secrets`` sections are read, so this works while the rest
        of the configuration still refers to secrets that are not set (``modelmesh secrets
        set`` is how they get set). Raises :class:`ConfigError`.
        """
        errors: list[str] = []
        if isinstance(self._source, MeshConfig):
            plugins_cfg, ref = self._source.plugins, self._source.secrets
        else:
            raw = read_source(self._source)
            plugins_cfg, errs = structure(raw.get("plugins") or {}, PluginsConfig, "plugins")
            errors.extend(errs)
            secrets_raw = raw.get("secrets")
            ref, errs = (structure(secrets_raw, ConnectorRef, "secrets") if secrets_raw
                         else (ConnectorRef(connector="modelmesh.env.v1"), []))
            errors.extend(errs)
            if errors:
                raise ConfigError(errors)
        entry_points = (self._entry_points if self._entry_points is not None
                        else plugins_cfg.entry_points)
        pm, report = load_plugins(extra=self._extra, entry_points=entry_points,
                                  blocked=plugins_cfg.block, required=plugins_cfg.require,
                                  strict=self._strict if self._strict is not None
                                  else plugins_cfg.strict)
        store = self._secret_store(PluginRegistry.from_manager(pm, report), ref, errors)
        if errors or store is None:
            raise ConfigError(errors)
        return store, ref.connector

    def _secret_store(self, registry: PluginRegistry, ref: ConnectorRef,
                      errors: list[str]) -> Any:
        spec = registry.secret_stores.get(ref.connector)
        if spec is None:
            errors.append(f"secrets.connector: unknown secret store {ref.connector!r}"
                          f"{_hint(ref.connector, registry.secret_stores)}; installed: "
                          f"{', '.join(sorted(registry.secret_stores))}")
            return None
        cfg, errs = structure_plugin_config(ref.config, spec.config_type, "secrets.config")
        if errs:
            errors.extend(errs)
            return None
        try:
            if "env" in inspect.signature(spec.factory).parameters:
                # stores that read the environment see the mesh's (ModelMesh(env=...))
                return spec.factory(cfg, env=self._env)
            return spec.factory(cfg)
        except ConfigError as exc:
            errors.extend(exc.errors)
            return None

    def _provider_context(self, name: str) -> ProviderContext:
        return ProviderContext(name=name, session=self.session, json_dumps=orjson.dumps,
                               json_loads=orjson.loads)


class _Builder:
    """Validates a structured configuration against the registry and builds the runtime.

    Every problem is collected (``path: message``) and raised together.
    """

    def __init__(self, mesh: ModelMesh, config: MeshConfig, registry: PluginRegistry,
                 secret_store: Any, state: StateStore | None) -> None:
        self.mesh = mesh
        self.config = config
        self.registry = registry
        self.secret_store = secret_store
        self.state = state
        self.errors: list[str] = []
        self.broken: dict[str, set[str]] = {}

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def plugin_config(self, data: Any, tp: type | None, path: str) -> Any:
        if tp is not None and isinstance(data, tp):
            return data
        value, errs = structure_plugin_config(data, tp, path)
        self.errors.extend(errs)
        return value

    def build(self) -> _Assembly:
        cfg = self.config
        reg = self.registry
        tree = self._tree()
        providers, specs = self._providers()
        models = self._models(tree, providers, specs)
        state = self.state or self._storage()
        events = self.mesh.events
        clock = self.mesh._clock
        pools = self._pools(tree, models, providers)
        self._implicit_pools(tree, models, pools)
        self._proxy_checks(set(pools))
        if self.errors:
            self._late_checks()
            raise ConfigError(self.errors)
        direct = self._direct_pools(models)
        ledger = Ledger(
            backend=self.mesh._ledger_backend(state),
            providers=providers,
            global_budget=cfg.budget,
            provider_budgets={n: p.budget for n, p in cfg.providers.items()
                              if p.budget is not None},
            pool_budgets={n: p.budget for n, p in cfg.pools.items() if p.budget is not None},
            events=events, clock=clock,
            maintenance={n: p.maintenance for n, p in cfg.providers.items() if p.maintenance},
        )
        budgets = BudgetTracker(ledger)
        operations = dict(reg.operations)
        model_operations = {
            mid: serving_operations(m.capabilities, providers[m.provider].adapter,
                                    operations.values())
            for mid, m in models.items() if m.provider in providers}
        services_base = dict(state=state, clock=clock, capabilities=tree, events=events,
                             providers=providers, models=models, pools=pools,
                             rng=self.mesh._rng, budgets=budgets, direct_pools=direct,
                             catalogues={n: specs[n].catalogue for n in providers},
                             operations=operations, model_operations=model_operations,
                             ledger=ledger)
        bare = Services(**services_base)  # type: ignore[arg-type]
        self._strategies(pools, direct, bare)
        filters = self._filters(bare)
        services = Services(filters=filters, **services_base)  # type: ignore[arg-type]
        stages = self._stages(services)
        middleware_refs = sorted(
            cfg.plugins.middleware,
            key=lambda r: getattr(reg.middleware.get(r.connector), "order", 0))
        middleware = self._connectors(middleware_refs, reg.middleware,
                                      "plugins.middleware", with_services=False)
        sinks = self._connectors(cfg.observability.sinks, reg.sinks, "observability.sinks",
                                 with_services=False)
        discovery = self._connectors(cfg.discovery.connectors, reg.discovery,
                                     "discovery.connectors", with_services=True,
                                     services=services)
        validate_tracing(cfg.observability.tracing, self.errors)
        if self.errors:
            raise ConfigError(self.errors)
        pipeline = RoutingPipeline(stages, providers=providers, clock=clock)
        return _Assembly(
            config=cfg, registry=reg, capabilities=tree, providers=providers, models=models,
            pools=pools, direct_pools=direct, pipeline=pipeline, services=services,
            rotation=RotationManager(state, events, clock, ledger), budgets=budgets,
            ledger=ledger,
            middleware=middleware, sinks=sinks, discovery=discovery,
            secret_store=self.secret_store,
        )

    def _proxy_checks(self, pools: set[str]) -> None:
        """Virtual keys: known pools, and no token given twice (the later one would win)."""
        auth = self.config.proxy.auth
        seen: dict[str, str] = {}
        for i, vk in enumerate(auth.keys):
            path = f"proxy.auth.keys.{i}"
            for j, pool in enumerate(vk.pools or ()):
                if pool not in pools:
                    self.err(f"{path}.pools.{j}", f"unknown pool {pool!r}"
                             f"{_hint(pool, pools)}; pools: {', '.join(sorted(pools))}")
            token = str(vk.key)
            if token in seen:
                self.err(f"{path}.key", f"the same key as {seen[token]}")
            seen.setdefault(token, f"{path}.key")
        for j, token in enumerate(auth.admin_keys):
            if str(token) in seen:
                self.err(f"proxy.auth.admin_keys.{j}", f"also listed as {seen[str(token)]}; "
                         "give a proxy key admin rights with admin: true instead")

    def _late_checks(self) -> None:
        """Checks that do not need a buildable runtime, run when earlier ones already failed
        so that every problem is reported at once."""
        reg = self.registry
        cfg = self.config
        if cfg.storage.connector not in reg.storage:
            self._storage()
        for i, sc in enumerate(cfg.plugins.stages):
            source = sc.connector or sc.name
            if source not in reg.stages and (sc.enabled or sc.name not in reg.stages):
                self.err(f"plugins.stages.{i}.connector" if sc.connector else
                         f"plugins.stages.{i}.name",
                         f"unknown stage {source!r}{_hint(source, reg.stages)}")
        for refs, table, path in ((cfg.plugins.middleware, reg.middleware, "plugins.middleware"),
                                  (cfg.observability.sinks, reg.sinks, "observability.sinks"),
                                  (cfg.discovery.connectors, reg.discovery,
                                   "discovery.connectors")):
            for i, ref in enumerate(refs):
                if ref.connector not in table:
                    self.err(f"{path}.{i}.connector", f"unknown connector {ref.connector!r}"
                             f"{_hint(ref.connector, table)}")

    # -- pieces

    def _tree(self) -> CapabilityTree:
        tree = CapabilityTree()
        for spec in self.registry.capabilities.values():
            tree.add(spec.path)
        for i, node in enumerate(self.config.capabilities.nodes):
            if not node or any(not p for p in node.split(".")):
                self.err(f"capabilities.nodes.{i}", f"{node!r} is not a dotted path")
                continue
            tree.add(node)
        for spec in self.registry.capabilities.values():
            for alias in spec.aliases:
                try:
                    tree.add_alias(alias, spec.path)
                except CapabilityNotFoundError as exc:
                    raise PluginError(f"plugin {spec.plugin!r}: {exc}") from None
        for alias, target in self.config.capabilities.aliases.items():
            try:
                tree.add_alias(alias, target)
            except CapabilityNotFoundError as exc:
                self.err(f"capabilities.aliases.{alias}", str(exc))
        return tree

    def _providers(self) -> tuple[dict[str, Provider], dict[str, ProviderSpec]]:
        cfg = self.config
        reg = self.registry
        providers: dict[str, Provider] = {}
        specs: dict[str, ProviderSpec] = {}
        default_timeouts = _timeouts(cfg.timeout)
        for name, pc in cfg.providers.items():
            path = f"providers.{name}"
            if "." in name:
                self.err(path, "provider names may not contain dots (model ids are "
                               "<provider>.<model>)")
                continue
            spec = reg.providers.get(pc.connector)
            if spec is None:
                hint = _hint(pc.connector, reg.providers)
                extra = ""
                if not hint:
                    vendor = pc.connector.split(".", 1)[0]
                    extra = f"; is the plugin installed (pip install modelmesh-{vendor})?"
                self.err(f"{path}.connector", f"unknown provider connector {pc.connector!r}"
                         f"{hint}{extra}; installed: {', '.join(sorted(reg.providers)) or 'none'}")
                continue
            conf = self.plugin_config(pc.config, spec.config_type, f"{path}.config")
            specs[name] = spec
            if (conf is None and spec.config_type is not None) or not pc.enabled:
                continue
            timeouts = _timeouts(pc.timeout) if pc.timeout is not None else default_timeouts
            try:
                adapter = spec.factory(self.mesh._provider_context(name), conf)
            except ConfigError as exc:
                self.errors.extend(
                    e if e.startswith(path) else
                    f"{path}.config.{e.removeprefix('config.')}" for e in exc.errors)
                continue
            providers[name] = Provider(name=name, connector=pc.connector, adapter=adapter,
                                       timeouts=timeouts, limits=_limits(pc.limits),
                                       enabled=pc.enabled, retry=pc.retry)
        auto = cfg.discovery.auto_detect
        if auto or (auto is None and not cfg.providers):
            self._auto_detect(providers, specs, default_timeouts)
        return providers, specs

    def _auto_detect(self, providers: dict[str, Provider], specs: dict[str, ProviderSpec],
                     timeouts: Timeouts) -> None:
        env = self.mesh._env
        for spec in sorted(self.registry.providers.values(), key=lambda s: s.name):
            if not spec.env_vars:
                continue
            var = next((v for v in spec.env_vars if env.get(v)), None)
            if var is None:
                continue
            name = spec.name.split(".", 1)[0]
            if name in providers or name in specs:
                continue
            data: dict[str, Any] = {}
            fields = {a.name for a in attrs.fields(spec.config_type)} if (
                spec.config_type is not None and attrs.has(spec.config_type)) else set()
            value = env[var]
            if not spec.local and "api_key" in fields:
                register_secret(value)
                data["api_key"] = SecretStr(value)
            conf, errs = structure_plugin_config(data, spec.config_type, f"(auto:{name})")
            if errs:
                logger.warning("auto-detected provider {} skipped: {}", name, "; ".join(errs))
                continue
            try:
                adapter = spec.factory(self.mesh._provider_context(name), conf)
            except ConfigError as exc:
                logger.warning("auto-detected provider {} skipped: {}", name,
                               "; ".join(exc.errors))
                continue
            providers[name] = Provider(name=name, connector=spec.name, adapter=adapter,
                                       timeouts=timeouts)
            specs[name] = spec
            logger.debug("auto-detected provider {} from ${}", name, var)

    def _models(self, tree: CapabilityTree, providers: dict[str, Provider],
                specs: dict[str, ProviderSpec]) -> dict[str, Model]:
        cfg = self.config
        models: dict[str, Model] = {}
        referenced: set[str] = set()
        for mid, mc in cfg.models.items():
            path = f"models.{mid}"
            provider = mc.provider or mid.split(".", 1)[0]
            referenced.add(provider)
            if provider not in specs:
                if provider not in cfg.providers and provider not in self.broken.get(
                        "providers", ()):
                    self.err(f"{path}.provider" if mc.provider else path,
                             f"unknown provider {provider!r}{_hint(provider, cfg.providers)}; "
                             f"providers: {', '.join(sorted(cfg.providers)) or 'none'}")
                elif mc.capabilities is not None:
                    # The provider is configured but its connector is unknown or broken (that
                    # is reported there): still check what the model says of itself, so one
                    # mistake does not hide another.
                    self._capabilities(tree, mc.capabilities, None, f"{path}.capabilities")
                continue
            if "." not in mid and not mc.upstream_id:
                self.err(path, "a model id is <provider>.<model-name> (or set upstream_id)")
                continue
            upstream = mc.upstream_id or mid.split(".", 1)[1]
            info = next((i for i in specs[provider].catalogue if i.name == upstream), None)
            caps = self._capabilities(tree, mc.capabilities, info, f"{path}.capabilities")
            modes = mc.delivery_modes if mc.delivery_modes is not None else (
                tuple(info.delivery_modes) if info else ("sync", "streaming"))
            for i, mode in enumerate(modes):
                if mode not in ALL_DELIVERY_MODES:
                    self.err(f"{path}.delivery_modes.{i}", f"must be one of "
                             f"{', '.join(sorted(ALL_DELIVERY_MODES))}")
            feats = mc.features if mc.features is not None else (
                tuple(info.features) if info else ())
            for i, feat in enumerate(feats):
                if feat not in ALL_FEATURES:
                    self.err(f"{path}.features.{i}", f"unknown feature {feat!r}"
                             f"{_hint(feat, ALL_FEATURES)}; one of "
                             f"{', '.join(sorted(ALL_FEATURES))}")
            if caps is None or not mc.enabled or provider not in providers:
                continue
            pricing = (Pricing(input=mc.pricing.input, output=mc.pricing.output,
                               cached_input=mc.pricing.cached_input,
                               per_request=mc.pricing.per_request,
                               reasoning=mc.pricing.reasoning)
                       if mc.pricing is not None else (info.pricing if info else Pricing()))
            models[mid] = Model(
                id=mid, provider=provider, upstream_id=upstream, capabilities=caps,
                delivery_modes=frozenset(modes), features=frozenset(feats),
                context_window=mc.context_window or (info.context_window if info else None),
                max_output_tokens=mc.max_output_tokens or (
                    info.max_output_tokens if info else None),
                pricing=pricing, priority=mc.priority,
                limits=_limits(mc.limits) if mc.limits is not None else catalogue_limits(
                    info, cfg.providers.get(provider)),
                weight=mc.weight,
            )
        for name in providers:
            if name in referenced:
                continue
            for info in specs[name].catalogue:
                caps = tuple(c for c in (tree.try_resolve(c) for c in info.capabilities) if c)
                if not caps:
                    continue
                mid = f"{name}.{info.name}"
                models[mid] = self._from_catalogue(mid, name, info, caps)
                if info.free_limits is not None:
                    models[mid] = attrs.evolve(models[mid], limits=catalogue_limits(
                        info, cfg.providers.get(name)))
        return models

    @staticmethod
    def _from_catalogue(mid: str, provider: str, info: ModelInfo,
                        caps: tuple[str, ...]) -> Model:
        return Model(id=mid, provider=provider, upstream_id=info.name, capabilities=caps,
                     delivery_modes=info.delivery_modes, features=info.features,
                     context_window=info.context_window,
                     max_output_tokens=info.max_output_tokens, pricing=info.pricing)

    def _capabilities(self, tree: CapabilityTree, given: tuple[str, ...] | None,
                      info: ModelInfo | None, path: str) -> tuple[str, ...] | None:
        names = given if given is not None else (info.capabilities if info else None)
        if not names:
            self.err(path, "required: the connector's catalogue does not know this model, so "
                           "list its capabilities (e.g. [chat-completion])")
            return None
        out: list[str] = []
        for i, name in enumerate(names):
            full = tree.try_resolve(name)
            if full is None:
                try:
                    tree.resolve(name)
                except CapabilityNotFoundError as exc:
                    self.err(f"{path}.{i}" if given is not None else path, str(exc))
                continue
            out.append(full)
        return tuple(out) if len(out) == len(names) else None

    def _storage(self) -> StateStore:
        ref = self.config.storage
        spec = self.registry.storage.get(ref.connector)
        if spec is None:
            self.err("storage.connector", f"unknown storage {ref.connector!r}"
                     f"{_hint(ref.connector, self.registry.storage)}; installed: "
                     f"{', '.join(sorted(self.registry.storage))}")
            return MemoryStateStore()
        conf = self.plugin_config(ref.config, spec.config_type, "storage.config")
        if conf is None and spec.config_type is not None:
            return MemoryStateStore()
        return spec.factory(conf)  # type: ignore[no-any-return]

    def _members(self, tree: CapabilityTree, name: str, pc: PoolConfig,
                 models: dict[str, Model], cap: str | None) -> list[Model]:
        path = f"pools.{name}"
        allowed = set(pc.providers) if pc.providers is not None else None
        excluded = set(pc.excluded_providers)
        members: list[Model] = []
        for i, mid in enumerate(pc.models or ()):
            model = models.get(mid)
            if model is None:
                if mid not in self.config.models and mid not in self.broken.get("models", ()):
                    self.err(f"{path}.models.{i}", f"unknown model {mid!r}"
                             f"{_hint(mid, models)}")
                continue
            members.append(model)
        if cap is not None:
            seen = {m.id for m in members}
            for model in models.values():
                if model.id in seen or model.provider in excluded:
                    continue
                if allowed is not None and model.provider not in allowed:
                    continue
                if any(tree.covers(cap, c) for c in model.capabilities):
                    members.append(model)
        return members

    def _pools(self, tree: CapabilityTree, models: dict[str, Model],
               providers: dict[str, Provider]) -> dict[str, CapabilityPool]:
        cfg = self.config
        pools: dict[str, CapabilityPool] = {}
        for name, pc in cfg.pools.items():
            path = f"pools.{name}"
            if name in models:
                self.err(path, "a pool may not have the same name as a model")
            cap: str | None = None
            if pc.capability is not None:
                cap = tree.try_resolve(pc.capability)
                if cap is None:
                    try:
                        tree.resolve(pc.capability)
                    except CapabilityNotFoundError as exc:
                        self.err(f"{path}.capability", str(exc))
            elif not pc.models:
                self.err(path, "give a capability, a models list, or both")
            for key in ("providers", "excluded_providers"):
                for i, prov in enumerate(getattr(pc, key) or ()):
                    if prov not in cfg.providers and prov not in providers and (
                            prov not in self.broken.get("providers", ())):
                        self.err(f"{path}.{key}.{i}", f"unknown provider {prov!r}"
                                 f"{_hint(prov, cfg.providers)}")
            spec = self.registry.strategy(pc.strategy.connector)
            if spec is None:
                self.err(f"{path}.strategy", f"unknown strategy {pc.strategy.connector!r}"
                         f"{_hint(pc.strategy.connector, self.registry.strategy_names())}; "
                         f"installed: {', '.join(sorted(self.registry.strategies))}")
            else:
                self.plugin_config(pc.strategy.config, spec.config_type,
                                   f"{path}.strategy.config")
            members = self._members(tree, name, pc, models, cap)
            if not members and (cap is not None or pc.models) and not self.errors:
                self.err(path, f"no enabled model serves this pool (capability {cap!r}); add a "
                               "model with this capability or list models explicitly")
            mode = ("hybrid" if pc.models and cap else "explicit" if pc.models else
                    "capability")
            pools[name] = CapabilityPool(
                name=name, capability=cap, models=members, strategy=None,  # type: ignore[arg-type]
                strategy_name=spec.name if spec else pc.strategy.connector, config=pc,
                retry=pc.retry or cfg.retry, streaming=pc.streaming or cfg.streaming,
                timeouts=_timeouts(pc.timeout) if pc.timeout is not None else None,
                priority=pc.priority, mode=mode,
            )
        return pools

    def _implicit_pools(self, tree: CapabilityTree, models: dict[str, Model],
                        pools: dict[str, CapabilityPool]) -> None:
        """One pool per capability leaf that has models but no covering pool."""
        aliases: dict[str, str] = {}
        for alias, target in sorted(tree.aliases().items(), key=lambda kv: (len(kv[0]), kv[0])):
            aliases.setdefault(target, alias)
        leaves: dict[str, list[Model]] = {}
        for model in models.values():
            for cap in model.capabilities:
                leaves.setdefault(cap, []).append(model)
        for cap, members in leaves.items():
            covered = any(
                (p.capability is not None and tree.covers(p.capability, cap))
                or (p.capability is None and any(cap in m.capabilities for m in p.models))
                for p in pools.values()
            )
            if covered:
                continue
            name = aliases.get(cap, cap)
            if name in pools or name in models:
                name = cap
            pools[name] = CapabilityPool(
                name=name, capability=cap, models=members, strategy=None,  # type: ignore[arg-type]
                strategy_name="modelmesh.stick-until-failure.v1",
                config=PoolConfig(capability=cap), retry=self.config.retry,
                streaming=self.config.streaming, mode="implicit",
            )

    def _direct_pools(self, models: dict[str, Model]) -> dict[str, CapabilityPool]:
        """A single-model pool per model, for requests that name a concrete model id."""
        retry = attrs.evolve(self.config.retry, scope=RetryScope.SAME_MODEL)
        return {
            mid: CapabilityPool(
                name=mid, capability=None, models=[m], strategy=None,  # type: ignore[arg-type]
                strategy_name="modelmesh.stick-until-failure.v1",
                config=PoolConfig(models=(mid,)), retry=retry,
                streaming=self.config.streaming, mode="direct",
            )
            for mid, m in models.items()
        }

    def _strategies(self, pools: dict[str, CapabilityPool],
                    direct: dict[str, CapabilityPool], services: Services) -> None:
        for pool in [*pools.values(), *direct.values()]:
            spec = self.registry.strategy(pool.strategy_name)
            assert spec is not None
            ref = pool.config.strategy
            same = self.registry.strategy(ref.connector) is spec
            conf = self.plugin_config(ref.config if same else {}, spec.config_type,
                                      f"pools.{pool.name}.strategy.config")
            pool.strategy = spec.factory(conf, services)

    def _filters(self, services: Services) -> dict[str, list[CandidateFilter]]:
        wanted = self.config.plugins.filters
        table = self.registry.filters
        chosen: list[tuple[FilterSpec, Any, str]] = []
        if wanted is None:
            chosen = [(spec, {}, f"(filter {spec.name})") for spec in table.values()]
        else:
            for i, ref in enumerate(wanted):
                spec = table.get(ref.connector)
                if spec is None:
                    self.err(f"plugins.filters.{i}", f"unknown filter {ref.connector!r}"
                             f"{_hint(ref.connector, table)}; registered: "
                             f"{', '.join(sorted(table))}")
                    continue
                chosen.append((spec, ref.config, f"plugins.filters.{i}.config"))
        out: dict[str, list[CandidateFilter]] = {}
        for spec, raw, path in sorted(chosen, key=lambda c: (c[0].order, c[0].name)):
            conf = self.plugin_config(raw, spec.config_type, path)
            if conf is None and spec.config_type is not None:
                continue  # its config is invalid: reported, not built
            out.setdefault(spec.stage, []).append(spec.factory(conf, services))
        return out

    def _stages(self, services: Services) -> list[Any]:
        reg = self.registry.stages
        layout: dict[str, tuple[int, Any, Any]] = {
            name: (spec.order, spec, {}) for name, spec in reg.items()
        }
        for i, sc in enumerate(self.config.plugins.stages):
            path = f"plugins.stages.{i}"
            if not sc.enabled:
                if sc.name not in layout:
                    self.err(f"{path}.name", f"unknown stage {sc.name!r}{_hint(sc.name, reg)}")
                layout.pop(sc.name, None)
                continue
            source = sc.connector or sc.name
            spec = reg.get(source)
            if spec is None:
                self.err(f"{path}.connector" if sc.connector else f"{path}.name",
                         f"unknown stage {source!r}{_hint(source, reg)}; registered: "
                         f"{', '.join(sorted(reg))}")
                continue
            current = layout.get(sc.name)
            order = sc.order if sc.order is not None else (
                current[0] if current is not None else spec.order)
            layout[sc.name] = (order, spec, sc.config)
        stages: list[Any] = []
        for name, (_, spec, conf) in sorted(layout.items(), key=lambda kv: (kv[1][0], kv[0])):
            value = self.plugin_config(conf, spec.config_type, f"plugins.stages.{name}.config")
            if value is None and spec.config_type is not None:
                continue  # its config is invalid: reported, not built
            stage = spec.factory(value, services)
            if getattr(stage, "name", None) != name:
                try:
                    stage.name = name
                except AttributeError:
                    pass
            stages.append(stage)
        return stages

    def _connectors(self, refs: Iterable[ConnectorRef], table: Mapping[str, Any], path: str,
                    *, with_services: bool, services: Services | None = None) -> list[Any]:
        out: list[Any] = []
        for i, ref in enumerate(refs):
            spec = table.get(ref.connector)
            if spec is None:
                self.err(f"{path}.{i}.connector", f"unknown connector {ref.connector!r}"
                         f"{_hint(ref.connector, table)}; installed: {', '.join(sorted(table))}")
                continue
            conf = self.plugin_config(ref.config, spec.config_type, f"{path}.{i}.config")
            if self.errors:
                continue
            try:
                out.append(spec.factory(conf, services) if with_services else spec.factory(conf))
            except ConfigError as exc:
                self.errors.extend(exc.errors)
        return out

