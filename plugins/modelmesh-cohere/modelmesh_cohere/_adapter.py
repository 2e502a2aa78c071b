"""The Cohere v2 wire-protocol adapter (``cohere.nlp.v1``).

Endpoints: ``POST /v2/chat`` (sync and streaming), ``POST /v2/embed``, ``POST /v2/rerank``,
``GET /v1/models``; ``Authorization: Bearer <key>``.

Streaming: with ``"stream": true`` and ``Accept: text/event-stream`` Cohere answers an SSE
stream whose events are named after their ``type`` (``event: content-delta`` then
``data: {"type": "content-delta", …}``); without that ``Accept`` the same objects come one per
line. Both framings are read. ``message-end`` is the terminal event (it carries
``finish_reason`` and ``usage``); a stream that ends before it raises
:class:`~modelmesh_core.errors.StreamInterruptedError`.

Hot-path rules, as in the OpenAI adapter: URLs, headers and ``ClientTimeout`` objects are
built once; JSON goes through the context's codec; nothing is logged on success; timeouts are
``asyncio.timeout_at`` deadlines around single awaits (never across a ``yield``), so the phase
that fired (``connect`` / ``first_byte`` / ``idle`` / ``total``) is always known.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from loguru import logger
from yarl import URL

from modelmesh_core.deadlines import ReadDeadline
from modelmesh_core.errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    ProviderError,
    RateLimitError,
    StreamInterruptedError,
)
from modelmesh_core.http import (
    STREAM_READ_ERRORS,
    HTTPAdapter,
    end_stream,
    header_int,
    parse_retry_after,
)
from modelmesh_core.redaction import redact, register_secret
from modelmesh_core.types import (
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Model,
    ProviderContext,
    RateLimitInfo,
    Timeouts,
    ToolCall,
)

from ._config import CohereConfig
from ._translate import (
    FAILED_FINISH,
    FINISH,
    CallerError,
    chat_body,
    ends_with_prefill,
    parse_tool_calls,
    usage_of,
)
from ._types import RerankRequest, RerankResponse, RerankResult

__all__ = ["CohereAdapter", "parse_rate_limit"]

logger.disable("modelmesh_cohere")

_MAX_EMBED_TEXTS = 96  # Cohere's documented maximum number of texts per embed call
_KEPT_HEADERS = (
    "retry-after",
    "x-trial-endpoint-call-limit",
    "x-trial-endpoint-call-remaining",
    "x-endpoint-monthly-call-limit",
)
_CONTEXT_PHRASES = ("too many tokens", "context length", "context window", "maximum context")


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """Cohere's trial-key call counters (``x-trial-endpoint-call-*``, per minute) and
    ``retry-after`` as a ``RateLimitInfo``; None when the answer carries none of them."""
    limit = headers.get("x-trial-endpoint-call-limit")
    remaining = headers.get("x-trial-endpoint-call-remaining")
    retry = headers.get("retry-after")
    if limit is None and remaining is None and retry is None:
        return None
    return RateLimitInfo(
        limit_requests=header_int(limit),
        remaining_requests=header_int(remaining),
        retry_after=parse_retry_after(headers) if retry is not None else None,
    )


def _kept(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in _KEPT_HEADERS if name in headers}


class CohereAdapter(HTTPAdapter):
    """``ProviderAdapter`` for Cohere's v2 API, plus :meth:`rerank`.

    Built by the connector's factory as ``CohereAdapter(context, config)``; it holds no session
    of its own and calls ``context.session()`` at request time.
    """

    def __init__(self, context: ProviderContext, config: CohereConfig | None) -> None:
        config = config if config is not None else CohereConfig()
        self.config = config
        super().__init__(context, base_url=config.resolve_base_url(), api="Cohere's v2 API")
        key = config.resolve_key()
        if key:
            register_secret(key)
        headers: dict[str, str] = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if config.client_name:
            headers["X-Client-Name"] = config.client_name
        headers.update(config.headers)
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._chat_url = URL(f"{self.base_url}/v2/chat")
        self._embed_url = URL(f"{self.base_url}/v2/embed")
        self._rerank_url = URL(f"{self.base_url}/v2/rerank")
        self._models_url = URL(f"{self.base_url}/v1/models").with_query(page_size=1000)

    def __repr__(self) -> str:
        return f"CohereAdapter({self.name!r})"

    # ------------------------------------------------------------------ errors

    def _caller_error(self, exc: CallerError, model_id: str) -> ProviderError:
        return ProviderError(
            f"the request cannot be sent to Cohere: {exc}",
            provider_id=self.name,
            model_id=model_id,
            status=400,
            retryable=False,
        )

    def error_from(
        self,
        status: int | None,
        raw: bytes,
        headers: Mapping[str, str],
        model_id: str | None,
        *,
        prefill: bool = False,
    ) -> ProviderError:
        """Translate a Cohere error answer (``{"id", "message"}``) into the ModelMesh tree."""
        message = ""
        try:
            data = self._loads(raw) if raw else None
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            message = data["message"]
        elif raw:
            message = raw[:300].decode("utf-8", "replace").strip()
        text = redact(message) if message else "(no error message)"
        kept = _kept(headers)
        common: dict[str, Any] = {
            "provider_id": self.name,
            "model_id": model_id,
            "status": status,
            "headers": kept,
            "rate_limit": parse_rate_limit(kept) if kept else None,
        }
        lowered = text.lower()
        if status in (401, 403):
            return AuthenticationError(
                f"{text}; check the API key of provider {self.name!r} (CO_API_KEY)",
                retryable=False,
                **common,
            )
        if status == 402:
            # Payment required: the account cannot be billed; nothing recovers it soon.
            return RateLimitError(
                f"{text}; the Cohere account needs a payment method or a higher limit",
                retry_after=parse_retry_after(kept),
                quota=True,
                **common,
            )
        if status == 429:
            monthly = "per month" in lowered or "monthly" in lowered
            return RateLimitError(text, retry_after=parse_retry_after(kept), quota=monthly,
                                  **common)
        if status == 498:
            return ContentFilterError(
                f"{text} (the request or the answer contains a blocked token)",
                retryable=False,
                **common,
            )
        if status in (400, 422) and any(p in lowered for p in _CONTEXT_PHRASES):
            return ContextLengthError(
                f"{text}; shorten the prompt or route to a model with a larger context window",
                retryable=False,
                **common,
            )
        if status == 404:
            return ProviderError(
                f"{text}; check the model id (Cohere model names, e.g. command-a-03-2025)",
                retryable=False,
                **common,
            )
        if status == 400 and prefill:
            return ProviderError(
                f"{text} (the request ends with an assistant message: Cohere rejected the "
                "assistant prefill)",
                retryable=False,
                **common,
            )
        retryable = status is None or status in (408, 409, 425, 499) or (
            status >= 500 and status != 501
        )
        return ProviderError(text, retryable=retryable, **common)

    def _failed_finish(
        self, reason: str, detail: Any, model_id: str, *, interrupted: bool
    ) -> ProviderError:
        kind = StreamInterruptedError if interrupted else ProviderError
        extra = f": {redact(str(detail))}" if detail else ""
        if reason == "ERROR_TOXIC":
            return ContentFilterError(
                f"Cohere stopped the generation on content-policy grounds{extra}",
                provider_id=self.name,
                model_id=model_id,
                retryable=False,
            )
        return kind(
            f"the generation failed upstream (finish_reason {reason}){extra}",
            provider_id=self.name,
            model_id=model_id,
            retryable=True,
        )

    # ------------------------------------------------------------------ transport

    async def _send(
        self,
        method: str,
        url: URL,
        data: bytes | None,
        timeouts: Timeouts,
        model_id: str | None,
        start: float,
        deadline: float | None,
        stream: bool = False,
        prefill: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send one request; return the response when its status is below 400."""
        return await self.send_checked(
            method, url, data, self._stream_headers if stream else self._headers, timeouts,
            model_id, start, deadline,
            error_from=self.error_from, prefill=prefill)

    async def _read_json(
        self,
        resp: aiohttp.ClientResponse,
        timeouts: Timeouts,
        model_id: str | None,
        deadline: float | None,
    ) -> Any:
        """Read and decode a JSON object (bounded by idle / total); releases the response."""
        payload = await self.json_body(resp, timeouts, model_id, deadline)
        if not isinstance(payload, dict):
            raise self.bad_payload("the answer is not a JSON object", model_id)
        return payload

    # ------------------------------------------------------------------ chat

    def _body(self, model: Model, request: CompletionRequest, stream: bool) -> bytes:
        try:
            return self._dumps(chat_body(model.upstream_id, request, stream))
        except CallerError as exc:
            raise self._caller_error(exc, model.id) from None

    async def complete(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> CompletionResponse:
        """Send one non-streaming ``POST /v2/chat``."""
        data = self._body(model, request, stream=False)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send(
            "POST",
            self._chat_url,
            data,
            timeouts,
            model.id,
            start,
            deadline,
            prefill=ends_with_prefill(request),
        )
        payload = await self._read_json(resp, timeouts, model.id, deadline)
        message = payload.get("message")
        reason = payload.get("finish_reason")
        if not isinstance(message, dict) or not isinstance(reason, str):
            raise self.bad_payload("the answer has no message / finish_reason", model.id)
        if reason in FAILED_FINISH:
            raise self._failed_finish(reason, payload.get("error"), model.id, interrupted=False)
        texts: list[str] = []
        thinking: list[str] = []
        for item in message.get("content") or ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text":
                texts.append(item.get("text") or "")
            elif item.get("type") == "thinking":
                thinking.append(item.get("thinking") or "")
        metadata: dict[str, Any] = {}
        rate = parse_rate_limit(resp.headers)
        if rate is not None:
            metadata["rate_limit"] = rate
        if message.get("tool_plan"):
            metadata["tool_plan"] = message["tool_plan"]
        if thinking:
            metadata["thinking"] = "".join(thinking)
        if message.get("citations"):
            metadata["citations"] = message["citations"]
        return CompletionResponse(
            content="".join(texts),
            model=model.id,
            provider=self.name,
            usage=usage_of(payload.get("usage")),
            latency_ms=(loop.time() - start) * 1000.0,
            metadata=metadata,
            id=str(payload.get("id") or ""),
            created=int(time.time()),
            finish_reason=FINISH.get(reason, reason.lower()),
            tool_calls=parse_tool_calls(message.get("tool_calls")),
            role="assistant",
            upstream_model=model.upstream_id,
        )

    async def stream(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> AsyncIterator[CompletionResponse]:
        """Send one streaming ``POST /v2/chat``; yield one chunk per content-bearing event.

        Returns only after ``message-end``; any other ending raises.
        """
        data = self._body(model, request, stream=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        model_id = model.id
        resp = await self._send(
            "POST",
            self._chat_url,
            data,
            timeouts,
            model_id,
            start,
            deadline,
            stream=True,
            prefill=ends_with_prefill(request),
        )
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype and "json" not in ctype:
            resp.close()
            raise self.bad_payload(
                f"expected an event stream, got content type {ctype or 'none'!r}", model_id
            )
        rate = parse_rate_limit(resp.headers)
        content = resp.content
        loads = self._loads
        readline = content.readline
        # One lazily re-armed timer for the three deadlines (modelmesh_core.deadlines).
        watch = ReadDeadline(content, start=loop.time(), first_byte=timeouts.first_byte,
                             idle=timeouts.idle, total=deadline)
        pending: list[bytes] = []
        events = 0
        delivered = 0
        finished = False
        message_id = ""
        upstream = model.upstream_id
        name = self.name
        # Tool calls get OpenAI indexes in the order they start.
        tool_index: dict[int, int] = {}
        try:
            while True:
                watch.reading()
                try:
                    line = await readline()
                except STREAM_READ_ERRORS as exc:
                    raise self.stream_failure(exc, model_id, timeouts) from None
                watch.read()
                if not line:
                    raise StreamInterruptedError(
                        f"the stream ended without its message-end event after {events} "
                        "events; the answer is incomplete",
                        provider_id=name,
                        model_id=model_id,
                        status=resp.status,
                        retryable=True,
                    )
                line = line.rstrip(b"\r\n")
                if line:
                    if line[:5] == b"data:":
                        pending.append(line[6:] if line[5:6] == b" " else line[5:])
                        continue
                    if line[:1] != b"{":
                        continue  # "event:", "id:", "retry:" and ":" comments carry nothing
                    raw = line  # newline-delimited JSON framing: one event per line
                elif pending:
                    raw = pending[0] if len(pending) == 1 else b"\n".join(pending)
                    pending.clear()
                else:
                    continue
                if raw == b"[DONE]":
                    continue
                try:
                    event = loads(raw)
                    kind = event["type"]
                except (ValueError, KeyError, TypeError):
                    raise ProviderError(
                        f"malformed stream event after {events} events (not a typed JSON "
                        f"object: {redact(raw[:60].decode('utf-8', 'replace'))!r})",
                        provider_id=name,
                        model_id=model_id,
                        status=resp.status,
                        retryable=True,
                    ) from None
                if not events:
                    watch.start()
                events += 1
                if kind == "content-delta":
                    try:
                        text = event["delta"]["message"]["content"].get("text")
                    except (KeyError, TypeError, AttributeError):
                        raise self.bad_payload(
                            "a content-delta event has no delta.message.content", model_id
                        ) from None
                    if text is None:
                        continue  # a thinking delta: not part of the answer
                    delivered += 1
                    yield CompletionResponse(
                        content=text,
                        model=model_id,
                        provider=name,
                        latency_ms=(loop.time() - start) * 1000.0,
                        metadata={},
                        id=message_id,
                        role=None,
                        upstream_model=upstream,
                    )
                elif kind == "tool-call-delta" or kind == "tool-call-start":
                    call = self._tool_delta(event, kind, tool_index, model_id)
                    delivered += 1
                    yield CompletionResponse(
                        content="",
                        model=model_id,
                        provider=name,
                        latency_ms=(loop.time() - start) * 1000.0,
                        metadata={},
                        id=message_id,
                        tool_calls=(call,),
                        role=None,
                        upstream_model=upstream,
                    )
                elif kind == "message-start":
                    message_id = str(event.get("id") or "")
                    yield CompletionResponse(
                        content="",
                        model=model_id,
                        provider=name,
                        latency_ms=(loop.time() - start) * 1000.0,
                        metadata={"rate_limit": rate} if rate is not None else {},
                        id=message_id,
                        role="assistant",
                        upstream_model=upstream,
                    )
                elif kind == "message-end":
                    delta = event.get("delta")
                    delta = delta if isinstance(delta, dict) else {}
                    reason = delta.get("finish_reason")
                    if not isinstance(reason, str):
                        raise self.bad_payload("message-end carries no finish_reason", model_id)
                    if reason in FAILED_FINISH:
                        raise self._failed_finish(
                            reason, delta.get("error"), model_id, interrupted=delivered > 0
                        )
                    finished = True
                    yield CompletionResponse(
                        content="",
                        model=model_id,
                        provider=name,
                        usage=usage_of(delta.get("usage")),
                        latency_ms=(loop.time() - start) * 1000.0,
                        metadata={},
                        id=message_id,
                        finish_reason=FINISH.get(reason, reason.lower()),
                        role=None,
                        upstream_model=upstream,
                    )
                    return
                # content-start / -end, tool-plan-delta, tool-call-end, citation-*, debug and
                # event types added later carry nothing an OpenAI chunk has.
        finally:
            watch.close()
            await end_stream(resp, finished)

    def _tool_delta(
        self, event: dict[str, Any], kind: str, tool_index: dict[int, int], model_id: str
    ) -> ToolCall:
        try:
            call = event["delta"]["message"]["tool_calls"]
            function = call.get("function") or {}
        except (KeyError, TypeError, AttributeError):
            raise self.bad_payload(
                f"a {kind} event has no delta.message.tool_calls", model_id
            ) from None
        upstream_index = event.get("index")
        if isinstance(upstream_index, int):
            key = upstream_index
        else:  # no index: a start opens the next call, a delta continues the last one
            key = len(tool_index) if kind == "tool-call-start" else len(tool_index) - 1
        if kind == "tool-call-start":
            index = tool_index.setdefault(key, len(tool_index))
            return ToolCall(
                id=call.get("id"),
                name=function.get("name"),
                arguments=function.get("arguments") or "",
                index=index,
                type=call.get("type") or "function",
            )
        found = tool_index.get(key)
        if found is None:
            raise self.bad_payload(
                "a tool-call-delta arrived before its tool-call-start", model_id
            )
        return ToolCall(
            id=None, name=None, arguments=function.get("arguments") or "", index=found
        )

    # ------------------------------------------------------------------ embed / rerank / models

    async def embed(
        self, model: Model, request: EmbeddingRequest, timeouts: Timeouts
    ) -> EmbeddingResponse:
        """``POST /v2/embed`` with ``embedding_types: ["float"]`` (batches of 96 texts).

        ``extra`` may carry ``input_type`` (else ``config.embed_input_type``), ``truncate``,
        ``max_tokens`` and ``dimensions`` / ``output_dimension``.
        """
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        extra = request.extra
        base: dict[str, Any] = {
            "model": model.upstream_id,
            "input_type": extra.get("input_type") or self.config.embed_input_type,
            "embedding_types": ["float"],
        }
        dimension = extra.get("output_dimension") or extra.get("dimensions")
        if dimension is not None:
            base["output_dimension"] = dimension
        for key in ("truncate", "max_tokens", "priority"):
            if key in extra:
                base[key] = extra[key]
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        vectors: list[list[float]] = []
        tokens = 0
        for offset in range(0, max(len(texts), 1), _MAX_EMBED_TEXTS):
            body = {**base, "texts": texts[offset : offset + _MAX_EMBED_TEXTS]}
            resp = await self._send(
                "POST", self._embed_url, self._dumps(body), timeouts, model.id, start, deadline
            )
            payload = await self._read_json(resp, timeouts, model.id, deadline)
            try:
                floats = payload["embeddings"]["float"]
                batch = [[float(v) for v in vector] for vector in floats]
            except (KeyError, TypeError, ValueError):
                raise self.bad_payload("the answer has no embeddings.float", model.id) from None
            if len(batch) != len(body["texts"]):
                raise self.bad_payload(
                    f"asked for {len(body['texts'])} embeddings, got {len(batch)}", model.id
                )
            vectors.extend(batch)
            meta = payload.get("meta")
            billed = meta.get("billed_units") if isinstance(meta, dict) else None
            tokens += (
                int(billed.get("input_tokens") or 0) if isinstance(billed, dict) else 0
            )
        return EmbeddingResponse(
            data=vectors,
            model=model.id,
            provider=self.name,
            usage={"prompt_tokens": tokens, "total_tokens": tokens},
            latency_ms=(loop.time() - start) * 1000.0,
            upstream_model=model.upstream_id,
        )

    async def rerank(
        self, model: Model, request: RerankRequest, timeouts: Timeouts
    ) -> RerankResponse:
        """``POST /v2/rerank``: ``request.documents`` ordered by relevance to the query
        (the core's rerank operation).

        Returns at most ``top_n`` results (all when None), best first; ``extra`` may carry
        ``max_tokens_per_doc``.
        """
        documents = request.documents
        query = request.query
        top_n = request.top_n
        body: dict[str, Any] = {
            "model": model.upstream_id,
            "query": query,
            "documents": list(documents),
        }
        if top_n is not None:
            body["top_n"] = top_n
        if "max_tokens_per_doc" in request.extra:
            body["max_tokens_per_doc"] = request.extra["max_tokens_per_doc"]
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send(
            "POST", self._rerank_url, self._dumps(body), timeouts, model.id, start, deadline
        )
        payload = await self._read_json(resp, timeouts, model.id, deadline)
        try:
            results = tuple(
                RerankResult(
                    index=int(item["index"]),
                    relevance_score=float(item["relevance_score"]),
                    document=documents[int(item["index"])],
                )
                for item in payload["results"]
            )
        except (KeyError, TypeError, ValueError, IndexError):
            raise self.bad_payload(
                "the answer has no results[].index / relevance_score within the documents",
                model.id,
            ) from None
        meta = payload.get("meta")
        billed = meta.get("billed_units") if isinstance(meta, dict) else None
        units = int(billed.get("search_units") or 0) if isinstance(billed, dict) else 0
        return RerankResponse(
            results=results,
            model=model.id,
            provider=self.name,
            usage={"search_units": units},
            latency_ms=(loop.time() - start) * 1000.0,
            id=str(payload.get("id") or ""),
        )

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """The account's model names (``GET /v1/models``, first 1000)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send("GET", self._models_url, None, timeouts, None, start, deadline)
        payload = await self._read_json(resp, timeouts, None, deadline)
        try:
            return [str(item["name"]) for item in payload["models"]]
        except (KeyError, TypeError):
            raise self.bad_payload("the model list has no models[].name", None) from None

    async def close(self) -> None:
        """Nothing to release: the shared session belongs to the mesh."""
