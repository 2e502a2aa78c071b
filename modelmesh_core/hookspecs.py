"""The whole plugin contract of ModelMesh: markers and hook specifications.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, named after
the hooks below. Every hook is called **once, at start-up**, synchronously, and returns
registration records (see :mod:`modelmesh_core.types`); none is ever called per request.
Implementations take only the arguments they need, by name, and never give them defaults.

A minimal plugin package::

    # modelmesh_shortest/__init__.py
    from modelmesh_core import StrategySpec, hookimpl

    class Shortest:
        def order(self, candidates, context):
            return sorted(candidates, key=lambda m: len(m.id))

    @hookimpl
    def modelmesh_strategies():
        return [StrategySpec(name="acme.shortest.v1", factory=lambda config, services: Shortest())]

and in its ``pyproject.toml``::

    [project.entry-points.modelmesh]
    shortest = "modelmesh_shortest"
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

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
)

PROJECT_NAME = "modelmesh"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """Register provider connectors (wire-protocol adapters).

    Called once when the mesh assembles its registry, before configuration is structured.

    Returns:
        ``ProviderSpec`` records, one per connector id (``vendor.service.vN``). The core
        structures each configured provider's ``config:`` into ``spec.config_type`` and calls
        ``spec.factory(context, config)`` once per configured provider.

    Example::

        @hookimpl
        def modelmesh_providers():
            return [ProviderSpec(name="acme.llm.v1", factory=AcmeAdapter,
                                 config_type=AcmeConfig, env_vars=("ACME_API_KEY",))]
    """


@hookspec
def modelmesh_strategies() -> Sequence[StrategySpec]:
    """Register selection strategies.

    Called once at start-up. A pool names a strategy by id or alias; the core calls
    ``spec.factory(config, services)`` once per pool that uses it. The strategy object has
    ``order(candidates, context) -> list[Model]`` (best first; it may set
    ``context.scores[model.id]``) and may have ``record(model, ok, context)`` (told the
    outcome of each attempt) and ``rotate()`` (a forced rotation of its pool).

    Example::

        @hookimpl
        def modelmesh_strategies():
            return [StrategySpec(name="acme.shortest.v1", aliases=("shortest",),
                                 factory=lambda config, services: Shortest())]
    """


@hookspec
def modelmesh_stages() -> Sequence[StageSpec]:
    """Register routing pipeline stages.

    Called once at start-up. The default pipeline is every registered stage sorted by
    ``order`` (built-ins: 100 capability-resolver … 600 retry-policy); config
    (``plugins.stages``) can reorder, disable, or replace stages by name. The core calls
    ``spec.factory(config, services)`` once; the stage's ``process(context)`` (sync or async)
    runs per request.

    Example::

        @hookimpl
        def modelmesh_stages():
            return [StageSpec(name="acme.eu-only", factory=lambda config, services: EuOnly(),
                              order=350)]
    """


@hookspec
def modelmesh_filters() -> Sequence[FilterSpec]:
    """Register candidate filters run by the delivery-filter or state-filter stage.

    Called once at start-up. ``spec.factory(config, services)`` returns an object with
    ``reason(model, context) -> str | None``: a string drops the model and says why.

    Example::

        @hookimpl
        def modelmesh_filters():
            return [FilterSpec(name="acme.no-preview", stage="state-filter",
                               factory=lambda config, services: NoPreview())]
    """


@hookspec
def modelmesh_secret_stores() -> Sequence[SecretStoreSpec]:
    """Register secret stores resolving ``${secrets:NAME}`` in configuration.

    Called once at start-up, before the rest of the configuration is interpolated.
    ``spec.factory(config)`` returns an object with ``get(name) -> str | None`` (and, when
    ``writable``, ``set(name, value)``, ``delete(name)``, ``list() -> list[str]``).

    Example::

        @hookimpl
        def modelmesh_secret_stores():
            return [SecretStoreSpec(name="acme.vault.v1", factory=VaultStore,
                                    config_type=VaultConfig)]
    """


@hookspec
def modelmesh_storage() -> Sequence[StorageSpec]:
    """Register state storage backends (model/provider state, counters, sessions).

    Called once at start-up; ``spec.factory(config)`` returns a ``StateStore``.

    Example::

        @hookimpl
        def modelmesh_storage():
            return [StorageSpec(name="acme.etcd.v1", factory=EtcdStore,
                                config_type=EtcdConfig)]
    """


@hookspec
def modelmesh_sinks() -> Sequence[SinkSpec]:
    """Register observability sinks (events, request log, statistics).

    Called once at start-up; ``spec.factory(config)`` returns an object with
    ``emit(event: Event)`` (sync, cheap) and optional ``async close()``.

    Example::

        @hookimpl
        def modelmesh_sinks():
            return [SinkSpec(name="acme.statsd.v1", factory=StatsdSink)]
    """


@hookspec
def modelmesh_discovery() -> Sequence[DiscoverySpec]:
    """Register discovery connectors (health monitors, registry sync).

    Called once at start-up; ``spec.factory(config, services)`` returns an object with
    ``async start()`` and ``async stop()`` that runs in the background of the mesh.

    Example::

        @hookimpl
        def modelmesh_discovery():
            return [DiscoverySpec(name="acme.catalog-sync.v1", factory=CatalogSync)]
    """


@hookspec
def modelmesh_middleware() -> Sequence[MiddlewareSpec]:
    """Register request middleware.

    Called once at start-up; ``spec.factory(config)`` returns an object with any of
    ``async before_request(call)`` (in ``order``), ``async after_response(call, response)``
    (reverse order) and ``async on_error(call, error) -> response | None`` (first non-None
    wins). Middleware is enabled by naming it in ``plugins.middleware``.

    Example::

        @hookimpl
        def modelmesh_middleware():
            return [MiddlewareSpec(name="acme.audit.v1", factory=lambda config: Audit())]
    """


@hookspec
def modelmesh_capabilities() -> Sequence[CapabilitySpec]:
    """Extend the capability tree with new nodes and aliases.

    Called once at start-up, before pools are resolved.

    Example::

        @hookimpl
        def modelmesh_capabilities():
            return [CapabilitySpec(path="generation.text-generation.poetry",
                                   aliases=("poetry",))]
    """


@hookspec
def modelmesh_operations() -> Sequence[OperationSpec]:
    """Register operations the router can run (beyond the built-in ones).

    Called once at start-up. An operation names the capability subtrees it serves, the
    adapter method it calls and its request and response types; ``Router.run(name,
    capability, request)`` then routes it like every other operation (pipeline, attempt loop,
    failover, budgets, events) — no change to the router. A model serves the operation when
    one of its capabilities lies under one of ``capabilities`` and its provider's adapter has
    ``method``.

    Example::

        @hookimpl
        def modelmesh_operations():
            return [OperationSpec(name="acme.ocr", capabilities=(
                "understanding.vision-understanding.ocr",), method="ocr",
                request_type=OcrRequest, response_type=OcrResponse)]
    """
