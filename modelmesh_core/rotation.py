"""Rotation: how outcomes change model and provider state (SPEC §3.4).

Deactivation triggers (per pool): consecutive failures ≥ ``failure_threshold``; error rate over
``error_rate_threshold`` in ``error_rate_window`` (with at least ``error_rate_min_requests``);
an upstream status listed in ``deactivate_on``; ``max_requests`` / ``max_tokens`` used; an
account-quota 429 (until its Retry-After or the next UTC day); rejected credentials (the whole
provider). Recovery: when the cooldown expires the state filter lets one trial request through
(half-open); success reactivates, failure starts a new cooldown. ``reactivate`` and ``rotate``
are the manual controls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import AuthenticationError, ProviderError, RateLimitError
from .events import EventEmitter, EventType
from .state import ACTIVE, STANDBY, ModelState, StateStore
from .types import Model, RateLimitInfo, Timeouts
from .windows import next_utc_day

if TYPE_CHECKING:
    from .ledger import Ledger
    from .pools import CapabilityPool
    from .state import Clock

__all__ = ["RotationManager"]

_PROVIDER_COOLDOWN_AUTH = 300.0


class RotationManager:
    """Applies attempt outcomes to state and emits the matching events."""

    __slots__ = ("_clock", "_events", "_state", "ledger", "shared")

    def __init__(self, state: StateStore, events: EventEmitter, clock: Clock,
                 ledger: Ledger | None = None) -> None:
        self._state = state
        self._events = events
        self._clock = clock
        self.ledger = ledger
        # A store shared by several processes coordinates recovery trials and publishes
        # health transitions (see modelmesh_core.shared); None for one process.
        self.shared: Any = getattr(state, "coordinator", None)

    def _publish(self, st: ModelState) -> None:
        if self.shared is not None:
            self.shared.publish_model(st)

    def _publish_provider(self, name: str) -> None:
        if self.shared is not None:
            self.shared.publish_provider(self._state.provider(name))

    async def claim_trial(self, model: Model, st: ModelState, timeouts: Timeouts) -> bool:
        """Claim, across every process sharing the store, the recovery trial :meth:`begin`
        granted locally; False (and the local trial given back) when another one holds it."""
        shared = self.shared
        ttl = min(timeouts.total or 120.0, 120.0) + 5.0
        keys = []
        if st.trial_in_flight:
            keys.append(f"m:{model.id}:{st.cooldown_until!r}")
        if st.provider_trial:
            ps = self._state.provider(model.provider)
            keys.append(f"p:{model.provider}:{ps.cooldown_until!r}")
        won: list[str] = []
        for key in keys:
            if not await shared.claim_trial(key, ttl):
                for k in won:
                    shared.release_trial(k)
                self.release(model, st)
                return False
            won.append(key)
        st.trial_keys = tuple(won)
        return True

    # -- outcomes

    def begin(self, model: Model) -> ModelState | None:
        """Note an attempt starting, or return None when the model may not be called now.

        State can change between routing and an attempt further down the fallback chain
        (another request deactivated the model, or is already running its one half-open
        trial, or the provider went down), so this is checked again for every attempt. A
        standby model whose cooldown has expired gets exactly one trial request.
        """
        st = self._state.model(model.id)
        now = self._clock()
        trial = False
        if st.status != ACTIVE:
            if st.trial_in_flight or st.cooldown_until <= 0 or now < st.cooldown_until:
                return None
            trial = True
        elif now < st.retry_after_until:
            return None
        ps = self._state.provider(model.provider)
        if not ps.available:
            # A downed provider is half-open too: after its cooldown exactly one request, to
            # any of its models, goes through; the others skip the provider until it answers.
            if ps.trial_in_flight or not (0 < ps.cooldown_until <= now):
                return None
            ps.trial_in_flight = True
            st.provider_trial = True
        if trial:
            st.trial_in_flight = True
        return st

    def release(self, model: Model, st: ModelState) -> None:
        """An attempt ended without an outcome (the caller went away): give back the model's
        and the provider's recovery trial, if it held them, and judge nothing."""
        st.trial_in_flight = False
        if st.provider_trial:
            st.provider_trial = False
            self._state.provider(model.provider).trial_in_flight = False
        if st.trial_keys:
            for key in st.trial_keys:
                self.shared.release_trial(key)
            st.trial_keys = ()

    def charge(self, model: Model, st: ModelState, *, prompt_tokens: int,
               completion_tokens: int, cost: float) -> None:
        """Count usage an attempt incurred without judging the model (a stream the caller
        abandoned, or the delivered part of a broken stream)."""
        now = self._clock()
        tokens = prompt_tokens + completion_tokens
        st.prompt_tokens += prompt_tokens
        st.completion_tokens += completion_tokens
        st.cost += cost
        st.count(now, 0, tokens, cost)
        ps = self._state.provider(model.provider)
        ps.cost += cost
        ps.count(now, 0, tokens, cost)

    def success(
        self,
        pool: CapabilityPool,
        model: Model,
        st: ModelState,
        *,
        latency_ms: float,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
        rate_limit: RateLimitInfo | None,
    ) -> None:
        """Record a successful attempt."""
        now = self._clock()
        tokens = prompt_tokens + completion_tokens
        st.requests += 1
        st.successes += 1
        st.consecutive_failures = 0
        st.prompt_tokens += prompt_tokens
        st.completion_tokens += completion_tokens
        st.cost += cost
        st.last_success = now
        st.outcomes.append((now, True))
        st.record_latency(latency_ms)
        st.count(now, 1, tokens, cost)
        if rate_limit is not None:
            st.rate_limit = rate_limit
            st.rate_limit_at = now
        ps = self._state.provider(model.provider)
        ps.requests += 1
        ps.cost += cost
        ps.count(now, 1, tokens, cost)
        if st.provider_trial:
            st.provider_trial = False
            ps.trial_in_flight = False
        st.trial_keys = ()
        if not ps.available:
            self.provider_up(model.provider)
        if st.status != ACTIVE:
            self._recover(model, st, pool)
        cfg = pool.config
        if cfg.max_requests is not None and st.requests - st.base_requests >= cfg.max_requests:
            self.deactivate(model, "request_limit", until=0.0, pool=pool)
        elif cfg.max_tokens is not None and st.tokens - st.base_tokens >= cfg.max_tokens:
            self.deactivate(model, "token_limit", until=0.0, pool=pool)

    def failure(
        self, pool: CapabilityPool, model: Model, st: ModelState, error: BaseException
    ) -> bool:
        """Record a failed attempt and deactivate the model or provider when a trigger fires.

        Returns False when the error was the caller's (a bad request), which says nothing
        about the model's health.
        """
        now = self._clock()
        status = getattr(error, "status", None)
        counts = not (
            isinstance(error, ProviderError)
            and not error.retryable
            and not isinstance(error, AuthenticationError)
            and status not in pool.retry.rotate_codes
            and status not in pool.config.deactivate_on
        )
        was_trial = st.trial_in_flight
        st.trial_in_flight = False
        st.trial_keys = ()
        provider_trial = st.provider_trial
        if provider_trial:
            st.provider_trial = False
            self._state.provider(model.provider).trial_in_flight = False
        st.last_failure = now
        info = getattr(error, "rate_limit", None)
        if info is not None:
            st.rate_limit, st.rate_limit_at = info, now
        st.last_error = str(error)[:500]
        if not counts:
            # The request itself was bad (400, 422, …): not the model's fault.
            return False
        if provider_trial and not isinstance(error, AuthenticationError):
            # The provider's one recovery trial failed: down again for as long as before.
            ps = self._state.provider(model.provider)
            self.provider_down(model.provider, ps.deactivation_reason or "provider_down",
                               now + (ps.down_for or pool.config.cooldown))
        st.requests += 1
        st.failures += 1
        st.consecutive_failures += 1
        st.outcomes.append((now, False))
        st.count(now, 1, 0, 0.0)
        ps = self._state.provider(model.provider)
        ps.requests += 1
        ps.failures += 1
        cfg = pool.config
        if isinstance(error, AuthenticationError):
            ps.auth_valid = False
            self.provider_down(model.provider, "authentication_rejected",
                               now + _PROVIDER_COOLDOWN_AUTH)
            return True
        if isinstance(error, RateLimitError):
            wait = error.retry_after
            if error.quota:
                until = now + wait if wait else next_utc_day(now)
                self.deactivate(model, "quota_exhausted", until=until, pool=pool)
                return True
            st.retry_after_until = now + (wait if wait is not None else min(cfg.cooldown, 5.0))
            self._publish(st)
        if was_trial:
            self.deactivate(model, st.deactivation_reason or "error_threshold",
                            until=now + cfg.cooldown, pool=pool)
            return True
        if status is not None and status in cfg.deactivate_on:
            self.deactivate(model, f"status_{status}", until=now + cfg.cooldown, pool=pool)
        elif st.consecutive_failures >= cfg.failure_threshold:
            self.deactivate(model, "error_threshold", until=now + cfg.cooldown, pool=pool)
        elif cfg.error_rate_threshold is not None:
            rate, n = st.error_rate(now, cfg.error_rate_window)
            if n >= cfg.error_rate_min_requests and rate >= cfg.error_rate_threshold:
                self.deactivate(model, "error_rate", until=now + cfg.cooldown, pool=pool)
        return True

    def waited(self, model: Model) -> None:
        """The router waited out the model's back-off itself: it may be called again now."""
        self._state.model(model.id).retry_after_until = 0.0

    def earliest_return(self, model_ids: Iterable[str]) -> tuple[float | None, bool]:
        """``(seconds until the first of model_ids is usable again by itself, or None;
        whether every one of them is held back by an upstream rate limit or quota)``."""
        now = self._clock()
        best: float | None = None
        limited = True
        any_model = False
        for mid in model_ids:
            any_model = True
            st = self._state.model(mid)
            standby = st.status != ACTIVE
            until = max(st.cooldown_until if standby else 0.0, st.retry_after_until)
            info = st.rate_limit
            if info is not None and info.remaining_requests == 0 and info.reset_requests:
                until = max(until, st.rate_limit_at + info.reset_requests)
            if standby:
                is_limited = st.deactivation_reason == "quota_exhausted"
            else:
                is_limited = now < st.retry_after_until or (
                    info is not None and info.remaining_requests == 0
                    and now < st.rate_limit_at + (info.reset_requests or 0.0))
                held = self.ledger.held(mid, now) if self.ledger is not None else None
                if held is not None:
                    # No headroom left under a configured limit, quota or budget (limited),
                    # or its provider is in a maintenance window (not a rate limit).
                    is_limited = is_limited or held[1]
                    until = max(until, held[0])
            limited = limited and is_limited
            if until > now and (best is None or until - now < best):
                best = until - now
        return best, limited and any_model

    # -- transitions

    def deactivate(
        self, model: Model, reason: str, *, until: float, pool: CapabilityPool | None = None
    ) -> None:
        """Put ``model`` in standby for ``reason`` until ``until`` (0 = until reactivated)."""
        st = self._state.model(model.id)
        was_active = st.status == ACTIVE
        st.status = STANDBY
        st.deactivation_reason = reason
        st.cooldown_until = until
        st.deactivated_at = self._clock()
        st.trial_in_flight = False
        self._publish(st)
        if was_active:
            st.rotations += 1
            if self._events.enabled:
                self._events.emit(
                    EventType.MODEL_DEACTIVATED, model=model.id, provider=model.provider,
                    pool=pool.name if pool is not None else None, reason=reason,
                    cooldown_until=until or None,
                )

    def _recover(self, model: Model, st: ModelState, pool: CapabilityPool | None) -> None:
        reason = st.deactivation_reason
        st.status = ACTIVE
        st.deactivation_reason = None
        st.cooldown_until = 0.0
        st.trial_in_flight = False
        st.consecutive_failures = 0
        st.base_requests, st.base_tokens = st.requests, st.tokens
        self._publish(st)
        if self._events.enabled:
            self._events.emit(
                EventType.MODEL_RECOVERED, model=model.id, provider=model.provider,
                pool=pool.name if pool is not None else None, previous_reason=reason,
            )

    def recovered(self, model: Model) -> None:
        """A standby model answered a health probe: active again (``model.recovered``)."""
        st = self._state.model(model.id)
        if st.status != ACTIVE:
            self._recover(model, st, None)

    def provider_up(self, provider: str) -> None:
        """A downed provider answered (a request or a health probe): available again
        (``provider.up``)."""
        ps = self._state.provider(provider)
        if ps.available:
            return
        ps.available, ps.auth_valid = True, True
        ps.deactivation_reason, ps.cooldown_until = None, 0.0
        self._publish_provider(provider)
        if self._events.enabled:
            self._events.emit(EventType.PROVIDER_UP, provider=provider)

    def reactivate(self, model: Model) -> None:
        """Manual recovery of a model (and its provider)."""
        st = self._state.model(model.id)
        st.retry_after_until = 0.0
        ps = self._state.provider(model.provider)
        if not ps.available:
            ps.available, ps.auth_valid = True, True
            ps.deactivation_reason, ps.cooldown_until = None, 0.0
            ps.trial_in_flight = False
            self._publish_provider(model.provider)
        if st.status != ACTIVE:
            self._recover(model, st, None)
        else:
            self._publish(st)

    def provider_down(self, provider: str, reason: str, until: float) -> None:
        """Deactivate every model of ``provider`` (in every pool) until ``until``."""
        ps = self._state.provider(provider)
        was = ps.available
        ps.available = False
        ps.deactivation_reason = reason
        ps.cooldown_until = until
        ps.trial_in_flight = False
        if until > 0:
            ps.down_for = max(until - self._clock(), 0.0)
        self._publish_provider(provider)
        if was and self._events.enabled:
            self._events.emit(EventType.PROVIDER_DOWN, provider=provider, reason=reason,
                              cooldown_until=until or None)
