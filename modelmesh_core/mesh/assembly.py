"""Assembly: everything a configuration describes, built once at ``initialize()`` and again
at each reload, never per request.

Order: plugins (built-ins, entry points, embedded) → registry (each hook called once) → secret
store → interpolated, structured config → validation against the registry (every problem
collected, with its path) → capability tree, providers, models, pools, filters, stages,
pipeline (the facade then points the router at the result).

:func:`assemble` does the loading; :class:`Builder` validates and builds, with its provider and
model steps in :mod:`.assembly_models` and its pool steps in :mod:`.assembly_pools`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from attrs import define

from ..budget import BudgetTracker
from ..capabilities import CapabilityTree
from ..config import (
    ConnectorRef,
    MeshConfig,
    PluginsConfig,
    load_config_collect,
    read_source,
    structure,
    structure_plugin_config,
)
from ..errors import CapabilityNotFoundError, ConfigError, PluginError
from ..errors import did_you_mean as _hint
from ..ledger import Ledger
from ..operations import serving_operations
from ..pipeline import RoutingPipeline
from ..plugins import PluginRegistry, load_plugins
from ..pools import CandidateFilter, CapabilityPool, Services
from ..rotation import RotationManager
from ..state import MemoryStateStore, StateStore
from ..tracing import validate as validate_tracing
from ..types import FilterSpec, Model, Provider
from .assembly_models import ModelSteps
from .assembly_pools import PoolSteps

if TYPE_CHECKING:
    from .facade import ModelMesh

__all__ = ["Assembly", "Builder", "assemble", "build_secret_store", "carry_strategy_state",
           "open_secret_store"]


@define(kw_only=True)
class Assembly:
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


def carry_strategy_state(old: Assembly, new: Assembly) -> None:
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


def assemble(mesh: ModelMesh, source: Any, state: StateStore | None) -> Assembly:
    """Load plugins, the secret store and the configuration from ``source``, then build
    everything (:class:`Builder`). Raises :class:`ConfigError` listing every problem."""
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
    strict = mesh._strict if mesh._strict is not None else plugins_cfg.strict
    entry_points = (mesh._entry_points if mesh._entry_points is not None
                    else plugins_cfg.entry_points)
    pm, report = load_plugins(extra=mesh._extra, entry_points=entry_points,
                              blocked=plugins_cfg.block, required=plugins_cfg.require,
                              strict=strict)
    registry = PluginRegistry.from_manager(pm, report)
    holder: dict[str, Any] = {}

    def secret_resolver(ref: ConnectorRef, errs: list[str]) -> Callable[[str], str | None]:
        store = build_secret_store(mesh._env, registry, ref, errs)
        holder["store"] = store
        return store.get if store is not None else (lambda name: None)

    if raw is not None:
        config, errs, broken = load_config_collect(raw, env=mesh._env,
                                                   secret_resolver=secret_resolver)
        errors.extend(errs)
        if errors and "plugins" not in raw:
            config = attrs.evolve(config, plugins=plugins_cfg)
    else:
        config = source
        holder["store"] = build_secret_store(mesh._env, registry, config.secrets, errors)
    builder = Builder(mesh, config, registry, holder.get("store"), state)
    builder.errors.extend(errors)
    builder.broken = broken
    return builder.build()


def open_secret_store(mesh: ModelMesh) -> tuple[Any, str]:
    """The configured secret store and its connector id, built on its own.

    Only the ``plugins`` and ``secrets`` sections are read, so this works while the rest
    of the configuration still refers to secrets that are not set (``modelmesh secrets
    set`` is how they get set). Raises :class:`ConfigError`.
    """
    errors: list[str] = []
    if isinstance(mesh._source, MeshConfig):
        plugins_cfg, ref = mesh._source.plugins, mesh._source.secrets
    else:
        raw = read_source(mesh._source)
        plugins_cfg, errs = structure(raw.get("plugins") or {}, PluginsConfig, "plugins")
        errors.extend(errs)
        secrets_raw = raw.get("secrets")
        ref, errs = (structure(secrets_raw, ConnectorRef, "secrets") if secrets_raw
                     else (ConnectorRef(connector="modelmesh.env.v1"), []))
        errors.extend(errs)
        if errors:
            raise ConfigError(errors)
    entry_points = (mesh._entry_points if mesh._entry_points is not None
                    else plugins_cfg.entry_points)
    pm, report = load_plugins(extra=mesh._extra, entry_points=entry_points,
                              blocked=plugins_cfg.block, required=plugins_cfg.require,
                              strict=mesh._strict if mesh._strict is not None
                              else plugins_cfg.strict)
    store = build_secret_store(mesh._env, PluginRegistry.from_manager(pm, report), ref, errors)
    if errors or store is None:
        raise ConfigError(errors)
    return store, ref.connector


def build_secret_store(env: Mapping[str, str], registry: PluginRegistry, ref: ConnectorRef,
                       errors: list[str]) -> Any:
    """The secret store ``ref`` names, built; problems are appended to ``errors``."""
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
            return spec.factory(cfg, env=env)
        return spec.factory(cfg)
    except ConfigError as exc:
        errors.extend(exc.errors)
        return None


class Builder(ModelSteps, PoolSteps):
    """Validates a structured configuration against the registry and builds the runtime.

    Every problem is collected (``path: message``) and raised together.
    """

    def build(self) -> Assembly:
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
        return Assembly(
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

