"""Budgets at global, provider and pool level (SPEC §3.6).

The spend itself lives in the admission ledger (:mod:`modelmesh_core.ledger`): every attempt
reserves its estimated cost (the model's pricing, the prompt size and ``max_tokens``) against
every budget that applies before it is sent, and settles with the cost of the reported usage
after. Windows are the UTC day and the calendar month (:mod:`modelmesh_core.windows`).
Crossing ``alert_threshold`` of a window's limit emits one ``budget.alert``.

:class:`BudgetTracker` is the view the budget filter and the status APIs use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ledger import DEFAULT_OUTPUT_TOKENS, Ledger
from .types import Model

if TYPE_CHECKING:
    from .pipeline import PipelineContext

__all__ = ["DEFAULT_OUTPUT_TOKENS", "BudgetTracker", "estimate_cost"]


def estimate_cost(model: Model, prompt_tokens: int, max_tokens: int | None) -> float:
    """Expected USD cost of one request to ``model``."""
    return model.pricing.cost_of(prompt_tokens, max_tokens or DEFAULT_OUTPUT_TOKENS)


class BudgetTracker:
    """Budgets per scope (``global``, ``provider:<name>``, ``pool:<name>``), kept by the
    ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.active = ledger.budgets_active

    def precheck(self, model: Model, context: PipelineContext) -> str | None:
        """None if the request fits every enforced budget; else why (or raise
        :class:`~modelmesh_core.errors.BudgetExceededError`, per config)."""
        return self._ledger.peek(context.pool, model, context.request, context.now,
                                 budgets=True)

    def record(self, model: Model, pool: str | None, cost: float) -> None:
        """Add the cost of work billed after the fact (a provider-native batch result) to
        every budget of ``model`` in pool ``pool``."""
        self._ledger.record(model, pool, cost)

    def spent(self) -> dict[str, dict[str, float]]:
        """Spend per scope for status APIs."""
        return self._ledger.spent()
