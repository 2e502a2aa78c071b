"""Built-in selection strategies (SPEC §3.3).

Each strategy is registered by :func:`modelmesh_strategies` as a ``StrategySpec`` whose
``factory(config, services)`` builds one instance per pool at start-up. ``order`` runs on every
request, so it stays O(n log n) at worst, never logs and allocates little beyond its result.

Candidates always arrive in pool configuration order (the survivors of the filters), so "pool
order" below means the order of the ``candidates`` argument unless stated otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from attrs import Factory, frozen

from ..config import Duration
from ..hookspecs import hookimpl
from ..pipeline import PipelineContext
from ..types import Limits, Model, StrategySpec
from .freetier import FreeTierConfig, free_tier

if TYPE_CHECKING:
    from ..pools import Services
    from ..state import Clock, ModelState, StateStore

__all__ = [
    "DEFAULT_STRATEGY",
    "CostFirst",
    "CostFirstConfig",
    "LatencyFirst",
    "LatencyFirstConfig",
    "LoadBalanced",
    "LoadBalancedConfig",
    "PrioritySelection",
    "PrioritySelectionConfig",
    "RateLimitAware",
    "RateLimitAwareConfig",
    "RoundRobin",
    "SessionStickiness",
    "SessionStickinessConfig",
    "StickUntilFailure",
    "modelmesh_strategies",
]

DEFAULT_STRATEGY = "modelmesh.stick-until-failure.v1"
"""The strategy a pool uses when its config names none."""


def _rotated(candidates: Sequence[Model], start: int) -> list[Model]:
    """``candidates`` as a new list starting at index ``start`` and wrapping."""
    if start == 0:
        return list(candidates)
    return [*candidates[start:], *candidates[:start]]


# --------------------------------------------------------------------------- stick-until-failure


class StickUntilFailure:
    """Keep one *current* model until it fails (``modelmesh.stick-until-failure.v1``).

    * The first ``order`` call makes the first candidate current.
    * ``record(current, ok=False)`` moves current to the next model after it in pool order
      (``context.pool.models``, wrapping), whether or not that one is healthy right now;
      failures of other models are ignored.
    * ``rotate()`` advances current by one the same way.
    * When current is not among the candidates (filtered: cooldown, budget, standby …) the order
      starts at the first candidate that follows it in pool order, but current itself does not
      change: a model is only abandoned when the router reports that it failed, so the pool
      returns to it as soon as it is routable again. (A filtered model normally got there by
      failing, which the router reported, so this matters mainly for budget / quota / manual
      standby, where returning to the preferred model is what the operator expects.)

    The result is current first, then the other candidates in pool order starting after it.
    """

    __slots__ = ("_current", "_ring")

    def __init__(self) -> None:
        self._current: str | None = None
        # The last pool order seen; used by record()/rotate() when they get no context.
        self._ring: Sequence[Model] = ()

    @property
    def current(self) -> str | None:
        """Id of the current model (None before the first request)."""
        return self._current

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Current model first, then the rest in pool order after it."""
        n = len(candidates)
        if n == 0:
            return []
        pool = context.pool
        if pool is not None:
            ring: Sequence[Model] = pool.models
        elif len(candidates) >= len(self._ring):
            # Without a pool, the largest candidate list seen stands in for the pool order.
            ring = tuple(candidates)
        else:
            ring = self._ring
        self._ring = ring

        current = self._current
        if current is None:
            self._current = candidates[0].id
            return list(candidates)
        for i in range(n):
            if candidates[i].id == current:
                return _rotated(candidates, i)

        # Current is filtered out. Candidates are a subsequence of the ring, so the ones that
        # follow current in pool order are a suffix of `candidates`: count the candidates at
        # ring positions up to and including current's.
        j = 0
        for m in ring:
            if j < n and candidates[j].id == m.id:
                j += 1
            if m.id == current:
                return _rotated(candidates, j % n)
        # Current left the pool (reconfiguration): start over with the first candidate.
        self._current = candidates[0].id
        return list(candidates)

    def record(self, model: Model, ok: bool, context: PipelineContext | None = None) -> None:
        """On a failure of the current model, make the next model in pool order current."""
        if ok or model.id != self._current:
            return
        if context is not None and context.pool is not None:
            self._ring = context.pool.models
        self._advance()

    def inherit(self, previous: object) -> None:
        """Hot reload: keep the current model of the pool's previous strategy (it is dropped
        by the next ``order`` if it left the pool)."""
        if isinstance(previous, StickUntilFailure):
            self._current = previous._current
            self._ring = previous._ring

    def rotate(self) -> None:
        """Forced rotation: advance current by one in pool order."""
        if self._current is None:
            if not self._ring:
                return
            self._current = self._ring[0].id
        self._advance()

    def _advance(self) -> None:
        ring = self._ring
        n = len(ring)
        if n == 0:
            return
        for i in range(n):
            if ring[i].id == self._current:
                self._current = ring[(i + 1) % n].id
                return
        self._current = ring[0].id


