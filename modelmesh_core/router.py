"""The Router (seed ``Router``): routes a request, runs it, fails over, keeps state.

The request path is: build a ``PipelineRequest`` (one pass over the messages to estimate
tokens and needed features) → ``RoutingPipeline.execute`` → walk the fallback chain calling
the provider adapter, applying the pool's retry policy → record the outcome (state, budgets,
strategy, events). Nothing on it calls a pluggy hook or reads configuration by name.

Coroutines are the primary API (``route``, ``complete``, ``embed``, ``batch``; ``stream`` is an
async generator). ``*_sync`` twins run them on the mesh's own loop thread, so they also work
from inside a running event loop's thread.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define

from .budget import BudgetTracker
from .config import Backoff, RetryConfig
from .errors import (
    AllProvidersExhaustedError,
    AuthenticationError,
    CapabilityNotFoundError,
    ContentFilterError,
    ContextLengthError,
    InvalidRequestError,
    NoActiveModelError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    StreamInterruptedError,
)
from .events import EventEmitter, EventType
from .observability import RequestLogger, Tracer
from .pipeline import RoutingPipeline
from .rotation import RotationManager
from .types import (
    BatchJob,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Model,
    PipelineRequest,
    PipelineResult,
    Provider,
    RateLimitInfo,
    RoutingDecision,
    RoutingOptions,
    Timeouts,
)

if TYPE_CHECKING:
    from .pools import CapabilityPool
    from .state import Clock

__all__ = ["MiddlewareCall", "Router", "estimate_request"]

T = TypeVar("T")

_RAISE, _ROTATE, _RETRY = 0, 1, 2
_ID_PREFIX = "mm-" + os.urandom(4).hex() + "-"
_EMPTY_FEATURES: frozenset[str] = frozenset()
_TRACER = Tracer()


@define(kw_only=True)
class MiddlewareCall:
    """What middleware sees: the target name, the request (replaceable in before_request),
    the options and the kind (``complete``, ``stream``, ``embed``)."""

    name: str
    request: Any
    options: RoutingOptions | None
    kind: str
    request_id: str


def estimate_request(request: CompletionRequest) -> tuple[int, frozenset[str]]:
    """``(prompt tokens estimate, features needed)`` from one pass over the request.

    Tokens are estimated as characters / 4 (plus a small per-message overhead); features are
    ``tool_calling`` (tools given), ``json_mode`` / ``structured_output`` (response_format),
    ``vision`` (image parts in messages).
    """
    chars = 0
    vision = False
    for msg in request.messages:
        content = msg.get("content")
        if type(content) is str:
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    kind = part.get("type")
                    if kind == "text":
                        text = part.get("text")
                        if isinstance(text, str):
                            chars += len(text)
                    elif kind in ("image_url", "input_image", "image"):
                        vision = True
                        chars += 1000
    tokens = chars // 4 + 4 * len(request.messages)
    features: frozenset[str] = _EMPTY_FEATURES
    if request.tools or vision or request.extra:
        need: set[str] = set()
        if request.tools:
            need.add("tool_calling")
        if vision:
            need.add("vision")
        fmt = request.extra.get("response_format") if request.extra else None
        if isinstance(fmt, dict):
            if fmt.get("type") == "json_schema":
                need.add("structured_output")
            elif fmt.get("type") == "json_object":
                need.add("json_mode")
        features = frozenset(need)
    return tokens, features


def _classify(exc: ProviderError, policy: RetryConfig) -> int:
    status = exc.status
    if isinstance(exc, ContentFilterError):
        return _RAISE
    if isinstance(exc, RateLimitError | ProviderTimeoutError | AuthenticationError):
        return _ROTATE
    if isinstance(exc, ContextLengthError):
        return _ROTATE
    if status is not None:
        if status in policy.rotate_codes:
            return _ROTATE
        if status in policy.retryable_codes:
            return _RETRY
        if status in policy.non_retryable_codes:
            return _RAISE
    return _RETRY if exc.retryable else _RAISE


def _backoff(policy: Any, n: int, exc: ProviderError, rng: random.Random) -> float:
    """Seconds to wait before the ``n``-th same-model retry (``RetryConfig`` or
    ``ProviderRetryConfig``)."""
    if policy.backoff is Backoff.FIXED:
        return float(policy.initial_delay)
    if policy.backoff is Backoff.RETRY_AFTER:
        wait = getattr(exc, "retry_after", None)
        if wait is not None:
            return float(min(wait, policy.max_delay))
        return float(policy.initial_delay)
    cap = min(float(policy.max_delay), float(policy.initial_delay) * (2**n))
    return rng.uniform(0, cap)


def _cost(model: Model, usage: Mapping[str, int]) -> float:
    p = model.pricing
    if not (p.input or p.output or p.per_request):
        return 0.0
    prompt = usage.get("prompt_tokens", 0)
    cached = usage.get("cached_tokens", 0)
    cached_rate = p.input if p.cached_input is None else p.cached_input
    return (
        max(prompt - cached, 0) * p.input + cached * cached_rate
        + usage.get("completion_tokens", 0) * p.output
    ) / 1_000_000 + p.per_request


class _Walk:
    """The fallback chain of one request and the routing objects it started with."""

    __slots__ = ("plan", "pool", "providers", "rotation")

    def __init__(self, plan: list[Model], pool: CapabilityPool,
                 providers: Mapping[str, Provider], rotation: RotationManager) -> None:
        self.plan = plan
        self.pool = pool
        self.providers = providers
        self.rotation = rotation

    def target(self, i: int) -> tuple[int, Model, Provider, Timeouts, Any] | None:
        """The first candidate at or after ``i`` that may be called now (state is checked
        again: another request may have deactivated it, be running its one recovery trial,
        or its provider may have gone down), with its provider, timeouts and state."""
        plan = self.plan
        while i < len(plan):
            model = plan[i]
            st = self.rotation.begin(model)
            if st is not None:
                provider = self.providers[model.provider]
                return i, model, provider, self.pool.timeouts or provider.timeouts, st
            i += 1
        return None


class Router:
    """Central request orchestrator (seed ``Router``)."""

    def __init__(
        self,
        *,
        pipeline: RoutingPipeline,
        pools: Mapping[str, CapabilityPool],
        providers: Mapping[str, Provider],
        rotation: RotationManager,
        budgets: BudgetTracker,
        events: EventEmitter,
        clock: Clock,
        rng: random.Random | None = None,
        middleware: Sequence[Any] = (),
        request_logger: RequestLogger | None = None,
        runner: Callable[[Coroutine[Any, Any, Any]], Any] | None = None,
    ) -> None:
        self._ids = itertools.count(1)
        self._batches: dict[str, tuple[BatchJob, asyncio.Task[None]]] = {}
        self._runner = runner
        self._observability = _TRACER
        self.configure(pipeline=pipeline, pools=pools, providers=providers, rotation=rotation,
                       budgets=budgets, events=events, clock=clock, rng=rng,
                       middleware=middleware, request_logger=request_logger)

    def configure(
        self,
        *,
        pipeline: RoutingPipeline,
        pools: Mapping[str, CapabilityPool],
        providers: Mapping[str, Provider],
        rotation: RotationManager,
        budgets: BudgetTracker,
        events: EventEmitter,
        clock: Clock,
        rng: random.Random | None = None,
        middleware: Sequence[Any] = (),
        request_logger: RequestLogger | None = None,
    ) -> None:
        """Swap in a new set of routing objects (hot reload); running requests finish on the
        objects they started with."""
        self._pipeline = pipeline
        self._pools = pools
        self._request_logger = request_logger or RequestLogger(events)
        self._providers = providers
        self._rotation = rotation
        self._budgets = budgets
        self._event_emitter = events
        self._clock = clock
        self._rng = rng or random.Random()
        self._mw_before = tuple(m.before_request for m in middleware
                                if hasattr(m, "before_request"))
        self._mw_after = tuple(m.after_response for m in reversed(middleware)
                               if hasattr(m, "after_response"))
        self._mw_error = tuple(m.on_error for m in middleware if hasattr(m, "on_error"))

    # -- pools

    @property
    def pipeline(self) -> RoutingPipeline:
        """The routing pipeline this router runs."""
        return self._pipeline

    def get_pool(self, name: str) -> CapabilityPool:
        """The pool called ``name``; ``KeyError`` if there is none."""
        try:
            return self._pools[name]
        except KeyError:
            raise KeyError(f"no pool named {name!r}; pools: {sorted(self._pools)}") from None

    def list_pools(self) -> list[CapabilityPool]:
        """Every configured (and implicit) pool."""
        return list(self._pools.values())

    # -- routing

    def _request_id(self) -> str:
        return _ID_PREFIX + format(next(self._ids), "x")

    @staticmethod
    def _caller_id(options: RoutingOptions | None) -> str | None:
        """A request id the caller chose (``RoutingOptions.metadata["request_id"]``)."""
        if options is None or not options.metadata:
            return None
        rid = options.metadata.get("request_id")
        return rid if isinstance(rid, str) and rid else None

    def _pipeline_request(
        self, name: str, request: CompletionRequest | None, options: RoutingOptions | None,
        mode: str,
    ) -> PipelineRequest:
        if request is not None:
            tokens, features = estimate_request(request)
        else:
            tokens, features = 0, _EMPTY_FEATURES
        if options is None:
            return PipelineRequest(capability=name, delivery_mode=mode, request=request,
                                   features=features, estimated_tokens=tokens)
        return PipelineRequest(
            capability=name,
            delivery_mode=options.delivery_mode or mode,
            preferred_provider=options.preferred_provider,
            session_id=options.session_id,
            metadata=options.metadata,
            request=request,
            features=features,
            estimated_tokens=tokens,
        )

    async def _execute(
        self, preq: PipelineRequest, request_id: str, kind: str, t0: float
    ) -> PipelineResult:
        try:
            return await self._pipeline.execute(preq)
        except NoActiveModelError as exc:
            exc.retry_after, exc.rate_limited = self._rotation.earliest_return(exc.reasons)
            self._observability.info(f"no model available: {exc}", request_id=request_id)
            if self._event_emitter.enabled:
                self._emit_refused(exc, request_id)
                if self._request_logger.active:
                    self._request_logger.log(
                        request_id=request_id, name=preq.capability, kind=kind, pool=None,
                        model=None, provider=None, attempts=0,
                        latency_ms=(perf_counter() - t0) * 1000.0, overhead_ms=None,
                        usage=None, cost=0.0, error=exc, request=preq.request)
            raise

    def _emit_refused(self, exc: NoActiveModelError, request_id: str,
                      pool: str | None = None) -> None:
        events = self._event_emitter
        events.emit(EventType.POOL_EXHAUSTED, pool=pool, request_id=request_id, attempts=0,
                    reasons=dict(exc.reasons))
        events.emit(EventType.REQUEST_FAILED, pool=pool, request_id=request_id,
                    error=type(exc).__name__, message=str(exc)[:500])

    async def route(
        self, capability: str, options: RoutingOptions | None = None,
        request: CompletionRequest | None = None,
    ) -> RoutingDecision:
        """Run the pipeline and return the decision without calling any provider."""
        mode = options.delivery_mode if options and options.delivery_mode else "sync"
        result = await self._pipeline.execute(
            self._pipeline_request(capability, request, options, mode))
        return RoutingDecision(
            model_id=result.model.id,
            provider_id=result.provider.name,
            pool_id=result.pool.name,
            score=result.score,
            fallback_chain=[m.id for m in result.fallback_chain],
            reasons=dict(result.dropped),
        )

    async def pool_for(self, capability: str, options: RoutingOptions | None = None) -> str:
        """The pool a name resolves to, whatever the state of its models.

        Raises :class:`CapabilityNotFoundError` for an unknown name.
        """
        preq = self._pipeline_request(capability, None, options, "sync")
        ctx = await self._pipeline.execute_until(preq, "pool-selection")
        if ctx.pool is None:
            raise CapabilityNotFoundError(f"no pool serves {capability!r}")
        return ctx.pool.name

    async def explain(
        self, capability: str, request: CompletionRequest | None = None,
        options: RoutingOptions | None = None,
    ) -> dict[str, Any]:
        """Which model would be chosen for this request, and why each other one was not."""
        mode = options.delivery_mode if options and options.delivery_mode else (
            "streaming" if request is not None and request.stream else "sync")
        preq = self._pipeline_request(capability, request, options, mode)
        result = await self._pipeline.execute(preq)
        ctx = result.context
        return {
            "capability": capability,
            "capability_path": ctx.capability_path if ctx else None,
            "pool": result.pool.name,
            "strategy": result.pool.strategy_name,
            "selected": result.model.id,
            "provider": result.provider.name,
            "score": result.score,
            "fallback_chain": [m.id for m in result.fallback_chain],
            "scores": dict(ctx.scores) if ctx else {},
            "dropped": dict(result.dropped),
            "estimated_prompt_tokens": preq.estimated_tokens,
            "required_features": sorted(preq.features),
            "delivery_mode": preq.delivery_mode,
            "stages": result.stages_executed,
        }

    # -- execution helpers

    def _record_success(
        self, result: PipelineResult, model: Model, st: Any, latency_ms: float,
        usage: Mapping[str, int], rate_limit: RateLimitInfo | None,
    ) -> float:
        cost = _cost(model, usage) if usage else model.pricing.per_request
        pool = result.pool
        self._rotation.success(
            pool, model, st, latency_ms=latency_ms,
            prompt_tokens=usage.get("prompt_tokens", 0) if usage else 0,
            completion_tokens=usage.get("completion_tokens", 0) if usage else 0,
            cost=cost, rate_limit=rate_limit,
        )
        if self._budgets.active:
            self._budgets.record(model, pool.name, cost)
        record = getattr(pool.strategy, "record", None)
        if record is not None:
            record(model, True, result.context)
        return cost

    def _record_failure(
        self, result: PipelineResult, model: Model, st: Any, exc: ProviderError,
        request_id: str, attempt: int,
    ) -> bool:
        """Record a failed attempt in state and events; True when it counts against the
        model (the strategy hears of it only when the request moves on, see ``_next_step``)."""
        pool = result.pool
        counted = self._rotation.failure(pool, model, st, exc)
        if self._event_emitter.enabled:
            self._event_emitter.emit(
                EventType.ATTEMPT_FAILED, pool=pool.name, model=model.id,
                provider=model.provider, request_id=request_id, attempt=attempt,
                error=type(exc).__name__, status=exc.status, message=str(exc)[:300],
            )
        self._observability.debug(f"attempt {attempt} on {model.id} failed: {exc}",
                                  request_id=request_id, pool=pool.name, model=model.id,
                                  attempt=attempt)
        return counted

    @staticmethod
    def _as_provider_error(exc: Exception, model: Model) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            return ProviderTimeoutError("timed out", provider_id=model.provider, model_id=model.id)
        _TRACER.warning(f"provider adapter for {model.id} raised unexpectedly", exc=exc,
                        model=model.id)
        return ProviderError(f"adapter raised {type(exc).__name__}: {exc}",
                             provider_id=model.provider, model_id=model.id, retryable=True)

    def _exhausted(
        self, result: PipelineResult, attempts: list[tuple[str, BaseException]], request_id: str,
    ) -> AllProvidersExhaustedError | NoActiveModelError:
        if not attempts:
            # Every candidate became unusable between routing and its turn (another request
            # deactivated it or took its recovery trial).
            reasons = {m.id: "became unavailable during this request"
                       for m in [result.model, *result.fallback_chain]}
            err = NoActiveModelError(f"no model can serve pool {result.pool.name!r}", reasons)
            err.retry_after, err.rate_limited = self._rotation.earliest_return(reasons)
            return err
        if self._event_emitter.enabled:
            self._event_emitter.emit(EventType.POOL_EXHAUSTED, pool=result.pool.name,
                                     request_id=request_id, attempts=len(attempts))
        last = attempts[-1][1] if attempts else None
        tried = ", ".join(m for m, _ in attempts)
        return AllProvidersExhaustedError(
            f"all candidates of pool {result.pool.name!r} failed ({len(attempts)} attempts: "
            f"{tried})",
            attempts=attempts, last_error=last,
        )

    async def _next_step(
        self, exc: ProviderError, result: PipelineResult, provider: Provider,
        plan: list[Model], i: int, same_model_tries: int, n_attempts: int, counted: bool,
    ) -> tuple[int, int]:
        """Decide what follows a failed attempt: ``(next index, same-model tries)``.

        Raises ``exc`` when the error is the caller's (non-retryable). The pool's strategy is
        told of the failure when the request gives up on the model (not on a same-model
        retry that may still succeed).
        """
        pool = result.pool
        policy = pool.retry
        action = _ROTATE if exc.status in pool.config.deactivate_on else _classify(exc, policy)
        if action == _RAISE:
            raise exc
        if n_attempts >= policy.max_attempts:
            self._tell_strategy(result, plan[i], counted)
            return len(plan), 0
        same = provider.retry or policy  # a provider's own retry settings win here
        if action == _RETRY and same_model_tries < same.same_model_retries:
            await asyncio.sleep(_backoff(same, same_model_tries, exc, self._rng))
            self._rotation.waited(plan[i])
            return i, same_model_tries + 1
        last = i + 1 >= len(plan)
        if (
            last
            and isinstance(exc, RateLimitError)
            and not exc.quota
            and policy.honor_retry_after
            and exc.retry_after is not None
            and exc.retry_after <= policy.max_retry_after
        ):
            # Nothing else to rotate to: wait as the upstream asked, then try it once more.
            await asyncio.sleep(exc.retry_after)
            self._rotation.waited(plan[i])
            return i, same_model_tries + 1
        self._tell_strategy(result, plan[i], counted)
        return i + 1, 0

    @staticmethod
    def _tell_strategy(result: PipelineResult, model: Model, counted: bool) -> None:
        record = getattr(result.pool.strategy, "record", None)
        if record is not None and counted:
            record(model, False, result.context)

    # -- complete / embed

    async def complete(
        self, capability: str, request: CompletionRequest, options: RoutingOptions | None = None,
    ) -> CompletionResponse:
        """Route and run a (non-streaming) chat completion, failing over as the policy allows.

        ``response.metadata`` carries ``attempts``, ``pool``, ``cost``, ``overhead_ms`` (the
        router's own time, upstream time excluded) and ``request_id``.
        """
        t0 = perf_counter()
        request_id = self._caller_id(options) or self._request_id()
        if self._mw_before or self._mw_after or self._mw_error:
            return await self._with_middleware(capability, request, options, "complete",
                                               request_id, t0)
        return await self._run(capability, request, options, "complete", request_id, t0)

    async def embed(
        self, capability: str, request: EmbeddingRequest, options: RoutingOptions | None = None,
    ) -> EmbeddingResponse:
        """Route and run an embeddings request, failing over as the policy allows."""
        t0 = perf_counter()
        request_id = self._caller_id(options) or self._request_id()
        if self._mw_before or self._mw_after or self._mw_error:
            return await self._with_middleware(capability, request, options, "embed",
                                               request_id, t0)
        return await self._run(capability, request, options, "embed", request_id, t0)

    async def _with_middleware(
        self, capability: str, request: Any, options: RoutingOptions | None, kind: str,
        request_id: str, t0: float,
    ) -> Any:
        call = MiddlewareCall(name=capability, request=request, options=options, kind=kind,
                              request_id=request_id)
        for before in self._mw_before:
            await before(call)
        try:
            response = await self._run(call.name, call.request, call.options, kind, request_id, t0)
        except Exception as exc:
            for on_error in self._mw_error:
                replacement = await on_error(call, exc)
                if replacement is not None:
                    return replacement
            raise
        for after in self._mw_after:
            out = await after(call, response)
            if out is not None:
                response = out
        return response

    async def _run(
        self, capability: str, request: Any, options: RoutingOptions | None, kind: str,
        request_id: str, t0: float,
    ) -> Any:
        is_chat = kind == "complete"
        preq = self._pipeline_request(capability, request if is_chat else None, options, "sync")
        result = await self._execute(preq, request_id, kind, t0)
        walk = self._walk(result, request_id, stream=False)
        pool, policy, plan = result.pool, result.pool.retry, walk.plan
        events = self._event_emitter
        attempts: list[tuple[str, BaseException]] = []
        upstream = 0.0
        i = tries = n = 0
        while n < policy.max_attempts:
            target = walk.target(i)
            if target is None:
                break
            i, model, provider, timeouts, st = target
            n += 1
            ts = perf_counter()
            response: Any
            try:
                if is_chat:
                    response = await provider.adapter.complete(model, request, timeouts)
                else:
                    response = await provider.adapter.embed(model, request, timeouts)
            except asyncio.CancelledError:
                st.trial_in_flight = False
                raise
            except InvalidRequestError:
                st.trial_in_flight = False  # the caller's request, not the model: no record
                raise
            except Exception as raw:
                upstream += perf_counter() - ts
                exc = self._as_provider_error(raw, model)
                attempts.append((model.id, exc))
                counted = self._record_failure(result, model, st, exc, request_id, n)
                t_wait = perf_counter()
                try:
                    i, tries = await self._next_step(exc, result, provider, plan, i, tries, n,
                                                     counted)
                except ProviderError:
                    self._failed(result, preq, request_id, exc, kind, n, t0)
                    raise
                upstream += perf_counter() - t_wait
                continue
            elapsed = perf_counter() - ts
            upstream += elapsed
            metadata = response.metadata if is_chat else None
            rate_limit = metadata.get("rate_limit") if metadata else None
            cost = self._record_success(result, model, st, elapsed * 1000.0, response.usage,
                                        rate_limit)
            if metadata is not None:
                metadata["attempts"] = n
                metadata["pool"] = pool.name
                metadata["cost"] = cost
                metadata["request_id"] = request_id
                metadata["overhead_ms"] = (perf_counter() - t0 - upstream) * 1000.0
            if events.enabled:
                self._emit_success(pool, model, request_id, n, elapsed, cost, response.usage,
                                   attempts, stream=False)
                if self._request_logger.active:
                    self._request_logger.log(
                        request_id=request_id, name=capability, kind=kind, pool=pool.name,
                        model=model.id, provider=model.provider, attempts=n,
                        latency_ms=(perf_counter() - t0) * 1000.0,
                        overhead_ms=metadata.get("overhead_ms") if metadata else None,
                        usage=response.usage, cost=cost, error=None, request=preq.request,
                        content=response.content if is_chat else None)
            return response
        error = self._exhausted(result, attempts, request_id)
        self._failed(result, preq, request_id, error, kind, n, t0)
        raise error

    def _walk(self, result: PipelineResult, request_id: str, *, stream: bool) -> _Walk:
        if self._event_emitter.enabled:
            self._emit_routed(result, request_id, stream=stream)
        # Requests finish on the objects they started with, even across a hot reload.
        return _Walk([result.model, *result.fallback_chain], result.pool, self._providers,
                     self._rotation)

    def _emit_routed(self, result: PipelineResult, request_id: str, *, stream: bool) -> None:
        self._event_emitter.emit(
            EventType.REQUEST_ROUTED, pool=result.pool.name, model=result.model.id,
            provider=result.provider.name, request_id=request_id, stream=stream,
            fallback_chain=[m.id for m in result.fallback_chain])

    def _emit_success(
        self, pool: CapabilityPool, model: Model, request_id: str, attempts_made: int,
        elapsed: float, cost: float, usage: Mapping[str, int],
        failed: list[tuple[str, BaseException]], *, stream: bool,
    ) -> None:
        events = self._event_emitter
        events.emit(EventType.REQUEST_SUCCEEDED, pool=pool.name, model=model.id,
                    provider=model.provider, request_id=request_id, attempts=attempts_made,
                    latency_ms=elapsed * 1000.0, cost=cost, usage=dict(usage), stream=stream)
        if failed:
            events.emit(EventType.POOL_ROTATED, pool=pool.name, model=model.id,
                        provider=model.provider, request_id=request_id,
                        previous=[m for m, _ in failed])

    def _failed(
        self, result: PipelineResult, preq: PipelineRequest, request_id: str,
        exc: BaseException, kind: str, attempts_made: int, t0: float,
    ) -> None:
        self._observability.info(f"request failed on pool {result.pool.name!r}: {exc}",
                                 request_id=request_id, pool=result.pool.name)
        if self._event_emitter.enabled:
            self._event_emitter.emit(EventType.REQUEST_FAILED, pool=result.pool.name,
                                     request_id=request_id, error=type(exc).__name__,
                                     message=str(exc)[:500])
            if self._request_logger.active:
                self._request_logger.log(
                    request_id=request_id, name=preq.capability, kind=kind,
                    pool=result.pool.name, model=None, provider=None, attempts=attempts_made,
                    latency_ms=(perf_counter() - t0) * 1000.0, overhead_ms=None, usage=None,
                    cost=0.0, error=exc, request=preq.request)

    # -- streaming

    async def stream(
        self, capability: str, request: CompletionRequest, options: RoutingOptions | None = None,
    ) -> AsyncIterator[CompletionResponse]:
        """Route and run a streaming chat completion; yield delta chunks as they arrive.

        Failover is invisible until the first chunk has been yielded. After that, a broken
        stream raises :class:`StreamInterruptedError` (never a silent, truncated success).
        The first chunk's ``metadata`` carries ``attempts``, ``pool``, ``request_id`` and
        ``overhead_ms`` (router time before the first chunk, upstream time excluded).
        Closing the generator early cancels the upstream request.
        """
        t0 = perf_counter()
        request_id = self._caller_id(options) or self._request_id()
        if self._mw_before:
            call = MiddlewareCall(name=capability, request=request, options=options,
                                  kind="stream", request_id=request_id)
            for before in self._mw_before:
                await before(call)
            capability, request, options = call.name, call.request, call.options
        preq = self._pipeline_request(capability, request, options, "streaming")
        result = await self._execute(preq, request_id, "stream", t0)
        walk = self._walk(result, request_id, stream=True)
        pool, policy, plan = result.pool, result.pool.retry, walk.plan
        events = self._event_emitter
        attempts: list[tuple[str, BaseException]] = []
        upstream = 0.0
        i = tries = n = 0
        while n < policy.max_attempts:
            target = walk.target(i)
            if target is None:
                break
            i, model, provider, timeouts, st = target
            n += 1
            ts = perf_counter()
            chunks: Any = provider.adapter.stream(model, request, timeouts)
            delivered = 0
            usage: dict[str, int] | None = None
            rate_limit = None
            try:
                try:
                    first = await chunks.__anext__()
                except StopAsyncIteration:
                    raise StreamInterruptedError(
                        "stream ended before any chunk", provider_id=model.provider,
                        model_id=model.id, retryable=True) from None
                upstream += perf_counter() - ts
                md = first.metadata
                md["attempts"] = n
                md["pool"] = pool.name
                md["request_id"] = request_id
                md["overhead_ms"] = first_overhead = (perf_counter() - t0 - upstream) * 1000.0
                rate_limit = md.get("rate_limit")
                if first.usage:
                    usage = first.usage
                delivered = 1
                last = first
                yield first
                async for chunk in chunks:
                    if chunk.usage:
                        usage = chunk.usage
                    delivered += 1
                    last = chunk
                    yield chunk
            except asyncio.CancelledError:
                st.trial_in_flight = False
                raise
            except GeneratorExit:
                st.trial_in_flight = False
                raise
            except InvalidRequestError:
                st.trial_in_flight = False  # the caller's request, not the model: no record
                raise
            except Exception as raw:
                exc = self._as_provider_error(raw, model)
                attempts.append((model.id, exc))
                counted = self._record_failure(result, model, st, exc, request_id, n)
                if delivered:
                    self._tell_strategy(result, model, counted)
                    err = StreamInterruptedError(
                        f"stream broke after {delivered} chunks were delivered: {exc.detail}",
                        provider_id=model.provider, model_id=model.id, status=exc.status,
                        retryable=False,
                    )
                    self._failed(result, preq, request_id, err, "stream", n, t0)
                    raise err from exc
                upstream += perf_counter() - ts
                try:
                    i, tries = await self._next_step(exc, result, provider, plan, i, tries, n,
                                                     counted)
                except ProviderError:
                    self._failed(result, preq, request_id, exc, "stream", n, t0)
                    raise
                continue
            finally:
                await chunks.aclose()
            elapsed = perf_counter() - ts
            cost = self._record_success(result, model, st, elapsed * 1000.0, usage or {},
                                        rate_limit)
            # Readable by the consumer once the stream is exhausted (the proxy bills on it).
            last.metadata["cost"] = cost
            if events.enabled:
                self._emit_success(pool, model, request_id, n, elapsed, cost, usage or {},
                                   attempts, stream=True)
                if self._request_logger.active:
                    self._request_logger.log(
                        request_id=request_id, name=capability, kind="stream", pool=pool.name,
                        model=model.id, provider=model.provider, attempts=n,
                        latency_ms=(perf_counter() - t0) * 1000.0,
                        overhead_ms=first_overhead, usage=usage, cost=cost, error=None,
                        request=preq.request)
            return
        error = self._exhausted(result, attempts, request_id)
        self._failed(result, preq, request_id, error, "stream", n, t0)
        raise error

    # -- batch

    async def batch(
        self, capability: str, requests: Sequence[CompletionRequest],
        options: RoutingOptions | None = None, *, concurrency: int = 8,
    ) -> BatchJob:
        """Submit a batch executed by the router with bounded concurrency.

        Returns at once with a ``BatchJob`` (``status`` ``in_progress``); ``wait_batch``
        returns it finished (``completed``, ``failed`` or ``cancelled``), with ``results`` in
        request order (a response or the exception for each).
        """
        decision = await self.route(capability, options,
                                    requests[0] if requests else None)
        job = BatchJob(
            job_id="batch_" + os.urandom(8).hex(), status="in_progress", model=decision.model_id,
            provider=decision.provider_id, request_count=len(requests),
            results=[None] * len(requests),
        )
        task = asyncio.get_running_loop().create_task(
            self._run_batch(job, capability, list(requests), options, max(concurrency, 1)))
        self._batches[job.job_id] = (job, task)
        return job

    async def _run_batch(
        self, job: BatchJob, capability: str, requests: list[CompletionRequest],
        options: RoutingOptions | None, concurrency: int,
    ) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(index: int, req: CompletionRequest) -> None:
            async with gate:
                try:
                    job.results[index] = await self.complete(capability, req, options)
                    job.completed += 1
                except Exception as exc:
                    job.results[index] = exc
                    job.failed += 1

        try:
            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        except asyncio.CancelledError:
            job.status = "cancelled"
            raise
        job.status = "failed" if job.failed and not job.completed else "completed"

    def get_batch(self, job_id: str) -> BatchJob:
        """The batch job ``job_id``; ``KeyError`` if unknown."""
        return self._batches[job_id][0]

    async def wait_batch(self, job_id: str, timeout: float | None = None) -> BatchJob:
        """Wait for batch ``job_id`` to finish and return it."""
        job, task = self._batches[job_id]
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        return job

    async def cancel_batch(self, job_id: str) -> BatchJob:
        """Cancel batch ``job_id``; finished requests keep their results."""
        job, task = self._batches[job_id]
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            job.status = "cancelled"
        return job

    async def close(self) -> None:
        """Cancel running batches."""
        for _, task in self._batches.values():
            if not task.done():
                task.cancel()
        for _, task in self._batches.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # -- sync twins

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._runner is None:
            coro.close()
            raise RuntimeError(
                "this router has no loop thread for synchronous calls; use the async methods "
                "or create the mesh with ModelMesh(...).initialize_sync()"
            )
        return self._runner(coro)  # type: ignore[no-any-return]

    def route_sync(self, capability: str, options: RoutingOptions | None = None) -> RoutingDecision:
        """Blocking twin of :meth:`route`."""
        return self._sync(self.route(capability, options))

    def complete_sync(
        self, capability: str, request: CompletionRequest, options: RoutingOptions | None = None,
    ) -> CompletionResponse:
        """Blocking twin of :meth:`complete`."""
        return self._sync(self.complete(capability, request, options))

    def batch_sync(
        self, capability: str, requests: Sequence[CompletionRequest],
        options: RoutingOptions | None = None,
    ) -> BatchJob:
        """Blocking: submit a batch and wait for it to finish."""
        async def run() -> BatchJob:
            job = await self.batch(capability, requests, options)
            return await self.wait_batch(job.job_id)

        return self._sync(run())

