"""Operations as data: what the router can run, and the values each one takes and returns.

An operation (:class:`~modelmesh_core.types.OperationSpec`) names the capability subtrees it
serves, the adapter method it calls and its request and response types. The router runs
every operation the same way (``Router.run``): the routing pipeline picks a pool and keeps
only the models that can serve the operation, then the attempt loop calls
``await adapter.<method>(model, request, timeouts)`` on each candidate in turn, with
failover, budgets, events and the response's ``metadata`` (``attempts``, ``pool``, ``cost``,
``request_id``, ``overhead_ms``) exactly as for a chat completion.

The built-in operations (:data:`BUILTIN_OPERATIONS`, registered by the built-in plugin
``modelmesh_core.builtin.operations``):

=============== ================================= ================ ======================
operation       capability subtrees               adapter method   request → response
=============== ================================= ================ ======================
chat            text generation, understanding…   ``complete``     CompletionRequest →
                                                                   CompletionResponse
embed           ``representation.embeddings``     ``embed``        EmbeddingRequest →
                                                                   EmbeddingResponse
image           ``generation.image-generation``   ``images``       ImageRequest →
                                                                   ImageResponse
speech          ``…audio-generation.text-to-      ``speech``       SpeechRequest →
                speech``                                           SpeechResponse
transcription   ``…audio-understanding.speech-    ``transcribe``   TranscriptionRequest →
                to-text``                                          TranscriptionResponse
rerank          ``retrieval.reranking``           ``rerank``       RerankRequest →
                                                                   RerankResponse
search          ``retrieval.search.web-search``   ``search``       SearchRequest →
                                                                   SearchResponse
moderation      ``evaluation.content-moderation`` ``moderate``     ModerationRequest →
                                                                   ModerationResponse
scrape          ``…document-parsing``             ``scrape``       ScrapeRequest →
                                                                   ScrapeResponse
=============== ================================= ================ ======================

Streaming chat is not an operation of this table: ``Router.stream`` keeps its own loop body
(the streaming rule), over the same attempt loop.

Every response value has ``model`` (the ModelMesh id of the model that answered),
``provider``, ``usage`` (a dict of counts; token counts use the OpenAI names
``prompt_tokens`` / ``completion_tokens`` / ``total_tokens`` so they are billed like chat) and
``metadata`` (filled by the router).
"""

from __future__ import annotations

from typing import Any

from attrs import Factory, frozen

from .types import (
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    OperationSpec,
)

__all__ = [
    "BUILTIN_OPERATIONS",
    "CHAT",
    "EMBED",
    "IMAGE",
    "MODERATION",
    "RERANK",
    "SCRAPE",
    "SEARCH",
    "SPEECH",
    "TRANSCRIPTION",
    "GeneratedImage",
    "ImageRequest",
    "ImageResponse",
    "ModerationRequest",
    "ModerationResponse",
    "ModerationResult",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "ScrapeRequest",
    "ScrapeResponse",
    "SearchRequest",
    "SearchResponse",
    "SearchResult",
    "SpeechRequest",
    "SpeechResponse",
    "TranscriptionRequest",
    "TranscriptionResponse",
    "serving_operations",
]


# --------------------------------------------------------------------------- images