# --------------------------------------------------------------------------- priority-selection


@frozen(kw_only=True)
class PrioritySelectionConfig:
    """Config of ``modelmesh.priority-selection.v1``.

    ``model_priority`` lists model ids best first; ``provider_priority`` lists provider names
    best first. Models / providers not listed come after the listed ones.
    """

    model_priority: tuple[str, ...] = ()
    provider_priority: tuple[str, ...] = ()


class PrioritySelection:
    """Order by configured priorities (``modelmesh.priority-selection.v1``).

    Sort key: index in ``model_priority`` (unlisted after), then index in
    ``provider_priority`` (unlisted after), then ``Model.priority`` descending, then pool order.
    """

    __slots__ = ("_models", "_providers")

    def __init__(self, config: PrioritySelectionConfig) -> None:
        # setdefault: a name listed twice keeps its first (best) position.
        self._models: dict[str, int] = {}
        for i, mid in enumerate(config.model_priority):
            self._models.setdefault(mid, i)
        self._providers: dict[str, int] = {}
        for i, name in enumerate(config.provider_priority):
            self._providers.setdefault(name, i)

    def _key(self, model: Model) -> tuple[int, int, int]:
        return (
            self._models.get(model.id, len(self._models)),
            self._providers.get(model.provider, len(self._providers)),
            -model.priority,
        )

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Candidates sorted by the priority key (stable, so ties keep pool order)."""
        return sorted(candidates, key=self._key)


# --------------------------------------------------------------------------- round-robin


class RoundRobin:
    """Rotate the candidate list one step per request (``modelmesh.round-robin.v1``)."""

    __slots__ = ("_counter",)

    def __init__(self) -> None:
        self._counter = 0

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Candidates rotated so each call starts one further along."""
        n = len(candidates)
        if n == 0:
            return []
        start = self._counter % n
        self._counter += 1
        return _rotated(candidates, start)

    def rotate(self) -> None:
        """Forced rotation: skip one position."""
        self._counter += 1

    def inherit(self, previous: object) -> None:
        """Hot reload: go on counting where the pool's previous strategy was."""
        if isinstance(previous, RoundRobin):
            self._counter = previous._counter


# --------------------------------------------------------------------------- cost-first


@frozen(kw_only=True)
class CostFirstConfig:
    """Config of ``modelmesh.cost-first.v1``.

    ``default_output_tokens`` is the expected completion length when the request sets no
    ``max_tokens``.
    """

    default_output_tokens: int = 256


def estimate_prompt_tokens(context: PipelineContext) -> int:
    """Prompt token estimate: ``PipelineRequest.estimated_tokens``, else message chars / 4."""
    preq = context.request
    if preq is None:
        return 0
    if preq.estimated_tokens > 0:
        return preq.estimated_tokens
    req = preq.request
    if req is None:
        return 0
    chars = 0
    for message in req.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    text = part.get("text")
                    if isinstance(text, str):
                        chars += len(text)
    return chars // 4


