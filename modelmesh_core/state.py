"""Mutable runtime state of models and providers, and the in-memory state store.

State objects are plain ``@define`` classes mutated on the event loop thread; there is no
locking because the mesh runs on one loop. Time always comes from the mesh clock so that
tests can drive cooldowns and windows without sleeping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from attrs import Factory, define

from .types import RateLimitInfo
from .windows import utc_day, utc_month

__all__ = [
    "Clock",
    "MemoryStateStore",
    "ModelState",
    "ProviderState",
    "StateStore",
    "UsageWindows",
    "utc_day",
    "utc_month",
]

Clock = Callable[[], float]
"""Wall-clock seconds since the epoch (``time.time`` unless a test injects another)."""

ACTIVE = "active"
STANDBY = "standby"

LATENCY_WINDOW = 64
EWMA_ALPHA = 0.3


@define(kw_only=True)
class UsageWindows:
    """Per-minute, per-day (UTC) and per-month (UTC) usage counters, rolled lazily."""

    minute_key: int = -1
    minute_requests: int = 0
    minute_tokens: int = 0
    day_key: int = -1
    day_requests: int = 0
    day_tokens: int = 0
    day_cost: float = 0.0
    month_key: int = -1
    month_cost: float = 0.0

    def roll_windows(self, now: float) -> None:
        """Reset per-minute / per-day / per-month counters whose window has passed."""
        minute = int(now // 60)
        if minute != self.minute_key:
            self.minute_key, self.minute_requests, self.minute_tokens = minute, 0, 0
            day = utc_day(now)
            if day != self.day_key:
                self.day_key, self.day_requests, self.day_tokens, self.day_cost = day, 0, 0, 0.0
                month = utc_month(now)
                if month != self.month_key:
                    self.month_key, self.month_cost = month, 0.0

    def count(self, now: float, requests: int, tokens: int, cost: float) -> None:
        """Add one outcome to every window."""
        self.roll_windows(now)
        self.minute_requests += requests
        self.minute_tokens += tokens
        self.day_requests += requests
        self.day_tokens += tokens
        self.day_cost += cost
        self.month_cost += cost


@define(kw_only=True)
class ModelState(UsageWindows):
    """Runtime state of one model (SPEC §2 *Model state*)."""

    model_id: str
    status: str = ACTIVE
    consecutive_failures: int = 0
    requests: int = 0
    successes: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_ewma_ms: float | None = None
    latencies_ms: deque[float] = Factory(lambda: deque(maxlen=LATENCY_WINDOW))
    outcomes: deque[tuple[float, bool]] = Factory(lambda: deque(maxlen=1024))
    cooldown_until: float = 0.0
    deactivation_reason: str | None = None
    deactivated_at: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    trial_in_flight: bool = False
    provider_trial: bool = False
    base_requests: int = 0
    base_tokens: int = 0
    rotations: int = 0
    rate_limit: RateLimitInfo | None = None
    rate_limit_at: float = 0.0
    retry_after_until: float = 0.0
    trial_keys: tuple[str, ...] = ()
    """The shared-store recovery-trial tokens the running trial holds (several processes)."""

    @property
    def tokens(self) -> int:
        """Total tokens used."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def is_active(self) -> bool:
        """True unless the model is in standby."""
        return self.status == ACTIVE

    def error_rate(self, now: float, window: float) -> tuple[float, int]:
        """``(failure fraction, sample count)`` over the last ``window`` seconds."""
        cutoff = now - window
        total = bad = 0
        for ts, ok in reversed(self.outcomes):
            if ts < cutoff:
                break
            total += 1
            bad += not ok
        return (bad / total if total else 0.0), total

    def record_latency(self, ms: float) -> None:
        """Feed the rolling window and the EWMA."""
        self.latencies_ms.append(ms)
        prev = self.latency_ewma_ms
        self.latency_ewma_ms = ms if prev is None else prev + EWMA_ALPHA * (ms - prev)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view for status APIs."""
        lat = sorted(self.latencies_ms)
        p95 = lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else None
        return {
            "model": self.model_id,
            "status": self.status,
            "deactivation_reason": self.deactivation_reason,
            "cooldown_until": self.cooldown_until or None,
            "consecutive_failures": self.consecutive_failures,
            "requests": self.requests,
            "failures": self.failures,
            "tokens": self.tokens,
            "cost": round(self.cost, 8),
            "latency_avg_ms": round(sum(lat) / len(lat), 3) if lat else None,
            "latency_p95_ms": round(p95, 3) if p95 is not None else None,
            "last_error": self.last_error,
            "rotations": self.rotations,
        }


@define(kw_only=True)
class ProviderState(UsageWindows):
    """Runtime state of one provider (SPEC §2 *Provider state*)."""

    name: str
    available: bool = True
    auth_valid: bool = True
    last_probe: float | None = None
    cooldown_until: float = 0.0
    deactivation_reason: str | None = None
    requests: int = 0
    failures: int = 0
    cost: float = 0.0
    rate_limit: RateLimitInfo | None = None
    down_for: float = 0.0
    trial_in_flight: bool = False

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view for status APIs."""
        return {
            "provider": self.name,
            "available": self.available,
            "auth_valid": self.auth_valid,
            "deactivation_reason": self.deactivation_reason,
            "cooldown_until": self.cooldown_until or None,
            "requests": self.requests,
            "failures": self.failures,
            "cost": round(self.cost, 8),
        }


class StateStore(Protocol):
    """Where model and provider state lives (``modelmesh_storage`` connectors).

    ``model()`` / ``provider()`` return live objects that the router mutates in place;
    ``flush()`` persists them (called on shutdown and by the sync policy); ``load()`` restores.
    """

    def model(self, model_id: str) -> ModelState: ...

    def provider(self, name: str) -> ProviderState: ...

    def models(self) -> Iterable[ModelState]: ...

    def providers(self) -> Iterable[ProviderState]: ...

    async def load(self) -> None: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


@define
class MemoryStateStore:
    """State in this process only (``modelmesh.memory.v1``)."""

    _models: dict[str, ModelState] = Factory(dict)
    _providers: dict[str, ProviderState] = Factory(dict)
    globals: dict[str, Any] = Factory(dict)
    ledger_backend: Any = Factory(lambda: _memory_ledger())
    """Where the admission ledger counts (:class:`~modelmesh_core.ledger.MemoryLedger`)."""

    def model(self, model_id: str) -> ModelState:
        """The live state of ``model_id`` (created on first use)."""
        st = self._models.get(model_id)
        if st is None:
            st = self._models[model_id] = ModelState(model_id=model_id)
        return st

    def provider(self, name: str) -> ProviderState:
        """The live state of provider ``name`` (created on first use)."""
        st = self._providers.get(name)
        if st is None:
            st = self._providers[name] = ProviderState(name=name)
        return st

    def models(self) -> Iterable[ModelState]:
        """Every model state."""
        return self._models.values()

    def providers(self) -> Iterable[ProviderState]:
        """Every provider state."""
        return self._providers.values()

    async def load(self) -> None:
        """Nothing to load: memory starts empty."""

    async def flush(self) -> None:
        """Nothing to persist."""

    async def close(self) -> None:
        """Nothing to release."""


def _memory_ledger() -> Any:
    from .ledger import MemoryLedger

    return MemoryLedger()


def model_state_fields() -> list[str]:
    """Names of the persisted ModelState fields (for file-backed stores)."""
    skip = {"latencies_ms", "outcomes", "rate_limit", "trial_in_flight", "provider_trial",
            "trial_keys"}
    return [a.name for a in attrs.fields(ModelState) if a.name not in skip]
