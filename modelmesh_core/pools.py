"""Capability pools and the interfaces of the per-request objects plugins provide."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from attrs import Factory, define, frozen

from .budget import BudgetTracker
from .capabilities import CapabilityTree
from .config import PoolConfig, RetryConfig, StreamingConfig
from .events import EventEmitter
from .ledger import Ledger
from .state import Clock, StateStore
from .types import Model, ModelInfo, OperationSpec, Provider, Timeouts

if TYPE_CHECKING:
    from .pipeline import PipelineContext

__all__ = [
    "CandidateFilter",
    "CapabilityPool",
    "SelectionStrategy",
    "Services",
]


@runtime_checkable
class SelectionStrategy(Protocol):
    """What a ``StrategySpec.factory(config, services)`` returns (one instance per pool).

    ``order`` returns the candidates best first (it may set ``context.scores[model.id]``).
    Optional methods the router calls when present:
    ``record(model, ok, context)`` after every attempt, and ``rotate()`` on a forced rotation;
    ``inherit(previous)`` on a hot reload, with the pool's previous strategy instance.
    """

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]: ...


@runtime_checkable
class CandidateFilter(Protocol):
    """What a ``FilterSpec.factory(config, services)`` returns.

    ``reason(model, context)`` returns None to keep the model, or a short string saying why it
    is dropped (shown in ``RoutingError`` and ``explain``).
    """

    def reason(self, model: Model, context: PipelineContext) -> str | None: ...


@frozen(kw_only=True)
class Services:
    """Shared runtime objects handed to stage, filter, strategy and discovery factories."""

    state: StateStore
    clock: Clock
    capabilities: CapabilityTree
    events: EventEmitter
    providers: Mapping[str, Provider]
    models: Mapping[str, Model]
    pools: Mapping[str, CapabilityPool]
    rng: random.Random
    budgets: BudgetTracker | None = None
    ledger: Ledger | None = None
    """The admission ledger."""
    direct_pools: Mapping[str, CapabilityPool] = Factory(dict)
    filters: Mapping[str, Sequence[CandidateFilter]] = Factory(dict)
    catalogues: Mapping[str, Sequence[ModelInfo]] = Factory(dict)
    """Provider name → its connector's catalogue (``ProviderSpec.catalogue``)."""
    operations: Mapping[str, OperationSpec] = Factory(dict)
    """Every registered operation, by name."""
    model_operations: Mapping[str, frozenset[str]] = Factory(dict)
    """Model id → the names of the operations it can serve (its capabilities lie under the
    operation's subtrees and its adapter has the operation's method)."""


@define(kw_only=True, eq=False)
class CapabilityPool:
    """A named group of models serving one capability node (SPEC §2).

    ``models`` is the membership in configuration order; ``strategy`` is this pool's own
    strategy instance; ``capability`` is the resolved node path (None for a purely explicit
    pool, which then serves every capability of its models).
    """

    name: str
    capability: str | None
    models: list[Model]
    strategy: SelectionStrategy
    strategy_name: str
    config: PoolConfig
    retry: RetryConfig
    streaming: StreamingConfig | None = None
    timeouts: Timeouts | None = None
    priority: int = 0
    mode: str = "capability"

    @property
    def model_ids(self) -> list[str]:
        """Member model ids in order."""
        return [m.id for m in self.models]

    def __repr__(self) -> str:
        return (f"CapabilityPool({self.name!r}, capability={self.capability!r}, "
                f"models={self.model_ids})")