class CostFirst:
    """Cheapest expected cost of this request first (``modelmesh.cost-first.v1``).

    Expected cost = prompt tokens * input price + output tokens * output price (per 1M) +
    per-request price; output tokens are the request's ``max_tokens`` or
    ``default_output_tokens``. Ties keep pool order. Score = -cost (USD).
    """

    __slots__ = ("_default_output",)

    def __init__(self, config: CostFirstConfig) -> None:
        self._default_output = config.default_output_tokens

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Candidates by ascending expected cost."""
        prompt = estimate_prompt_tokens(context)
        output = self._default_output
        preq = context.request
        if preq is not None and preq.request is not None and preq.request.max_tokens:
            output = preq.request.max_tokens
        scores = context.scores
        costs = []
        for m in candidates:
            cost = m.pricing.cost_of(prompt, output)
            costs.append(cost)
            scores[m.id] = -cost
        return [candidates[i] for i in sorted(range(len(costs)), key=costs.__getitem__)]


# --------------------------------------------------------------------------- latency-first


@frozen(kw_only=True)
class LatencyFirstConfig:
    """Config of ``modelmesh.latency-first.v1``.

    A model counts as measured once it has ``min_samples`` latency samples in its rolling
    window; until then it is tried first so that it gets measured.
    """

    min_samples: int = 1


class LatencyFirst:
    """Fastest first by latency EWMA (``modelmesh.latency-first.v1``).

    Unmeasured models come first, in pool order (score 0.0); measured ones follow by
    ``ModelState.latency_ewma_ms`` ascending, ties in pool order (score = -latency ms).
    """

    __slots__ = ("_min_samples", "_state")

    def __init__(self, config: LatencyFirstConfig, state: StateStore) -> None:
        self._min_samples = max(config.min_samples, 1)
        self._state = state

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Unmeasured models first, then ascending latency."""
        state = self._state
        min_samples = self._min_samples
        scores = context.scores
        result: list[Model] = []
        measured: list[tuple[float, int]] = []
        for i, m in enumerate(candidates):
            st = state.model(m.id)
            ewma = st.latency_ewma_ms
            # The rolling window is not persisted, so with min_samples == 1 a restored EWMA
            # alone counts as a measurement.
            if ewma is None or (min_samples > 1 and len(st.latencies_ms) < min_samples):
                result.append(m)
                scores[m.id] = 0.0
            else:
                measured.append((ewma, i))
                scores[m.id] = -ewma
        measured.sort()
        result.extend(candidates[i] for _, i in measured)
        return result


# --------------------------------------------------------------------------- session-stickiness


@frozen(kw_only=True)
class SessionStickinessConfig:
    """Config of ``modelmesh.session-stickiness.v1``.

    ``max_sessions`` bounds the pin table (least recently used sessions are forgotten first);
    ``ttl`` forgets a session that has not been routed for that many seconds.
    """

    max_sessions: int = 10_000
    ttl: Duration = Duration(3600.0)


class _Pin:
    __slots__ = ("generation", "model_id", "seen")

    def __init__(self, model_id: str, generation: int, seen: float) -> None:
        self.model_id = model_id
        self.generation = generation
        self.seen = seen


