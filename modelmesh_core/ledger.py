"""The admission ledger: one truth for rate limits, quotas and budgets (SPEC §3.4, §3.6).

Every attempt *reserves* at admission what it will use — one request, its estimated tokens
(prompt estimate + ``max_tokens``, else :data:`DEFAULT_OUTPUT_TOKENS`), its estimated cost
(:meth:`Pricing.cost <modelmesh_core.types.Pricing.cost>`) — against every counter that
applies to the candidate, atomically: all of them or none. On completion the reservation is
*settled* with the real usage; on failure it is *released*. Because the reservation happens
before the upstream is called, N concurrent requests can never get past a limit of M < N.

The counters of one (pool, model) pair are built once, on first use, from configuration:

* ``rpm`` / ``tpm`` (rolling minute), ``rpd`` / ``tpd`` (day) of the model and of its
  provider (the provider's API key), the day starting at the limits' ``reset_hour``;
* the global, provider and pool budgets (``daily`` per day, ``monthly`` per calendar month),
  and their ``per_request`` cap (checked against the estimate, nothing stored).

Virtual keys of the proxy reserve through :meth:`Ledger.admit_key` the same way.

Where the counts live is the *backend* (:class:`LedgerBackend`): :class:`MemoryLedger` for one
process (default), the SQLite and Redis stores for several workers or replicas. Windows come
from :mod:`modelmesh_core.windows`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from attrs import frozen

from .config import BudgetConfig, OnBudgetExceeded
from .errors import BudgetExceededError
from .events import EventEmitter, EventType
from .quota import Cron, Maintenance, UpstreamQuota, utc_text
from .windows import DAY, MINUTE, MONTH, ROLLING_SPAN, window_end, window_id

if TYPE_CHECKING:
    from .config import MaintenanceConfig
    from .pipeline import PipelineRequest
    from .pools import CapabilityPool
    from .state import Clock
    from .types import Limits, Model, Provider, RateLimitInfo

__all__ = [
    "COST",
    "DEFAULT_OUTPUT_TOKENS",
    "REQUESTS",
    "TOKENS",
    "Counter",
    "Ledger",
    "LedgerBackend",
    "MemoryLedger",
    "Refusal",
    "Reservation",
]

REQUESTS = 0
TOKENS = 1
COST = 2

DEFAULT_OUTPUT_TOKENS = 256
"""Completion tokens reserved for a request that sets no ``max_tokens``."""

UNAVAILABLE = -2
"""Refusal index a backend returns when its store cannot be reached (fail closed)."""

_SLACK = 1e-9

_KEY_SPEND = BudgetConfig(daily=1e300, monthly=1e300, enforce=False)
"""What a virtual key without a budget counts: its spend, refusing nothing."""


@frozen
class Counter:
    """One limited quantity in one window (built at start-up, never per request).

    ``key`` names it in the store (``m:<model>:rpm``, ``p:<provider>:tpd``,
    ``b:pool:<name>:daily``, ``v:<key name>:rpm``); ``metric`` is :data:`REQUESTS`,
    :data:`TOKENS` or :data:`COST`; ``window`` a :mod:`~modelmesh_core.windows` kind.
    ``enforce`` False counts without refusing (an unenforced budget that only alerts).
    ``budget`` is the budget config for budget counters (error mode, alerts), ``scope`` its
    scope name (``global``, ``provider:<name>``, ``pool:<name>``, ``key:<name>``).
    """

    key: str
    metric: int
    window: int
    limit: float
    what: str
    prefix: str = ""
    reset_hour: float = 0.0
    enforce: bool = True
    budget: BudgetConfig | None = None
    scope: str = ""

    def over(self, used: float, amount: float) -> bool:
        """Whether ``amount`` more would exceed the limit."""
        return self.enforce and used + amount > self.limit * (1 + _SLACK) + _SLACK

    def reason(self, used: float, amount: float) -> str:
        """Why a candidate is refused (for ``explain`` and ``RoutingError``)."""
        if self.metric == COST:
            return (f"{self.scope} {self.what} budget ${self.limit:.4f} would be exceeded "
                    f"(${used + amount:.4f})")
        return f"{self.prefix}{self.what} ({used:g}/{self.limit:g})"

    def error(self, used: float, amount: float) -> BudgetExceededError | None:
        """The error to raise instead of rotating (``on_budget_exceeded: error``)."""
        if self.budget is None or self.budget.on_budget_exceeded is not OnBudgetExceeded.ERROR:
            return None
        return BudgetExceededError(self.what, self.limit, used + amount, scope=self.scope)


@frozen
class Refusal:
    """A candidate without headroom: why, and in how many seconds it may have some."""

    reason: str
    retry_after: float | None
    limited: bool = True


class Reservation:
    """What one admitted attempt holds (settled or released exactly once)."""

    __slots__ = ("cost", "counters", "done", "now", "released", "tokens")

    def __init__(self, counters: tuple[Counter, ...], now: float, tokens: float,
                 cost: float) -> None:
        self.counters = counters
        self.now = now
        self.tokens = tokens
        self.cost = cost
        self.done = False
        self.released = False


class LedgerBackend(Protocol):
    """Where the counts live. ``sync`` backends answer :meth:`admit` directly; the others
    (network stores) only :meth:`admit_async`.

    ``admit`` returns ``(index, retry_after)``: index -1 when every counter had room and the
    amounts were added to all of them, else the index of the first counter without room (or
    :data:`UNAVAILABLE`) and the seconds until it may have room (None if unknown).
    ``adjust`` adds ``deltas`` (requests, tokens, cost) to the windows that held ``now``;
    ``usage`` is the current count of one counter (the last known one for network stores).
    """

    sync: bool
    shared: bool

    def admit(self, counters: Sequence[Counter], amounts: tuple[float, float, float],
              now: float) -> tuple[int, float | None]: ...

    async def admit_async(self, counters: Sequence[Counter],
                          amounts: tuple[float, float, float],
                          now: float) -> tuple[int, float | None]: ...

    def adjust(self, counters: Sequence[Counter], now: float,
               deltas: tuple[float, float, float]) -> None: ...

    def usage(self, counter: Counter, now: float) -> float: ...

    def retry_after(self, counter: Counter, used: float, amount: float,
                    now: float) -> float | None: ...


# --------------------------------------------------------------------------- memory backend


class _Rolling:
    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[float]] = deque()
        self.total = 0.0


class _Fixed:
    __slots__ = ("value", "wid")

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.value = 0.0


def rolling_retry(buckets: Sequence[tuple[float, float]] | Sequence[list[float]],
                  used: float, amount: float, limit: float, now: float) -> float | None:
    """Seconds until enough of a rolling minute's oldest buckets expire for ``amount`` to
    fit (``buckets`` oldest first as ``(second, value)``)."""
    need = used + amount - limit
    for sec, value in buckets:
        need -= value
        if need <= _SLACK:
            return max(sec + ROLLING_SPAN - now, 0.0)
    return None if amount > limit else float(ROLLING_SPAN)


def calendar_retry(c: Counter, now: float) -> float:
    """Seconds until the day or month window of ``c`` holding ``now`` ends."""
    return window_end(c.window, window_id(c.window, now, c.reset_hour), c.reset_hour) - now


class MemoryLedger:
    """Counts in this process's memory (the memory store's ledger, and the per-process
    fallback of shared stores)."""

    sync = True
    shared = False

    def __init__(self) -> None:
        self._cells: dict[str, Any] = {}

    def _rolling(self, c: Counter, now: float) -> _Rolling | None:
        cell: _Rolling | None = self._cells.get(c.key)
        if cell is not None:
            buckets = cell.buckets
            while buckets and buckets[0][0] + ROLLING_SPAN <= now:
                cell.total -= buckets.popleft()[1]
        return cell

    def usage(self, counter: Counter, now: float) -> float:
        """The current count of ``counter``."""
        if counter.window == MINUTE:
            cell = self._rolling(counter, now)
            return cell.total if cell is not None else 0.0
        fixed: _Fixed | None = self._cells.get(counter.key)
        if fixed is None or fixed.wid != window_id(counter.window, now, counter.reset_hour):
            return 0.0
        return fixed.value

    def _add(self, c: Counter, now: float, amount: float) -> None:
        """Add ``amount`` to the window of ``c`` that holds ``now``; nothing when that window
        has already been replaced by a later one."""
        if c.window == MINUTE:
            cell = self._cells.get(c.key)
            if cell is None:
                cell = self._cells[c.key] = _Rolling()
            sec = int(now)
            buckets = cell.buckets
            if not buckets or buckets[-1][0] < sec:
                buckets.append([sec, amount])
                cell.total += amount
                return
            for bucket in reversed(buckets):
                if bucket[0] == sec:
                    bucket[1] += amount
                    cell.total += amount
                    return
                if bucket[0] < sec:
                    return
            return
        wid = window_id(c.window, now, c.reset_hour)
        fixed = self._cells.get(c.key)
        if fixed is None or fixed.wid < wid:
            fixed = self._cells[c.key] = _Fixed(wid)
        elif fixed.wid > wid:
            return
        fixed.value += amount

    def admit(self, counters: Sequence[Counter], amounts: tuple[float, float, float],
              now: float) -> tuple[int, float | None]:
        """Reserve ``amounts`` on every counter, or on none (see :class:`LedgerBackend`)."""
        for i, c in enumerate(counters):
            amount = amounts[c.metric]
            used = self.usage(c, now)
            if c.over(used, amount):
                return i, self.retry_after(c, used, amount, now)
        for c in counters:
            self._add(c, now, amounts[c.metric])
        return -1, None

    def retry_after(self, c: Counter, used: float, amount: float, now: float) -> float | None:
        """Seconds until ``amount`` more fits under ``c`` (None: never, it is too large)."""
        if c.window == MINUTE:
            cell = self._cells.get(c.key)
            return rolling_retry(cell.buckets if cell is not None else (), used, amount,
                                 c.limit, now)
        return calendar_retry(c, now)

    def dump(self) -> dict[str, Any]:
        """The counts as JSON-able data (for file-backed stores)."""
        out: dict[str, Any] = {}
        for key, cell in self._cells.items():
            if isinstance(cell, _Rolling):
                out[key] = {"buckets": [list(b) for b in cell.buckets]}
            else:
                out[key] = {"wid": cell.wid, "value": cell.value}
        return out

    def restore(self, data: Mapping[str, Any]) -> None:
        """Load counts written by :meth:`dump`."""
        for key, item in data.items():
            if "buckets" in item:
                cell = _Rolling()
                for sec, value in item["buckets"]:
                    cell.buckets.append([sec, value])
                    cell.total += value
                self._cells[key] = cell
            else:
                fixed = _Fixed(int(item["wid"]))
                fixed.value = float(item["value"])
                self._cells[key] = fixed

    async def admit_async(self, counters: Sequence[Counter],
                          amounts: tuple[float, float, float],
                          now: float) -> tuple[int, float | None]:
        """:meth:`admit` (the memory backend never waits)."""
        return self.admit(counters, amounts, now)

    def adjust(self, counters: Sequence[Counter], now: float,
               deltas: tuple[float, float, float]) -> None:
        """Add ``deltas`` to the windows that held ``now`` (ignored once they passed)."""
        for c in counters:
            d = deltas[c.metric]
            if d:
                self._add(c, now, d)


# --------------------------------------------------------------------------- counters


_LIMIT_KINDS = (
    ("rpm", REQUESTS, MINUTE, "requests-per-minute limit reached"),
    ("tpm", TOKENS, MINUTE, "tokens-per-minute limit reached"),
    ("rpd", REQUESTS, DAY, "daily request quota used"),
    ("tpd", TOKENS, DAY, "daily token quota used"),
    ("monthly_requests", REQUESTS, MONTH, "monthly request quota used"),
    ("monthly_tokens", TOKENS, MONTH, "monthly token quota used"),
)


def limit_counters(scope: str, limits: Limits, prefix: str = "") -> list[Counter]:
    """The counters of one set of configured limits (``scope`` names them in the store)."""
    out = []
    reset = getattr(limits, "reset_hour", 0.0) or 0.0
    for name, metric, window, what in _LIMIT_KINDS:
        value = getattr(limits, name)
        if value is not None:
            out.append(Counter(f"{scope}:{name}", metric, window, float(value), what,
                               prefix=prefix, reset_hour=reset))
    return out


def budget_counters(scope: str, cfg: BudgetConfig) -> list[Counter]:
    """The windowed counters of one budget (``per_request`` is checked separately)."""
    out = []
    if cfg.daily is not None:
        out.append(Counter(f"b:{scope}:daily", COST, DAY, cfg.daily, "daily",
                           enforce=cfg.enforce, budget=cfg, scope=scope))
    if cfg.monthly is not None:
        out.append(Counter(f"b:{scope}:monthly", COST, MONTH, cfg.monthly, "monthly",
                           enforce=cfg.enforce, budget=cfg, scope=scope))
    return out


class _Plan:
    """The counters of one (pool, model) pair and its per-request caps."""

    __slots__ = ("caps", "counters", "limits")

    def __init__(self, counters: tuple[Counter, ...],
                 caps: tuple[tuple[str, BudgetConfig], ...], limits: tuple[Counter, ...]) -> None:
        self.counters = counters
        self.caps = caps
        self.limits = limits


# --------------------------------------------------------------------------- the ledger


class Ledger:
    """Admission, settlement and release against every applicable counter (see the module
    docstring). One per mesh configuration; the backend outlives reloads."""

    def __init__(
        self,
        *,
        backend: LedgerBackend,
        providers: Mapping[str, Provider],
        global_budget: BudgetConfig | None,
        provider_budgets: Mapping[str, BudgetConfig],
        pool_budgets: Mapping[str, BudgetConfig],
        events: EventEmitter,
        clock: Clock,
        maintenance: Mapping[str, Sequence[MaintenanceConfig]] | None = None,
    ) -> None:
        self.backend = backend
        self._providers = providers
        self._global = global_budget
        self._provider_budgets = dict(provider_budgets)
        self._pool_budgets = dict(pool_budgets)
        self._events = events
        self._clock = clock
        self._plans: dict[str, dict[str, _Plan]] = {}
        self._alerted: set[tuple[str, int]] = set()
        self._refused: dict[str, tuple[float, bool]] = {}
        self._vkeys: dict[str, tuple[int | None, BudgetConfig | None, tuple[Counter, ...]]] = {}
        self._maintenance = {
            name: Maintenance([(Cron(w.cron), float(w.duration)) for w in windows])
            for name, windows in (maintenance or {}).items() if windows}
        self._upstream: dict[str, UpstreamQuota] = {}
        self._gate = bool(self._maintenance)
        self.sync = backend.sync
        self.budgets_active = bool(global_budget or provider_budgets or pool_budgets)

    # -- plans

    def plan(self, pool: CapabilityPool | None, model: Model) -> _Plan:
        """The counters of ``model`` in ``pool`` (built on first use)."""
        return self._plan(pool.name if pool is not None else None, model)

    def _plan(self, pool: str | None, model: Model) -> _Plan:
        by_model = self._plans.get(pool or "")
        if by_model is None:
            by_model = self._plans[pool or ""] = {}
        plan = by_model.get(model.id)
        if plan is None:
            plan = by_model[model.id] = self._build(pool, model)
        return plan

    def record(self, model: Model, pool: str | None, cost: float) -> None:
        """Add ``cost`` billed after the fact (no reservation: a provider-native batch) to
        the budgets of ``model`` in pool ``pool``."""
        if not cost or not self.budgets_active:
            return
        plan = self._plan(pool, model)
        budgets = plan.counters[len(plan.limits):]
        if budgets:
            now = self._clock()
            self.backend.adjust(budgets, now, (0.0, 0.0, cost))
            if self._events.enabled:
                self._alerts(budgets, model, None, now)

    def _build(self, pool: str | None, model: Model) -> _Plan:
        limits = limit_counters(f"m:{model.id}", model.limits)
        provider = self._providers.get(model.provider)
        if provider is not None:
            limits += limit_counters(f"p:{model.provider}", provider.limits,
                                     prefix=f"provider {model.provider!r}: ")
        budgets: list[Counter] = []
        caps: list[tuple[str, BudgetConfig]] = []
        for scope, cfg in self._budget_scopes(model, pool):
            budgets += budget_counters(scope, cfg)
            if cfg.per_request is not None and cfg.enforce:
                caps.append((scope, cfg))
        # Daily quotas first: the reason shown is the one that lasts longest.
        ordered = sorted(limits, key=lambda c: -c.window)
        return _Plan(tuple(ordered + budgets), tuple(caps), tuple(ordered))

    def _budget_scopes(self, model: Model, pool: str | None) -> list[tuple[str, BudgetConfig]]:
        out: list[tuple[str, BudgetConfig]] = []
        if self._global is not None:
            out.append(("global", self._global))
        cfg = self._provider_budgets.get(model.provider)
        if cfg is not None:
            out.append((f"provider:{model.provider}", cfg))
        if pool is not None:
            cfg = self._pool_budgets.get(pool)
            if cfg is not None:
                out.append((f"pool:{pool}", cfg))
        return out

    @staticmethod
    def estimate(model: Model, preq: PipelineRequest | None) -> tuple[float, float, float]:
        """``(requests, tokens, cost)`` one attempt of ``preq`` on ``model`` reserves."""
        prompt = preq.estimated_tokens if preq is not None else 0
        output = 0
        if preq is not None and preq.request is not None:
            output = preq.request.max_tokens or DEFAULT_OUTPUT_TOKENS
        return 1.0, float(prompt + output), model.pricing.cost_of(prompt, output)

    # -- admission

    def _caps(self, plan: _Plan, cost: float) -> Refusal | None:
        for scope, cfg in plan.caps:
            cap = cfg.per_request
            assert cap is not None
            if cost > cap * (1 + _SLACK) + _SLACK:
                if cfg.on_budget_exceeded is OnBudgetExceeded.ERROR:
                    raise BudgetExceededError("per_request", cap, cost, scope=scope)
                return Refusal(f"{scope} per_request budget ${cap:.4f} would be exceeded "
                               f"(${cost:.4f})", None, limited=False)
        return None

    def _refusal(self, model_id: str, counters: Sequence[Counter], index: int,
                 retry: float | None, amounts: tuple[float, float, float],
                 now: float) -> Refusal:
        if index == UNAVAILABLE:
            return Refusal("state store unavailable (fail closed)", 1.0, limited=False)
        c = counters[index]
        amount = amounts[c.metric]
        used = self.backend.usage(c, now)
        error = c.error(used, amount)
        if error is not None:
            raise error
        until = now + retry if retry is not None else 0.0
        self._refused[model_id] = (until, True)
        return Refusal(c.reason(used, amount), retry)

    def admit(self, pool: CapabilityPool | None, model: Model,
              preq: PipelineRequest | None) -> Reservation | Refusal | None:
        """Reserve one attempt (sync backends only; see :meth:`admit_async`); None when no
        limit, budget, cap or maintenance window applies to ``model`` (nothing to reserve)."""
        plan = self.plan(pool, model)
        if not (plan.counters or plan.caps or self._gate):
            return None
        amounts = self.estimate(model, preq)
        if plan.caps:
            refused = self._caps(plan, amounts[COST])
            if refused is not None:
                return refused
        counters = plan.counters
        now = self._clock()
        if self._gate:
            gated = self._gated(model, amounts[TOKENS], now)
            if gated is not None:
                return gated
        if not counters:
            return Reservation(counters, now, amounts[TOKENS], amounts[COST])
        index, retry = self.backend.admit(counters, amounts, now)
        if index != -1:
            return self._refusal(model.id, counters, index, retry, amounts, now)
        if self.budgets_active and self._events.enabled:
            self._alerts(counters, model, pool, now)
        return Reservation(counters, now, amounts[TOKENS], amounts[COST])

    async def admit_async(self, pool: CapabilityPool | None, model: Model,
                          preq: PipelineRequest | None) -> Reservation | Refusal | None:
        """Reserve one attempt (any backend); None as for :meth:`admit`."""
        if self.sync:
            return self.admit(pool, model, preq)
        plan = self.plan(pool, model)
        if not (plan.counters or plan.caps or self._gate):
            return None
        amounts = self.estimate(model, preq)
        if plan.caps:
            refused = self._caps(plan, amounts[COST])
            if refused is not None:
                return refused
        counters = plan.counters
        now = self._clock()
        if self._gate:
            gated = self._gated(model, amounts[TOKENS], now)
            if gated is not None:
                return gated
        if not counters:
            return Reservation(counters, now, amounts[TOKENS], amounts[COST])
        index, retry = await self.backend.admit_async(counters, amounts, now)
        if index != -1:
            return self._refusal(model.id, counters, index, retry, amounts, now)
        if self.budgets_active and self._events.enabled:
            self._alerts(counters, model, pool, now)
        return Reservation(counters, now, amounts[TOKENS], amounts[COST])

    def settle(self, reservation: Reservation, tokens: float, cost: float, *,
               model: Model | None = None, pool: CapabilityPool | None = None) -> None:
        """Replace the estimate with the real usage of a finished attempt."""
        if reservation.done:
            return
        reservation.done = True
        counters = reservation.counters
        if not counters:
            return
        dt, dc = tokens - reservation.tokens, cost - reservation.cost
        if dt or dc:
            self.backend.adjust(counters, reservation.now, (0.0, dt, dc))
            if self.budgets_active and dc > 0 and self._events.enabled and model is not None:
                self._alerts(counters, model, pool, self._clock())

    def charge(self, reservation: Reservation, tokens: float, cost: float) -> None:
        """An attempt that failed or was abandoned after using (and being billed for)
        ``tokens`` / ``cost``: keep its request, replace the estimate with that usage (also
        after :meth:`release`, which gave everything back)."""
        if not reservation.done:
            self.settle(reservation, tokens, cost)
        elif reservation.released and reservation.counters:
            reservation.released = False
            self.backend.adjust(reservation.counters, reservation.now, (1.0, tokens, cost))

    def release(self, reservation: Reservation) -> None:
        """Give back everything an attempt reserved (it failed before using anything)."""
        if reservation.done:
            return
        reservation.done = True
        reservation.released = True
        if reservation.counters:
            self.backend.adjust(reservation.counters, reservation.now,
                                (-1.0, -reservation.tokens, -reservation.cost))

    # -- views

    def peek(self, pool: CapabilityPool | None, model: Model, preq: PipelineRequest | None,
             now: float, *, budgets: bool) -> str | None:
        """Why ``model`` has no headroom now (None if it has), without reserving: the
        configured limits (``budgets`` False) or the budgets (True). Raises
        :class:`BudgetExceededError` for a budget in error mode."""
        plan = self.plan(pool, model)
        amounts = self.estimate(model, preq)
        if budgets:
            if plan.caps:
                refused = self._caps(plan, amounts[COST])
                if refused is not None:
                    return refused.reason
            counters: Sequence[Counter] = plan.counters[len(plan.limits):]
        else:
            counters = plan.limits
            if self._gate:
                gated = self._gated(model, amounts[TOKENS], now, take=False)
                if gated is not None:
                    return gated.reason
        backend = self.backend
        for c in counters:
            amount = amounts[c.metric]
            used = backend.usage(c, now)
            if c.over(used, amount):
                error = c.error(used, amount)
                if error is not None:
                    raise error
                retry = backend.retry_after(c, used, amount, now)
                self._refused[model.id] = (now + retry if retry is not None else 0.0, True)
                return c.reason(used, amount)
        return None

    def headroom(self, model: Model, now: float) -> float:
        """Smallest remaining fraction (0…1) of ``model``'s configured limits (1.0 if none)."""
        h = 1.0
        usage = self.backend.usage
        for c in self.plan(None, model).limits:
            if c.limit <= 0:
                return 0.0
            h = min(h, max(c.limit - usage(c, now), 0.0) / c.limit)
        return h

    def held_until(self, model_id: str, now: float) -> float | None:
        """When a model last refused at admission may have headroom again (None if it was
        not refused, or that time has passed)."""
        got = self._refused.get(model_id)
        if got is None or got[0] <= now:
            return None
        return got[0]

    def held(self, model_id: str, now: float) -> tuple[float, bool] | None:
        """``(until, limited)`` for a model refused at admission until after ``now``:
        ``limited`` False for a maintenance window (not a rate limit)."""
        got = self._refused.get(model_id)
        if got is None or got[0] <= now:
            return None
        return got

    def spent(self, now: float | None = None) -> dict[str, dict[str, float]]:
        """Budget spend per scope for status APIs (day and month holding ``now``, default
        the clock)."""
        if now is None:
            now = self._clock()
        out: dict[str, dict[str, float]] = {}
        scopes: list[tuple[str, BudgetConfig]] = []
        if self._global is not None:
            scopes.append(("global", self._global))
        scopes += [(f"provider:{n}", c) for n, c in self._provider_budgets.items()]
        scopes += [(f"pool:{n}", c) for n, c in self._pool_budgets.items()]
        for scope, _ in scopes:
            day = Counter(f"b:{scope}:daily", COST, DAY, 0.0, "daily")
            month = Counter(f"b:{scope}:monthly", COST, MONTH, 0.0, "monthly")
            out[scope] = {"day": round(self.backend.usage(day, now), 8),
                          "month": round(self.backend.usage(month, now), 8)}
        return out

    def _alerts(self, counters: Sequence[Counter], model: Model, pool: CapabilityPool | None,
                now: float) -> None:
        for c in counters:
            cfg = c.budget
            if cfg is None:
                continue
            spent = self.backend.usage(c, now)
            if spent < c.limit * cfg.alert_threshold or not c.limit:
                continue
            mark = (c.key, window_id(c.window, now))
            if mark in self._alerted:
                continue
            self._alerted.add(mark)
            self._events.emit(EventType.BUDGET_ALERT, model=model.id,
                              pool=pool.name if pool is not None else None,
                              provider=model.provider, scope=c.scope, window=c.what,
                              limit=c.limit, spent=spent)

    # -- virtual keys (the proxy)

    def key_counters(self, name: str, rpm: int | None,
                     budget: BudgetConfig | None) -> tuple[Counter, ...]:
        """The counters of proxy virtual key ``name``: its rpm, then its daily and monthly
        spend (cached by name and settings; without a budget, or with ``enforce: false``,
        spend is counted without refusing)."""
        got = self._vkeys.get(name)
        if got is not None and got[0] == rpm and got[1] is budget:
            return got[2]
        counters: list[Counter] = []
        if rpm is not None:
            counters.append(Counter(f"v:{name}:rpm", REQUESTS, MINUTE, float(rpm),
                                    "requests-per-minute limit reached",
                                    prefix=f"key {name!r}: "))
        # Spend is counted for every key (``/admin/keys``); only a budget refuses.
        counters += budget_counters(f"key:{name}", budget if budget is not None
                                    else _KEY_SPEND)
        out = tuple(counters)
        self._vkeys[name] = (rpm, budget, out)
        return out

    def _key_budget(self, name: str, budget: BudgetConfig | None) -> tuple[Counter, ...]:
        """The budget counters of key ``name`` (from ``budget``, else as last admitted)."""
        if budget is not None:
            got = self._vkeys.get(name)
            counters = self.key_counters(name, got[0] if got is not None else None, budget)
        else:
            got = self._vkeys.get(name)
            counters = got[2] if got is not None else ()
        return tuple(c for c in counters if c.metric == COST)

    async def admit_key(self, name: str, rpm: int | None,
                        budget: BudgetConfig | None) -> Refusal | None:
        """Count one proxy request of virtual key ``name`` against its rpm; refuse when its
        rpm leaves no room, raise :class:`BudgetExceededError` once its enforced budget is
        spent (reached: a request is admitted while the spend is below the budget)."""
        counters = self.key_counters(name, rpm, budget)
        if not counters:
            return None
        now = self._clock()
        # The cost of the request is not known yet: it asks for the smallest amount that
        # does not fit a budget already spent to the cent (given back at once).
        probe = 0.0
        if budget is not None and budget.enforce:
            probe = 4e-9 * (1.0 + max(budget.daily or 0.0, budget.monthly or 0.0))
        amounts = (1.0, 0.0, probe)
        if self.sync:
            index, retry = self.backend.admit(counters, amounts, now)
        else:
            index, retry = await self.backend.admit_async(counters, amounts, now)
        if index == -1:
            if probe:
                self.backend.adjust(counters, now, (0.0, 0.0, -probe))
            return None
        if index == UNAVAILABLE:
            return Refusal("state store unavailable (fail closed)", 1.0, limited=False)
        c = counters[index]
        used = self.backend.usage(c, now)
        if c.metric == COST:
            raise BudgetExceededError(c.what, c.limit, used, scope=c.scope)
        return Refusal(c.reason(used, 1.0), retry)

    def spend_key(self, name: str, cost: float, budget: BudgetConfig | None = None) -> None:
        """Add the cost of an answered request to virtual key ``name``'s budget (``budget``
        its configuration; without it, the one it was last admitted with)."""
        if not cost:
            return
        counters = self._key_budget(name, budget)
        if counters:
            self.backend.adjust(counters, self._clock(), (0.0, 0.0, cost))

    def key_usage(self, name: str, rpm: int | None = None, budget: BudgetConfig | None = None,
                  now: float | None = None) -> dict[str, float]:
        """``minute_requests``, ``day_spend`` and ``month_spend`` of virtual key ``name``, as
        counted by every process sharing the store (``rpm`` / ``budget``: its settings,
        else those it was last admitted with here), at ``now`` (default the clock)."""
        if rpm is not None or budget is not None:
            counters = self.key_counters(name, rpm, budget)
        else:
            got = self._vkeys.get(name)
            counters = got[2] if got is not None else ()
        out = {"minute_requests": 0.0, "day_spend": 0.0, "month_spend": 0.0}
        if now is None:
            now = self._clock()
        for c in counters:
            v = self.backend.usage(c, now)
            if c.window == MINUTE:
                out["minute_requests"] = v
            elif c.window == DAY:
                out["day_spend"] = round(v, 8)
            else:
                out["month_spend"] = round(v, 8)
        return out

    # -- upstream facts

    def _gated(self, model: Model, tokens: float, now: float, *,
               take: bool = True) -> Refusal | None:
        """A maintenance window of the model's provider, or an upstream that reported no
        room left (``take``: count this admission against what it reported)."""
        sched = self._maintenance.get(model.provider) if self._maintenance else None
        if sched is not None:
            until = sched.until(now)
            if until is not None:
                self._refused[model.id] = (until, False)
                return Refusal(f"provider {model.provider!r} is in a maintenance window "
                               f"until {utc_text(until)}", until - now, limited=False)
        quota = self._upstream.get(model.id)
        if quota is not None:
            got = quota.refusal(now, tokens)
            if got is not None:
                self._refused[model.id] = (now + got[1], True)
                return Refusal(got[0], got[1])
            if take:
                quota.take(now, tokens)
        return None

    def observe(self, model: Model, info: RateLimitInfo | None, *,
                refused: bool = False) -> None:
        """Let an upstream's rate-limit headers correct the ledger for ``model`` (one
        provider entry, i.e. one API key, and one upstream model).

        Remaining requests / tokens and their reset times are kept (admissions are taken
        off until the next answer replaces them; none left → the model is skipped until
        the reset). A configured counter of the model that counts fewer than the upstream
        says were used is raised to match — the counter whose limit equals the reported
        limit, else the one whose window the reset time falls in — so every process
        sharing the store learns it. ``refused``: the headers came with a 429, whose
        ``retry-after`` then holds the model back when no reset time was given.
        """
        if info is None:
            return
        now = self._clock()
        quota = self._upstream.get(model.id)
        if quota is None:
            quota = self._upstream[model.id] = UpstreamQuota()
            self._gate = True
        wait = info.retry_after if refused else None
        if info.remaining_requests is not None:
            reset = info.reset_requests if info.reset_requests is not None else wait
            quota.requests = float(info.remaining_requests)
            quota.requests_until = now + (reset if reset is not None else 1.0)
            self._correct(model, REQUESTS, info.limit_requests, info.remaining_requests,
                          reset, now)
        if info.remaining_tokens is not None:
            reset = info.reset_tokens if info.reset_tokens is not None else wait
            quota.tokens = float(info.remaining_tokens)
            quota.tokens_until = now + (reset if reset is not None else 1.0)
            self._correct(model, TOKENS, info.limit_tokens, info.remaining_tokens,
                          reset, now)
        if (refused and wait is not None and info.remaining_requests is None
                and info.remaining_tokens is None):
            quota.requests, quota.requests_until = 0.0, now + wait

    def _correct(self, model: Model, metric: int, limit: int | None, remaining: int,
                 reset: float | None, now: float) -> None:
        mine = [c for c in self.plan(None, model).limits
                if c.metric == metric and c.key.startswith("m:")]
        if not mine:
            return
        match = [c for c in mine if limit is not None and c.limit == limit]
        if not match and reset is not None:
            window = MINUTE if reset <= ROLLING_SPAN else DAY if reset <= 86400 else MONTH
            match = [c for c in mine if c.window == window]
        for c in match:
            used = self.backend.usage(c, now)
            target = c.limit - remaining
            if target > used + 0.5:
                self.backend.adjust((c,), now, (target - used, target - used, 0.0))
