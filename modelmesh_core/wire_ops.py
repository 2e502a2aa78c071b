"""The edge formats of the operations beyond chat and embeddings.

Shared by the HTTP proxy and the in-process client, like :mod:`modelmesh_core.wire`: each
``parse_*`` validates a request body strictly (a :class:`~modelmesh_core.wire.WireError`
naming the field on the first problem) and returns ``(model, request value)``; each
``*_to_dict`` / ``*_body`` rebuilds the answer in the wire shape clients expect:

* images, speech, transcriptions / translations, moderations: OpenAI's shapes
  (``/v1/images/generations``, ``/v1/audio/speech``, ``/v1/audio/transcriptions``,
  ``/v1/audio/translations``, ``/v1/moderations``);
* rerank: the shape Cohere and Jina share (``results[].index``, ``relevance_score``,
  ``document.text``), with Cohere's ``meta.billed_units`` and Jina's ``usage``;
* search and scrape: ModelMesh's own documented shapes (``/v1/search``, ``/v1/scrape``; see
  docs/architecture.md).

A body without ``model`` routes moderation, rerank, search and scrape requests to their
capability alias (``content-moderation``, ``reranking``, ``web-search``,
``document-parsing``), as the vendors' APIs have a default model too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .operations import (
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
    TranscriptionRequest,
    TranscriptionResponse,
)
from .wire import WireError, _bad, _integer, _model, _number, _require_object, _type_name

__all__ = [
    "AUDIO_CONTENT_TYPES",
    "image_to_dict",
    "moderation_to_dict",
    "parse_image_request",
    "parse_moderation_request",
    "parse_rerank_request",
    "parse_scrape_request",
    "parse_search_request",
    "parse_speech_request",
    "parse_transcription_request",
    "rerank_to_dict",
    "scrape_to_dict",
    "search_to_dict",
    "transcription_body",
]

AUDIO_CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
"""Speech ``response_format`` → the media type of the audio."""

_TRANSCRIPT_FORMATS = frozenset({"json", "text", "srt", "vtt", "verbose_json"})
_IMAGE_FORMATS = frozenset({"url", "b64_json"})
_MAX_SPEECH_CHARS = 4096


def _model_or(body: Mapping[str, Any], default: str) -> str:
    if body.get("model") is None:
        return default
    return _model(body)


def _text(body: Mapping[str, Any], name: str, *, required: bool = True,
          limit: int | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise WireError(f"Missing required parameter: '{name}'.", param=name,
                            code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise _bad(name, "a string", value)
    if required and not value.strip():
        raise WireError(f"Invalid value for '{name}': must not be empty.", param=name,
                        code="invalid_value")
    if limit is not None and len(value) > limit:
        raise WireError(f"'{name}' is longer than the maximum of {limit} characters.",
                        param=name, code="string_above_max_length")
    return value


def _choice(body: Mapping[str, Any], name: str, allowed: frozenset[str],
            default: str | None) -> str | None:
    value = body.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise WireError(
            f"Invalid value for '{name}': {value!r}. Supported values are: "
            + ", ".join(repr(v) for v in sorted(allowed)) + ".",
            param=name, code="invalid_value")
    return str(value)


def _rest(body: Mapping[str, Any], consumed: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in consumed and v is not None}


# --------------------------------------------------------------------------- images

_IMAGE_CONSUMED = frozenset({"model", "prompt", "n", "size", "response_format"})


def parse_image_request(body: Any) -> tuple[str, ImageRequest]:
    """Validate a ``/v1/images/generations`` body (``prompt`` required, ``n`` 1-10,
    ``response_format`` ``url`` / ``b64_json``); other parameters pass through in
    ``extra``."""
    body = _require_object(body)
    model = _model_or(body, "text-to-image")
    prompt = _text(body, "prompt")
    n = _integer(body, "n", 1) or 1
    if n > 10:
        raise WireError(f"Invalid value for 'n': {n} is greater than the maximum of 10.",
                        param="n", code="invalid_value")
    size = _text(body, "size", required=False)
    fmt = _choice(body, "response_format", _IMAGE_FORMATS, None)
    assert prompt is not None
    return model, ImageRequest(prompt=prompt, n=n, size=size, response_format=fmt,
                               extra=_rest(body, _IMAGE_CONSUMED))


def image_to_dict(resp: ImageResponse) -> dict[str, Any]:
    """OpenAI's ``ImagesResponse``: ``created``, ``data[]`` (``url`` or ``b64_json``, and
    ``revised_prompt`` when the upstream gave one), ``usage`` when it reported tokens."""
    data = []
    for image in resp.images:
        item: dict[str, Any] = {}
        if image.url is not None:
            item["url"] = image.url
        if image.b64_json is not None:
            item["b64_json"] = image.b64_json
        if image.revised_prompt is not None:
            item["revised_prompt"] = image.revised_prompt
        data.append(item)
    out: dict[str, Any] = {"created": resp.created or int(time.time()), "data": data}
    usage = resp.usage
    if usage.get("prompt_tokens") or usage.get("completion_tokens"):
        out["usage"] = {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0) or (
                usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)),
        }
    return out


# --------------------------------------------------------------------------- speech

_SPEECH_CONSUMED = frozenset({"model", "input", "voice", "response_format", "speed"})


def parse_speech_request(body: Any) -> tuple[str, SpeechRequest]:
    """Validate a ``/v1/audio/speech`` body: ``input`` (at most 4096 characters), ``voice``,
    ``response_format`` (``mp3`` default, ``opus``, ``aac``, ``flac``, ``wav``, ``pcm``),
    ``speed`` 0.25-4.0; other parameters (``instructions`` …) pass through in ``extra``."""
    body = _require_object(body)
    model = _model_or(body, "text-to-speech")
    text = _text(body, "input", limit=_MAX_SPEECH_CHARS)
    voice_raw = body.get("voice")
    if isinstance(voice_raw, dict):  # the newer SDKs' {"id": "voice_…"} custom voices
        voice_raw = voice_raw.get("id")
    if voice_raw is None:
        raise WireError("Missing required parameter: 'voice'.", param="voice",
                        code="missing_required_parameter")
    if not isinstance(voice_raw, str) or not voice_raw:
        raise _bad("voice", "a string", voice_raw)
    fmt = _choice(body, "response_format", frozenset(AUDIO_CONTENT_TYPES), "mp3")
    _number(body, "speed", 0.25, 4.0)
    speed = body.get("speed")
    assert text is not None and fmt is not None
    return model, SpeechRequest(input=text, voice=voice_raw, response_format=fmt,
                                speed=float(speed) if speed is not None else None,
                                extra=_rest(body, _SPEECH_CONSUMED))


# --------------------------------------------------------------------------- transcription

_TRANSCRIPT_CONSUMED = frozenset({"model", "file", "language", "prompt", "response_format",
                                  "temperature"})


def parse_transcription_request(
    fields: Mapping[str, Any], file: tuple[bytes, str, str | None] | None, *,
    translate: bool,
) -> tuple[str, TranscriptionRequest]:
    """Validate the form fields of ``/v1/audio/transcriptions`` (``translate=False``) or
    ``/v1/audio/translations``: a ``file`` part (its bytes, filename, media type), ``model``,
    and optionally ``language`` (transcriptions only), ``prompt``, ``response_format``
    (``json`` default, ``text``, ``srt``, ``vtt``, ``verbose_json``) and ``temperature``
    (0-1). Repeated fields (``timestamp_granularities[]``) arrive as lists and pass through
    in ``extra``."""
    if file is None:
        raise WireError("Missing required parameter: 'file' (send the audio as a multipart "
                        "file part).", param="file", code="missing_required_parameter")
    data, filename, content_type = file
    if not data:
        raise WireError("The uploaded 'file' is empty.", param="file", code="invalid_value")
    model = _model_or(fields, "speech-to-text")
    language = _text(fields, "language", required=False)
    if translate and language is not None:
        raise WireError("'language' is not a parameter of translations (the output is "
                        "English).", param="language", code="unknown_parameter")
    prompt = _text(fields, "prompt", required=False)
    fmt = _choice(fields, "response_format", _TRANSCRIPT_FORMATS, "json")
    temperature: float | None = None
    raw_t = fields.get("temperature")
    if raw_t is not None:
        try:
            temperature = float(raw_t)
        except (TypeError, ValueError):
            raise _bad("temperature", "a number", raw_t) from None
        if not 0.0 <= temperature <= 1.0:
            raise WireError(f"Invalid value for 'temperature': {temperature} is outside "
                            "[0, 1].", param="temperature", code="invalid_value")
    assert fmt is not None
    return model, TranscriptionRequest(
        file=data, filename=filename or "audio", content_type=content_type,
        language=language, prompt=prompt, response_format=fmt, temperature=temperature,
        translate=translate, extra=_rest(fields, _TRANSCRIPT_CONSUMED))


def transcription_body(resp: TranscriptionResponse) -> tuple[bytes | dict[str, Any], str]:
    """The answer body and its media type: ``{"text": …}`` for ``json`` (with ``usage`` when
    known), the upstream's object for ``verbose_json`` (or one built from the transcript),
    and the text itself (``text/plain``) for ``text``, ``srt`` and ``vtt``."""
    fmt = resp.response_format
    if fmt in ("text", "srt", "vtt"):
        return resp.text.encode("utf-8"), "text/plain; charset=utf-8"
    if fmt == "verbose_json":
        if resp.verbose is not None:
            return dict(resp.verbose), "application/json"
        return {"task": "transcribe", "language": resp.language or "",
                "duration": resp.duration or 0.0, "text": resp.text, "segments": []}, (
                    "application/json")
    out: dict[str, Any] = {"text": resp.text}
    usage = resp.usage
    if usage.get("prompt_tokens") or usage.get("completion_tokens"):
        out["usage"] = {"type": "tokens", "input_tokens": usage.get("prompt_tokens", 0),
                        "output_tokens": usage.get("completion_tokens", 0),
                        "total_tokens": usage.get("total_tokens", 0)}
    elif usage.get("seconds"):
        out["usage"] = {"type": "duration", "seconds": usage["seconds"]}
    return out, "application/json"


# --------------------------------------------------------------------------- moderation


def parse_moderation_request(body: Any) -> tuple[str, ModerationRequest]:
    """Validate a ``/v1/moderations`` body: ``input`` a non-empty string or array of
    strings (image parts of the multimodal form pass through as given)."""
    body = _require_object(body)
    model = _model_or(body, "content-moderation")
    value = body.get("input")
    if value is None:
        raise WireError("Missing required parameter: 'input'.", param="input",
                        code="missing_required_parameter")
    if isinstance(value, list):
        if not value:
            raise WireError("'input' must not be an empty array.", param="input",
                            code="invalid_value")
        for i, item in enumerate(value):
            if not isinstance(item, str | dict):
                raise _bad(f"input[{i}]", "a string or an input object", item)
    elif not isinstance(value, str):
        raise _bad("input", "a string or an array", value)
    return model, ModerationRequest(input=value, extra=_rest(body, frozenset({"model",
                                                                              "input"})))


def moderation_to_dict(resp: ModerationResponse) -> dict[str, Any]:
    """OpenAI's moderation object (``id``, ``model``, ``results[]``)."""
    results = []
    for r in resp.results:
        item: dict[str, Any] = {"flagged": r.flagged, "categories": dict(r.categories),
                                "category_scores": dict(r.category_scores)}
        if r.category_applied_input_types is not None:
            item["category_applied_input_types"] = dict(r.category_applied_input_types)
        results.append(item)
    return {"id": resp.id or f"modr-{int(time.time() * 1000):x}", "model": resp.model,
            "results": results}


