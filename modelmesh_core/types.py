"""Values that cross module and plugin boundaries.

Three groups live here:

* **Registration records** returned by start-up hooks (``ProviderSpec``, ``StrategySpec``,
  ``StageSpec``, …). They are frozen and cheap; building the object they describe is deferred
  to their ``factory``.
* **Request path values** named by the seed pages: ``RoutingOptions``, ``RoutingDecision``,
  ``CompletionRequest``, ``CompletionResponse``, ``BatchJob`` (the pipeline's own values,
  ``PipelineRequest``, ``PipelineContext`` and ``PipelineResult``, live in
  :mod:`modelmesh_core.pipeline`; the values of the other operations in
  :mod:`modelmesh_core.operations`).
* **Model description**: ``Model``, ``Pricing``, ``Limits``, ``Timeouts``, ``Usage``.

Everything is attrs with slots; requests and responses are built once at the edge.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
from attrs import Factory, define, field, frozen

if TYPE_CHECKING:
    from aiohttp import ClientSession as _ClientSession

    from .errors import ProviderError
else:
    # aiohttp's client is heavy to import and a bare ``import modelmesh_core`` must stay
    # cheap: at run time (``typing.get_type_hints``) the session type reads as ``Any``.
    _ClientSession = Any

__all__ = [
    "BatchCapable",
    "BatchJob",
    "CapabilitySpec",
    "Choice",
    "CompletionRequest",
    "CompletionResponse",
    "DeliveryMode",
    "DiscoverySpec",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Feature",
    "FilterSpec",
    "Limits",
    "MiddlewareSpec",
    "Model",
    "ModelInfo",
    "OperationSpec",
    "Pricing",
    "Provider",
    "ProviderAdapter",
    "ProviderContext",
    "ProviderSpec",
    "RateLimitInfo",
    "RoutingDecision",
    "RoutingOptions",
    "SecretStoreSpec",
    "SinkSpec",
    "StageSpec",
    "StorageSpec",
    "StrategySpec",
    "Timeouts",
    "ToolCall",
]


# --------------------------------------------------------------------------- enums


class DeliveryMode(enum.StrEnum):
    """How a model can deliver its answer."""

    SYNC = "sync"
    STREAMING = "streaming"
    BATCH = "batch"


class Feature(enum.StrEnum):
    """Optional model features a request may need."""

    TOOL_CALLING = "tool_calling"
    JSON_MODE = "json_mode"
    STRUCTURED_OUTPUT = "structured_output"
    VISION = "vision"
    SYSTEM_PROMPT = "system_prompt"
    LOGPROBS = "logprobs"
    REASONING = "reasoning"
    ASSISTANT_PREFILL = "assistant_prefill"
    """Accepts a request whose last message is an assistant turn and continues that text."""
    MULTIPLE_CHOICES = "multiple_choices"
    """Answers ``n > 1`` choices in one call (other models are asked ``n`` times)."""


BATCH_ENDED: frozenset[str] = frozenset({"completed", "failed", "cancelled", "expired"})
"""The ``BatchJob.status`` values of a batch that has ended."""

ALL_DELIVERY_MODES: frozenset[str] = frozenset(m.value for m in DeliveryMode)
ALL_FEATURES: frozenset[str] = frozenset(f.value for f in Feature)


# --------------------------------------------------------------------------- model description


@frozen(kw_only=True)
class Pricing:
    """USD per 1M tokens (``input``, ``cached_input``, ``output``, ``reasoning``) and per
    request. This is the one cost formula of ModelMesh (budgets, the admission ledger, the
    cost-first strategy and the bill of every response use it)."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    per_request: float = 0.0
    reasoning: float | None = None

    def cost(self, usage: Usage | Mapping[str, int] | None) -> float:
        """Cost in USD of one request with the given usage (a :class:`Usage` or the plain
        ``usage`` dict of a response; None or empty: the per-request price alone).

        Cached prompt tokens are billed at ``cached_input`` (``input`` when not set);
        reasoning tokens are part of ``completion_tokens`` (the OpenAI usage shape) and are
        billed at ``reasoning`` when set, else at ``output``.
        """
        if not usage:
            return self.per_request
        if isinstance(usage, Usage):
            prompt, cached = usage.prompt_tokens, usage.cached_tokens
            completion, reasoning = usage.completion_tokens, usage.reasoning_tokens
        else:
            get = usage.get
            prompt, cached = get("prompt_tokens", 0), get("cached_tokens", 0)
            completion, reasoning = get("completion_tokens", 0), get("reasoning_tokens", 0)
        if not (self.input or self.output or self.cached_input or self.reasoning):
            return self.per_request
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = max(prompt - cached, 0) * self.input + cached * cached_rate
        if self.reasoning is not None and reasoning:
            reasoning = min(reasoning, completion)
            total += (completion - reasoning) * self.output + reasoning * self.reasoning
        else:
            total += completion * self.output
        return total / 1_000_000 + self.per_request

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of ``prompt_tokens`` fresh input and ``completion_tokens`` output (an
        estimate before the request is sent)."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000 \
            + self.per_request


