"""The Router (seed ``Router``): routes a request, runs it, fails over, keeps state.

The request path is: build a ``PipelineRequest`` (one pass over the messages to estimate
tokens and needed features) → ``RoutingPipeline.execute`` → walk the fallback chain calling
the provider adapter, applying the pool's retry policy → record the outcome (state, budgets,
strategy, events). Nothing on it calls a pluggy hook or reads configuration by name.

Every unary operation (chat, embeddings, images, speech, transcription, rerank, search,
moderation, scrape, and any a plugin registers; see :mod:`modelmesh_core.operations`) runs
through :meth:`Router.run`: the operation is data (its adapter method and the capability
subtrees it serves), so adding one never touches this module.

Coroutines are the primary API (``route``, ``run``, ``complete``, ``embed``, ``images``,
``speech``, ``transcribe``, ``rerank``, ``search``, ``moderate``, ``scrape``, ``batch``;
``stream`` is an async generator). ``*_sync`` twins run them on the mesh's own loop thread,
so they also work from inside a running event loop's thread.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from attrs import define

from .attempts import AttemptLoop, as_provider_error
from .batches import NativeBatch, batch_pipeline_request, native_job, new_batch_id, submit_native
from .budget import BudgetTracker
from .config import BatchConfig
from .errors import (
    CapabilityNotFoundError,
    InvalidRequestError,
    NoActiveModelError,
    ProviderError,
)
from .events import EventEmitter, EventType
from .observability import RequestLogger, Tracer
from .operations import (
    BUILTIN_OPERATIONS,
    CHAT,
    EMBED,
    IMAGE,
    MODERATION,
    RERANK,
    SCRAPE,
    SEARCH,
    SPEECH,
    TRANSCRIPTION,
    ImageRequest,
    ImageResponse,
    ModerationRequest,
    ModerationResponse,
    RerankRequest,
    RerankResponse,
    ScrapeRequest,
    ScrapeResponse,
    SearchRequest,
    SearchResponse,
    SpeechRequest,
    SpeechResponse,
    TranscriptionRequest,
    TranscriptionResponse,
)
from .pipeline import PipelineRequest, PipelineResult, RoutingPipeline
from .retry import Outcome
from .rotation import RotationManager
from .streaming import Splice, SpliceMismatch
from .types import (
    BatchJob,
    Choice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Feature,
    Model,
    OperationSpec,
    Provider,
    RoutingDecision,
    RoutingOptions,
    Timeouts,
)

if TYPE_CHECKING:
    from .pools import CapabilityPool
    from .state import Clock
    from .tracing import Tracing

__all__ = ["MiddlewareCall", "Router", "estimate_request"]

T = TypeVar("T")

_ID_PREFIX = "mm-" + os.urandom(4).hex() + "-"
_EMPTY_FEATURES: frozenset[str] = frozenset()
_TRACER = Tracer()
_DEFAULT_OPERATIONS: dict[str, OperationSpec] = {op.name: op for op in BUILTIN_OPERATIONS}
_KINDS = {"chat": "complete"}
"""Middleware and log ``kind`` of an operation when it is not the operation's name (chat
keeps its historical ``complete``)."""
_MULTIPLE_CHOICES = Feature.MULTIPLE_CHOICES.value


@define(kw_only=True)
class MiddlewareCall:
    """What middleware sees: the target name, the request (replaceable in before_request),
    the options and the kind (``complete``, ``stream``, ``embed``, or the name of another
    operation: ``image``, ``speech``, ``transcription``, ``rerank``, ``search``,
    ``moderation``, ``scrape``, …)."""

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
        tracing: Tracing | None = None,
        operations: Mapping[str, OperationSpec] | None = None,
        model_operations: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self._ids = itertools.count(1)
        self._batches: dict[str, tuple[BatchJob, asyncio.Task[None]]] = {}
        self._native_batches: dict[str, NativeBatch] = {}
        self._runner = runner
        self._observability = _TRACER
        self.configure(pipeline=pipeline, pools=pools, providers=providers, rotation=rotation,
                       budgets=budgets, events=events, clock=clock, rng=rng,
                       middleware=middleware, request_logger=request_logger, tracing=tracing,
                       operations=operations, model_operations=model_operations)

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
        tracing: Tracing | None = None,
        operations: Mapping[str, OperationSpec] | None = None,
        model_operations: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """Swap in a new set of routing objects (hot reload); running requests finish on the
        objects they started with."""
        self._operations: Mapping[str, OperationSpec] = (
            operations if operations is not None else _DEFAULT_OPERATIONS)
        self._model_operations: Mapping[str, frozenset[str]] = model_operations or {}
        # Looked up once here, not by name on every request.
        self._chat_op = self._operations.get("chat", CHAT)
        self._embed_op = self._operations.get("embed", EMBED)
        self._pipeline = pipeline
        self._tracing = tracing
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
        mode: str, operation: OperationSpec | None = None,
    ) -> PipelineRequest:
        if request is not None:
            tokens, features = estimate_request(request)
        else:
            tokens, features = 0, _EMPTY_FEATURES
        if options is None:
            return PipelineRequest(capability=name, delivery_mode=mode, request=request,
                                   features=features, estimated_tokens=tokens,
                                   operation=operation)
        return PipelineRequest(
            capability=name,
            delivery_mode=options.delivery_mode or mode,
            preferred_provider=options.preferred_provider,
            session_id=options.session_id,
            metadata=options.metadata,
            request=request,
            features=features,
            estimated_tokens=tokens,
            operation=operation,
        )

    async def _execute(
        self, preq: PipelineRequest, request_id: str, kind: str, t0: float
    ) -> PipelineResult:
        try:
            return await self._pipeline.execute(preq)
        except NoActiveModelError as exc:
            exc.retry_after, exc.rate_limited = self._rotation.earliest_return(exc.reasons)
            if self._tracing is not None:
                self._tracing.refused(preq, request_id, kind, t0, exc)
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

    # -- execution

    def _loop(self, result: PipelineResult, preq: PipelineRequest, request_id: str, kind: str,
              t0: float) -> AttemptLoop:
        # Requests finish on the objects they started with, even across a hot reload.
        return AttemptLoop(result=result, preq=preq, request_id=request_id, kind=kind, t0=t0,
                           providers=self._providers, rotation=self._rotation,
                           budgets=self._budgets, events=self._event_emitter,
                           logger=self._request_logger, rng=self._rng,
                           trace=None if self._tracing is None else
                           self._tracing.begin(preq, request_id, kind, t0, result))

    # -- unary operations

    def operation(self, name: str) -> OperationSpec:
        """The registered operation called ``name``; ``KeyError`` (listing them) if none."""
        try:
            return self._operations[name]
        except KeyError:
            raise KeyError(f"no operation named {name!r}; operations: "
                           f"{sorted(self._operations)}") from None

    @property
    def operations(self) -> Mapping[str, OperationSpec]:
        """Every operation this router can run, by name."""
        return self._operations

    def serves(self, model_id: str) -> frozenset[str]:
        """The names of the operations model ``model_id`` can serve."""
        return self._model_operations.get(model_id, frozenset())

    async def run(
        self, operation: str | OperationSpec, capability: str, request: Any,
        options: RoutingOptions | None = None,
    ) -> Any:
        """Route and run one unary operation, failing over as the policy allows.

        ``operation`` is an operation's name (``"chat"``, ``"embed"``, ``"image"``, …, or one
        a plugin registered) or its spec; ``request`` is its request value. The name
        resolves to a pool as for chat; only the pool's models that can serve the operation
        are candidates, and a name whose pool cannot serve it raises
        :class:`~modelmesh_core.errors.OperationNotSupportedError`. The response's
        ``metadata`` carries ``attempts``, ``pool``, ``cost``, ``overhead_ms`` (the router's
        own time, upstream time excluded) and ``request_id``.
        """
        op = operation if isinstance(operation, OperationSpec) else self.operation(operation)
        t0 = perf_counter()
        request_id = self._caller_id(options) or self._request_id()
        kind = _KINDS.get(op.name, op.name)
        if self._mw_before or self._mw_after or self._mw_error:
            return await self._with_middleware(op, capability, request, options, kind,
                                               request_id, t0)
        return await self._run(op, capability, request, options, kind, request_id, t0)

    async def complete(
        self, capability: str, request: CompletionRequest, options: RoutingOptions | None = None,
    ) -> CompletionResponse:
        """Route and run a (non-streaming) chat completion, failing over as the policy allows.

        ``response.metadata`` carries ``attempts``, ``pool``, ``cost``, ``overhead_ms`` (the
        router's own time, upstream time excluded) and ``request_id``. A request with
        ``extra["n"] > 1`` is passed through to models with the ``multiple_choices`` feature;
        any other model is asked ``n`` times and the answers are merged into one response
        (``choices``), with usage and cost summed.
        """
        return await self.run(self._chat_op, capability,  # type: ignore[no-any-return]
                              request, options)

    async def embed(
        self, capability: str, request: EmbeddingRequest, options: RoutingOptions | None = None,
    ) -> EmbeddingResponse:
        """Route and run an embeddings request, failing over as the policy allows."""
        return await self.run(self._embed_op, capability,  # type: ignore[no-any-return]
                              request, options)

    async def images(self, capability: str, request: ImageRequest,
                     options: RoutingOptions | None = None) -> ImageResponse:
        """Route and run an image generation."""
        return await self.run(IMAGE.name, capability, request, options)  # type: ignore[no-any-return]

    async def speech(self, capability: str, request: SpeechRequest,
                     options: RoutingOptions | None = None) -> SpeechResponse:
        """Route and run a text-to-speech request."""
        return await self.run(SPEECH.name, capability, request, options)  # type: ignore[no-any-return]

    async def transcribe(self, capability: str, request: TranscriptionRequest,
                         options: RoutingOptions | None = None) -> TranscriptionResponse:
        """Route and run a transcription (or, with ``request.translate``, a translation)."""
        return await self.run(TRANSCRIPTION.name, capability, request, options)  # type: ignore[no-any-return]

    async def rerank(self, capability: str, request: RerankRequest,
                     options: RoutingOptions | None = None) -> RerankResponse:
        """Route and run a rerank request."""
        return await self.run(RERANK.name, capability, request, options)  # type: ignore[no-any-return]

    async def search(self, capability: str, request: SearchRequest,
                     options: RoutingOptions | None = None) -> SearchResponse:
        """Route and run a web search."""
        return await self.run(SEARCH.name, capability, request, options)  # type: ignore[no-any-return]

    async def moderate(self, capability: str, request: ModerationRequest,
                       options: RoutingOptions | None = None) -> ModerationResponse:
        """Route and run a moderation request."""
        return await self.run(MODERATION.name, capability, request, options)  # type: ignore[no-any-return]

    async def scrape(self, capability: str, request: ScrapeRequest,
                     options: RoutingOptions | None = None) -> ScrapeResponse:
        """Route and run a page read (URL → Markdown)."""
        return await self.run(SCRAPE.name, capability, request, options)  # type: ignore[no-any-return]

    async def _with_middleware(
        self, op: OperationSpec, capability: str, request: Any, options: RoutingOptions | None,
        kind: str, request_id: str, t0: float,
    ) -> Any:
        call = MiddlewareCall(name=capability, request=request, options=options, kind=kind,
                              request_id=request_id)
        for before in self._mw_before:
            await before(call)
        try:
            response = await self._run(op, call.name, call.request, call.options, kind,
                                       request_id, t0)
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
        self, op: OperationSpec, capability: str, request: Any, options: RoutingOptions | None,
        kind: str, request_id: str, t0: float,
    ) -> Any:
        """One unary operation through the pipeline and the attempt loop."""
        is_chat = op.name == "chat"
        choices = 1
        if is_chat:
            extra = request.extra
            n = extra.get("n") if extra else None
            if type(n) is int and n > 1:
                choices = n
        preq = self._pipeline_request(capability, request if is_chat else None, options, "sync",
                                      op)
        result = await self._execute(preq, request_id, kind, t0)
        loop = self._loop(result, preq, request_id, kind, t0)
        method = op.method
        while await loop.next():
            calls = 1
            try:
                if choices > 1 and _MULTIPLE_CHOICES not in loop.model.features:
                    calls = choices
                    response = await _fan_out(loop.provider.adapter, loop.model, request,
                                              loop.timeouts, choices)
                else:
                    response = await getattr(loop.provider.adapter, method)(
                        loop.model, request, loop.timeouts)
            except asyncio.CancelledError:
                loop.release()
                if loop.trace is not None:
                    loop.trace.cancelled(loop)
                raise
            except InvalidRequestError:
                loop.release()  # the caller's request, not the model: no record
                raise
            except Exception as exc:
                await loop.failed(exc)
                continue
            elapsed = perf_counter() - loop.started
            loop.upstream += elapsed
            metadata = response.metadata
            cost = loop.succeeded(response.usage, metadata.get("rate_limit"), elapsed,
                                  requests=calls)
            overhead = (perf_counter() - t0 - loop.upstream) * 1000.0
            metadata["attempts"] = loop.attempts
            metadata["pool"] = result.pool.name
            metadata["cost"] = cost
            metadata["request_id"] = request_id
            metadata["overhead_ms"] = overhead
            if self._event_emitter.enabled:
                loop.report_success(elapsed, cost, response.usage, overhead,
                                    response.content if is_chat else None)
            return response
        raise loop.exhausted()

    # -- streaming

    async def stream(
        self, capability: str, request: CompletionRequest, options: RoutingOptions | None = None,
    ) -> AsyncIterator[CompletionResponse]:
        """Route and run a streaming chat completion; yield delta chunks as they arrive.

        Failover is invisible until the first chunk with content (leading role-only and empty
        chunks are held back). A stream that breaks after output reached the caller is
        continued on the next usable candidate (``streaming.on_break: continue``, the
        default): a model with the ``assistant_prefill`` feature continues the delivered
        text; any other model restarts, and only what follows the delivered text is passed
        on, when its answer begins with it. Otherwise :class:`StreamInterruptedError` is
        raised — never a silent, truncated success.

        The first chunk's ``metadata`` carries ``attempts``, ``pool``, ``request_id`` and
        ``overhead_ms`` (router time before the first chunk, upstream time excluded); once
        the stream is exhausted, the last chunk's ``metadata`` carries ``cost`` (every
        upstream call of the stream), ``attempts``, and for a continued stream
        ``continuations`` and ``segments`` (which model served which part). Closing the
        generator early cancels the upstream request and bills what was used.
        """
        t0 = perf_counter()
        request_id = self._caller_id(options) or self._request_id()
        if self._mw_before:
            call = MiddlewareCall(name=capability, request=request, options=options,
                                  kind="stream", request_id=request_id)
            for before in self._mw_before:
                await before(call)
            capability, request, options = call.name, call.request, call.options
        preq = self._pipeline_request(capability, request, options, "streaming",
                                      self._chat_op)
        result = await self._execute(preq, request_id, "stream", t0)
        loop = self._loop(result, preq, request_id, "stream", t0)
        splice = Splice(request, preq.estimated_tokens)
        first_overhead: float | None = None
        last: CompletionResponse | None = None
        total_cost = 0.0
        try:
            while await loop.next():
                model = loop.model
                sent = splice.begin(model)
                chunks: Any = loop.provider.adapter.stream(model, sent, loop.timeouts)
                try:
                    async for chunk in chunks:
                        out = splice.feed(chunk)
                        if out is None:
                            continue
                        if first_overhead is None:
                            loop.upstream += perf_counter() - loop.started
                            md = out.metadata
                            md["attempts"] = loop.attempts
                            md["pool"] = result.pool.name
                            md["request_id"] = request_id
                            md["overhead_ms"] = first_overhead = (
                                perf_counter() - t0 - loop.upstream) * 1000.0
                        last = out
                        yield out
                    splice.complete()
                except (asyncio.CancelledError, GeneratorExit):
                    total_cost += self._abandoned(loop, splice)
                    if last is not None:
                        last.metadata["cancelled"] = True
                    raise
                except InvalidRequestError:
                    loop.release()  # the caller's request, not the model: no record
                    raise
                except SpliceMismatch as why:
                    # The restarted answer cannot be spliced: end cleanly, naming the first break.
                    loop.release()
                    usage, estimated = splice.segment_usage()
                    total_cost += loop.charged(usage)
                    broken = splice.broken
                    assert broken is not None
                    error = loop.interrupted(broken, len(splice.delivered),
                                             f"{model.id} could not continue it ({why})")
                    loop.fail_request(error)
                    raise error from None
                except Exception as raw:
                    exc = as_provider_error(raw, model)
                    if splice.broken is not None and splice.rejected_prefill(model, exc):
                        # Not the caller's error, not the model's: restart there without prefill.
                        loop.upstream += perf_counter() - loop.started
                        loop.release()
                        loop.emit(EventType.ATTEMPT_FAILED, attempt=loop.attempts,
                                  error=type(exc).__name__, status=exc.status,
                                  message=f"prefill rejected: {str(exc)[:250]}")
                        continue
                    mid_stream = splice.released
                    if mid_stream:
                        total_cost += self._broke(loop, splice, exc)
                    outcome = await loop.failed(
                        exc, mid_stream=mid_stream, delivered=len(splice.delivered),
                        # Tool-call arguments can be neither continued nor spliced.
                        stop="a tool call was in progress" if splice.tools else None)
                    if outcome is Outcome.CONTINUE:
                        loop.emit(EventType.STREAM_CONTINUED, delivered_chars=len(splice.delivered),
                                  continuation=loop.continuations, error=type(exc).__name__)
                    continue
                finally:
                    await chunks.aclose()
                elapsed = perf_counter() - loop.started
                usage, estimated = splice.segment_usage()
                # An upstream that reports no usage is billed from an estimate, never as free.
                cost = loop.succeeded(usage, splice.rate_limit, elapsed)
                total_cost += cost
                assert last is not None
                md = last.metadata
                md["cost"] = total_cost
                md["attempts"] = loop.attempts
                if splice.segments is not None:
                    splice.close_segment(model, "complete", usage, estimated, cost)
                    md["continuations"] = len(splice.segments) - 1
                    md["segments"] = [s.as_dict() for s in splice.segments]
                if self._event_emitter.enabled:
                    loop.report_success(elapsed, total_cost, usage, first_overhead, None)
                return
            raise loop.exhausted(delivered=len(splice.delivered), broken=splice.broken)
        finally:
            if last is not None:
                # What the stream cost, however it ended (completed, failed, abandoned): the
                # proxy bills virtual keys from it.
                last.metadata["cost"] = total_cost

    @staticmethod
    def _broke(loop: AttemptLoop, splice: Splice, exc: ProviderError) -> float:
        """A stream broke after output reached the caller: bill the segment (the upstream's
        usage, else an estimate from what it sent) and remember the first break."""
        usage, estimated = splice.segment_usage()
        cost = loop.charged(usage)
        splice.break_at(exc)
        splice.close_segment(loop.model, f"broke: {type(exc).__name__}", usage, estimated, cost)
        return cost

    @staticmethod
    def _abandoned(loop: AttemptLoop, splice: Splice) -> float:
        """The caller left mid-stream (the upstream call is being cancelled): give back any
        recovery trial, bill what was used, and say so."""
        loop.release()
        if loop.trace is not None:
            loop.trace.cancelled(loop)
        if not splice.released and not splice.seg_chars:
            return 0.0
        usage, estimated = splice.segment_usage()
        cost = loop.charged(usage)
        loop.emit(EventType.REQUEST_CANCELLED, stream=True, delivered_chars=len(splice.delivered),
                  usage=usage, estimated_usage=estimated, cost=cost)
        return cost

    # -- batch

    batch_config: BatchConfig = BatchConfig()
    """How batches run (the ``batch:`` section; the mesh sets it)."""

    async def batch(
        self, capability: str, requests: Sequence[CompletionRequest],
        options: RoutingOptions | None = None, *, concurrency: int | None = None,
        native: bool | None = None,
    ) -> BatchJob:
        """Submit a batch; returns at once with its ``BatchJob``.

        When ``native`` (default ``batch.native``) the batch is routed in the ``batch``
        delivery mode and submitted to the provider's own batch API if the chosen model (or
        one of its fallbacks) lists ``batch`` and its adapter is ``BatchCapable``; the job
        (``native_id`` set) is polled every ``batch.poll_interval``. Otherwise, and when
        every native submission fails, the router executes the requests itself with
        ``concurrency`` (default ``batch.concurrency``) in flight.

        ``wait_batch`` returns the job finished (``completed``, ``failed``, ``cancelled`` or
        ``expired``), with ``results`` in request order (a response or the typed error for
        each).
        """
        requests = list(requests)
        config = self.batch_config
        if requests and (config.native if native is None else native):
            base = self._pipeline_request(capability, None, options, "batch")
            submitted = await submit_native(
                self, batch_pipeline_request(capability, requests, base), requests,
                self._providers)
            if submitted is not None:
                upstream, model, provider, pool = submitted
                job = native_job(upstream, model, provider, len(requests))
                follower = NativeBatch(job, model, provider, pool, config, self._budgets)
                task = asyncio.get_running_loop().create_task(follower.follow())
                self._batches[job.job_id] = (job, task)
                self._native_batches[job.job_id] = follower
                return job
        decision = await self.route(capability, options,
                                    requests[0] if requests else None)
        job = BatchJob(
            job_id=new_batch_id(), status="in_progress", model=decision.model_id,
            provider=decision.provider_id, request_count=len(requests),
            results=[None] * len(requests),
        )
        task = asyncio.get_running_loop().create_task(
            self._run_batch(job, capability, requests, options,
                            max(concurrency or config.concurrency, 1)))
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
        """Cancel batch ``job_id``; finished requests keep their results.

        A router-executed batch is ``cancelled`` when this returns; a provider-native one is
        ``cancelling`` until the provider has stopped it (``wait_batch`` returns it
        ``cancelled``, with the results of the requests that ran).
        """
        job, task = self._batches[job_id]
        follower = self._native_batches.get(job_id)
        if follower is not None:
            await follower.cancel()
            return job
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



async def _fan_out(adapter: Any, model: Model, request: CompletionRequest, timeouts: Timeouts,
                   n: int) -> CompletionResponse:
    """``n`` single-choice calls of a model that does not take ``n``, merged into one response
    (``choices`` 1…n-1 after the first; usage summed). One failure fails the attempt (the
    other calls are cancelled)."""
    extra = {k: v for k, v in request.extra.items() if k != "n"}
    single = attrs.evolve(request, extra=extra)
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(adapter.complete(model, single, timeouts))
                     for _ in range(n)]
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    answers: list[CompletionResponse] = [t.result() for t in tasks]
    first = answers[0]
    usage: dict[str, int] = {}
    for answer in answers:
        for key, value in answer.usage.items():
            usage[key] = usage.get(key, 0) + value
    return attrs.evolve(
        first, usage=usage,
        latency_ms=max(a.latency_ms for a in answers),
        choices=tuple(
            Choice(index=i, content=a.content, finish_reason=a.finish_reason,
                   tool_calls=a.tool_calls, role=a.role or "assistant", refusal=a.refusal)
            for i, a in enumerate(answers[1:], 1)),
    )
