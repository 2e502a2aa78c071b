"""The attempt loop: one request's walk over its fallback chain, shared by every operation.

:class:`AttemptLoop` owns everything between the pipeline's decision and the caller's answer
that does not depend on the operation: picking the next usable candidate (state is checked
again before every attempt), recording failures and successes (model and provider state,
budgets, the pool's strategy, events, the request log), and applying the retry decision
(:meth:`modelmesh_core.retry.RetryState.next`), and the admission ledger
(:mod:`modelmesh_core.ledger`): every attempt reserves its request, tokens and cost before
it is made, settles on success and releases on failure. An entry point (``complete``, ``embed``,
``stream``) supplies only the adapter call and what it does with the output::

    loop = AttemptLoop(...)
    while await loop.next():
        try:
            response = await loop.provider.adapter.complete(loop.model, request, loop.timeouts)
        except asyncio.CancelledError:
            loop.release()
            raise
        except Exception as exc:
            await loop.failed(exc)      # raises when nothing follows
            continue
        loop.succeeded(response.usage, rate_limit)
        return response
    raise loop.exhausted()
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .errors import (
    AllProvidersExhaustedError,
    NoActiveModelError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    StreamInterruptedError,
)
from .events import EventEmitter, EventType
from .ledger import Refusal
from .observability import RequestLogger, Tracer
from .pipeline import PipelineRequest, PipelineResult
from .retry import DEFAULT_STREAMING, Outcome, RetryState
from .rotation import RotationManager
from .types import Model, Provider, RateLimitInfo, Timeouts

if TYPE_CHECKING:
    from .budget import BudgetTracker
    from .ledger import Ledger, Reservation
    from .state import ModelState
    from .tracing import RequestTrace

__all__ = ["AttemptLoop", "as_provider_error", "cost_of"]

_TRACER = Tracer()


def cost_of(model: Model, usage: Mapping[str, int] | None) -> float:
    """USD cost of ``usage`` on ``model``: :meth:`Pricing.cost <modelmesh_core.types.Pricing.cost>`
    (kept as a name for callers of earlier versions)."""
    return model.pricing.cost(usage)


def _tokens(usage: Mapping[str, int] | None) -> int:
    if not usage:
        return 0
    return usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)


def as_provider_error(exc: BaseException, model: Model) -> ProviderError:
    """``exc`` as a :class:`ProviderError` (an adapter bug becomes a retryable one)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return ProviderTimeoutError("timed out", provider_id=model.provider, model_id=model.id)
    _TRACER.warning(f"provider adapter for {model.id} raised unexpectedly", exc=exc,
                    model=model.id)
    return ProviderError(f"adapter raised {type(exc).__name__}: {exc}",
                         provider_id=model.provider, model_id=model.id, retryable=True)


