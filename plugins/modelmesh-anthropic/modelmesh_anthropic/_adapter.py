"""The ``anthropic.claude.v1`` adapter: Anthropic's Messages API over the mesh's session.

Hot-path rules as in the OpenAI adapter: URLs, header sets and ``aiohttp.ClientTimeout``
objects are built once; JSON goes through the context's codec; nothing is logged or formatted
on success. Timeouts: ``connect`` is aiohttp's ``sock_connect``; ``first_byte`` bounds the
wait for the response headers and, when streaming, for the first event; ``idle`` the body
read and each gap between stream lines; ``total`` the whole call. All but ``connect`` are
``asyncio.timeout_at`` deadlines around single awaits (never across a ``yield``), so the
phase that fired is reported in ``ProviderTimeoutError.phase``.

Stream contract: ``stream()`` returns normally only after ``message_stop`` (or, when that
event is missing, after a ``message_delta`` carrying the stop reason and usage, then EOF);
any other ending raises ``StreamInterruptedError(retryable=True)``; an in-stream ``error``
event raises the typed error (``overloaded_error`` → retryable ``ProviderError`` 529).
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
from modelmesh_core.errors import ProviderError, StreamInterruptedError
from modelmesh_core.http import STREAM_READ_ERRORS, HTTPAdapter, SSEFramer, end_stream
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

from ._batches import BatchesMixin
from ._config import AnthropicConfig
from ._errors import make_error, parse_rate_limit
from ._translate import (
    FINISH_REASONS,
    Prefill,
    TranslationError,
    build_body,
    parse_message,
    usage_from,
)

__all__ = ["AnthropicAdapter"]

logger.disable("modelmesh_anthropic")

_NO_CALLS: tuple[ToolCall, ...] = ()


class AnthropicAdapter(BatchesMixin, HTTPAdapter):
    """``ProviderAdapter`` for Anthropic's Messages, Models and Message Batches APIs.

    Built by the connector's factory as ``AnthropicAdapter(context, config)``; it holds no
    session of its own and calls ``context.session()`` at request time.
    """

    def __init__(self, context: ProviderContext, config: AnthropicConfig | None) -> None:
        config = config if config is not None else AnthropicConfig()
        self.config = config
        super().__init__(context, base_url=config.resolve_base_url(),
                         api="Anthropic's Messages API")
        key = config.resolve_key()
        if key:
            register_secret(key)
        headers: dict[str, str] = {
            "content-type": "application/json",
            "accept": "application/json",
            "anthropic-version": config.anthropic_version,
        }
        if config.beta:
            headers["anthropic-beta"] = ",".join(config.beta)
        headers.update(config.headers)
        if key:
            headers["x-api-key"] = key
        self._headers = headers
        self._stream_headers = {**headers, "accept": "text/event-stream"}
        self._messages_url = URL(f"{self.base_url}/v1/messages")
        self._models_url = URL(f"{self.base_url}/v1/models")
        self._batches_url = URL(f"{self.base_url}/v1/messages/batches")

    def __repr__(self) -> str:
        return f"AnthropicAdapter({self.name!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ pieces

    def _body(
        self, model: Model, request: CompletionRequest, stream: bool
    ) -> tuple[dict[str, Any], Prefill | None]:
        try:
            return build_body(
                model.upstream_id,
                request,
                default_max_tokens=self.config.default_max_tokens,
                max_output_tokens=model.max_output_tokens,
                stream=stream,
                loads=self._loads,
            )
        except TranslationError as exc:
            raise ProviderError(
                f"the request cannot be sent to Claude: {exc}",
                provider_id=self.name,
                model_id=model.id,
                status=400,
                retryable=False,
            ) from None

    def error_from(
        self,
        status: int | None,
        raw: bytes | Mapping[str, Any],
        headers: Mapping[str, str],
        model_id: str | None,
        prefill: bool = False,
    ) -> ProviderError:
        """Translate an Anthropic error answer or in-stream error event."""
        return make_error(
            status,
            raw,
            headers,
            provider=self.name,
            model_id=model_id,
            loads=self._loads,
            prefill=prefill,
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
        """Send; return a response with status < 400 (its headers received)."""
        return await self.send_checked(
            method, url, data, self._stream_headers if stream else self._headers, timeouts,
            model_id, start, deadline,
            error_from=self.error_from, prefill=prefill)

    # ------------------------------------------------------------------ ProviderAdapter

    async def complete(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> CompletionResponse:
        """Send one non-streaming ``POST /v1/messages``."""
        body, prefill = self._body(model, request, stream=False)
        data = self._dumps(body)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send(
            "POST",
            self._messages_url,
            data,
            timeouts,
            model.id,
            start,
            deadline,
            prefill=prefill is not None,
        )
        payload = await self.json_body(resp, timeouts, model.id, deadline)
        try:
            text, calls, finish = parse_message(payload, self._dumps)
        except (KeyError, TypeError, AttributeError):
            if isinstance(payload, dict) and payload.get("type") == "error":
                raise self.error_from(None, payload, resp.headers, model.id) from None
            raise self.bad_payload("the answer is not a message object", model.id) from None
        if prefill is not None:
            text = prefill.take(text)
        rate = parse_rate_limit(resp.headers)
        metadata: dict[str, Any] = {"rate_limit": rate} if rate is not None else {}
        sequence = payload.get("stop_sequence")
        if payload.get("stop_reason") == "stop_sequence" and isinstance(sequence, str):
            metadata["stop_sequence"] = sequence  # the OpenAI shape cannot say which one
        return CompletionResponse(
            content=text,
            model=model.id,
            provider=self.name,
            usage=usage_from(payload.get("usage")),
            latency_ms=(loop.time() - start) * 1000.0,
            metadata=metadata,
            id=payload.get("id") or "",
            created=int(time.time()),
            finish_reason=finish,
            tool_calls=calls,
            role="assistant",
            upstream_model=payload.get("model") or "",
        )

    async def stream(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> AsyncIterator[CompletionResponse]:
        """Send one streaming ``POST /v1/messages``; yield OpenAI-shaped delta chunks."""
        body, prefill = self._body(model, request, stream=True)
        data = self._dumps(body)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        model_id = model.id
        resp = await self._send(
            "POST",
            self._messages_url,
            data,
            timeouts,
            model_id,
            start,
            deadline,
            stream=True,
            prefill=prefill is not None,
        )
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            raw = await self.read_raw(resp, timeouts, model_id, deadline)
            raise self.bad_payload(
                f"expected an event stream, got content type {ctype or 'none'!r} "
                f"({len(raw)} bytes)",
                model_id,
            )
        state = _StreamState(self, model_id, parse_rate_limit(resp.headers), prefill, start, loop)
        content = resp.content
        readline = content.readline
        # One lazily re-armed timer for the three deadlines (modelmesh_core.deadlines).
        watch = ReadDeadline(content, start=loop.time(), first_byte=timeouts.first_byte,
                             idle=timeouts.idle, total=deadline)
        sse = SSEFramer()
        feed = sse.feed
        events = 0
        finished = False
        try:
            while True:
                watch.reading()
                try:
                    line = await readline()
                except STREAM_READ_ERRORS as exc:
                    raise self.stream_failure(exc, model_id, timeouts) from None
                watch.read()
                if not line:
                    if state.stop_reason is not None and state.usage_seen and not sse.partial:
                        finished = True  # stop reason and usage delivered; only message_stop lost
                        break
                    raise StreamInterruptedError(
                        f"the stream ended without message_stop after {state.delivered} chunks; "
                        "the answer is incomplete",
                        provider_id=self.name,
                        model_id=model_id,
                        status=resp.status,
                        retryable=True,
                    )
                event = feed(line)  # "event:" repeats the data's "type"
                if event is None:
                    continue
                if not events:
                    watch.start()
                events += 1
                try:
                    obj = self._loads(event)
                except ValueError:
                    raise ProviderError(
                        f"malformed stream event after {state.delivered} chunks (not JSON: "
                        f"{redact(event[:60].decode('utf-8', 'replace'))!r})",
                        provider_id=self.name,
                        model_id=model_id,
                        status=resp.status,
                        retryable=True,
                    ) from None
                if not isinstance(obj, dict):
                    raise self.bad_payload("a stream event is not a JSON object", model_id)
                kind = obj.get("type")
                if kind == "message_stop":
                    finished = True
                    break
                if kind == "error":
                    raise self.error_from(None, obj, resp.headers, model_id, prefill is not None)
                chunk = state.translate(kind, obj)
                if chunk is not None:
                    yield chunk
        finally:
            watch.close()
            await end_stream(resp, finished)

    async def embed(
        self, model: Model, request: EmbeddingRequest, timeouts: Timeouts
    ) -> EmbeddingResponse:
        """Anthropic has no embeddings endpoint: always a non-retryable ``ProviderError``."""
        raise ProviderError(
            "Anthropic offers no embeddings API; route embeddings to another provider",
            provider_id=self.name,
            model_id=model.id,
            status=404,
            retryable=False,
        )

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """List the model ids (``GET /v1/models``, following ``has_more`` / ``last_id``)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        names: list[str] = []
        url = self._models_url.with_query(limit=1000)
        while True:
            resp = await self._send("GET", url, None, timeouts, None, start, deadline)
            payload = await self.json_body(resp, timeouts, None, deadline)
            try:
                names.extend(str(item["id"]) for item in payload["data"])
                more = bool(payload.get("has_more"))
                last = payload.get("last_id")
            except (KeyError, TypeError):
                raise self.bad_payload("the model list has no data[].id", None) from None
            if not more or not last:
                return names
            url = self._models_url.with_query(limit=1000, after_id=str(last))

    async def close(self) -> None:
        """Nothing to release: the shared session belongs to the mesh."""
        self._client_timeouts.clear()


