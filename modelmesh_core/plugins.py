"""Plugin manager factory, wrapped entry-point discovery, and the typed registry facade.

Nothing here runs at import. :func:`load_plugins` builds a fresh ``pluggy.PluginManager``
for one mesh, registers the built-ins (:data:`DEFAULT_PLUGINS`), then every entry point of the
``modelmesh`` group, then plugin objects passed in by the embedding application, each on its
own, recording a :class:`PluginLoadRecord`. :class:`PluginRegistry` then calls each hook exactly
once, stamps each record with the plugin that produced it, and indexes them by name.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pluggy
from attrs import define, frozen

from . import hookspecs
from ._log import logger
from .errors import PluginError, PluginLoadWarning
from .types import (
    CapabilitySpec,
    DiscoverySpec,
    FilterSpec,
    MiddlewareSpec,
    OperationSpec,
    ProviderSpec,
    SecretStoreSpec,
    SinkSpec,
    StageSpec,
    StorageSpec,
    StrategySpec,
    with_plugin,
)

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "STRICT_ENV",
    "PluginLoadRecord",
    "PluginRegistry",
    "load_plugins",
    "make_plugin_manager",
]

ENTRY_POINT_GROUP = "modelmesh"
STRICT_ENV = "MODELMESH_STRICT_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "modelmesh_core.builtin.stages",
    "modelmesh_core.builtin.filters",
    "modelmesh_core.builtin.strategies",
    "modelmesh_core.builtin.secrets",
    "modelmesh_core.builtin.storage",
    "modelmesh_core.builtin.sinks",
    "modelmesh_core.builtin.discovery",
    "modelmesh_core.builtin.operations",
)

#: hook name -> (record type, registry attribute)
HOOKS: dict[str, tuple[type, str]] = {
    "modelmesh_providers": (ProviderSpec, "providers"),
    "modelmesh_strategies": (StrategySpec, "strategies"),
    "modelmesh_stages": (StageSpec, "stages"),
    "modelmesh_filters": (FilterSpec, "filters"),
    "modelmesh_secret_stores": (SecretStoreSpec, "secret_stores"),
    "modelmesh_storage": (StorageSpec, "storage"),
    "modelmesh_sinks": (SinkSpec, "sinks"),
    "modelmesh_discovery": (DiscoverySpec, "discovery"),
    "modelmesh_middleware": (MiddlewareSpec, "middleware"),
    "modelmesh_capabilities": (CapabilitySpec, "capabilities"),
    "modelmesh_operations": (OperationSpec, "operations"),
}


@frozen(kw_only=True)
class PluginLoadRecord:
    """What happened when one plugin was loaded.

    ``source`` is ``"builtin"``, ``"entrypoint"`` or ``"embedded"``; ``status`` is ``"loaded"``,
    ``"failed"`` or ``"blocked"``; ``hooks`` lists the hooks it implements.
    """

    name: str
    source: str
    status: str
    distribution: str = ""
    version: str = ""
    module: str = ""
    hooks: tuple[str, ...] = ()
    error: str = ""


def strict_from_env() -> bool:
    """Whether ``MODELMESH_STRICT_PLUGINS`` asks for strict plugin loading."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def make_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager with the ModelMesh hook specifications and nothing registered."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, ...]:
    callers = pm.get_hookcallers(plugin) or []
    return tuple(sorted(c.name for c in callers))


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Register and validate one plugin; on failure leave the manager as it was."""
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        pm.unregister(plugin)
        raise


def load_plugins(
    *,
    extra: Iterable[object] = (),
    entry_points: bool = True,
    blocked: Iterable[str] = (),
    required: Iterable[str] = (),
    strict: bool | None = None,
) -> tuple[pluggy.PluginManager, list[PluginLoadRecord]]:
    """Build a plugin manager and register built-ins, entry points, then ``extra`` plugins.

    Each plugin is loaded on its own; a failure is recorded, logged as a warning, and loading
    goes on, unless ``strict`` (default: env ``MODELMESH_STRICT_PLUGINS``) is on, in which case
    it raises :class:`PluginError`. A plugin named in ``required`` that did not load is always
    an error.
    """
    strict = strict_from_env() if strict is None else strict
    blocked = set(blocked)
    pm = make_plugin_manager()
    report: list[PluginLoadRecord] = []

    def fail(record: PluginLoadRecord) -> None:
        report.append(record)
        if strict:
            raise PluginError(
                f"plugin {record.name!r} from distribution {record.distribution or '?'!r} "
                f"failed to load: {record.error}"
            )
        logger.warning(
            "plugin {} ({}) failed to load: {}",
            record.name, record.distribution or "?", record.error,
        )
        # loguru is disabled inside a library; an embedding application hears of it the
        # standard way (and can turn it into an error or silence it with a warnings filter)
        warnings.warn(
            f"ModelMesh plugin {record.name!r} (distribution {record.distribution or '?'}) "
            f"failed to load and was skipped: {record.error}",
            PluginLoadWarning, stacklevel=3)

    for modname in DEFAULT_PLUGINS:
        module = importlib.import_module(modname)
        _register_checked(pm, module, modname)
        report.append(
            PluginLoadRecord(
                name=modname,
                source="builtin",
                status="loaded",
                distribution="modelmesh-core",
                version=_version("modelmesh-core"),
                module=modname,
                hooks=_hooks_of(pm, module),
            )
        )

    if entry_points:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else ""
            version = ep.dist.version if ep.dist is not None else ""
            base: dict[str, Any] = dict(name=ep.name, source="entrypoint", distribution=dist,
                                        version=version, module=ep.value)
            if ep.name in blocked:
                report.append(PluginLoadRecord(status="blocked", **base))
                continue
            if pm.has_plugin(ep.name):
                fail(PluginLoadRecord(status="failed", error="a plugin with this name is "
                                      "already registered", **base))
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the mesh down
                fail(PluginLoadRecord(status="failed", error=f"import failed: {exc!r}", **base))
                continue
            try:
                _register_checked(pm, plugin, ep.name)
            except (pluggy.PluginValidationError, ValueError) as exc:
                fail(PluginLoadRecord(status="failed", error=f"invalid hooks: {exc}", **base))
                continue
            report.append(PluginLoadRecord(status="loaded", hooks=_hooks_of(pm, plugin), **base))
            logger.debug("loaded plugin {} from {} {}", ep.name, dist, version)

    for plugin in extra:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        name = str(name)
        if pm.has_plugin(name):
            name = f"{name}-{id(plugin):x}"
        try:
            _register_checked(pm, plugin, name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"embedded plugin {name!r} has invalid hooks: {exc}") from exc
        report.append(
            PluginLoadRecord(
                name=name, source="embedded", status="loaded", hooks=_hooks_of(pm, plugin),
                module=getattr(plugin, "__name__", type(plugin).__module__),
            )
        )

    loaded = {r.name for r in report if r.status == "loaded"}
    missing = [name for name in required if name not in loaded]
    if missing:
        why = {r.name: r.error for r in report if r.name in missing}
        parts = [f"{n}: {why.get(n) or 'not installed (no entry point in group modelmesh)'}"
                 for n in missing]
        raise PluginError("required plugins did not load: " + "; ".join(parts))
    return pm, report


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""


@define
class PluginRegistry:
    """Every record the plugins registered, indexed by name.

    Built once per mesh by :meth:`from_manager`; the mesh never touches ``pm.hook`` again.
    Strategy aliases resolve through :meth:`strategy`.
    """

    providers: dict[str, ProviderSpec] = attrs.Factory(dict)
    strategies: dict[str, StrategySpec] = attrs.Factory(dict)
    stages: dict[str, StageSpec] = attrs.Factory(dict)
    filters: dict[str, FilterSpec] = attrs.Factory(dict)
    secret_stores: dict[str, SecretStoreSpec] = attrs.Factory(dict)
    storage: dict[str, StorageSpec] = attrs.Factory(dict)
    sinks: dict[str, SinkSpec] = attrs.Factory(dict)
    discovery: dict[str, DiscoverySpec] = attrs.Factory(dict)
    middleware: dict[str, MiddlewareSpec] = attrs.Factory(dict)
    capabilities: dict[str, CapabilitySpec] = attrs.Factory(dict)
    operations: dict[str, OperationSpec] = attrs.Factory(dict)
    report: list[PluginLoadRecord] = attrs.Factory(list)
    strategy_aliases: dict[str, str] = attrs.Factory(dict)

    @classmethod
    def from_manager(
        cls, pm: pluggy.PluginManager, report: Sequence[PluginLoadRecord] = ()
    ) -> PluginRegistry:
        """Call every hook once, validate and index the records.

        Raises :class:`PluginError` when a hook returns something that is not its record type,
        or when two plugins register the same name (naming both distributions).
        """
        registry = cls(report=list(report))
        dists = {r.name: r.distribution for r in report}
        for hook_name, (record_type, attr) in HOOKS.items():
            table: dict[str, Any] = getattr(registry, attr)
            caller = getattr(pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                plugin = impl.plugin_name
                try:
                    result = impl.function()
                except Exception as exc:
                    raise PluginError(
                        f"plugin {plugin!r} ({dists.get(plugin, '?')}) raised in {hook_name}: "
                        f"{exc!r}"
                    ) from exc
                if result is None:
                    continue
                if isinstance(result, record_type):
                    result = [result]
                if not isinstance(result, list | tuple):
                    raise PluginError(
                        f"plugin {plugin!r} returned {type(result).__name__} from {hook_name}; "
                        f"expected a list of {record_type.__name__} records (hooks are "
                        "synchronous: an async def hookimpl returns a coroutine)"
                    )
                for record in result:
                    if not isinstance(record, record_type):
                        raise PluginError(
                            f"plugin {plugin!r} returned {type(record).__name__} from "
                            f"{hook_name}; expected {record_type.__name__} records"
                        )
                    key = (record.path if isinstance(record, CapabilitySpec)
                           else record.name)  # type: ignore[attr-defined]
                    if key in table and table[key].plugin != plugin:
                        other = table[key].plugin
                        raise PluginError(
                            f"{record_type.__name__} {key!r} is registered twice: by plugin "
                            f"{other!r} (distribution {dists.get(other) or '?'}) and by plugin "
                            f"{plugin!r} (distribution {dists.get(plugin) or '?'})"
                        )
                    table[key] = with_plugin(record, plugin)
        for spec in registry.strategies.values():
            for alias in spec.aliases:
                owner = registry.strategy_aliases.get(alias)
                if owner is not None and owner != spec.name:
                    raise PluginError(
                        f"strategy alias {alias!r} is claimed by {owner!r} and {spec.name!r}"
                    )
                registry.strategy_aliases[alias] = spec.name
        return registry

    def strategy(self, name: str) -> StrategySpec | None:
        """The strategy registered under ``name`` or one of its aliases."""
        spec = self.strategies.get(name)
        if spec is None and name in self.strategy_aliases:
            spec = self.strategies[self.strategy_aliases[name]]
        return spec

    def strategy_names(self) -> list[str]:
        """Every accepted strategy name (ids and aliases)."""
        return sorted({*self.strategies, *self.strategy_aliases})
