"""The OpenAI wire-protocol adapter shared by every connector of this plugin.

Hot-path rules (a benchmark measures the per-request overhead): URLs, header sets and
``aiohttp.ClientTimeout`` objects are built once and cached; JSON goes through the context's
codec (orjson); nothing is logged or formatted on success.

Timeouts: ``connect`` is aiohttp's ``sock_connect``; ``first_byte`` bounds the wait for the
response headers and, when streaming, for the first event; ``idle`` bounds the body read and
each gap between stream lines; ``total`` bounds the whole call. All but ``connect`` are
``asyncio.timeout_at`` deadlines taken around individual awaits — never across a ``yield`` —
so the phase that fired is always known and reported in ``ProviderTimeoutError.phase``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from functools import lru_cache
from typing import Any

import aiohttp
from loguru import logger
from yarl import URL

from modelmesh_core.deadlines import ReadDeadline
from modelmesh_core.errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    InvalidRequestError,
    ProviderError,
    RateLimitError,
    StreamInterruptedError,
)
from modelmesh_core.http import (
    STREAM_READ_ERRORS,
    HTTPAdapter,
    KeyRing,
    SSEFramer,
    end_stream,
    header_int,
    kept_headers,
)
from modelmesh_core.http import parse_retry_after as _retry_after_header
from modelmesh_core.limits import MAX_JSON_DEPTH, too_deep
from modelmesh_core.redaction import redact, register_secret
from modelmesh_core.types import (
    Choice,
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
from ._config import Connector, OpenAIConfig
from ._operations import OperationsMixin

__all__ = ["OpenAIAdapter", "parse_duration", "parse_rate_limit", "parse_retry_after"]

logger.disable("modelmesh_openai")

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_FILTER_CODES = frozenset(
    {"content_filter", "content_policy_violation", "content_filtered", "moderation_blocked"}
)
_MODEL_ACCESS_CODES = frozenset({"model_not_found", "model_not_available", "model_access_denied"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})
_KEPT_HEADERS = ("retry-after", "retry-after-ms")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_TRY_AGAIN = re.compile(r"(?i)try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)")


# --------------------------------------------------------------------------- header parsing


@lru_cache(maxsize=2048)
def parse_duration(value: str) -> float | None:
    """Seconds in an OpenAI reset duration: ``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m"``, ``"60"``.

    Returns None for anything unparsable.
    """
    text = value.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    # fast paths for the common single-unit forms ("20ms", "1.5s")
    try:
        if text.endswith("ms"):
            return float(text[:-2]) / 1000.0
        if text.endswith("s") and text[-2:-1].isdigit() and "m" not in text and "h" not in text:
            return float(text[:-1])
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        pos = match.end()
        number, unit = float(match.group(1)), match.group(2)
        if unit == "h":
            total += number * 3600
        elif unit == "m":
            total += number * 60
        elif unit == "s":
            total += number
        elif unit == "ms":
            total += number / 1000
        elif unit in ("us", "µs"):
            total += number / 1_000_000
        else:
            total += number / 1_000_000_000
    return total if pos == len(text) and pos else None


def parse_retry_after(headers: Mapping[str, str], message: str = "") -> float | None:
    """The wait asked for by ``retry-after-ms``, ``retry-after`` (seconds or HTTP date).

    Falls back to the "Please try again in 1.5s" phrase of OpenAI rate-limit messages.
    """
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    wait = _retry_after_header(headers)
    if wait is not None:
        return wait
    if message:
        match = _TRY_AGAIN.search(message)
        if match:
            return parse_duration(match.group(1))
    return None


def _seconds(value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """``x-ratelimit-*`` and ``retry-after`` headers as a ``RateLimitInfo`` (None if absent)."""
    get = headers.get
    limit_requests = get("x-ratelimit-limit-requests")
    remaining_requests = get("x-ratelimit-remaining-requests")
    limit_tokens = get("x-ratelimit-limit-tokens")
    remaining_tokens = get("x-ratelimit-remaining-tokens")
    retry = get("retry-after") or get("retry-after-ms")
    if (
        limit_requests is None
        and remaining_requests is None
        and limit_tokens is None
        and remaining_tokens is None
        and retry is None
    ):
        return None
    return RateLimitInfo(
        limit_requests=header_int(limit_requests),
        remaining_requests=header_int(remaining_requests),
        reset_requests=_seconds(get("x-ratelimit-reset-requests")),
        limit_tokens=header_int(limit_tokens),
        remaining_tokens=header_int(remaining_tokens),
        reset_tokens=_seconds(get("x-ratelimit-reset-tokens")),
        retry_after=parse_retry_after(headers) if retry is not None else None,
    )


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return kept_headers(headers, _KEPT_HEADERS, ("x-ratelimit-",))


# --------------------------------------------------------------------------- response parsing


def _usage(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {}
    prompt = raw.get("prompt_tokens") or 0
    completion = raw.get("completion_tokens") or 0
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    reasoning = (
        completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": raw.get("total_tokens") or prompt + completion,
        "cached_tokens": cached or 0,
        "reasoning_tokens": reasoning or 0,
    }


def _tool_calls(raw: Any, streaming: bool) -> tuple[ToolCall, ...]:
    if not raw:
        return ()
    calls = []
    for item in raw:
        function = item.get("function") or {}
        calls.append(
            ToolCall(
                id=item.get("id"),
                name=function.get("name"),
                arguments=function.get("arguments") or "",
                index=item.get("index") if streaming else None,
                type=item.get("type") or "function",
            )
        )
    return tuple(calls)


def _error_fields(raw: bytes, loads: Callable[[bytes], Any]) -> tuple[str, str | None, str | None]:
    """``(message, type, code)`` from an OpenAI-style (or similar) error body."""
    try:
        data = loads(raw) if raw else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or ""
            kind = error.get("type")
            code = error.get("code")
            return (
                str(message) if message else "",
                str(kind) if kind is not None else None,
                str(code) if code is not None else None,
            )
        if isinstance(error, str):
            return error, None, None
    text = raw[:300].decode("utf-8", "replace").strip()
    return text, None, None


# --------------------------------------------------------------------------- the adapter


_PREFILL_PARAMS: dict[str, dict[str, Any]] = {
    # vLLM continues a final assistant message only when told to (its chat template would
    # otherwise open a new assistant turn).
    "vllm.local.v1": {"continue_final_message": True, "add_generation_prompt": False},
}
"""Body parameters a server needs to continue a trailing assistant message (prefill)."""


class OpenAIAdapter(BatchesMixin, OperationsMixin, HTTPAdapter):
    """``ProviderAdapter`` for the OpenAI chat completions / embeddings / models API, plus
    the operations of :class:`~modelmesh_openai._operations.OperationsMixin` (images,
    speech, transcription and translation, moderation), and ``BatchCapable`` (files +
    batches) for connectors whose upstream has the Batch API.

    Built by the connector's factory as ``OpenAIAdapter(context, config, connector)``; it
    holds no session of its own and calls ``context.session()`` at request time.
    """

    def __init__(
        self, context: ProviderContext, config: OpenAIConfig | None, connector: Connector
    ) -> None:
        config = config if config is not None else OpenAIConfig()
        self.connector = connector
        self.config = config
        self.clock: Callable[[], float] = time.monotonic
        super().__init__(context, base_url=connector.resolve_base_url(config),
                         api="an OpenAI-compatible API")
        self._azure_deployments = connector.azure and not self.base_url.endswith("/v1")
        self._query = ""
        if connector.azure:
            import os

            version = config.api_version or os.environ.get("OPENAI_API_VERSION") or "2024-10-21"
            self._query = "" if not self._azure_deployments else f"?api-version={version}"
        keys = connector.resolve_keys(config)
        for key in keys:
            register_secret(key)
        common: dict[str, str] = {"Content-Type": "application/json", "Accept": "application/json"}
        if config.organization:
            common["OpenAI-Organization"] = config.organization
        if config.project:
            common["OpenAI-Project"] = config.project
        common.update(config.headers)
        if not keys:
            self._headers: list[dict[str, str]] = [common]
        elif connector.azure:
            self._headers = [{**common, "api-key": key} for key in keys]
        else:
            self._headers = [{**common, "Authorization": f"Bearer {key}"} for key in keys]
        self._stream_headers = [{**h, "Accept": "text/event-stream"} for h in self._headers]
        self._ring = KeyRing(len(keys), lambda: self.clock()) if len(keys) > 1 else None
        self._chat_urls: dict[str, URL] = {}
        self._embed_urls: dict[str, URL] = {}
        self._models_url = URL(f"{self.base_url}/models{self._query}")
        self._op_urls: dict[tuple[str, str], URL] = {}
        self._prefill_params = _PREFILL_PARAMS.get(connector.name)

    def __repr__(self) -> str:
        return f"OpenAIAdapter({self.name!r}, connector={self.connector.name!r})"

    # ------------------------------------------------------------------ cached pieces

    def _chat_url(self, upstream_id: str) -> URL:
        url = self._chat_urls.get(upstream_id)
        if url is None:
            if self._azure_deployments:
                url = URL(
                    f"{self.base_url}/deployments/{upstream_id}/chat/completions{self._query}"
                )
            else:
                url = URL(f"{self.base_url}/chat/completions")
            self._chat_urls[upstream_id] = url
        return url

    def _embed_url(self, upstream_id: str) -> URL:
        url = self._embed_urls.get(upstream_id)
        if url is None:
            if self._azure_deployments:
                url = URL(f"{self.base_url}/deployments/{upstream_id}/embeddings{self._query}")
            else:
                url = URL(f"{self.base_url}/embeddings")
            self._embed_urls[upstream_id] = url
        return url

    @staticmethod
    def _rate_limit(resp: aiohttp.ClientResponse) -> RateLimitInfo | None:
        return parse_rate_limit(resp.headers)

    def _body(self, model: Model, request: CompletionRequest, stream: bool) -> bytes:
        body: dict[str, Any] = dict(request.extra) if request.extra else {}
        body["model"] = model.upstream_id
        messages = request.messages
        body["messages"] = messages
        prefill = self._prefill_params
        if prefill and messages and messages[-1].get("role") == "assistant":
            # A trailing assistant message is a prefill to continue (stream continuation).
            for name, value in prefill.items():
                body.setdefault(name, value)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None and "max_completion_tokens" not in body:
            # Newer OpenAI models reject max_tokens; a caller's max_completion_tokens is
            # forwarded as given (it arrives in ``extra``).
            body["max_tokens"] = request.max_tokens
        if request.tools:
            body["tools"] = request.tools
        if stream:
            body["stream"] = True
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage")):
                # Always ask for the usage chunk: cost, budgets and quotas are billed from it
                # (the proxy and client pass it on only when the caller asked for it).
                body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                          "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return self._encode(body, model)

    def _encode(self, body: dict[str, Any], model: Model) -> bytes:
        """``body`` as JSON; what the caller sent that cannot be encoded is their error."""
        try:
            return self._dumps(body)
        except TypeError as exc:  # orjson.JSONEncodeError: too deep, not JSON-able, …
            # What the caller sent cannot be encoded: their error (400), not the model's.
            deep = too_deep(body)
            raise InvalidRequestError(
                f"The request cannot be encoded as JSON for {model.id}: {exc}"
                + (f" (nested deeper than {MAX_JSON_DEPTH} levels at '{deep[:80]}')."
                   if deep else "."), param=deep[:80] if deep else None) from None

    # ------------------------------------------------------------------ errors

    def error_from(
        self,
        status: int | None,
        raw: bytes,
        headers: Mapping[str, str],
        model_id: str | None,
    ) -> ProviderError:
        """Translate an upstream error answer into the ModelMesh error tree."""
        message, kind, code = _error_fields(raw, self._loads)
        message = redact(message) if message else "(no error message)"
        tags = ", ".join(f"{k}={v}" for k, v in (("type", kind), ("code", code)) if v)
        text = f"{message} [{tags}]" if tags else message
        kept = _kept_headers(headers)
        common: dict[str, Any] = {
            "provider_id": self.name,
            "model_id": model_id,
            "status": status,
            "headers": kept,
            "rate_limit": parse_rate_limit(kept) if kept else None,
        }
        lowered = message.lower()
        if status == 403 and (code in _MODEL_ACCESS_CODES or "model" in lowered):
            # No access to this one model (e.g. "Project does not have access to model X"):
            # the key itself is fine, so the provider's other models stay in service.
            return ProviderError(
                f"{text}; this key may not use model {model_id!r}", retryable=False, **common
            )
        if status in (401, 403):
            return AuthenticationError(
                f"{text}; check the API key of provider {self.name!r}", retryable=False, **common
            )
        if status == 429:
            quota = code in _QUOTA_CODES or kind in _QUOTA_CODES
            return RateLimitError(
                text,
                retry_after=parse_retry_after(kept, message),
                quota=quota,
                **common,
            )
        if code in _CONTEXT_CODES or "maximum context length" in lowered:
            return ContextLengthError(
                f"{text}; shorten the prompt or route to a model with a larger context window",
                retryable=False,
                **common,
            )
        if code in _FILTER_CODES or kind in _FILTER_CODES:
            return ContentFilterError(text, retryable=False, **common)
        retryable = status is None or status in (408, 409, 425) or status >= 500
        wait = parse_retry_after(kept, message) if status is not None and status >= 500 else None
        return ProviderError(text, retryable=retryable, retry_after=wait, **common)

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
        stream: bool,
        content_type: str | None = None,
        *,
        headers: list[dict[str, str]] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send with key rotation; return a response with status < 400 (headers received).

        ``content_type`` replaces the JSON ``Content-Type`` (a multipart upload); ``headers``
        replaces the adapter's header sets (one per key, same order)."""
        ring = self._ring
        order = ring.order() if ring is not None else (0,)
        if not order:
            raise self._all_keys_aside(model_id)
        headers_list = headers or (self._stream_headers if stream else self._headers)
        last: ProviderError | None = None
        loop = asyncio.get_running_loop()
        for index in order:
            resp = await self.request(
                method,
                url,
                data,
                headers_list[index] if content_type is None
                else {**headers_list[index], "Content-Type": content_type},
                timeouts,
                model_id,
                start if last is None else loop.time(),
                deadline,
            )
            if resp.status < 400:
                if ring is not None:
                    ring.used(index)
                return resp
            error = await self._read_error(resp, timeouts, model_id, deadline)
            if ring is None or not self._rotates(error):
                raise error
            cooldown = (
                self.config.auth_cooldown
                if isinstance(error, AuthenticationError)
                else (getattr(error, "retry_after", None) or self.config.key_cooldown)
            )
            ring.set_aside(index, cooldown, error)
            last = error
        assert last is not None
        raise last

    @staticmethod
    def _rotates(error: ProviderError) -> bool:
        return isinstance(error, AuthenticationError) or (
            isinstance(error, RateLimitError) and error.quota
        )

    def _all_keys_aside(self, model_id: str | None) -> ProviderError:
        ring = self._ring
        assert ring is not None
        wait = ring.wait()
        quota = [e for e in ring.errors if isinstance(e, RateLimitError)]
        text = (
            f"all {ring.size} API keys are set aside (rejected or out of quota); the first "
            f"is usable again in {wait:.1f}s"
        )
        common: dict[str, Any] = {"provider_id": self.name, "model_id": model_id}
        if quota:
            return RateLimitError(text, retry_after=wait, quota=True, **common)
        return AuthenticationError(f"{text}; check the provider's keys", status=401, **common)

    async def _read_error(
        self,
        resp: aiohttp.ClientResponse,
        timeouts: Timeouts,
        model_id: str | None,
        deadline: float | None,
    ) -> ProviderError:
        raw = await self.error_body(resp, timeouts, deadline)
        logger.opt(lazy=True).debug("{} answered HTTP {}", lambda: self.name, lambda: resp.status)
        return self.error_from(resp.status, raw, resp.headers, model_id)

    # ------------------------------------------------------------------ ProviderAdapter

    async def complete(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> CompletionResponse:
        """Send one non-streaming chat completion."""
        data = self._body(model, request, stream=False)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send(
            "POST",
            self._chat_url(model.upstream_id),
            data,
            timeouts,
            model.id,
            start,
            deadline,
            False,
        )
        payload = await self.json_body(resp, timeouts, model.id, deadline)
        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            if isinstance(payload, dict) and "error" in payload:
                raise self.error_from(None, self._dumps(payload), resp.headers, model.id) from None
            raise self.bad_payload("the answer has no choices[0].message", model.id) from None
        rate = parse_rate_limit(resp.headers)
        return CompletionResponse(
            content=message.get("content") or "",
            model=model.id,
            provider=self.name,
            usage=_usage(payload.get("usage")),
            latency_ms=(loop.time() - start) * 1000.0,
            metadata={"rate_limit": rate} if rate is not None else {},
            id=payload.get("id") or "",
            created=payload.get("created") or 0,
            finish_reason=choice.get("finish_reason"),
            tool_calls=_tool_calls(message.get("tool_calls"), False),
            role=message.get("role") or "assistant",
            upstream_model=payload.get("model") or "",
            refusal=message.get("refusal"),
            choices=_more_choices(payload["choices"]) if len(payload["choices"]) > 1 else (),
        )

    async def stream(
        self, model: Model, request: CompletionRequest, timeouts: Timeouts
    ) -> AsyncIterator[CompletionResponse]:
        """Send one streaming chat completion; yield one response per upstream chunk."""
        data = self._body(model, request, stream=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        model_id = model.id
        resp = await self._send(
            "POST",
            self._chat_url(model.upstream_id),
            data,
            timeouts,
            model_id,
            start,
            deadline,
            True,
        )
        ctype = resp.headers.get("Content-Type", "")
        if "text/event-stream" not in ctype:
            # Some compatible servers ignore "stream": answer the whole completion as one chunk.
            payload = await self.json_body(resp, timeouts, model_id, deadline)
            yield self._whole_as_chunk(payload, resp, model, start)
            return
        rate = parse_rate_limit(resp.headers)
        content = resp.content
        readline = content.readline
        # One lazily re-armed timer for the first-byte, idle and total deadlines instead of a
        # timer per line (see modelmesh_core.deadlines).
        watch = ReadDeadline(content, start=loop.time(), first_byte=timeouts.first_byte,
                             idle=timeouts.idle, total=deadline)
        sse = SSEFramer()
        feed = sse.feed
        delivered = 0
        finished = False
        finish_seen = False
        try:
            while True:
                watch.reading()
                try:
                    line = await readline()
                except STREAM_READ_ERRORS as exc:
                    raise self.stream_failure(exc, model_id, timeouts) from None
                watch.read()
                if not line:
                    if finish_seen:
                        # The answer and its finish_reason (and usage, which precedes the end)
                        # arrived; only the closing [DONE] is missing: a complete answer.
                        finished = True
                        break
                    if sse.partial:
                        raise self.bad_payload("the stream ended inside an event", model_id)
                    raise StreamInterruptedError(
                        f"the stream ended without a finish_reason or 'data: [DONE]' after "
                        f"{delivered} chunks; the answer is incomplete",
                        provider_id=self.name,
                        model_id=model_id,
                        status=resp.status,
                        retryable=True,
                    )
                event = feed(line)
                if event is None:
                    continue
                if event == b"[DONE]":
                    if not finish_seen:
                        raise StreamInterruptedError(
                            f"the stream sent 'data: [DONE]' after {delivered} chunks without "
                            "a finish_reason; the answer is incomplete",
                            provider_id=self.name,
                            model_id=model_id,
                            status=resp.status,
                            retryable=True,
                        )
                    finished = True
                    break
                try:
                    obj = self._loads(event)
                except ValueError:
                    raise ProviderError(
                        f"malformed stream chunk after {delivered} chunks (not JSON: "
                        f"{redact(event[:60].decode('utf-8', 'replace'))!r})",
                        provider_id=self.name,
                        model_id=model_id,
                        status=resp.status,
                        retryable=True,
                    ) from None
                if not isinstance(obj, dict):
                    raise self.bad_payload("a stream chunk is not a JSON object", model_id)
                if "error" in obj and not obj.get("choices"):
                    raise self.error_from(None, event, resp.headers, model_id)
                chunk = self._chunk(obj, model_id, start, loop, rate if not delivered else None)
                if not delivered:
                    watch.start()
                delivered += 1
                if chunk.finish_reason:
                    finish_seen = True
                yield chunk
        finally:
            watch.close()
            await end_stream(resp, finished)

    def _chunk(
        self,
        obj: dict[str, Any],
        model_id: str,
        start: float,
        loop: asyncio.AbstractEventLoop,
        rate: RateLimitInfo | None,
    ) -> CompletionResponse:
        choices = obj.get("choices")
        text = ""
        role = None
        finish = None
        refusal = None
        calls: tuple[ToolCall, ...] = ()
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            role = delta.get("role")
            refusal = delta.get("refusal")
            finish = choice.get("finish_reason")
            raw_calls = delta.get("tool_calls")
            if raw_calls:
                calls = _tool_calls(raw_calls, True)
        usage = obj.get("usage")
        return CompletionResponse(
            content=text,
            model=model_id,
            provider=self.name,
            usage=_usage(usage) if usage else {},
            latency_ms=(loop.time() - start) * 1000.0,
            metadata={"rate_limit": rate} if rate is not None else {},
            id=obj.get("id") or "",
            created=obj.get("created") or 0,
            finish_reason=finish,
            tool_calls=calls,
            role=role,
            upstream_model=obj.get("model") or "",
            refusal=refusal,
        )

    def _whole_as_chunk(
        self, payload: Any, resp: aiohttp.ClientResponse, model: Model, start: float
    ) -> CompletionResponse:
        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise self.bad_payload("the answer has no choices[0].message", model.id) from None
        rate = parse_rate_limit(resp.headers)
        calls = _tool_calls(message.get("tool_calls"), False)
        calls = tuple(
            ToolCall(id=c.id, name=c.name, arguments=c.arguments, index=i, type=c.type)
            for i, c in enumerate(calls)
        )
        return CompletionResponse(
            content=message.get("content") or "",
            model=model.id,
            provider=self.name,
            usage=_usage(payload.get("usage")),
            latency_ms=(asyncio.get_running_loop().time() - start) * 1000.0,
            metadata={"rate_limit": rate} if rate is not None else {},
            id=payload.get("id") or "",
            created=payload.get("created") or 0,
            finish_reason=choice.get("finish_reason"),
            tool_calls=calls,
            role=message.get("role") or "assistant",
            upstream_model=payload.get("model") or "",
        )

    async def embed(
        self, model: Model, request: EmbeddingRequest, timeouts: Timeouts
    ) -> EmbeddingResponse:
        """Create embeddings (one vector per input, in input order)."""
        body: dict[str, Any] = dict(request.extra) if request.extra else {}
        body["model"] = model.upstream_id
        body["input"] = request.input
        data = self._encode(body, model)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send(
            "POST",
            self._embed_url(model.upstream_id),
            data,
            timeouts,
            model.id,
            start,
            deadline,
            False,
        )
        payload = await self.json_body(resp, timeouts, model.id, deadline)
        try:
            items = sorted(payload["data"], key=lambda item: item.get("index", 0))
            vectors = [_vector(item["embedding"]) for item in items]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.bad_payload("the answer has no data[].embedding", model.id) from None
        usage = payload.get("usage") or {}
        return EmbeddingResponse(
            data=vectors,
            model=model.id,
            provider=self.name,
            usage={
                "prompt_tokens": usage.get("prompt_tokens") or 0,
                "total_tokens": usage.get("total_tokens") or usage.get("prompt_tokens") or 0,
            },
            latency_ms=(loop.time() - start) * 1000.0,
            upstream_model=payload.get("model") or "",
        )

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """List the upstream's model names (``GET /models``)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeouts.total if timeouts.total is not None else None
        resp = await self._send(
            "GET", self._models_url, None, timeouts, None, start, deadline, False
        )
        payload = await self.json_body(resp, timeouts, None, deadline)
        try:
            return [str(item["id"]) for item in payload["data"]]
        except (KeyError, TypeError):
            raise self.bad_payload("the model list has no data[].id", None) from None

    async def close(self) -> None:
        """Nothing to release: the shared session belongs to the mesh."""
        self._chat_urls.clear()
        self._embed_urls.clear()


def _more_choices(raw: list[Any]) -> tuple[Choice, ...]:
    """Choices 1…n-1 of an answer asked with ``n > 1``, in index order."""
    out: list[Choice] = []
    try:
        for item in sorted(raw, key=lambda c: c.get("index", 0))[1:]:
            message = item["message"]
            out.append(Choice(
                index=int(item.get("index", len(out) + 1)),
                content=message.get("content") or "",
                finish_reason=item.get("finish_reason"),
                tool_calls=_tool_calls(message.get("tool_calls"), False),
                role=message.get("role") or "assistant",
                refusal=message.get("refusal"),
            ))
    except (KeyError, TypeError, AttributeError, ValueError):
        raise ProviderError("an extra choice has no message", retryable=True) from None
    return tuple(out)


def _vector(raw: Any) -> list[float]:
    if isinstance(raw, str):
        packed = base64.b64decode(raw)
        return list(struct.unpack(f"<{len(packed) // 4}f", packed))
    return [float(v) for v in raw]
