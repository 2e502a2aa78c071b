"""The routing pipeline (seed ``RoutingPipeline``): an ordered list of stages.

The pipeline is assembled once at start-up from the registered ``StageSpec`` records and the
``plugins.stages`` configuration. Per request it runs plain objects: each stage's
``process(context)`` in order (awaited when the stage is async), and never a pluggy hook.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Mapping
from typing import Any

from .errors import NoActiveModelError, RoutingError
from .types import PipelineContext, PipelineRequest, PipelineResult, Provider

__all__ = ["PipelineStage", "RoutingPipeline"]


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
        clock: Any = None,
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