class SessionStickiness:
    """A session keeps its model while it is healthy (``modelmesh.session-stickiness.v1``).

    ``context.request.session_id`` maps to a pinned model id in a bounded LRU table. The pinned
    model goes first while it is among the candidates; otherwise the first candidate (pool
    order) is pinned instead. ``record(model, ok=False)`` unpins every session on that model
    (in O(1): each model has a generation number that a failure bumps, and pins of an older
    generation are stale). Requests without a session id get pool order.
    """

    __slots__ = ("_clock", "_generations", "_max", "_sessions", "_ttl")

    def __init__(self, config: SessionStickinessConfig, clock: Clock) -> None:
        self._max = max(config.max_sessions, 1)
        self._ttl = config.ttl
        self._clock = clock
        self._sessions: OrderedDict[str, _Pin] = OrderedDict()
        self._generations: dict[str, int] = {}

    def pinned(self, session_id: str) -> str | None:
        """The model id a session is pinned to right now (None if none or stale)."""
        pin = self._sessions.get(session_id)
        if pin is None or self._stale(pin, self._clock()):
            return None
        return pin.model_id

    @property
    def session_count(self) -> int:
        """Number of sessions in the pin table (stale ones included until purged)."""
        return len(self._sessions)

    def _stale(self, pin: _Pin, now: float) -> bool:
        if now - pin.seen > self._ttl:
            return True
        return pin.generation != self._generations.get(pin.model_id, 0)

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Pinned model first (pinning one when needed), the rest in pool order."""
        preq = context.request
        session_id = preq.session_id if preq is not None else None
        if not session_id or not candidates:
            return list(candidates)
        now = self._clock()
        sessions = self._sessions
        # The table is in last-seen order, so expired sessions collect at the front.
        cutoff = now - self._ttl
        while sessions:
            oldest = next(iter(sessions.values()))
            if oldest.seen >= cutoff:
                break
            sessions.popitem(last=False)
        pin = sessions.get(session_id)
        if pin is not None and not self._stale(pin, now):
            pinned = pin.model_id
            for i, m in enumerate(candidates):
                if m.id == pinned:
                    pin.seen = now
                    sessions.move_to_end(session_id)
                    if i == 0:
                        return list(candidates)
                    return [m, *candidates[:i], *candidates[i + 1 :]]
        chosen = candidates[0].id
        if pin is None:
            sessions[session_id] = _Pin(chosen, self._generations.get(chosen, 0), now)
            if len(sessions) > self._max:
                sessions.popitem(last=False)
        else:
            pin.model_id = chosen
            pin.generation = self._generations.get(chosen, 0)
            pin.seen = now
            sessions.move_to_end(session_id)
        return list(candidates)

    def record(self, model: Model, ok: bool, context: PipelineContext | None = None) -> None:
        """On a failure, unpin every session pinned to ``model``."""
        if not ok:
            self._generations[model.id] = self._generations.get(model.id, 0) + 1

    def inherit(self, previous: object) -> None:
        """Hot reload: keep the previous strategy's session pins (the most recent ones, up to
        this strategy's ``max_sessions``). A pin to a model that left the pool is replaced
        by the next request of that session."""
        if not isinstance(previous, SessionStickiness):
            return
        self._generations = dict(previous._generations)
        sessions = previous._sessions
        keep = list(sessions.items())[-self._max:]
        self._sessions = OrderedDict(keep)


# --------------------------------------------------------------------------- rate-limit-aware


@frozen(kw_only=True)
class RateLimitAwareConfig:
    """Config of ``modelmesh.rate-limit-aware.v1``.

    ``header_ttl`` is how long (seconds) rate-limit headers stay trusted when they carry no
    reset time.
    """

    header_ttl: Duration = Duration(60.0)


_NO_LIMITS = Limits()


def _fraction(remaining: int | None, limit: int | None) -> float:
    if remaining is None or not limit or limit <= 0:
        return 1.0
    return min(max(remaining / limit, 0.0), 1.0)


def _used_fraction(limit: int | None, used: int) -> float:
    if limit is None:
        return 1.0
    if limit <= 0:
        return 0.0
    return max(limit - used, 0) / limit


class RateLimitAware:
    """Most remaining rate-limit headroom first (``modelmesh.rate-limit-aware.v1``).

    Headroom is the smallest known remaining fraction among:

    * upstream headers (``ModelState.rate_limit``): remaining / limit of requests and of
      tokens, each trusted until its reset time passes (``rate_limit_at + reset_*``) or, when
      the header gave no reset, for ``header_ttl`` seconds;
    * configured limits of the model and its provider: rpm, tpm, rpd, tpd as counted by the
      admission ledger (without one: the model's own minute and day counters);
    * an active ``retry-after`` makes the headroom 0.

    Unknown is 1.0. Ties keep pool order. Score = headroom.
    """

    __slots__ = ("_clock", "_ledger", "_state", "_ttl")

    def __init__(self, config: RateLimitAwareConfig, state: StateStore, clock: Clock,
                 ledger: Any = None) -> None:
        self._ttl = config.header_ttl
        self._state = state
        self._clock = clock
        self._ledger = ledger

    def headroom(self, model: Model, now: float) -> float:
        """Remaining fraction (0.0 … 1.0) of ``model``'s tightest known limit."""
        st: ModelState = self._state.model(model.id)
        if st.retry_after_until > now:
            return 0.0
        h = 1.0
        lim = model.limits
        if self._ledger is not None:
            h = self._ledger.headroom(model, now)
            lim = _NO_LIMITS
        else:
            st.roll_windows(now)
        if lim.rpm is not None:
            h = min(h, _used_fraction(lim.rpm, st.minute_requests))
        if lim.tpm is not None:
            h = min(h, _used_fraction(lim.tpm, st.minute_tokens))
        if lim.rpd is not None:
            h = min(h, _used_fraction(lim.rpd, st.day_requests))
        if lim.tpd is not None:
            h = min(h, _used_fraction(lim.tpd, st.day_tokens))
        info = st.rate_limit
        if info is not None:
            age = now - st.rate_limit_at
            window = self._ttl if info.reset_requests is None else info.reset_requests
            if age <= window:
                h = min(h, _fraction(info.remaining_requests, info.limit_requests))
            window = self._ttl if info.reset_tokens is None else info.reset_tokens
            if age <= window:
                h = min(h, _fraction(info.remaining_tokens, info.limit_tokens))
        return h

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """Candidates by descending headroom."""
        now = self._clock()
        scores = context.scores
        keys = []
        for m in candidates:
            h = self.headroom(m, now)
            scores[m.id] = h
            keys.append(-h)
        return [candidates[i] for i in sorted(range(len(keys)), key=keys.__getitem__)]


# --------------------------------------------------------------------------- load-balanced


@frozen(kw_only=True)
class LoadBalancedConfig:
    """Config of ``modelmesh.load-balanced.v1``.

    ``weights`` maps model ids to weights; unlisted models use ``Model.weight``.
    """

    weights: dict[str, float] = Factory(dict)


class LoadBalanced:
    """Smooth weighted round-robin (nginx style) (``modelmesh.load-balanced.v1``).

    Each call adds every candidate's weight to its running counter, picks the largest counter
    (first in pool order on ties) and subtracts the total weight from it; over N calls the first
    choices are exactly proportional to the weights, interleaved rather than bursty. The rest of
    the list follows by descending weight (pool order on ties) as the fallback chain. Negative
    weights count as 0; when all weights are 0 every model counts as weight 1.
    """

    __slots__ = ("_current", "_weights")

    def __init__(self, config: LoadBalancedConfig) -> None:
        self._weights = dict(config.weights)
        self._current: dict[str, float] = {}

    def weight(self, model: Model) -> float:
        """The effective weight of ``model``."""
        w = self._weights.get(model.id, model.weight)
        return w if w > 0 else 0.0

    def order(self, candidates: Sequence[Model], context: PipelineContext) -> list[Model]:
        """The smooth-WRR pick first, then the rest by descending weight."""
        n = len(candidates)
        if n == 0:
            return []
        weights = [self.weight(m) for m in candidates]
        total = sum(weights)
        if total <= 0:
            weights = [1.0] * n
            total = float(n)
        current = self._current
        best = -1
        best_cw = 0.0
        for i, m in enumerate(candidates):
            cw = current.get(m.id, 0.0) + weights[i]
            current[m.id] = cw
            if best < 0 or cw > best_cw:
                best, best_cw = i, cw
        current[candidates[best].id] = best_cw - total
        rest = sorted((i for i in range(n) if i != best), key=lambda i: -weights[i])
        return [candidates[best], *(candidates[i] for i in rest)]

    def inherit(self, previous: object) -> None:
        """Hot reload: keep the running weighted round-robin counters."""
        if isinstance(previous, LoadBalanced):
            self._current = dict(previous._current)


# --------------------------------------------------------------------------- registration


def _stick_until_failure(config: None, services: Services) -> StickUntilFailure:
    return StickUntilFailure()


def _priority_selection(
    config: PrioritySelectionConfig | None, services: Services
) -> PrioritySelection:
    return PrioritySelection(config or PrioritySelectionConfig())


def _round_robin(config: None, services: Services) -> RoundRobin:
    return RoundRobin()


def _cost_first(config: CostFirstConfig | None, services: Services) -> CostFirst:
    return CostFirst(config or CostFirstConfig())


def _latency_first(config: LatencyFirstConfig | None, services: Services) -> LatencyFirst:
    return LatencyFirst(config or LatencyFirstConfig(), services.state)


def _session_stickiness(
    config: SessionStickinessConfig | None, services: Services
) -> SessionStickiness:
    return SessionStickiness(config or SessionStickinessConfig(), services.clock)


def _rate_limit_aware(config: RateLimitAwareConfig | None, services: Services) -> RateLimitAware:
    return RateLimitAware(config or RateLimitAwareConfig(), services.state, services.clock,
                          services.ledger)


def _load_balanced(config: LoadBalancedConfig | None, services: Services) -> LoadBalanced:
    return LoadBalanced(config or LoadBalancedConfig())


@hookimpl
def modelmesh_strategies() -> list[StrategySpec]:
    """Register the nine built-in selection strategies."""
    return [
        StrategySpec(
            name=DEFAULT_STRATEGY,
            factory=_stick_until_failure,
            aliases=("stick-until-failure",),
            description="Keep the current model until it fails, then move to the next one.",
        ),
        StrategySpec(
            name="modelmesh.priority-selection.v1",
            factory=_priority_selection,
            config_type=PrioritySelectionConfig,
            aliases=("priority-selection",),
            description="Order by model_priority, then provider_priority, then model priority.",
        ),
        StrategySpec(
            name="modelmesh.round-robin.v1",
            factory=_round_robin,
            aliases=("round-robin",),
            description="Start each request one model further along.",
        ),
        StrategySpec(
            name="modelmesh.cost-first.v1",
            factory=_cost_first,
            config_type=CostFirstConfig,
            aliases=("cost-first",),
            description="Cheapest expected cost for this request first.",
        ),
        StrategySpec(
            name="modelmesh.latency-first.v1",
            factory=_latency_first,
            config_type=LatencyFirstConfig,
            aliases=("latency-first",),
            description="Lowest latency EWMA first; unmeasured models are tried first.",
        ),
        StrategySpec(
            name="modelmesh.session-stickiness.v1",
            factory=_session_stickiness,
            config_type=SessionStickinessConfig,
            aliases=("session-stickiness",),
            description="A session keeps its model while healthy (warm prompt caches).",
        ),
        StrategySpec(
            name="modelmesh.rate-limit-aware.v1",
            factory=_rate_limit_aware,
            config_type=RateLimitAwareConfig,
            aliases=("rate-limit-aware",),
            description="Most remaining rate-limit headroom first.",
        ),
        StrategySpec(
            name="modelmesh.free-tier.v1",
            factory=free_tier,
            config_type=FreeTierConfig,
            aliases=("free-tier",),
            description="Free-tier quotas first (predicting exhaustion, spreading over keys), "
                        "then paid models.",
        ),
        StrategySpec(
            name="modelmesh.load-balanced.v1",
            factory=_load_balanced,
            config_type=LoadBalancedConfig,
            aliases=("load-balanced",),
            description="Smooth weighted round-robin over model weights.",
        ),
    ]
