"""The Gemini API adapter (``google.gemini.v1``): generateContent, streamGenerateContent,
embedContent / batchEmbedContents and the model list, over the mesh's shared session.

Hot-path rules (a benchmark measures the per-chunk cost): URLs, header sets and
``aiohttp.ClientTimeout`` objects are built once and cached; JSON goes through the context's
codec (orjson); nothing is logged or formatted on success.

Timeouts work as in the OpenAI adapter: ``connect`` is aiohttp's ``sock_connect``;
``first_byte`` bounds the wait for the response headers and, when streaming, for the first
event; ``idle`` bounds each body read and each gap between stream lines; ``total`` bounds the
whole call. They are ``asyncio.timeout_at`` deadlines around single awaits, never across a
``yield``, so the phase that fired is known (``ProviderTimeoutError.phase``).

Stream contract: Gemini sends no terminator. The stream is complete when a candidate with a
``finishReason`` arrived and the body ended; the adapter then yields one last chunk carrying
the OpenAI ``finish_reason`` and the usage, and returns. A body that ends without any
``finishReason`` raises ``StreamInterruptedError``; an in-band ``{"error": …}`` event raises
the typed error it describes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from loguru import logger
from yarl import URL

from modelmesh_core.deadlines import ReadDeadline
from modelmesh_core.errors import ProviderError, StreamInterruptedError
from modelmesh_core.http import STREAM_READ_ERRORS, HTTPAdapter, end_stream
from modelmesh_core.redaction import redact, register_secret
from modelmesh_core.types import (
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Model,
    ProviderContext,
    Timeouts,
    ToolCall,
)

from ._config import DEFAULT_BASE_URL, GeminiConfig, resolve_key
from ._stream import AnswerState
from ._translate import RequestError, build_body, error_from_body

__all__ = ["GeminiAdapter"]

logger.disable("modelmesh_gemini")

_MAX_MODEL_PAGES = 50


class GeminiAdapter(HTTPAdapter):
    """``ProviderAdapter`` for Google's Gemini API (``generativelanguage`` ``v1beta``).

    Built by the connector's factory as ``GeminiAdapter(context, config)``; it holds no
    session of its own and calls ``context.session()`` at request time.
    """

    def __init__(self, context: ProviderContext, config: GeminiConfig | None) -> None:
        config = config if config is not None else GeminiConfig()
        self.config = config
        super().__init__(context, base_url=(config.base_url or DEFAULT_BASE_URL).rstrip("/"),
                         api="the Gemini API")
        key = resolve_key(config)
        headers: dict[str, str] = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(config.headers)
        if key:
            register_secret(key)
            headers["x-goog-api-key"] = key
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        self._safety = [
            {"category": category, "threshold": threshold}
            for category, threshold in config.safety_settings.items()
        ] or None
        self._urls: dict[tuple[str, str], URL] = {}
        self._models_url = URL(f"{self.base_url}/models")

    def __repr__(self) -> str:
        return f"GeminiAdapter({self.name!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ cached pieces

    def _url(self, upstream_id: str, method: str) -> URL:
        url = self._urls.get((upstream_id, method))
        if url is None:
            resource = upstream_id if "/" in upstream_id else f"models/{upstream_id}"
            query = "?alt=sse" if method == "streamGenerateContent" else ""
            url = URL(f"{self.base_url}/{resource}:{method}{query}")
            self._urls[(upstream_id, method)] = url
        return url

    def _body(self, model: Model, request: CompletionRequest) -> tuple[bytes, bool]:
        try:
            body, prefill = build_body(request, self._safety, self._loads)
        except RequestError as exc:
            raise ProviderError(
                f"the request cannot be sent to Gemini: {exc}",
                provider_id=self.name,
                model_id=model.id,
                status=400,
                retryable=False,
            ) from None
        return self._dumps(body), prefill

    # ------------------------------------------------------------------ errors

    def error_from(
        self,
        status: int | None,
        raw: bytes,
        headers: Any,
        model_id: str | None,
        prefill: bool = False,
    ) -> ProviderError:
        """Translate a Gemini error answer into the ModelMesh error tree."""
        return error_from_body(
            status,
            raw,
            headers,
            self._loads,
            provider_id=self.name,
            model_id=model_id,
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
        deadline: float | None,
        stream: bool = False,
        prefill: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send; return a response with status < 400 (headers received) or raise typed."""
        return await self.send_checked(
            method, url, data, self._stream_headers if stream else self._headers, timeouts,
            model_id, asyncio.get_running_loop().time(), deadline,
            error_from=self.error_from, prefill=prefill)

    # ------------------------------------------------------------------ chat

    async def complete(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> CompletionResponse:
        """Send one ``generateContent`` call and translate the answer."""
        data, prefill = self._body(model, request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send(
            "POST",
            self._url(model.upstream_id, "generateContent"),
            data,
            timeouts,
            model.id,
            deadline,
            prefill=prefill,
        )
        payload = await self.json_body(resp, timeouts, model.id, deadline)
        if not isinstance(payload, dict):
            raise self.bad_payload("the answer is not a GenerateContentResponse", model.id)
        if "error" in payload and not payload.get("candidates"):
            raise self.error_from(None, self._dumps(payload), resp.headers, model.id, prefill)
        state = AnswerState(self.name, model.id, start)
        try:
            chunk = state.event(payload, loop.time())
        except (TypeError, AttributeError, KeyError):
            raise self.bad_payload("the answer's candidates are malformed", model.id) from None
        if not payload.get("candidates"):
            raise self.bad_payload("the answer has no candidates", model.id)
        if state.finish is None:
            state.finish = "STOP"
        final = state.final(loop.time())
        return CompletionResponse(
            content=chunk.content if chunk is not None else "",
            model=model.id,
            provider=self.name,
            usage=final.usage,
            latency_ms=final.latency_ms,
            id=state.id,
            finish_reason=final.finish_reason,
            tool_calls=tuple(
                ToolCall(id=c.id, name=c.name, arguments=c.arguments)
                for c in (chunk.tool_calls if chunk is not None else ())
            ),
            role="assistant",
            upstream_model=state.upstream,
        )

    async def stream(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> AsyncIterator[CompletionResponse]:
        """Send one ``streamGenerateContent?alt=sse`` call; yield OpenAI-shaped delta chunks."""
        data, prefill = self._body(model, request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        model_id = model.id
        resp = await self._send(
            "POST",
            self._url(model.upstream_id, "streamGenerateContent"),
            data,
            timeouts,
            model_id,
            deadline,
            stream=True,
            prefill=prefill,
        )
        state = AnswerState(self.name, model_id, start)
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            # Without alt=sse Gemini answers one JSON array of responses: accept it whole.
            payload = await self.json_body(resp, timeouts, model_id, deadline)
            for obj in payload if isinstance(payload, list) else [payload]:
                if isinstance(obj, dict) and "error" in obj and not obj.get("candidates"):
                    raise self.error_from(None, self._dumps(obj), resp.headers, model_id, prefill)
                try:
                    chunk = state.event(obj, loop.time())
                except (TypeError, AttributeError, KeyError):
                    raise self.bad_payload("a response is malformed", model_id) from None
                if chunk is not None:
                    yield chunk
            if state.finish is None:
                raise self.bad_payload("the answer has no finishReason", model_id)
            yield state.final(loop.time())
            return
        content = resp.content
        readline = content.readline
        # One lazily re-armed timer for the three deadlines (modelmesh_core.deadlines).
        watch = ReadDeadline(content, start=loop.time(), first_byte=timeouts.first_byte,
                             idle=timeouts.idle, total=deadline)
        pending: list[bytes] = []
        raw: list[bytes] = []
        events = 0
        clean = False
        try:
            while True:
                watch.reading()
                try:
                    line = await readline()
                except STREAM_READ_ERRORS as exc:
                    raise self.stream_failure(exc, model_id, timeouts) from None
                watch.read()
                eof = not line
                line = line.rstrip(b"\r\n")
                if line:
                    if line.startswith(b"data:"):
                        pending.append(line[6:] if line[5:6] == b" " else line[5:])
                    elif raw or line[:1] in (b"{", b"["):
                        # An error can arrive as plain JSON lines instead of an event.
                        raw.append(line)
                    # comments (":" keep-alives), "event:", "id:", "retry:" carry nothing
                    continue
                if raw:
                    raise self._raw_error(b"\n".join(raw), resp, model_id, prefill)
                if pending:
                    event = pending[0] if len(pending) == 1 else b"\n".join(pending)
                    pending.clear()
                    try:
                        obj = self._loads(event)
                    except ValueError:
                        if eof:
                            raise self._cut(events, resp.status, model_id) from None
                        raise ProviderError(
                            f"malformed stream event after {events} events (not JSON: "
                            f"{redact(event[:60].decode('utf-8', 'replace'))!r})",
                            provider_id=self.name,
                            model_id=model_id,
                            status=resp.status,
                            retryable=True,
                        ) from None
                    if not events:
                        watch.start()
                    events += 1
                    if type(obj) is dict and "error" in obj and not obj.get("candidates"):
                        raise self.error_from(None, event, resp.headers, model_id, prefill)
                    try:
                        chunk = state.event(obj, loop.time())
                    except (TypeError, AttributeError, KeyError):
                        raise self.bad_payload(
                            f"stream event {events} is not a GenerateContentResponse", model_id
                        ) from None
                    if chunk is not None:
                        yield chunk
                if eof:
                    if state.finish is None:
                        raise self._cut(events, resp.status, model_id)
                    clean = True
                    break
        finally:
            watch.close()
            await end_stream(resp, clean)  # clean only at EOF: nothing left to drain
        yield state.final(loop.time())

    def _cut(self, events: int, status: int, model_id: str) -> StreamInterruptedError:
        return StreamInterruptedError(
            f"the stream ended after {events} events without a finishReason; the answer is "
            "incomplete",
            provider_id=self.name,
            model_id=model_id,
            status=status,
            retryable=True,
        )

    def _raw_error(
        self, body: bytes, resp: aiohttp.ClientResponse, model_id: str, prefill: bool
    ) -> ProviderError:
        try:
            obj = self._loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, list) and len(obj) == 1:
            obj = obj[0]
        if isinstance(obj, dict) and "error" in obj:
            return self.error_from(None, body, resp.headers, model_id, prefill)
        return self.bad_payload("the stream carries data outside server-sent events", model_id)

    # ------------------------------------------------------------------ embeddings and models

    async def embed(
        self, model: Model, request: EmbeddingRequest, timeouts: Timeouts
    ) -> EmbeddingResponse:
        """``embedContent`` for one string, ``batchEmbedContents`` for a list (input order kept)."""
        single = isinstance(request.input, str)
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ProviderError(
                "embedding input must be a string or a non-empty list of strings",
                provider_id=self.name,
                model_id=model.id,
                status=400,
                retryable=False,
            )
        resource = (
            model.upstream_id if "/" in model.upstream_id else f"models/{model.upstream_id}"
        )
        options: dict[str, Any] = {}
        extra = request.extra
        if extra:
            if extra.get("dimensions") is not None:
                options["outputDimensionality"] = extra["dimensions"]
            task = extra.get("task_type") or extra.get("taskType")
            if task:
                options["taskType"] = task
            if extra.get("title"):
                options["title"] = extra["title"]

        def one(text: str) -> dict[str, Any]:
            return {"model": resource, "content": {"parts": [{"text": text}]}, **options}

        if single:
            url, body = self._url(model.upstream_id, "embedContent"), one(texts[0])
        else:
            url = self._url(model.upstream_id, "batchEmbedContents")
            body = {"requests": [one(t) for t in texts]}
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send("POST", url, self._dumps(body), timeouts, model.id, deadline)
        payload = await self.json_body(resp, timeouts, model.id, deadline)
        try:
            items = [payload["embedding"]] if single else payload["embeddings"]
            vectors = [[float(v) for v in item["values"]] for item in items]
        except (KeyError, TypeError, ValueError):
            raise self.bad_payload(
                "the answer has no embedding(s).values", model.id
            ) from None
        if len(vectors) != len(texts):
            raise self.bad_payload(
                f"asked for {len(texts)} embeddings, got {len(vectors)}", model.id
            )
        meta = payload.get("usageMetadata") if isinstance(payload, dict) else None
        tokens = meta.get("promptTokenCount") if isinstance(meta, dict) else None
        if not isinstance(tokens, int):
            # The Gemini API reports no usage for embeddings: estimate (4 characters a token)
            # so that budgets and quotas still see the call.
            tokens = sum(len(t) // 4 + 1 for t in texts)
        return EmbeddingResponse(
            data=vectors,
            model=model.id,
            provider=self.name,
            usage={"prompt_tokens": tokens, "total_tokens": tokens},
            latency_ms=(loop.time() - start) * 1000.0,
            upstream_model=model.upstream_id,
        )

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """Model names from ``GET /models`` (every page), without the ``models/`` prefix."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        names: list[str] = []
        token = ""
        for _ in range(_MAX_MODEL_PAGES):
            url = self._models_url.with_query(
                {"pageSize": "1000", **({"pageToken": token} if token else {})}
            )
            resp = await self._send("GET", url, None, timeouts, None, deadline)
            payload = await self.json_body(resp, timeouts, None, deadline)
            try:
                for item in payload.get("models") or ():
                    name = str(item["name"])
                    names.append(name.removeprefix("models/"))
            except (KeyError, TypeError, AttributeError):
                raise self.bad_payload("the model list has no models[].name", None) from None
            token = payload.get("nextPageToken") or ""
            if not token:
                break
        return names

    async def close(self) -> None:
        """Nothing to release: the shared session belongs to the mesh."""
        self._urls.clear()