@frozen(kw_only=True)
class ImageRequest:
    """Generate images from a prompt (OpenAI ``/v1/images/generations`` shape).

    ``response_format`` is ``"url"`` or ``"b64_json"``; ``size``, ``quality``, ``style`` and
    any other parameter travel in ``extra`` / as given.
    """

    prompt: str
    n: int = 1
    size: str | None = None
    response_format: str | None = None
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class GeneratedImage:
    """One image: a ``url`` or the base64 bytes (``b64_json``), and the prompt the upstream
    actually used (``revised_prompt``) when it says."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


@frozen(kw_only=True)
class ImageResponse:
    """The generated images, in order."""

    images: tuple[GeneratedImage, ...]
    model: str
    provider: str
    created: int = 0
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    upstream_model: str = ""
    metadata: dict[str, Any] = Factory(dict)


# --------------------------------------------------------------------------- speech


@frozen(kw_only=True)
class SpeechRequest:
    """Text to speech: ``input`` read aloud by ``voice`` as ``response_format`` audio
    (``mp3``, ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``)."""

    input: str
    voice: str
    response_format: str = "mp3"
    speed: float | None = None
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class SpeechResponse:
    """The audio bytes and their media type (``audio/mpeg`` …).

    ``usage`` carries ``characters`` (the characters synthesised)."""

    audio: bytes
    content_type: str
    model: str
    provider: str
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    metadata: dict[str, Any] = Factory(dict)

    def __repr__(self) -> str:
        return (f"SpeechResponse({len(self.audio)} bytes of {self.content_type}, "
                f"model={self.model!r})")


# --------------------------------------------------------------------------- transcription


@frozen(kw_only=True)
class TranscriptionRequest:
    """Speech to text: an uploaded audio ``file`` (its bytes, name and media type).

    ``translate`` asks for an English translation instead of a transcript (OpenAI
    ``/v1/audio/translations``). ``response_format`` is ``json``, ``text``, ``srt``,
    ``vtt`` or ``verbose_json``.
    """

    file: bytes
    filename: str = "audio"
    content_type: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float | None = None
    translate: bool = False
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)

    def __repr__(self) -> str:
        return (f"TranscriptionRequest({self.filename!r}, {len(self.file)} bytes, "
                f"translate={self.translate})")


@frozen(kw_only=True)
class TranscriptionResponse:
    """The transcript.

    ``text`` is the plain transcript, or the subtitle file for ``srt`` / ``vtt``;
    ``verbose`` is the upstream's ``verbose_json`` object when one was asked for and given.
    ``usage`` carries ``seconds`` (audio duration) when known, and token counts when the
    upstream bills tokens.
    """

    text: str
    model: str
    provider: str
    response_format: str = "json"
    language: str | None = None
    duration: float | None = None
    verbose: dict[str, Any] | None = None
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    metadata: dict[str, Any] = Factory(dict)


# --------------------------------------------------------------------------- rerank


@frozen(kw_only=True)
class RerankRequest:
    """Order ``documents`` by relevance to ``query``; at most ``top_n`` results (all when
    None)."""

    query: str
    documents: list[str]
    top_n: int | None = None
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class RerankResult:
    """One ranked document: its ``index`` in the request's ``documents``, its score, and its
    text."""

    index: int
    relevance_score: float
    document: str


@frozen(kw_only=True)
class RerankResponse:
    """``results`` by descending relevance. ``usage`` carries what the upstream bills on
    (``search_units`` for Cohere, ``total_tokens`` for Jina)."""

    results: tuple[RerankResult, ...]
    model: str
    provider: str
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    id: str = ""
    metadata: dict[str, Any] = Factory(dict)


# --------------------------------------------------------------------------- search


@frozen(kw_only=True)
class SearchRequest:
    """A web search: ``query``, at most ``max_results`` results (the upstream's default when
    None)."""

    query: str
    max_results: int | None = None
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class SearchResult:
    """One hit: title, URL, the text snippet (``content``), and a relevance ``score`` when the
    upstream gives one (else derived from the rank, 1.0 first)."""

    title: str
    url: str
    content: str
    score: float | None = None
    published_date: str | None = None


@frozen(kw_only=True)
class SearchResponse:
    """Ranked hits, and a short ``answer`` when the upstream writes one."""

    query: str
    results: tuple[SearchResult, ...]
    model: str
    provider: str
    answer: str | None = None
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    metadata: dict[str, Any] = Factory(dict)


# --------------------------------------------------------------------------- moderation


@frozen(kw_only=True)
class ModerationRequest:
    """Classify ``input`` (one text or several) against content policies."""

    input: str | list[str]
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class ModerationResult:
    """The verdict for one input (OpenAI's category names)."""

    flagged: bool
    categories: dict[str, bool] = Factory(dict)
    category_scores: dict[str, float] = Factory(dict)
    category_applied_input_types: dict[str, list[str]] | None = None


@frozen(kw_only=True)
class ModerationResponse:
    """One result per input, in order."""

    results: tuple[ModerationResult, ...]
    model: str
    provider: str
    id: str = ""
    upstream_model: str = ""
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    metadata: dict[str, Any] = Factory(dict)


# --------------------------------------------------------------------------- scrape


@frozen(kw_only=True)
class ScrapeRequest:
    """Read the page at ``url`` as clean text (Markdown)."""

    url: str
    extra: dict[str, Any] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


@frozen(kw_only=True)
class ScrapeResponse:
    """The page as Markdown (``content``), its title, and what else the upstream reported
    (``page``: description, status code, language …)."""

    url: str
    content: str
    model: str
    provider: str
    title: str | None = None
    page: dict[str, Any] = Factory(dict)
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    metadata: dict[str, Any] = Factory(dict)


# --------------------------------------------------------------------------- the operations


CHAT = OperationSpec(
    name="chat",
    capabilities=(
        "generation.text-generation",
        "generation.structured-generation",
        "understanding.text-understanding",
        "understanding.vision-understanding",
        "understanding.document-understanding.table-extraction",
        "understanding.document-understanding.form-extraction",
        "transformation.translation",
        "transformation.rewriting",
        "transformation.style-transfer",
        "retrieval.rag",
        "interaction",
        "evaluation.factuality-checking",
        "evaluation.quality-scoring",
    ),
    method="complete",
    request_type=CompletionRequest,
    response_type=CompletionResponse,
    description="chat completions (POST /v1/chat/completions, /v1/completions)",
)
EMBED = OperationSpec(
    name="embed", capabilities=("representation.embeddings",), method="embed",
    request_type=EmbeddingRequest, response_type=EmbeddingResponse,
    description="embeddings (POST /v1/embeddings)",
)
IMAGE = OperationSpec(
    name="image", capabilities=("generation.image-generation.text-to-image",), method="images",
    request_type=ImageRequest, response_type=ImageResponse,
    description="image generation (POST /v1/images/generations)",
)
SPEECH = OperationSpec(
    name="speech", capabilities=("generation.audio-generation.text-to-speech",),
    method="speech", request_type=SpeechRequest, response_type=SpeechResponse,
    description="text to speech (POST /v1/audio/speech)",
)
TRANSCRIPTION = OperationSpec(
    name="transcription", capabilities=("understanding.audio-understanding.speech-to-text",),
    method="transcribe", request_type=TranscriptionRequest,
    response_type=TranscriptionResponse,
    description="speech to text (POST /v1/audio/transcriptions, /v1/audio/translations)",
)
RERANK = OperationSpec(
    name="rerank", capabilities=("retrieval.reranking",), method="rerank",
    request_type=RerankRequest, response_type=RerankResponse,
    description="reranking (POST /v1/rerank)",
)
SEARCH = OperationSpec(
    name="search", capabilities=("retrieval.search.web-search",), method="search",
    request_type=SearchRequest, response_type=SearchResponse,
    description="web search (POST /v1/search)",
)
MODERATION = OperationSpec(
    name="moderation",
    capabilities=("evaluation.content-moderation", "evaluation.toxicity-detection"),
    method="moderate", request_type=ModerationRequest, response_type=ModerationResponse,
    description="content moderation (POST /v1/moderations)",
)
SCRAPE = OperationSpec(
    name="scrape", capabilities=("understanding.document-understanding.document-parsing",),
    method="scrape", request_type=ScrapeRequest, response_type=ScrapeResponse,
    description="read a web page as Markdown (POST /v1/scrape)",
)

BUILTIN_OPERATIONS: tuple[OperationSpec, ...] = (
    CHAT, EMBED, IMAGE, SPEECH, TRANSCRIPTION, RERANK, SEARCH, MODERATION, SCRAPE,
)
"""The operations the core registers (through ``modelmesh_core.builtin.operations``)."""


def _covers(node: str, path: str) -> bool:
    return path == node or path.startswith(node + ".")


def serving_operations(
    capabilities: tuple[str, ...], adapter: object, operations: Any,
) -> frozenset[str]:
    """The names of the operations (an iterable of ``OperationSpec``) that a model with these
    capabilities, behind this adapter, can serve. Computed once per model at assembly."""
    return frozenset(
        op.name for op in operations
        if callable(getattr(adapter, op.method, None))
        and any(_covers(sub, cap) for sub in op.capabilities for cap in capabilities)
    )
