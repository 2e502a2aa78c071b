"""Built-in candidate filters for the delivery-filter and state-filter stages."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..limits import OversizeReason
from ..pipeline import PipelineContext
from ..pools import Services
from ..state import ACTIVE
from ..types import FilterSpec, Model

__all__ = [
    "ContextWindowFilter",
    "DeliveryModeFilter",
    "FeatureFilter",
    "ModelStateFilter",
    "ProviderStateFilter",
    "RateLimitFilter",
]


class DeliveryModeFilter:
    """Drops models that cannot deliver in the requested mode (sync, streaming, batch)."""

    def __init__(self, config: Any, services: Services) -> None:
        pass

    def reason(self, model: Model, context: PipelineContext) -> str | None:
        mode = context.delivery_mode
        if mode in model.delivery_modes:
            return None
        return f"does not support {mode} delivery"


class FeatureFilter:
    """Drops models lacking a feature the request needs (tools, JSON schema, vision, …)."""

    def __init__(self, config: Any, services: Services) -> None:
        pass

    def reason(self, model: Model, context: PipelineContext) -> str | None:
        request = context.request
        if request is None or not request.features:
            return None
        missing = request.features - model.features
        if not missing:
            return None
        return "lacks feature " + ", ".join(sorted(missing))


class ContextWindowFilter:
    """Drops models whose context window cannot hold the prompt plus the requested output,
    or whose output limit is below the requested ``max_tokens``.

    Its reasons are :class:`~modelmesh_core.limits.OversizeReason`: when they drop every
    candidate, the request is the caller's mistake (a 400 ``context_length_exceeded``), not
    a pool out of service.
    """

    def __init__(self, config: Any, services: Services) -> None:
        pass

    def reason(self, model: Model, context: PipelineContext) -> str | None:
        request = context.request
        if request is None:
            return None
        creq = request.request
        max_tokens = creq.max_tokens if creq is not None else None
        limit = model.max_output_tokens
        if max_tokens and limit is not None and max_tokens > limit:
            return OversizeReason(f"max_tokens {max_tokens} above its output limit {limit}",
                                  "max_tokens")
        window = model.context_window
        if window is None:
            return None
        need = request.estimated_tokens + (max_tokens or 0)
        if not need or need <= window:
            return None
        param = "max_tokens" if max_tokens and max_tokens >= window else "messages"
        return OversizeReason(f"context window {window} too small for ~{need} tokens", param)


class ModelStateFilter:
    """Drops standby models (until their cooldown expires), models with a recovery trial in
    flight, and models the upstream asked to wait (Retry-After)."""

    def __init__(self, config: Any, services: Services) -> None:
        self._state = services.state

    def reason(self, model: Model, context: PipelineContext) -> str | None:
        st = self._state.model(model.id)
        now = context.now
        if st.status != ACTIVE:
            if st.cooldown_until <= 0:
                return f"standby ({st.deactivation_reason or 'manual'})"
            if now < st.cooldown_until:
                return (
                    f"standby ({st.deactivation_reason}) for another "
                    f"{st.cooldown_until - now:.1f}s"
                )
            if st.trial_in_flight:
                return "recovery trial in flight"
        if now < st.retry_after_until:
            return f"upstream asked to retry after {st.retry_after_until - now:.1f}s"
        return None


class ProviderStateFilter:
    """Drops models of disabled providers and of providers marked down (until their cooldown
    expires, when one trial request is let through)."""

    def __init__(self, config: Any, services: Services) -> None:
        self._state = services.state
        self._providers = services.providers

    def reason(self, model: Model, context: PipelineContext) -> str | None:
        provider = self._providers.get(model.provider)
        if provider is not None and not provider.enabled:
            return f"provider {model.provider!r} is disabled"
        ps = self._state.provider(model.provider)
        if ps.available:
            return None
        if ps.cooldown_until <= 0:
            return f"provider {model.provider!r} down ({ps.deactivation_reason})"
        if context.now < ps.cooldown_until:
            return (
                f"provider {model.provider!r} down ({ps.deactivation_reason}) for another "
                f"{ps.cooldown_until - context.now:.1f}s"
            )
        if ps.trial_in_flight:
            return f"provider {model.provider!r} recovery trial in flight"
        return None


class RateLimitFilter:
    """Drops models without headroom under their configured limits (rpm, tpm, rpd, tpd of the
    model or its provider, as counted by the admission ledger), or whose upstream reported no
    requests remaining before the reset.

    This is how limits are predicted and avoided instead of discovered by 429s; the ledger
    checks again, atomically, when the attempt is admitted.
    """

    def __init__(self, config: Any, services: Services) -> None:
        self._state = services.state
        self._ledger = services.ledger

    def reason(self, model: Model, context: PipelineContext) -> str | None:
        now = context.now
        ledger = self._ledger
        if ledger is not None:
            why = ledger.peek(context.pool, model, context.request, now, budgets=False)
            if why:
                return why
        info = self._state.model(model.id).rate_limit
        if info is not None and info.remaining_requests == 0:
            st = self._state.model(model.id)
            reset = info.reset_requests or 0.0
            if now < st.rate_limit_at + reset:
                wait = st.rate_limit_at + reset - now
                return f"upstream reports no requests left for {wait:.1f}s"
        return None


class BudgetFilter:
    """Drops models whose provider, pool or the global budget would be exceeded by this
    request's estimated cost (``on_budget_exceeded: rotate``), or raises
    ``BudgetExceededError`` (``on_budget_exceeded: error``)."""

    def __init__(self, config: Any, services: Services) -> None:
        self._budgets = services.budgets

    def reason(self, model: Model, context: PipelineContext) -> str | None:
        budgets = self._budgets
        if budgets is None or not budgets.active:
            return None
        return budgets.precheck(model, context)


@hookimpl
def modelmesh_filters() -> list[FilterSpec]:
    """The built-in filters."""
    return [
        FilterSpec(name="modelmesh.delivery-mode", stage="delivery-filter", order=100,
                   factory=DeliveryModeFilter, description="requested delivery mode"),
        FilterSpec(name="modelmesh.features", stage="delivery-filter", order=200,
                   factory=FeatureFilter, description="tools, JSON schema, vision, …"),
        FilterSpec(name="modelmesh.context-window", stage="delivery-filter", order=300,
                   factory=ContextWindowFilter, description="prompt + output fit the window"),
        FilterSpec(name="modelmesh.model-state", stage="state-filter", order=100,
                   factory=ModelStateFilter, description="standby, cooldown, Retry-After"),
        FilterSpec(name="modelmesh.provider-state", stage="state-filter", order=200,
                   factory=ProviderStateFilter, description="provider down or disabled"),
        FilterSpec(name="modelmesh.rate-limits", stage="state-filter", order=300,
                   factory=RateLimitFilter, description="configured and reported quotas"),
        FilterSpec(name="modelmesh.budget", stage="state-filter", order=400,
                   factory=BudgetFilter, description="budgets at global, provider, pool level"),
    ]