@frozen(kw_only=True)
class Limits:
    """Configured rate limits and free-tier quotas; None means unlimited.

    ``rpm`` / ``tpm`` count a rolling minute; ``rpd`` / ``tpd`` the day starting at
    ``reset_hour`` UTC (0: midnight UTC; providers that reset at another hour say so);
    ``monthly_requests`` / ``monthly_tokens`` the calendar month (from ``reset_hour`` on
    the 1st).
    ``free`` marks the quotas as a free tier (the free-tier strategy spends these first).
    """

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    tpd: int | None = None
    monthly_requests: int | None = None
    monthly_tokens: int | None = None
    reset_hour: float = 0.0
    free: bool = False


@frozen(kw_only=True)
class Timeouts:
    """Per-attempt timeouts in seconds.

    ``connect`` bounds the TCP/TLS connect, ``first_byte`` the wait for response headers and,
    when streaming, for the first chunk; ``idle`` the gap between two stream chunks; ``total``
    the whole attempt. None disables a bound.
    """

    connect: float | None = 10.0
    first_byte: float | None = 60.0
    idle: float | None = 30.0
    total: float | None = 600.0


@frozen(kw_only=True)
class ModelInfo:
    """One entry of a provider adapter's default catalogue (``ProviderSpec.catalogue``)."""

    name: str
    capabilities: tuple[str, ...] = ("generation.text-generation.chat-completion",)
    delivery_modes: frozenset[str] = frozenset({"sync", "streaming"})
    features: frozenset[str] = frozenset()
    context_window: int | None = None
    max_output_tokens: int | None = None
    pricing: Pricing = Factory(Pricing)
    free_limits: Limits | None = None
    """The provider's published free-tier quotas for this model (``free`` set), used when
    the provider is configured with ``free_tier: true`` and the model sets no limits."""


@frozen(kw_only=True)
class Model:
    """A routable model, built once from configuration and the provider catalogue.

    ``id`` is ``"<provider>.<name>"``; ``upstream_id`` is what is sent upstream (the part after
    the first dot unless configured otherwise).
    """

    id: str
    provider: str
    upstream_id: str
    capabilities: tuple[str, ...]
    delivery_modes: frozenset[str] = frozenset({"sync", "streaming"})
    features: frozenset[str] = frozenset()
    context_window: int | None = None
    max_output_tokens: int | None = None
    pricing: Pricing = Factory(Pricing)
    limits: Limits = Factory(Limits)
    priority: int = 0
    weight: float = 1.0
    metadata: Mapping[str, Any] = Factory(dict)

    def __repr__(self) -> str:
        return f"Model({self.id!r})"


# --------------------------------------------------------------------------- seed: Router


@define(kw_only=True)
class RoutingOptions:
    """Optional hints that influence routing decisions (seed ``Router``)."""

    delivery_mode: str | None = None
    preferred_provider: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class RoutingDecision:
    """Result of routing: the resolved model and provider (seed ``Router``)."""

    model_id: str
    provider_id: str
    pool_id: str
    score: float
    fallback_chain: list[str] = Factory(list)
    reasons: dict[str, str] = Factory(dict)
    """Why each dropped candidate was dropped (beyond the seed; used by ``explain``)."""


@frozen(kw_only=True)
class ToolCall:
    """A tool call in a response (``index`` is set on streaming deltas)."""

    id: str | None
    name: str | None
    arguments: str
    index: int | None = None
    type: str = "function"