# --------------------------------------------------------------------------- rerank


def parse_rerank_request(body: Any) -> tuple[str, RerankRequest]:
    """Validate a ``/v1/rerank`` body in the shape Cohere and Jina share: ``query``,
    ``documents`` (strings, or objects with a ``text``), ``top_n``; ``return_documents``
    (Jina; default true) decides whether results carry the document text."""
    body = _require_object(body)
    model = _model_or(body, "reranking")
    query = _text(body, "query")
    docs = body.get("documents")
    if docs is None:
        raise WireError("Missing required parameter: 'documents'.", param="documents",
                        code="missing_required_parameter")
    if not isinstance(docs, list) or not docs:
        raise WireError("'documents' must be a non-empty array.", param="documents",
                        code="invalid_value")
    texts: list[str] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            doc = doc["text"]
        if not isinstance(doc, str):
            raise WireError(
                f"Invalid type for 'documents[{i}]': expected a string or an object with "
                f"'text', but got {_type_name(doc)}.", param=f"documents[{i}]",
                code="invalid_type")
        texts.append(doc)
    top_n = _integer(body, "top_n", 1)
    ret = body.get("return_documents")
    if ret is not None and not isinstance(ret, bool):
        raise _bad("return_documents", "a boolean", ret)
    assert query is not None
    return model, RerankRequest(
        query=query, documents=texts, top_n=top_n,
        extra=_rest(body, frozenset({"model", "query", "documents", "top_n",
                                     "return_documents"})),
        metadata={"return_documents": ret is not False})


