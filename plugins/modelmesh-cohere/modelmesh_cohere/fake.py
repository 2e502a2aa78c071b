"""A real local HTTP server that speaks Cohere's v2 API, for tests, demos and benchmarks.

:class:`FakeCohere` listens on ``127.0.0.1`` (a free port) and answers, in Cohere's documented
wire shapes:

* ``POST /v2/chat`` — a chat response (``id``, ``message`` with ``content`` text items,
  ``tool_plan`` and ``tool_calls``, ``finish_reason``, ``usage`` with ``billed_units`` and
  ``tokens``), or with ``"stream": true`` the event stream (``message-start``,
  ``content-start`` / ``content-delta`` / ``content-end`` or ``tool-plan-delta`` and
  ``tool-call-start`` / ``-delta`` / ``-end``, then ``message-end`` with ``finish_reason`` and
  ``usage``), framed as SSE (``event: <type>`` + ``data: <json>``) when the request accepts
  ``text/event-stream`` and as one JSON object per line otherwise;
* ``POST /v2/embed`` — deterministic, hash-based unit vectors under ``embeddings.float``;
* ``POST /v2/rerank`` — documents scored by word overlap with the query;
* ``GET /v1/models`` — the configured model list.

Errors use Cohere's body ``{"id": …, "message": …}`` with its statuses (400, 401, 402, 404,
422, 429, 498, 499, 500, 503, …). Trial-key counters (``x-trial-endpoint-call-limit`` /
``-remaining``) are sent when ``trial_limit`` is set.

It is a :class:`modelmesh_core.fakes.FakeUpstream` speaking another protocol, so it is
scripted with the same behaviour records (``Reply``, ``Fail``, ``CutStream``,
``StallStream``, ``MalformedJSON``, ``MalformedChunk``, ``WrongContentType``, ``Silent``,
``Flaky``, ``RateLimited``) plus :class:`DocExample`, which answers the response printed in
Cohere's API reference for the endpoint (``DOC_EXAMPLES``). For chat, ``Reply.finish_reason``
is a Cohere value (``"MAX_TOKENS"``, ``"ERROR"``, …)::

    async with FakeCohere(api_keys={"co-test-key-123"}) as fake:
        fake.script(Fail(429), Reply("hello"), DocExample("chat_stream"))
        ...  # CohereConfig(base_url=fake.url, api_key="co-test-key-123")
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import uuid
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from attrs import frozen

from modelmesh_core.fakes import (
    Behaviour,
    CutStream,
    Fail,
    FakeUpstream,
    Flaky,
    MalformedChunk,
    MalformedJSON,
    ManualClock,
    RateLimited,
    Reply,
    Silent,
    StallStream,
    WrongContentType,
    tool_call,
)

__all__ = [
    "DEFAULT_COHERE_MODELS",
    "DOC_EXAMPLES",
    "CutStream",
    "DocExample",
    "Fail",
    "FakeCohere",
    "Flaky",
    "MalformedChunk",
    "MalformedJSON",
    "ManualClock",
    "RateLimited",
    "Reply",
    "Silent",
    "StallStream",
    "WrongContentType",
    "tool_call",
]

DEFAULT_COHERE_MODELS: tuple[str, ...] = (
    "command-a-03-2025",
    "command-r-08-2024",
    "embed-v4.0",
    "rerank-v3.5",
)

DOC_EXAMPLES: dict[str, Any] = json.loads(
    resources.files("modelmesh_cohere").joinpath("doc_examples.json").read_text("utf-8")
)
"""Responses from Cohere's API reference (``chat``, ``chat_tools``, ``chat_stream``,
``chat_stream_tools`` — the data of each event —, ``embed``, ``rerank``) and the requests
they answer (``embed_request``, ``rerank_request``)."""

_ERRORS: dict[int, str] = {
    400: "invalid request: the request could not be processed",
    401: "invalid api token",
    402: (
        "Please add or update your payment method at https://dashboard.cohere.com/billing "
        "to continue"
    ),
    403: "forbidden",
    404: "model not found, make sure the correct model ID was used and that you have access to "
    "the model.",
    422: "unprocessable entity",
    429: "You are using a Trial key, which is limited to 10 API calls / minute. You can continue "
    "to use the Trial key for free or upgrade to a Production key with higher rate limits at "
    "'https://dashboard.cohere.com/api-keys'.",
    498: "blocked input: please adjust your prompt and try again, as it may be a potential "
    "violation of our Usage Guidelines.",
    499: "request cancelled by the user",
    500: "internal server error, this has been reported to our developers",
    501: "not implemented",
    503: "service unavailable, please try again later",
    504: "gateway timeout",
}

_WORD = re.compile(r"\s*\S+")
_ROLES = frozenset({"system", "user", "assistant", "tool"})
_WINDOW = 60.0


@frozen
class DocExample:
    """Answer with the example response of Cohere's API reference named ``name``.

    ``chat`` / ``chat_tools`` for a chat call, ``chat_stream`` / ``chat_stream_tools`` for a
    streamed one, ``embed``, ``rerank``.
    """

    name: str


def _words(text: str) -> int:
    return len(text.split())


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text") or "") for p in content if isinstance(p, Mapping)
        )
    return ""


def _unit_vector(text: str, dim: int) -> list[float]:
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(text.encode() + counter.to_bytes(4, "little")).digest()
        counter += 1
    values = [(v / 2147483647.5) - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


class FakeCohere(FakeUpstream):
    """A local fake Cohere v2 upstream over real HTTP.

    Args (beyond :class:`~modelmesh_core.fakes.FakeUpstream`'s ``api_keys``, ``default``,
    ``clock``, ``embedding_dim``, ``host``, ``port``):
        models: names listed by ``GET /v1/models``.
        trial_limit: when set, answers carry trial-key call counters for this per-minute limit.
        reject_prefill: answer 400 to a chat whose last message is an assistant message.

    ``url`` is the base URL to configure (``CohereConfig(base_url=fake.url)``).
    """

    def __init__(
        self,
        *,
        models: tuple[str, ...] = DEFAULT_COHERE_MODELS,
        trial_limit: int | None = None,
        reject_prefill: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(models=models, **kwargs)
        self.trial_limit = trial_limit
        self.reject_prefill = reject_prefill

    # ------------------------------------------------------------------ server

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/chat", self._cohere_chat)
        app.router.add_post("/v2/embed", self._cohere_embed)
        app.router.add_post("/v2/rerank", self._cohere_rerank)
        app.router.add_get("/v1/models", self._cohere_models)

    # ------------------------------------------------------------------ protocol details

    def _auth_failure(self, request: web.Request) -> Fail | None:
        if self.api_keys is None:
            return None
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if key in self.api_keys:
            return None
        return Fail(401, message="no api key supplied" if not key else "invalid api token")

    def _rate_headers(self, tokens: int) -> dict[str, str]:
        headers = {"x-debug-trace-id": uuid.uuid4().hex}
        if self.trial_limit is None:
            return headers
        now = self.clock()
        window = self._window
        if now - window.start >= _WINDOW:
            window.start, window.requests = now, 0
        window.requests += 1
        headers["x-endpoint-monthly-call-limit"] = "1000"
        headers["x-trial-endpoint-call-limit"] = str(self.trial_limit)
        headers["x-trial-endpoint-call-remaining"] = str(
            max(self.trial_limit - window.requests, 0)
        )
        return headers

    def _resolve(self, behaviour: Behaviour) -> Behaviour:
        if isinstance(behaviour, RateLimited):
            resolved = super()._resolve(behaviour)
            if isinstance(resolved, Fail) and resolved.status == 429:
                # Cohere's trial limit answer: its message and a retry-after, no x-ratelimit-*.
                return Fail(
                    429,
                    message=(
                        f"You are using a Trial key, which is limited to {behaviour.rpm} API "
                        "calls / minute. You can continue to use the Trial key for free or "
                        "upgrade to a Production key with higher rate limits at "
                        "'https://dashboard.cohere.com/api-keys'."
                    ),
                    retry_after=resolved.retry_after,
                )
            return resolved
        return super()._resolve(behaviour)

    async def _accept(
        self, request: web.Request
    ) -> tuple[Any, Behaviour, dict[str, str]] | web.Response:
        accepted = await super()._accept(request)
        if not isinstance(accepted, web.Response):
            accepted[2].pop("x-request-id", None)
        return accepted

    def _error(self, fail: Fail, headers: dict[str, str]) -> web.Response:
        out = {k: v for k, v in headers.items() if k != "x-request-id"}
        if fail.retry_after is not None:
            ra = fail.retry_after
            out["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        if fail.headers:
            out.update(fail.headers)
        message = fail.message if fail.message is not None else _ERRORS.get(
            fail.status, f"HTTP {fail.status}"
        )
        return web.Response(
            status=fail.status,
            body=_dumps({"id": str(uuid.uuid4()), "message": message}),
            headers=out,
            content_type="application/json",
        )

    def _invalid(self, message: str, headers: dict[str, str]) -> web.Response:
        return self._error(Fail(400, message=f"invalid request: {message}"), headers)

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(Fail(404, message=f"Not Found ({request.method} {request.path})"), {})

    # ------------------------------------------------------------------ chat

    def _check_chat(self, body: dict[str, Any]) -> str | None:
        if not isinstance(body.get("model"), str):
            return "model must be a string"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list"
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
                return f"messages[{i}]: role must be one of system, user, assistant, tool"
            if message["role"] == "tool" and not message.get("tool_call_id"):
                return f"messages[{i}]: tool messages need a tool_call_id"
            if message["role"] == "assistant" and not (
                "content" in message or message.get("tool_calls")
            ):
                return f"messages[{i}]: an assistant message needs content or tool_calls"
        if self.reject_prefill and messages[-1].get("role") == "assistant":
            return "the last message must be a user or tool message"
        return None

    async def _cohere_chat(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        problem = self._check_chat(body)
        if problem is not None:
            return self._invalid(problem, headers)
        stream = bool(body.get("stream"))
        if not stream and isinstance(behaviour, CutStream | StallStream):
            return await self._partial_body(request, behaviour, headers)
        if not stream and isinstance(behaviour, MalformedChunk):
            return (await self._common(request, MalformedJSON(), headers)) or web.Response()
        if isinstance(behaviour, DocExample):
            if stream:
                return await self._stream(request, behaviour, DOC_EXAMPLES[behaviour.name],
                                          headers, None)
            return web.Response(body=_dumps(DOC_EXAMPLES[behaviour.name]),
                                content_type="application/json", headers=headers)
        reply = behaviour if isinstance(behaviour, Reply) else Reply(
            content="This stream will not finish as it should, sorry."
        )
        await self._pause(reply.delay)
        chat = _Chat(body, reply)
        if not stream:
            return web.Response(body=_dumps(chat.response()), content_type="application/json",
                                headers=headers)
        return await self._stream(request, behaviour, list(chat.events()), headers, reply)

    async def _stream(
        self,
        request: web.Request,
        behaviour: Behaviour,
        events: list[dict[str, Any]],
        headers: dict[str, str],
        reply: Reply | None,
    ) -> web.StreamResponse:
        sse = "text/event-stream" in request.headers.get("Accept", "")
        limit = getattr(behaviour, "after_chunks", None)
        resp = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream" if sse else "application/stream+json"
        resp.charset = "utf-8"
        await resp.prepare(request)
        try:
            for sent, event in enumerate(events):
                if limit is not None and sent >= limit:
                    break
                if sent and reply is not None and reply.chunk_delay:
                    await self._pause(reply.chunk_delay)
                data = _dumps(event)
                if sse:
                    await resp.write(b"event: " + event["type"].encode() + b"\ndata: " + data
                                     + b"\n\n")
                else:
                    await resp.write(data + b"\n")
            if isinstance(behaviour, CutStream):
                _drop(request)
                return resp
            if isinstance(behaviour, StallStream):
                await self._hang()
                _drop(request)
                return resp
            if isinstance(behaviour, MalformedChunk):
                await resp.write(b"event: content-delta\ndata: {not json\n\n" if sse
                                 else b"{not json\n")
                for event in events[limit or 0:]:
                    await resp.write(b"data: " + _dumps(event) + b"\n\n" if sse
                                     else _dumps(event) + b"\n")
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    # ------------------------------------------------------------------ embed / rerank / models

    async def _cohere_embed(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        if isinstance(behaviour, CutStream | StallStream):
            return await self._partial_body(request, behaviour, headers)
        if isinstance(behaviour, MalformedChunk):
            return (await self._common(request, MalformedJSON(), headers)) or web.Response()
        if isinstance(behaviour, DocExample):
            return web.Response(body=_dumps(DOC_EXAMPLES[behaviour.name]),
                                content_type="application/json", headers=headers)
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        await self._pause(reply.delay)
        texts = body.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self._invalid("texts must be a list of strings", headers)
        if len(texts) > 96:
            return self._invalid(
                f"total number of texts must be at most 96 - received {len(texts)}", headers
            )
        if not body.get("input_type"):
            return self._invalid(
                "valid input_type must be provided with the provided model", headers
            )
        types = body.get("embedding_types") or ["float"]
        dim = int(body.get("output_dimension") or self.embedding_dim)
        vectors = [_unit_vector(t, dim) for t in texts]
        embeddings: dict[str, Any] = {}
        if "float" in types:
            embeddings["float"] = vectors
        if "int8" in types:
            embeddings["int8"] = [[round(v * 127) for v in vec] for vec in vectors]
        tokens = sum(max(_words(t), 1) for t in texts)
        answer = {
            "id": str(uuid.uuid4()),
            "texts": texts,
            "embeddings": embeddings,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            "response_type": "embeddings_by_type",
        }
        return web.Response(body=_dumps(answer), content_type="application/json", headers=headers)

    async def _cohere_rerank(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        if isinstance(behaviour, CutStream | StallStream):
            return await self._partial_body(request, behaviour, headers)
        if isinstance(behaviour, MalformedChunk):
            return (await self._common(request, MalformedJSON(), headers)) or web.Response()
        if isinstance(behaviour, DocExample):
            return web.Response(body=_dumps(DOC_EXAMPLES[behaviour.name]),
                                content_type="application/json", headers=headers)
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            return self._invalid("query must be a string and documents a list", headers)
        words = set(query.lower().split())
        scored = []
        for index, doc in enumerate(documents):
            text = doc if isinstance(doc, str) else str(doc)
            overlap = len(words & set(text.lower().split()))
            scored.append((overlap / (len(words) or 1), index))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        top_n = body.get("top_n")
        if isinstance(top_n, int):
            scored = scored[:top_n]
        answer = {
            "id": str(uuid.uuid4()),
            "results": [{"index": i, "relevance_score": round(s, 6)} for s, i in scored],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        }
        return web.Response(body=_dumps(answer), content_type="application/json", headers=headers)

    async def _cohere_models(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        _, behaviour, headers = accepted
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        models = [
            {
                "name": name,
                "endpoints": ["embed"] if name.startswith("embed")
                else ["rerank"] if name.startswith("rerank") else ["chat"],
                "finetuned": False,
            }
            for name in self.models
        ]
        return web.Response(body=_dumps({"models": models}), content_type="application/json",
                            headers=headers)


class _Chat:
    """One chat answer (object or events) built deterministically from a request and a Reply."""

    def __init__(self, body: dict[str, Any], reply: Reply) -> None:
        self.id = str(uuid.uuid4())
        self.reply = reply
        self.calls: list[dict[str, Any]] = [
            {
                "id": call.get("id") or f"{call['name']}_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": call["name"], "arguments": call.get("arguments", "")},
            }
            for call in reply.tool_calls or ()
        ]
        self.finish = reply.finish_reason or ("TOOL_CALL" if self.calls else "COMPLETE")
        prompt = max(sum(_words(_text(m.get("content"))) for m in body["messages"]), 1)
        output = _words(reply.content) + sum(
            _words(c["function"]["arguments"]) for c in self.calls
        )
        over = dict(reply.usage or {})
        billed_in = over.get("prompt_tokens", prompt)
        billed_out = over.get("completion_tokens", max(output, 1))
        self.usage: dict[str, Any] = {
            "billed_units": {"input_tokens": billed_in, "output_tokens": billed_out},
            # The model also reads Cohere's own preamble, hence more tokens than billed.
            "tokens": {"input_tokens": billed_in + 64, "output_tokens": billed_out},
        }
        if "cached_tokens" in over:
            self.usage["cached_tokens"] = over["cached_tokens"]

    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        if self.calls:
            if self.reply.content:
                message["tool_plan"] = self.reply.content
            message["tool_calls"] = self.calls
        else:
            message["content"] = [{"type": "text", "text": self.reply.content}]
        answer: dict[str, Any] = {
            "id": self.id,
            "message": message,
            "finish_reason": self.finish,
            "usage": self.usage,
        }
        return answer

    def events(self) -> Iterator[dict[str, Any]]:
        yield {
            "id": self.id,
            "type": "message-start",
            "delta": {
                "message": {
                    "role": "assistant",
                    "content": [],
                    "tool_plan": "",
                    "tool_calls": [],
                    "citations": [],
                }
            },
        }
        pieces = _WORD.findall(self.reply.content)
        if self.calls:
            for piece in pieces:
                yield {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": piece}}}
            for index, call in enumerate(self.calls):
                start = {**call, "function": {**call["function"], "arguments": ""}}
                yield {"type": "tool-call-start", "index": index,
                       "delta": {"message": {"tool_calls": start}}}
                args = call["function"]["arguments"]
                step = max(len(args) // 3, 1)
                for at in range(0, len(args), step):
                    yield {
                        "type": "tool-call-delta",
                        "index": index,
                        "delta": {"message": {"tool_calls": {
                            "function": {"arguments": args[at : at + step]}}}},
                    }
                yield {"type": "tool-call-end", "index": index}
        else:
            yield {"type": "content-start", "index": 0,
                   "delta": {"message": {"content": {"type": "text", "text": ""}}}}
            for piece in pieces:
                yield {"type": "content-delta", "index": 0,
                       "delta": {"message": {"content": {"text": piece}}}}
            yield {"type": "content-end", "index": 0}
        delta: dict[str, Any] = {"finish_reason": self.finish, "usage": self.usage}
        if self.finish == "ERROR":
            delta["error"] = "internal error: the generation failed"
        yield {"type": "message-end", "delta": delta}