@frozen(kw_only=True)
class Usage:
    """Token usage of one response, OpenAI shape plus the details ModelMesh bills on."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """The plain ``usage`` dict of the seed ``CompletionResponse``."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@frozen(kw_only=True)
class CompletionRequest:
    """Unified completion request payload (seed ``Router``).

    ``extra`` carries every other OpenAI chat parameter (``top_p``, ``stop``, ``tool_choice``,
    ``response_format``, ``seed``, ``user``, …) and is passed through to OpenAI-shaped
    upstreams unchanged.
    """

    messages: list[dict[str, Any]]
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = Factory(dict)
    extra: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class CompletionResponse:
    """Unified completion response payload (seed ``Router``).

    For streaming, each chunk is a ``CompletionResponse`` whose ``content`` and ``tool_calls``
    are deltas; ``usage`` is set on the chunk that carries it (last, when
    ``stream_options.include_usage`` was asked).
    ``model`` is the ModelMesh id of the model that answered; ``upstream_model`` is the name the
    upstream reported.
    """

    content: str
    model: str
    provider: str
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    metadata: dict[str, Any] = Factory(dict)
    id: str = ""
    created: int = 0
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    role: str | None = "assistant"
    upstream_model: str = ""
    refusal: str | None = None
    choices: tuple[Choice, ...] = ()
    """Choices after the first when the request asked for ``n > 1`` (the first choice is
    this response's own ``content`` / ``tool_calls`` / ``finish_reason``)."""


@frozen(kw_only=True)
class Choice:
    """One extra choice of a completion asked with ``n > 1`` (``index`` 1, 2, …)."""

    index: int
    content: str
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    role: str = "assistant"
    refusal: str | None = None


@frozen(kw_only=True)
class EmbeddingRequest:
    """Embedding request: ``input`` is one string or a list of strings."""

    input: str | list[str]
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class EmbeddingResponse:
    """Embedding response: one vector per input, in input order."""

    data: list[list[float]]
    model: str
    provider: str
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    upstream_model: str = ""
    metadata: dict[str, Any] = Factory(dict)
    """Filled by the router: ``attempts``, ``pool``, ``cost``, ``request_id``,
    ``overhead_ms`` (as for a completion)."""


@define(kw_only=True)
class BatchJob:
    """Handle to a submitted batch job (seed ``Router``).

    ``results`` holds one ``CompletionResponse`` or exception per request, in request order:
    a router-executed batch fills it as it runs, a provider-native one when it ends;
    ``Router.wait_batch`` returns the finished job. ``status`` is one of ``validating``,
    ``in_progress``, ``finalizing``, ``cancelling`` (running) or ``completed``, ``failed``,
    ``cancelled``, ``expired`` (ended).

    Beyond the seed: ``native_id`` is the provider's own batch id when the batch was
    submitted to the provider's batch API (``None`` for a router-executed batch); provider
    adapters return jobs whose ``job_id`` is that id.
    """

    job_id: str
    status: str
    model: str
    provider: str
    request_count: int
    completed: int = 0
    failed: int = 0
    results: list[CompletionResponse | BaseException | None] = Factory(list)
    native_id: str | None = None

    @property
    def done(self) -> bool:
        """True once the job has ended (``completed``, ``failed``, ``cancelled``, ``expired``)."""
        return self.status in BATCH_ENDED


# --------------------------------------------------------------------------- providers


