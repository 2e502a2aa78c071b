"""The six default pipeline stages, registered as a built-in plugin.

| order | name | does |
|---|---|---|
| 100 | capability-resolver | name → matching pools (pool, model id, alias/path → covering) |
| 200 | pool-selection | one pool (priority, preferred provider) → its members as candidates |
| 300 | delivery-filter | drops models lacking the delivery mode or a needed feature |
| 400 | state-filter | drops standby / cooling / rate-limited / over-budget models |
| 500 | selection-strategy | the pool's strategy orders the survivors |
| 600 | retry-policy | trims the fallback chain to the pool's retry scope and attempt budget |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import RetryScope
from ..errors import CapabilityNotFoundError, OperationNotSupportedError, did_you_mean
from ..hookspecs import hookimpl
from ..pipeline import PipelineContext, PipelineStage
from ..pools import CandidateFilter, CapabilityPool, Services
from ..types import Model, OperationSpec, StageSpec

__all__ = [
    "CapabilityResolverStage",
    "FilterStage",
    "PoolSelectionStage",
    "RetryPolicyStage",
    "SelectionStrategyStage",
]

_CACHE_LIMIT = 4096


class CapabilityResolverStage(PipelineStage):
    """Stage 1: resolve the requested name to the pools that can serve it.

    Order of precedence: an exact pool name, a concrete model id, then the capability (alias
    or dotted path) → every pool whose node covers it, most specific first, then by priority.
    Results are cached per name (names that fail are not cached).
    """

    name = "capability-resolver"

    def __init__(self, config: Any, services: Services) -> None:
        self._s = services
        self._cache: dict[str, tuple[list[CapabilityPool], str | None]] = {}

    def process(self, context: PipelineContext) -> PipelineContext:
        hit = self._cache.get(context.capability)
        if hit is None:
            hit = self._resolve(context.capability)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[context.capability] = hit
        context.pools, context.capability_path = hit
        return context

    def _resolve(self, name: str) -> tuple[list[CapabilityPool], str | None]:
        s = self._s
        pool = s.pools.get(name)
        if pool is not None:
            return [pool], pool.capability
        direct = s.direct_pools.get(name)
        if direct is not None:
            return [direct], None
        path = s.capabilities.try_resolve(name)
        if path is None:
            known = [*s.pools, *s.models]
            hint = did_you_mean(name, [*known, *s.capabilities.aliases()], n=3)
            listing = ", ".join(sorted(s.pools)) or "(none)"
            raise CapabilityNotFoundError(
                f"unknown model, pool or capability {name!r}{hint} (pools: {listing})"
            )
        tree = s.capabilities
        covering: list[tuple[int, int, int, CapabilityPool]] = []
        below: list[tuple[int, int, CapabilityPool]] = []
        for i, p in enumerate(s.pools.values()):
            if p.capability is None:
                if any(tree.covers(path, c) for m in p.models for c in m.capabilities):
                    covering.append((0, -p.priority, i, p))
            elif tree.covers(p.capability, path):
                covering.append((-p.capability.count("."), -p.priority, i, p))
            elif tree.covers(path, p.capability):
                below.append((-p.priority, i, p))
        if covering:
            covering.sort(key=lambda t: t[:3])
            return [t[3] for t in covering], path
        if below:
            below.sort(key=lambda t: t[:2])
            return [t[2] for t in below], path
        raise CapabilityNotFoundError(
            f"no pool or model serves capability {path!r} (asked as {name!r}); configure a model "
            "with this capability or a pool covering it"
        )


class PoolSelectionStage(PipelineStage):
    """Stage 2: choose one pool and seed the candidates with its members.

    The first matching pool wins, unless a preferred provider is given and a later pool has a
    model from it. When the asked capability is narrower than the pool's node, only members
    with a capability under it are candidates. When an operation is being routed, only
    members that can serve it are (their capabilities lie under the operation's subtrees and
    their adapter has its method), and a pool with none is passed over; when no matching pool
    can serve it, :class:`OperationNotSupportedError` names what the pool serves. Members are
    cached per pool, path and operation.
    """

    name = "pool-selection"

    def __init__(self, config: Any, services: Services) -> None:
        self._s = services
        self._members: dict[tuple[str, str | None, str | None, int], list[Model]] = {}

    def process(self, context: PipelineContext) -> PipelineContext:
        pools = context.pools
        if not pools:
            return context
        request = context.request
        preferred = request.preferred_provider if request is not None else None
        operation = request.operation if request is not None else None
        if preferred and len(pools) > 1:
            for i, p in enumerate(pools):
                if any(m.provider == preferred for m in p.models):
                    if i:
                        pools = [p, *pools[:i], *pools[i + 1:]]
                    break
        path = context.capability_path
        for pool in pools:
            members = self._members_of(pool, path, operation)
            if members or operation is None:
                context.pool = pool
                context.candidates = list(members)
                return context
        assert operation is not None
        raise self._unsupported(context.capability, pools[0], operation)

    def _members_of(self, pool: CapabilityPool, path: str | None,
                    operation: OperationSpec | None) -> list[Model]:
        # Registry sync can add members to a running pool: the length keys that away.
        key = (pool.name, path, operation.name if operation is not None else None,
               len(pool.models))
        members = self._members.get(key)
        if members is None:
            members = self._narrow(pool, path)
            if operation is not None:
                served = self._s.model_operations
                members = [m for m in members if operation.name in served.get(m.id, ())]
            if len(self._members) < _CACHE_LIMIT:
                self._members[key] = members
        return members

    def _unsupported(self, name: str, pool: CapabilityPool,
                     operation: OperationSpec) -> OperationNotSupportedError:
        served = self._s.model_operations
        serves = sorted({op for m in pool.models for op in served.get(m.id, ())})
        what = f"model {name!r}" if name != pool.name else f"pool {name!r}"
        caps = sorted({c for m in pool.models for c in m.capabilities})
        return OperationNotSupportedError(
            f"{what} cannot serve {operation.name!r} requests: it resolves to pool "
            f"{pool.name!r}, whose models serve {', '.join(serves) or 'no operation'} "
            f"(capabilities: {', '.join(caps) or 'none'}); {operation.name!r} needs a model "
            f"with a capability under {' or '.join(operation.capabilities)}",
            operation=operation.name, pool=pool.name, serves=serves,
        )

    def _narrow(self, pool: CapabilityPool, path: str | None) -> list[Model]:
        if path is None or pool.capability == path:
            return list(pool.models)
        tree = self._s.capabilities
        if pool.capability is not None and not tree.covers(pool.capability, path):
            return list(pool.models)
        return [m for m in pool.models if any(tree.covers(path, c) for c in m.capabilities)]


class FilterStage(PipelineStage):
    """Stages 3 and 4: run the registered candidate filters of this stage, in order.

    A filter returning a reason drops the model; the reason is kept in ``context.dropped``.
    """

    def __init__(self, name: str, filters: Sequence[CandidateFilter]) -> None:
        self.name = name
        self._reasons = tuple(f.reason for f in filters)

    def process(self, context: PipelineContext) -> PipelineContext:
        reasons = self._reasons
        if not reasons:
            return context
        keep: list[Model] = []
        dropped = context.dropped
        for model in context.candidates:
            for reason in reasons:
                why = reason(model, context)
                if why is not None:
                    dropped[model.id] = why
                    break
            else:
                keep.append(model)
        context.candidates = keep
        return context


class SelectionStrategyStage(PipelineStage):
    """Stage 5: the pool's strategy orders the survivors; the first is selected.

    A preferred provider's models are moved to the front afterwards (stable).
    """

    name = "selection-strategy"

    def __init__(self, config: Any, services: Services) -> None:
        pass

    def process(self, context: PipelineContext) -> PipelineContext:
        candidates = context.candidates
        pool = context.pool
        if not candidates or pool is None:
            return context
        ordered = pool.strategy.order(candidates, context)
        request = context.request
        preferred = request.preferred_provider if request is not None else None
        if preferred:
            ordered = [m for m in ordered if m.provider == preferred] + [
                m for m in ordered if m.provider != preferred
            ]
        context.candidates = ordered
        context.selected_model = ordered[0] if ordered else None
        return context


class RetryPolicyStage(PipelineStage):
    """Stage 6: shape the fallback chain by the pool's retry policy.

    ``scope: same_model`` keeps only the selected model, ``same_provider`` only models of its
    provider; the chain never exceeds ``max_attempts`` models. The router walks the chain.
    """

    name = "retry-policy"

    def __init__(self, config: Any, services: Services) -> None:
        pass

    def process(self, context: PipelineContext) -> PipelineContext:
        candidates = context.candidates
        pool = context.pool
        if not candidates or pool is None:
            return context
        policy = pool.retry
        if policy.scope is RetryScope.SAME_MODEL:
            candidates = candidates[:1]
        elif policy.scope is RetryScope.SAME_PROVIDER:
            first = candidates[0].provider
            candidates = [m for m in candidates if m.provider == first]
        limit = max(policy.max_attempts, 1)
        if len(candidates) > limit:
            candidates = candidates[:limit]
        context.candidates = candidates
        return context


def _filter_stage(name: str) -> Any:
    def factory(config: Any, services: Services) -> FilterStage:
        return FilterStage(name, services.filters.get(name, ()))

    return factory


@hookimpl
def modelmesh_stages() -> list[StageSpec]:
    """The six default stages."""
    return [
        StageSpec(name="capability-resolver", factory=CapabilityResolverStage, order=100,
                  description="virtual model name → matching pools"),
        StageSpec(name="pool-selection", factory=PoolSelectionStage, order=200,
                  description="one pool; preferred provider honoured"),
        StageSpec(name="delivery-filter", factory=_filter_stage("delivery-filter"), order=300,
                  description="drop models lacking the delivery mode or a needed feature"),
        StageSpec(name="state-filter", factory=_filter_stage("state-filter"), order=400,
                  description="drop standby, cooling, rate-limited or over-budget models"),
        StageSpec(name="selection-strategy", factory=SelectionStrategyStage, order=500,
                  description="order the survivors with the pool's strategy"),
        StageSpec(name="retry-policy", factory=RetryPolicyStage, order=600,
                  description="shape the fallback chain by retry scope and attempts"),
    ]
