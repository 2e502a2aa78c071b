"""Budgets at global, provider and pool level (SPEC §3.6).

Checked before a request is sent, with an estimate from the model's pricing, the prompt size
and ``max_tokens``; reconciled after with the cost of the reported usage. Windows are UTC days
and months. Crossing ``alert_threshold`` of a window's limit emits one ``budget.alert``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .config import BudgetConfig, OnBudgetExceeded
from .errors import BudgetExceededError
from .events import EventEmitter, EventType
from .state import UsageWindows
from .types import Model, Usage

if TYPE_CHECKING:
    from .pipeline import PipelineContext
    from .state import Clock

__all__ = ["DEFAULT_OUTPUT_TOKENS", "BudgetTracker", "estimate_cost"]

DEFAULT_OUTPUT_TOKENS = 256


def estimate_cost(model: Model, prompt_tokens: int, max_tokens: int | None) -> float:
    """Expected USD cost of one request to ``model``."""
    usage = Usage(prompt_tokens=prompt_tokens,
                  completion_tokens=max_tokens or DEFAULT_OUTPUT_TOKENS)
    return model.pricing.cost(usage)


class BudgetTracker:
    """Spend per scope (``global``, ``provider:<name>``, ``pool:<name>``) against budgets."""

    def __init__(
        self,
        *,
        global_budget: BudgetConfig | None,
        providers: Mapping[str, BudgetConfig],
        pools: Mapping[str, BudgetConfig],
        store: dict[str, Any],
        events: EventEmitter,
        clock: Clock,
    ) -> None:
        self._global = global_budget
        self._providers = dict(providers)
        self._pools = dict(pools)
        self._store = store
        self._events = events
        self._clock = clock
        self.active = bool(global_budget or providers or pools)

    def _windows(self, scope: str) -> UsageWindows:
        w = self._store.get(scope)
        if w is None:
            w = self._store[scope] = UsageWindows()
        return w

    def _scopes(self, model: Model, pool: str | None) -> list[tuple[str, BudgetConfig]]:
        out: list[tuple[str, BudgetConfig]] = []
        if self._global is not None:
            out.append(("global", self._global))
        cfg = self._providers.get(model.provider)
        if cfg is not None:
            out.append((f"provider:{model.provider}", cfg))
        if pool is not None:
            cfg = self._pools.get(pool)
            if cfg is not None:
                out.append((f"pool:{pool}", cfg))
        return out

    def precheck(self, model: Model, context: PipelineContext) -> str | None:
        """None if the request fits every enforced budget; else why (or raise, per config)."""
        request = context.request
        prompt = request.estimated_tokens if request is not None else 0
        max_tokens = None
        if request is not None and request.request is not None:
            max_tokens = request.request.max_tokens
        estimate = estimate_cost(model, prompt, max_tokens)
        now = context.now
        pool = context.pool.name if context.pool is not None else None
        for scope, cfg in self._scopes(model, pool):
            if not cfg.enforce:
                continue
            w = self._windows(scope)
            w.roll_windows(now)
            exceeded: tuple[str, float, float] | None = None
            if cfg.per_request is not None and estimate > cfg.per_request:
                exceeded = ("per_request", cfg.per_request, estimate)
            elif cfg.daily is not None and w.day_cost + estimate > cfg.daily:
                exceeded = ("daily", cfg.daily, w.day_cost + estimate)
            elif cfg.monthly is not None and w.month_cost + estimate > cfg.monthly:
                exceeded = ("monthly", cfg.monthly, w.month_cost + estimate)
            if exceeded is None:
                continue
            if cfg.on_budget_exceeded is OnBudgetExceeded.ERROR:
                raise BudgetExceededError(*exceeded, scope=scope)
            kind, limit, actual = exceeded
            return f"{scope} {kind} budget ${limit:.4f} would be exceeded (${actual:.4f})"
        return None

    def record(self, model: Model, pool: str | None, cost: float) -> None:
        """Add the actual cost of a finished request; alert when a threshold is crossed."""
        if not self.active or cost <= 0:
            return
        now = self._clock()
        for scope, cfg in self._scopes(model, pool):
            w = self._windows(scope)
            w.roll_windows(now)
            before_day, before_month = w.day_cost, w.month_cost
            w.day_cost += cost
            w.month_cost += cost
            for kind, limit, before, after in (
                ("daily", cfg.daily, before_day, w.day_cost),
                ("monthly", cfg.monthly, before_month, w.month_cost),
            ):
                if limit and before < limit * cfg.alert_threshold <= after and self._events.enabled:
                    self._events.emit(EventType.BUDGET_ALERT, model=model.id, pool=pool,
                                      provider=model.provider, scope=scope, window=kind,
                                      limit=limit, spent=after)

    def spent(self) -> dict[str, dict[str, float]]:
        """Spend per scope for status APIs."""
        return {
            scope: {"day": round(w.day_cost, 8), "month": round(w.month_cost, 8)}
            for scope, w in self._store.items()
            if isinstance(w, UsageWindows)
        }