@frozen(kw_only=True)
class RateLimitInfo:
    """Rate-limit facts read from upstream headers (``x-ratelimit-*``, ``retry-after``)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None


@frozen(kw_only=True)
class ProviderContext:
    """What the core hands a provider factory.

    ``session`` returns the mesh's single shared ``aiohttp.ClientSession`` (created when the
    mesh starts; call it at request time, not in the factory). ``name`` is the configured
    provider name.
    """

    name: str
    session: Callable[[], _ClientSession]
    json_dumps: Callable[[Any], bytes]
    json_loads: Callable[[bytes | str], Any]


@runtime_checkable
class ProviderAdapter(Protocol):
    """A wire-protocol adapter: what a ``ProviderSpec.factory`` returns.

    Every method translates to and from ModelMesh values and raises only
    :class:`~modelmesh_core.errors.ProviderError` subclasses. ``rate_limit`` information read
    from headers is put in ``CompletionResponse.metadata["rate_limit"]`` (a
    :class:`RateLimitInfo`) on success and in ``ProviderError.headers`` on failure.
    """

    async def complete(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> CompletionResponse:
        """Send one non-streaming chat completion."""
        ...

    def stream(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> AsyncIterator[CompletionResponse]:
        """Send one streaming chat completion; yield delta chunks as they arrive.

        Ask the upstream for token usage whenever its protocol allows (the router bills cost,
        budgets and quotas from it) and yield it on a chunk's ``usage``. A stream that ends
        without its terminator raises ``StreamInterruptedError``.
        """
        ...

    async def embed(
        self, model: Model, request: EmbeddingRequest, timeouts: Timeouts
    ) -> EmbeddingResponse:
        """Create embeddings."""
        ...

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """List upstream model names (used by discovery and probes)."""
        ...

    async def close(self) -> None:
        """Release what the adapter holds (not the shared session)."""
        ...


@runtime_checkable
class BatchCapable(Protocol):
    """A provider adapter that can also drive its vendor's native batch API.

    ``Router.batch`` submits a batch natively when the chosen model lists the ``batch``
    delivery mode and its adapter has these four methods; every other batch is executed by
    the router. All four raise only :class:`~modelmesh_core.errors.ProviderError` subclasses
    (an adapter whose upstream has no batch API raises one from ``create_batch`` before
    sending anything, and the router falls back).
    """

    async def create_batch(
        self, model: Model, requests: Sequence[CompletionRequest], timeouts: Timeouts
    ) -> BatchJob:
        """Submit ``requests`` as one batch for ``model``; the job's ``job_id`` is the
        provider's batch id and ``request_count`` is ``len(requests)``."""
        ...

    async def get_batch(self, job_id: str, timeouts: Timeouts) -> BatchJob:
        """Status and counts (``completed``, ``failed``) of the provider's batch ``job_id``."""
        ...

    async def batch_results(
        self, job_id: str, timeouts: Timeouts, *, model: Model
    ) -> list[CompletionResponse | ProviderError | None]:
        """The results of an ended batch in request order: a response, a typed error, or
        None for a request the provider reported nothing about."""
        ...

    async def cancel_batch(self, job_id: str, timeouts: Timeouts) -> BatchJob:
        """Ask the provider to cancel batch ``job_id`` (status ``cancelling`` or ended)."""
        ...


@frozen(kw_only=True)
class Provider:
    """A configured provider instance (seed ``PipelineResult.provider``)."""

    name: str
    connector: str
    adapter: ProviderAdapter
    timeouts: Timeouts = Factory(Timeouts)
    limits: Limits = Factory(Limits)
    enabled: bool = True
    retry: Any = None
    """The provider's ``retry:`` (a ``ProviderRetryConfig``) or None: same-model retries."""

    def __repr__(self) -> str:
        return f"Provider({self.name!r}, connector={self.connector!r})"


# --------------------------------------------------------------------------- registration records


def _no_config_type() -> type | None:
    return None