def rerank_to_dict(resp: RerankResponse, return_documents: bool = True) -> dict[str, Any]:
    """Cohere's and Jina's rerank answer: ``results[]`` best first (``index``,
    ``relevance_score``, ``document.text`` unless ``return_documents`` is false), ``model``,
    Cohere's ``meta.billed_units`` and Jina's ``usage``."""
    results = []
    for r in resp.results:
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.relevance_score}
        if return_documents:
            item["document"] = {"text": r.document}
        results.append(item)
    units = {k: v for k, v in resp.usage.items() if k in ("search_units", "total_tokens")}
    return {
        "id": resp.id or f"rerank-{int(time.time() * 1000):x}",
        "model": resp.model,
        "results": results,
        "meta": {"billed_units": {"search_units": units.get("search_units", 0)}},
        "usage": {"total_tokens": units.get("total_tokens", 0)},
    }


# --------------------------------------------------------------------------- search / scrape


def parse_search_request(body: Any) -> tuple[str, SearchRequest]:
    """Validate a ``/v1/search`` body: ``query``, ``max_results`` (1-100); other
    parameters pass through in ``extra`` to the upstream."""
    body = _require_object(body)
    model = _model_or(body, "web-search")
    query = _text(body, "query", limit=2000)
    limit = _integer(body, "max_results", 1)
    if limit is not None and limit > 100:
        raise WireError(f"Invalid value for 'max_results': {limit} is greater than the "
                        "maximum of 100.", param="max_results", code="invalid_value")
    assert query is not None
    return model, SearchRequest(query=query, max_results=limit,
                                extra=_rest(body, frozenset({"model", "query",
                                                             "max_results"})))