class AttemptLoop:
    """The attempts of one request (see the module docstring).

    After :meth:`next` returns True, ``model``, ``provider``, ``timeouts`` and ``state`` name
    the attempt to make; ``attempts`` is its number (1-based). ``upstream`` accumulates the
    seconds spent waiting for upstreams (and retry back-off), so that
    ``perf_counter() - t0 - upstream`` is the router's own time.
    """

    __slots__ = (
        "_budgets", "_events", "_ledger", "_logger", "_providers", "_rng", "_rotation",
        "attempts", "continuations", "failures", "index", "kind", "model", "plan", "pool",
        "preq", "provider", "refused", "request_id", "reservation", "result", "same_model",
        "started", "state", "t0", "timeouts", "trace", "upstream",
    )

    def __init__(
        self, *, result: PipelineResult, preq: PipelineRequest, request_id: str, kind: str,
        t0: float, providers: Mapping[str, Provider], rotation: RotationManager,
        budgets: BudgetTracker, events: EventEmitter, logger: RequestLogger,
        rng: random.Random, trace: RequestTrace | None = None,
    ) -> None:
        self.result = result
        self.trace = trace  # OpenTelemetry spans (modelmesh_core.tracing), None when off
        self.preq = preq
        self.request_id = request_id
        self.kind = kind
        self.t0 = t0
        self.pool = result.pool
        self.plan: list[Model] = [result.model, *result.fallback_chain]
        self._providers = providers
        self._rotation = rotation
        self._budgets = budgets
        self._events = events
        self._logger = logger
        self._rng = rng
        self._ledger: Ledger | None = rotation.ledger
        self.reservation: Reservation | None = None
        self.refused: dict[str, Refusal] | None = None
        self.index = 0
        self.attempts = 0
        self.same_model = 0
        self.continuations = 0
        self.failures: list[tuple[str, BaseException]] | None = None
        self.upstream = 0.0
        self.started = 0.0
        self.model: Model = result.model
        self.provider: Provider = result.provider
        self.timeouts: Timeouts = result.provider.timeouts
        self.state: ModelState | Any = None
        if events.enabled:
            events.emit(EventType.REQUEST_ROUTED, pool=result.pool.name, model=result.model.id,
                        provider=result.provider.name, request_id=request_id,
                        stream=kind == "stream",
                        fallback_chain=[m.id for m in result.fallback_chain])

    # -- the walk

    async def next(self) -> bool:
        """Pick the next attempt: the first candidate at or after the current one that may be
        called now (another request may have deactivated it, be running its one recovery
        trial, or its provider may have gone down) and that the admission ledger admits (a
        candidate without headroom is skipped, its reason kept for the final error). False
        when the chain or the attempt budget is spent."""
        if self.attempts >= self.pool.retry.max_attempts:
            return False
        plan = self.plan
        rotation = self._rotation
        ledger = self._ledger
        i = self.index
        while i < len(plan):
            model = plan[i]
            st = rotation.begin(model)
            if st is not None and rotation.shared is not None and (
                    st.trial_in_flight or st.provider_trial):
                if not await rotation.claim_trial(model, st, self.timeouts_for(model)):
                    st = None
            if st is not None and ledger is not None:
                got = (ledger.admit(self.pool, model, self.preq) if ledger.sync
                       else await ledger.admit_async(self.pool, model, self.preq))
                if isinstance(got, Refusal):
                    rotation.release(model, st)
                    if self.refused is None:
                        self.refused = {}
                    self.refused[model.id] = got
                    st = None
                else:
                    self.reservation = got
            if st is not None:
                provider = self._providers[model.provider]
                self.index = i
                self.model = model
                self.provider = provider
                self.timeouts = self.pool.timeouts or provider.timeouts
                self.state = st
                self.attempts += 1
                self.started = perf_counter()
                if self.trace is not None:
                    self.trace.attempt(self)
                return True
            i += 1
            self.same_model = 0
        self.index = i
        return False

    def timeouts_for(self, model: Model) -> Timeouts:
        """The timeouts an attempt on ``model`` would run with."""
        return self.pool.timeouts or self._providers[model.provider].timeouts

    def release(self) -> None:
        """The caller went away during the attempt: judge nothing, give back any recovery
        trial the attempt held and what it reserved."""
        self._rotation.release(self.model, self.state)
        if self.reservation is not None and self._ledger is not None:
            self._ledger.release(self.reservation)
        if self.trace is not None:
            self.trace.released(self)

    # -- outcomes

    async def failed(self, raw: BaseException, *, mid_stream: bool = False,
                     delivered: int = 0, stop: str | None = None) -> Outcome:
        """Record a failed attempt and apply the retry decision.

        Returns ``RETRY`` (call :meth:`next` again: same model, after the wait), ``ROTATE`` or
        ``CONTINUE`` (the next candidate). Raises the error itself when it is the caller's,
        and the final error when nothing may follow (for a stream that already delivered
        ``delivered`` characters: :class:`StreamInterruptedError` naming the break). ``stop``
        ends the request after recording the failure, with that reason.
        """
        self.upstream += perf_counter() - self.started
        model = self.model
        if self.reservation is not None and self._ledger is not None:
            self._ledger.release(self.reservation)
            self.reservation = None
        exc = as_provider_error(raw, model)
        info = exc.rate_limit
        if info is not None and self._ledger is not None:
            self._ledger.observe(model, info, refused=isinstance(exc, RateLimitError))
        if self.failures is None:
            self.failures = []
        self.failures.append((model.id, exc))
        counted = self._rotation.failure(self.pool, model, self.state, exc)
        if self._events.enabled:
            self._events.emit(
                EventType.ATTEMPT_FAILED, pool=self.pool.name, model=model.id,
                provider=model.provider, request_id=self.request_id, attempt=self.attempts,
                error=type(exc).__name__, status=exc.status, message=str(exc)[:300],
            )
        _TRACER.debug(f"attempt {self.attempts} on {model.id} failed: {exc}",
                      request_id=self.request_id, pool=self.pool.name, model=model.id,
                      attempt=self.attempts)
        pool = self.pool
        policy = pool.retry
        state = RetryState(self.attempts, self.same_model, self.continuations)
        outcome, wait, state = state.next(
            exc, policy=policy, same=self.provider.retry or policy,
            streaming=pool.streaming or DEFAULT_STREAMING, deactivate_on=pool.config.deactivate_on,
            last=self.index + 1 >= len(self.plan), mid_stream=mid_stream, rng=self._rng,
        )
        self.same_model, self.continuations = state.same_model, state.continuations
        if stop is not None and outcome is not Outcome.RAISE:
            outcome = Outcome.GIVE_UP
        if self.trace is not None:
            self.trace.attempt_failed(self, exc, outcome)
        if outcome is Outcome.RETRY:
            t = perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            self._rotation.waited(model)
            self.upstream += perf_counter() - t
            return outcome
        if outcome is Outcome.RAISE:
            self.fail_request(exc)
            raise exc
        self._tell_strategy(model, counted)
        if outcome is Outcome.GIVE_UP:
            if mid_stream:
                error: Exception = self.interrupted(
                    exc, delivered, stop or "")
            else:
                error = self._exhausted_error()
            self.fail_request(error)
            raise error
        self.index += 1
        return outcome

    def _tell_strategy(self, model: Model, counted: bool) -> None:
        record = getattr(self.pool.strategy, "record", None)
        if record is not None and counted:
            record(model, False, self.result.context)

    def interrupted(self, cause: ProviderError, delivered: int,
                    detail: str = "") -> StreamInterruptedError:
        """The error that ends a stream which delivered output and cannot go on."""
        err = StreamInterruptedError(
            f"stream broke after {delivered} characters were delivered: {cause.detail}"
            + (f"; {detail}" if detail else ""),
            provider_id=cause.provider_id, model_id=cause.model_id, status=cause.status,
            retryable=False,
        )
        err.__cause__ = cause
        return err

    def succeeded(self, usage: Mapping[str, int] | None, rate_limit: RateLimitInfo | None,
                  elapsed: float, *, model: Model | None = None,
                  state: ModelState | None = None, requests: int = 1) -> float:
        """Record a successful attempt; return its cost. ``requests`` is the number of
        upstream calls the attempt made (each pays the per-request price)."""
        model = model or self.model
        st = state or self.state
        cost = model.pricing.cost(usage)
        if requests > 1:
            cost += (requests - 1) * model.pricing.per_request
        pool = self.pool
        ledger = self._ledger
        if ledger is not None:
            if self.reservation is not None:
                ledger.settle(self.reservation, _tokens(usage), cost, model=model, pool=pool)
            if rate_limit is not None:
                ledger.observe(model, rate_limit)
        self._rotation.success(
            pool, model, st, latency_ms=elapsed * 1000.0,
            prompt_tokens=usage.get("prompt_tokens", 0) if usage else 0,
            completion_tokens=usage.get("completion_tokens", 0) if usage else 0,
            cost=cost, rate_limit=rate_limit,
        )
        record = getattr(pool.strategy, "record", None)
        if record is not None:
            record(model, True, self.result.context)
        if self.trace is not None:
            self.trace.succeeded(self, model, usage, cost)
        return cost

    def charged(self, usage: Mapping[str, int]) -> float:
        """Count the usage of the current attempt without judging the model (a stream the
        caller abandoned, the part of a broken stream that was delivered); return its cost."""
        model = self.model
        cost = model.pricing.cost(usage)
        self._rotation.charge(model, self.state, prompt_tokens=usage.get("prompt_tokens", 0),
                              completion_tokens=usage.get("completion_tokens", 0), cost=cost)
        if self.reservation is not None and self._ledger is not None:
            self._ledger.charge(self.reservation, _tokens(usage), cost)
        return cost

    # -- the end

    def exhausted(self, *, delivered: int = 0,
                  broken: ProviderError | None = None) -> Exception:
        """The error when the chain ran out (emits ``request.failed``)."""
        if broken is not None:
            error: Exception = self.interrupted(broken, delivered,
                                                "no candidate could continue it")
        else:
            error = self._exhausted_error()
        self.fail_request(error)
        return error

    def _exhausted_error(self) -> AllProvidersExhaustedError | NoActiveModelError:
        failures = self.failures
        if not failures:
            # Every candidate became unusable between routing and its turn (another request
            # deactivated it or took its recovery trial), or had no headroom left.
            refused = self.refused or {}
            reasons = {}
            for m in self.plan:
                got = refused.get(m.id)
                reasons[m.id] = (got.reason if got is not None
                                 else "became unavailable during this request")
            err = NoActiveModelError(f"no model can serve pool {self.pool.name!r}", reasons)
            err.retry_after, err.rate_limited = self._rotation.earliest_return(reasons)
            return err
        if self._events.enabled:
            self._events.emit(EventType.POOL_EXHAUSTED, pool=self.pool.name,
                              request_id=self.request_id, attempts=len(failures))
        tried = ", ".join(m for m, _ in failures)
        return AllProvidersExhaustedError(
            f"all candidates of pool {self.pool.name!r} failed ({len(failures)} attempts: "
            f"{tried})",
            attempts=failures, last_error=failures[-1][1],
        )

    def fail_request(self, exc: BaseException) -> None:
        """Report the request as failed (log, ``request.failed`` event, request log)."""
        pool = self.pool.name
        _TRACER.info(f"request failed on pool {pool!r}: {exc}", request_id=self.request_id,
                     pool=pool)
        if self.trace is not None:
            self.trace.failed(self, exc)
        if self._events.enabled:
            self._events.emit(EventType.REQUEST_FAILED, pool=pool, request_id=self.request_id,
                              error=type(exc).__name__, message=str(exc)[:500])
            if self._logger.active:
                self._logger.log(
                    request_id=self.request_id, name=self.preq.capability, kind=self.kind,
                    pool=pool, model=None, provider=None, attempts=self.attempts,
                    latency_ms=(perf_counter() - self.t0) * 1000.0, overhead_ms=None,
                    usage=None, cost=0.0, error=exc, request=self.preq.request)

    def report_success(self, elapsed: float, cost: float, usage: Mapping[str, int],
                       overhead_ms: float | None, content: str | None) -> None:
        """Emit ``request.succeeded`` (and ``pool.rotated`` after failures) and the request
        log record. Call only when events are enabled."""
        events = self._events
        pool, model = self.pool, self.model
        stream = self.kind == "stream"
        events.emit(EventType.REQUEST_SUCCEEDED, pool=pool.name, model=model.id,
                    provider=model.provider, request_id=self.request_id,
                    attempts=self.attempts, latency_ms=elapsed * 1000.0, cost=cost,
                    usage=dict(usage), stream=stream)
        if self.failures:
            events.emit(EventType.POOL_ROTATED, pool=pool.name, model=model.id,
                        provider=model.provider, request_id=self.request_id,
                        previous=[m for m, _ in self.failures])
        if self._logger.active:
            self._logger.log(
                request_id=self.request_id, name=self.preq.capability, kind=self.kind,
                pool=pool.name, model=model.id, provider=model.provider,
                attempts=self.attempts, latency_ms=(perf_counter() - self.t0) * 1000.0,
                overhead_ms=overhead_ms, usage=usage, cost=cost, error=None,
                request=self.preq.request, content=content)

    def emit(self, event: str, **data: Any) -> None:
        """Emit a request-scoped event about the current attempt (when events are on)."""
        if self._events.enabled:
            self._events.emit(event, pool=self.pool.name, model=self.model.id,
                              provider=self.model.provider, request_id=self.request_id, **data)
