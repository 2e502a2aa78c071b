"""Proxy virtual keys through the admission ledger (shared by workers and replicas).

The proxy calls these three functions instead of keeping per-process counters, so a key's
``rpm`` and budget hold across ``modelmesh serve --workers N`` and across replicas sharing a
SQLite or Redis store::

    await admit_virtual_key(mesh.ledger, key.name, key.rpm, key.budget)   # before routing
    charge_virtual_key(mesh.ledger, key.name, response_cost, key.budget)  # after answering
    virtual_key_usage(mesh.ledger, key.name, key.rpm, key.budget)         # /admin/keys
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .wire import WireError

if TYPE_CHECKING:
    from .config import BudgetConfig
    from .ledger import Ledger

__all__ = ["admit_virtual_key", "charge_virtual_key", "virtual_key_usage"]


async def admit_virtual_key(ledger: Ledger, name: str, rpm: int | None,
                            budget: BudgetConfig | None) -> None:
    """Count one request of key ``name``; raise a 429 :class:`WireError` (with
    ``Retry-After``) over its rpm, :class:`~modelmesh_core.errors.BudgetExceededError` once
    its enforced daily / monthly budget is spent, a 503 when a fail-closed store is
    unreachable."""
    refused = await ledger.admit_key(name, rpm, budget)
    if refused is None:
        return
    wait = refused.retry_after if refused.retry_after is not None else 60.0
    if not refused.limited:
        raise WireError(f"Cannot admit key {name!r}: {refused.reason}.", status=503,
                        code="state_store_unavailable",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))})
    raise WireError(
        f"Rate limit of {rpm} requests per minute reached for key {name!r}; "
        f"retry in {wait:.1f}s.", status=429, code="rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(wait)))})


def charge_virtual_key(ledger: Ledger, name: str, cost: float,
                       budget: BudgetConfig | None = None) -> None:
    """Add the cost of an answered request to key ``name``'s budget (``budget``: the key's
    budget configuration, so that a charge after a reload still finds its counters)."""
    ledger.spend_key(name, cost, budget)


def virtual_key_usage(ledger: Ledger, name: str, rpm: int | None = None,
                      budget: BudgetConfig | None = None,
                      now: float | None = None) -> dict[str, float]:
    """``minute_requests``, ``day_spend`` and ``month_spend`` of key ``name`` as every
    process sharing the store counted them (pass the key's ``rpm`` and ``budget`` to read a
    key this process has not admitted yet; ``now`` the time to read, default the clock)."""
    return ledger.key_usage(name, rpm, budget, now)