def search_to_dict(resp: SearchResponse) -> dict[str, Any]:
    """The ``/v1/search`` answer: ``object: "search"``, ``query``, ``answer``, ``results[]``
    (``title``, ``url``, ``content``, ``score``, ``published_date``), ``model``,
    ``usage``."""
    return {
        "object": "search",
        "query": resp.query,
        "answer": resp.answer,
        "results": [
            {"title": r.title, "url": r.url, "content": r.content, "score": r.score,
             "published_date": r.published_date}
            for r in resp.results
        ],
        "model": resp.model,
        "usage": dict(resp.usage),
    }


def parse_scrape_request(body: Any) -> tuple[str, ScrapeRequest]:
    """Validate a ``/v1/scrape`` body: an ``http(s)`` ``url``."""
    body = _require_object(body)
    model = _model_or(body, "document-parsing")
    url = _text(body, "url", limit=8192)
    assert url is not None
    if not url.startswith(("http://", "https://")):
        raise WireError("Invalid value for 'url': must be an http:// or https:// URL.",
                        param="url", code="invalid_value")
    return model, ScrapeRequest(url=url, extra=_rest(body, frozenset({"model", "url"})))


def scrape_to_dict(resp: ScrapeResponse) -> dict[str, Any]:
    """The ``/v1/scrape`` answer: ``object: "page"``, ``url``, ``title``, ``content``
    (Markdown), ``page`` (what else the upstream reported), ``model``, ``usage``."""
    return {"object": "page", "url": resp.url, "title": resp.title, "content": resp.content,
            "page": dict(resp.page), "model": resp.model, "usage": dict(resp.usage)}