@frozen(kw_only=True)
class ProviderSpec:
    """A provider connector registered by ``modelmesh_providers``.

    Attributes:
        name: connector id, ``vendor.service.vN`` (e.g. ``"openai.llm.v1"``).
        factory: ``factory(context: ProviderContext, config) -> adapter``: a
            :class:`ProviderAdapter` for chat providers; a provider of other operations only
            needs the methods of the operations it serves (``images``, ``speech``,
            ``transcribe``, ``rerank``, ``search``, ``moderate``, ``scrape``, ``embed``; see
            :mod:`modelmesh_core.operations`) plus ``list_models`` and ``close``.
        config_type: attrs class the entry's ``config:`` is structured into.
        env_vars: environment variables that hold an API key (or host, for local servers);
            the first one set enables auto-detection.
        default_base_url: used when the config gives none.
        catalogue: default models (used when a model's config leaves fields out, and by
            auto-detection).
        auth: ``"bearer"``, ``"header:<name>"``, ``"query:<name>"`` or ``"none"``.
        local: True for servers on the user's own machine (no key needed).
    """

    name: str
    factory: Callable[..., Any]
    config_type: type | None = field(factory=_no_config_type)
    env_vars: tuple[str, ...] = ()
    default_base_url: str | None = None
    catalogue: tuple[ModelInfo, ...] = ()
    auth: str = "bearer"
    local: bool = False
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class StrategySpec:
    """A selection strategy registered by ``modelmesh_strategies``.

    ``factory(config, services) -> SelectionStrategy`` is called once per pool at start-up;
    ``aliases`` are short names (``"round-robin"``) accepted in config.
    """

    name: str
    factory: Callable[..., Any]
    config_type: type | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class StageSpec:
    """A pipeline stage registered by ``modelmesh_stages``.

    ``order`` sorts the default pipeline (built-ins use 100, 200, … 600); ``factory(config,
    services) -> PipelineStage`` is called once at assembly.
    """

    name: str
    factory: Callable[..., Any]
    order: int
    config_type: type | None = None
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class FilterSpec:
    """A candidate filter registered by ``modelmesh_filters``.

    ``stage`` is the filter stage that runs it (``"delivery-filter"`` or ``"state-filter"``);
    ``factory(config, services) -> CandidateFilter``; filters of one stage run in ``order``.
    """

    name: str
    factory: Callable[..., Any]
    stage: str = "state-filter"
    order: int = 100
    config_type: type | None = None
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class SecretStoreSpec:
    """A secret store registered by ``modelmesh_secret_stores``: ``factory(config) -> store``."""

    name: str
    factory: Callable[..., Any]
    config_type: type | None = None
    writable: bool = False
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class StorageSpec:
    """A state store registered by ``modelmesh_storage``: ``factory(config) -> StateStore``."""

    name: str
    factory: Callable[..., Any]
    config_type: type | None = None
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class SinkSpec:
    """An observability sink registered by ``modelmesh_sinks``: ``factory(config) -> sink``."""

    name: str
    factory: Callable[..., Any]
    config_type: type | None = None
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class DiscoverySpec:
    """A discovery connector registered by ``modelmesh_discovery``.

    ``factory(config, services) -> Discovery``; a discovery object has ``async start()`` and
    ``async stop()`` and runs in the background (health probes, registry sync).
    """

    name: str
    factory: Callable[..., Any]
    config_type: type | None = None
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class MiddlewareSpec:
    """Request middleware registered by ``modelmesh_middleware``.

    ``factory(config) -> Middleware`` with optional ``async before_request(ctx)``,
    ``async after_response(ctx, response)`` and ``async on_error(ctx, error)`` methods;
    ``order`` sorts before_request (after_response runs in reverse).
    """

    name: str
    factory: Callable[..., Any]
    order: int = 100
    config_type: type | None = None
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class CapabilitySpec:
    """Capability-tree extension from ``modelmesh_capabilities``.

    ``path`` is a dotted path (``"generation.text-generation.poetry"``); intermediate nodes are
    created as needed; ``aliases`` map short names to it.
    """

    path: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""


@frozen(kw_only=True)
class OperationSpec:
    """An operation the router can run, registered by ``modelmesh_operations``.

    Attributes:
        name: the operation's name (``"chat"``, ``"embed"``, ``"image"``, …); also the
            registry key and what ``Router.run(name, …)`` takes.
        capabilities: capability subtrees (dotted paths) whose models may serve it; a model
            serves the operation when one of its capabilities lies under one of them **and**
            its provider's adapter has ``method``.
        method: the adapter method called as ``await adapter.<method>(model, request,
            timeouts)``.
        request_type / response_type: the request value the method takes and the response
            value it returns (the response has ``model``, ``provider``, ``usage`` and a
            ``metadata`` dict the router fills).
        description: one line for listings.
    """

    name: str
    capabilities: tuple[str, ...]
    method: str
    request_type: type
    response_type: type
    description: str = ""
    plugin: str = ""


def with_plugin(record: Any, plugin: str) -> Any:
    """Return ``record`` stamped with the name of the plugin that produced it."""
    if getattr(record, "plugin", None) == plugin:
        return record
    return attrs.evolve(record, plugin=plugin)



_MOVED = frozenset({"PipelineContext", "PipelineRequest", "PipelineResult"})


def __getattr__(name: str) -> Any:
    # The pipeline's values moved to modelmesh_core.pipeline (which ends the import cycle
    # between this module and pools.py); old imports keep working.
    if name in _MOVED:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