class _StreamState:
    """Translates one stream's Anthropic events into OpenAI-shaped delta chunks."""

    __slots__ = (
        "adapter",
        "created",
        "delivered",
        "id",
        "loop",
        "model_id",
        "prefill",
        "rate",
        "start",
        "start_usage",
        "stop_reason",
        "tools",
        "upstream_model",
        "usage_seen",
    )

    def __init__(
        self,
        adapter: AnthropicAdapter,
        model_id: str,
        rate: RateLimitInfo | None,
        prefill: Prefill | None,
        start: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.adapter = adapter
        self.model_id = model_id
        self.rate = rate
        self.prefill = prefill
        self.start = start
        self.loop = loop
        self.id = ""
        self.upstream_model = ""
        self.created = int(time.time())
        self.start_usage: dict[str, Any] = {}
        self.tools: dict[int, int] = {}
        self.stop_reason: str | None = None
        self.usage_seen = False
        self.delivered = 0

    def _chunk(
        self,
        content: str = "",
        *,
        calls: tuple[ToolCall, ...] = _NO_CALLS,
        finish: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> CompletionResponse:
        rate = self.rate
        if rate is not None:
            self.rate = None  # the first chunk carries it, as the OpenAI adapter does
        role = "assistant" if not self.delivered else None
        self.delivered += 1
        return CompletionResponse(
            content=content,
            model=self.model_id,
            provider=self.adapter.name,
            usage=usage or {},
            latency_ms=(self.loop.time() - self.start) * 1000.0,
            metadata={"rate_limit": rate} if rate is not None else {},
            id=self.id,
            created=self.created,
            finish_reason=finish,
            tool_calls=calls,
            role=role,
            upstream_model=self.upstream_model,
        )

    def translate(self, kind: Any, obj: dict[str, Any]) -> CompletionResponse | None:
        """The chunk for one event, or None for events that carry nothing for the caller.

        The first chunk has ``role="assistant"`` and the rate-limit metadata.
        """
        try:
            if kind == "content_block_delta":
                delta = obj["delta"]
                dtype = delta["type"]
                if dtype == "text_delta":
                    text = delta["text"]
                    if self.prefill is not None:
                        text = self.prefill.take(text)
                    return self._chunk(text) if text else None
                if dtype == "input_json_delta":
                    part = delta["partial_json"]
                    if not part:
                        return None
                    call = ToolCall(id=None, name=None, arguments=part,
                                    index=self.tools[obj["index"]])
                    return self._chunk(calls=(call,))
                return None  # thinking, signature and citation deltas are not relayed
            if kind == "content_block_start":
                block = obj["content_block"]
                btype = block["type"]
                if btype == "tool_use":
                    index = len(self.tools)
                    self.tools[obj["index"]] = index
                    call = ToolCall(id=block["id"], name=block["name"], arguments="", index=index)
                    return self._chunk(calls=(call,))
                if btype == "text" and block.get("text"):
                    text = block["text"]
                    if self.prefill is not None:
                        text = self.prefill.take(text)
                    return self._chunk(text) if text else None
                return None
            if kind == "message_start":
                message = obj["message"]
                self.id = message.get("id") or ""
                self.upstream_model = message.get("model") or ""
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self.start_usage = usage
                # No chunk yet: the role rides on the first chunk with content, so an error
                # event right after message_start (overload) comes before anything is
                # delivered and the router can still fail over invisibly.
                return None
            if kind == "message_delta":
                delta = obj.get("delta") or {}
                stop = delta.get("stop_reason")
                usage = obj.get("usage")
                merged = dict(self.start_usage)
                if isinstance(usage, dict):
                    merged.update((k, v) for k, v in usage.items() if v is not None)
                    self.usage_seen = True
                finish = None
                if stop:
                    self.stop_reason = stop
                    finish = FINISH_REASONS.get(stop, stop)
                chunk = self._chunk(finish=finish, usage=usage_from(merged))
                sequence = delta.get("stop_sequence")
                if stop == "stop_sequence" and isinstance(sequence, str):
                    chunk.metadata["stop_sequence"] = sequence
                return chunk
        except (KeyError, TypeError, AttributeError):
            raise self.adapter.bad_payload(
                f"a {kind!r} stream event lacks the fields Anthropic documents", self.model_id
            ) from None
        return None  # ping, content_block_stop, unknown future events
