"""The routing pipeline (seed ``RoutingPipeline``): an ordered list of stages, and its values.

The pipeline is assembled once at start-up from the registered ``StageSpec`` records and the
``plugins.stages`` configuration. Per request it runs plain objects: each stage's
``process(context)`` in order (awaited when the stage is async), and never a pluggy hook.

The values it passes around live here too: :class:`PipelineRequest` (what is routed),
:class:`PipelineContext` (what each stage reads and fills) and :class:`PipelineResult` (the
decision). They used to live in :mod:`modelmesh_core.types`, which had to import
``CapabilityPool`` from :mod:`modelmesh_core.pools` while that module imported the types;
here every annotation resolves at run time (``typing.get_type_hints`` works on each).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from attrs import Factory, define, frozen

from .errors import NoActiveModelError, RoutingError
from .pools import CapabilityPool
from .types import CompletionRequest, Model, OperationSpec, Provider

__all__ = [
    "PipelineContext",
    "PipelineRequest",
    "PipelineResult",
    "PipelineStage",
    "RoutingPipeline",
]


@frozen(kw_only=True)
class PipelineRequest:
    """Input to the routing pipeline (seed ``RoutingPipeline``).

    ``request`` is the completion request when a chat completion is being routed (filters
    use it to check tools, vision input, context length); ``features`` lists required
    features explicitly. ``operation`` is the operation being routed (None when only a
    decision is asked for, as ``Router.route`` does): the pool-selection stage keeps only the
    models that can serve it.
    """

    capability: str
    delivery_mode: str = "sync"
    preferred_provider: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] = Factory(dict)
    request: CompletionRequest | None = None
    features: frozenset[str] = frozenset()
    estimated_tokens: int = 0
    operation: OperationSpec | None = None


@define(kw_only=True)
class PipelineContext:
    """Mutable context passed through each pipeline stage (seed ``RoutingPipeline``).

    Beyond the seed: ``request`` (the pipeline request), ``pools`` (matches of the capability
    resolver), ``scores`` (model id → score from the strategy), ``dropped`` (model id → why it
    was filtered out), ``now`` (the clock reading for this routing pass).
    """

    capability: str
    pool: CapabilityPool | None = None
    candidates: list[Model] = Factory(list)
    delivery_mode: str = "sync"
    selected_model: Model | None = None
    metadata: dict[str, Any] = Factory(dict)
    request: PipelineRequest | None = None
    pools: list[CapabilityPool] = Factory(list)
    scores: dict[str, float] = Factory(dict)
    dropped: dict[str, str] = Factory(dict)
    now: float = 0.0
    capability_path: str | None = None


@frozen(kw_only=True)
class PipelineResult:
    """Output from the routing pipeline (seed ``RoutingPipeline``)."""

    model: Model
    provider: Provider
    pool: CapabilityPool
    score: float
    fallback_chain: list[Model] = Factory(list)
    stages_executed: list[str] = Factory(list)
    dropped: dict[str, str] = Factory(dict)
    context: PipelineContext | None = None


class PipelineStage(ABC):
    """A routing pipeline stage: ``process`` takes the context and returns it (or a new one).

    ``process`` may be ``async def``. Stages must not do per-request work that could be done
    in ``__init__``.
    """

    name: str

    @abstractmethod
    def process(self, context: PipelineContext) -> PipelineContext | Awaitable[PipelineContext]:
        """Process the context and return the (possibly modified) context for the next stage."""


class RoutingPipeline:
    """Ordered stages that resolve a capability request to a model and provider."""

    def __init__(
        self,
        stages: list[Any] | None = None,
        providers: Mapping[str, Provider] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._stages: list[Any] = []
        self._plan: tuple[tuple[Any, str, bool], ...] = ()
        self._providers: Mapping[str, Provider] = providers or {}
        self._clock = clock
        for stage in stages or ():
            self._check(stage)
            self._stages.append(stage)
        self._replan()

    # -- composition

    @staticmethod
    def _check(stage: Any) -> None:
        if not callable(getattr(stage, "process", None)):
            raise TypeError(f"{stage!r} is not a pipeline stage (it has no process() method)")
        if not isinstance(getattr(stage, "name", None), str) or not stage.name:
            raise TypeError(f"{stage!r} has no name")

    def _replan(self) -> None:
        names = [s.name for s in self._stages]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate pipeline stage names: {', '.join(sorted(dupes))}")
        self._plan = tuple(
            (s.process, s.name, inspect.iscoroutinefunction(s.process)) for s in self._stages
        )

    def add_stage(self, stage: Any, position: int | None = None) -> None:
        """Insert ``stage`` at zero-based ``position`` (appended when None)."""
        self._check(stage)
        if position is None:
            self._stages.append(stage)
        else:
            self._stages.insert(position, stage)
        try:
            self._replan()
        except ValueError:
            self._stages.remove(stage)
            raise

    def remove_stage(self, name: str) -> None:
        """Remove the stage called ``name``; ``KeyError`` if there is none."""
        for i, stage in enumerate(self._stages):
            if stage.name == name:
                del self._stages[i]
                self._replan()
                return
        raise KeyError(f"no pipeline stage named {name!r}; stages: {self.stage_names()}")

    def get_stages(self) -> list[Any]:
        """The stages in execution order."""
        return list(self._stages)

    def stage_names(self) -> list[str]:
        """Stage names in execution order."""
        return [s.name for s in self._stages]

    # -- execution

    async def execute(self, request: PipelineRequest) -> PipelineResult:
        """Run every stage in order and return the routing decision.

        Raises :class:`RoutingError` (``NoActiveModelError`` when every candidate was dropped,
        with the reason for each) if no model is selected.
        """
        context = PipelineContext(
            capability=request.capability,
            delivery_mode=request.delivery_mode,
            request=request,
            metadata=dict(request.metadata) if request.metadata else {},
            now=self._clock() if self._clock is not None else 0.0,
        )
        executed: list[str] = []
        for process, name, is_async in self._plan:
            out = process(context)
            if is_async or (out is not context and inspect.isawaitable(out)):
                out = await out
            if out is not None:
                context = out
            executed.append(name)
        return self._result(context, executed)

    async def execute_until(self, request: PipelineRequest, stage: str) -> PipelineContext:
        """Run the stages up to and including ``stage`` and return the context.

        Used to answer "which pool would this name use" without the state filters (e.g. to
        authorise a proxy key for a pool while every model in it is cooling down).
        """
        if stage not in self.stage_names():
            raise KeyError(f"no pipeline stage named {stage!r}; stages: {self.stage_names()}")
        context = PipelineContext(capability=request.capability,
                                  delivery_mode=request.delivery_mode, request=request,
                                  now=self._clock() if self._clock is not None else 0.0)
        for process, name, is_async in self._plan:
            out = process(context)
            if is_async or (out is not context and inspect.isawaitable(out)):
                out = await out
            if out is not None:
                context = out
            if name == stage:
                break
        return context

    def _result(self, context: PipelineContext, executed: list[str]) -> PipelineResult:
        model = context.selected_model
        if model is None and context.candidates:
            model = context.candidates[0]
        pool = context.pool
        if model is None or pool is None:
            where = f"pool {pool.name!r}" if pool is not None else repr(context.capability)
            raise NoActiveModelError(f"no model can serve {where}", context.dropped)
        provider = self._providers.get(model.provider)
        if provider is None:
            raise RoutingError(f"model {model.id!r} names unknown provider {model.provider!r}")
        chain = [m for m in context.candidates if m is not model]
        return PipelineResult(
            model=model,
            provider=provider,
            pool=pool,
            score=context.scores.get(model.id, 1.0),
            fallback_chain=chain,
            stages_executed=executed,
            dropped=context.dropped,
            context=context,
        )
