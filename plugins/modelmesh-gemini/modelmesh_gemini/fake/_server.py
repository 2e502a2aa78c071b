"""The fake Gemini server itself."""

from __future__ import annotations

import functools
import itertools
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from modelmesh_core.fakebase import FakeServer
from modelmesh_core.fakes import (
    CutStream,
    Fail,
    Flaky,
    MalformedChunk,
    MalformedJSON,
    RateLimited,
    Reply,
    Silent,
    StallStream,
    WrongContentType,
)

from ._answer import Answer, check_generate, get, texts, unit_vector
from ._behaviours import (
    TARGET,
    CandidateBlocked,
    Canned,
    EndWithoutFinish,
    GeminiBehaviour,
    GeminiCall,
    GeminiError,
    PromptBlocked,
    StreamError,
)
from ._docs import DOC_PROMPT_BLOCKED


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)

DEFAULT_GEMINI_MODELS: tuple[str, ...] = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-embedding-001",
    "text-embedding-004",
)
"""Models the fake serves (others answer ``404 NOT_FOUND``) and lists."""



class FakeGemini(FakeServer[GeminiBehaviour, GeminiCall]):
    """A local fake Gemini API over real HTTP.

    Args:
        api_keys: when given, requests must send one of these keys (``x-goog-api-key`` or
            ``?key=``): no key is a ``403 PERMISSION_DENIED``, an unknown one a
            ``400 INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``, as Google answers.
        models: the models served and listed; others answer ``404 NOT_FOUND``. None serves any.
        embedding_dim: vector size when the request gives no ``outputDimensionality``.
        default: the behaviour when the script queue is empty (default ``Reply()``).
        sse_newline: the line end of the event stream (Google sends ``"\\r\\n"``).
        max_page_size: the largest ``pageSize`` the model list honours (Google caps it at 1000).
        host / port: where to listen; port 0 picks a free port.

    Attributes:
        calls: every request received, in order (:class:`GeminiCall`).
        default: the fallback behaviour; assign to change it.
    """

    server_name = "FakeGemini"

    def __init__(
        self,
        *,
        api_keys: Sequence[str] | set[str] | None = None,
        models: Sequence[str] | None = DEFAULT_GEMINI_MODELS,
        embedding_dim: int = 16,
        default: GeminiBehaviour | None = None,
        sse_newline: str = "\r\n",
        max_page_size: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_keys: frozenset[str] | None = None if api_keys is None else frozenset(api_keys)
        self.models = None if models is None else tuple(models)
        self.embedding_dim = embedding_dim
        super().__init__(default=default if default is not None else Reply(), host=host,
                         port=port)
        self._eol = sse_newline.encode()
        self.max_page_size = max_page_size
        self._rngs: dict[int, tuple[Flaky, random.Random]] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ public API

    @property
    def base_url(self) -> str:
        """What the adapter's ``base_url`` takes: ``http://127.0.0.1:PORT/v1beta``."""
        return f"{self.url}/v1beta"

    def reset(self) -> None:
        """Forget calls, the script and behaviour state; restore the default."""
        super().reset()
        self._rngs.clear()

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v1beta/models", self._list_models)
        app.router.add_post("/v1beta/{target:.+}", self._post)

    # ------------------------------------------------------------------ dispatch

    def _resolve(self, behaviour: Any) -> GeminiBehaviour:
        while isinstance(behaviour, Flaky):
            entry = self._rngs.get(id(behaviour))
            if entry is None or entry[0] is not behaviour:
                entry = (behaviour, functools.partial(random.Random, behaviour.seed)())
                self._rngs[id(behaviour)] = entry
            behaviour = behaviour.fail if entry[1].random() < behaviour.rate else behaviour.then
        if isinstance(behaviour, RateLimited):
            raise TypeError("FakeGemini does not speak RateLimited; use GeminiError.rate_limit()")
        return behaviour

    def _auth_failure(self, request: web.Request) -> GeminiError | None:
        if self.api_keys is None:
            return None
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key and key in self.api_keys:
            return None
        if not key:
            return GeminiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        return GeminiError.invalid_key()

    async def _accept(
        self, request: web.Request
    ) -> tuple[Any, GeminiBehaviour] | web.StreamResponse:
        body: Any = None
        malformed = False
        if request.method == "POST":
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                malformed = True
        failure = self._auth_failure(request)
        behaviour: GeminiBehaviour
        scripted = False
        if failure is not None:
            behaviour = failure
        else:
            picked, scripted = self._next()
            behaviour = self._resolve(picked)
        self.calls.append(
            GeminiCall(
                path=request.path,
                method=request.method,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                time=time.monotonic(),
                behaviour=behaviour,
                scripted=scripted,
            )
        )
        if failure is not None:
            return self._error(failure)
        if malformed or (request.method == "POST" and not isinstance(body, dict)):
            return self._error(GeminiError(400, "Invalid JSON payload received."))
        return body, behaviour

    def _error(self, fail: GeminiError | Fail, model: str = "gemini-2.5-flash") -> web.Response:
        if isinstance(fail, Fail):
            fail = GeminiError(
                fail.status,
                fail.message,
                google_status=fail.type,
                reason=fail.code,
                retry_delay=fail.retry_after,
                headers=fail.headers,
            )
        return web.Response(
            status=fail.status,
            body=_dumps(fail.body(model)),
            headers=dict(fail.headers or {}),
            content_type="application/json",
            charset="UTF-8",
        )

    async def _common(self, behaviour: GeminiBehaviour, model: str) -> web.StreamResponse | None:
        """Answer the behaviours that do not depend on the endpoint; None for the rest."""
        if isinstance(behaviour, GeminiError | Fail):
            await self._pause(behaviour.delay)
            return self._error(behaviour, model)
        if isinstance(behaviour, Silent):
            await self._hang()
            return web.Response(status=503, text="fake upstream shutting down")
        if isinstance(behaviour, WrongContentType):
            return web.Response(
                status=behaviour.status,
                text="<html><head><title>Gateway</title></head><body><h1>Please sign in"
                "</h1></body></html>",
                content_type="text/html",
            )
        if isinstance(behaviour, MalformedJSON):
            return web.Response(
                body=b'{"candidates": [{"content": {"parts": [{"te',
                content_type="application/json",
            )
        return None

    async def _partial_body(
        self, request: web.Request, behaviour: CutStream | StallStream
    ) -> web.StreamResponse:
        payload = b'{"candidates": [{"content": {"parts": [{"text": "Once upon'
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.content_length = len(payload) * 4
        await resp.prepare(request)
        try:
            await resp.write(payload)
            if isinstance(behaviour, StallStream):
                await self._hang()
            _drop(request)
        except ConnectionError:
            pass
        return resp

    # ------------------------------------------------------------------ endpoints

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(
            GeminiError(404, f"Invalid URL: {request.method} {request.path}")
        )

    async def _list_models(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.StreamResponse):
            return accepted
        _, behaviour = accepted
        early = await self._common(behaviour, "")
        if early is not None:
            return early
        if isinstance(behaviour, Canned) and behaviour.body is not None:
            return web.json_response(dict(behaviour.body), dumps=lambda v: _dumps(v).decode())
        names = list(self.models or DEFAULT_GEMINI_MODELS)
        size = min(int(request.query.get("pageSize") or 50), self.max_page_size)
        start = int(request.query.get("pageToken") or 0)
        page = names[start : start + size]
        data: dict[str, Any] = {
            "models": [
                {
                    "name": f"models/{name}",
                    "version": "001",
                    "displayName": name,
                    "inputTokenLimit": 2048 if "embedding" in name else 1048576,
                    "outputTokenLimit": 1 if "embedding" in name else 65536,
                    "supportedGenerationMethods": (
                        ["embedContent", "batchEmbedContents"]
                        if "embedding" in name
                        else ["generateContent", "countTokens"]
                    ),
                }
                for name in page
            ]
        }
        if start + size < len(names):
            data["nextPageToken"] = str(start + size)
        return web.Response(body=_dumps(data), content_type="application/json")

    async def _post(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.StreamResponse):
            return accepted
        body, behaviour = accepted
        match = TARGET.search(request.path)
        if match is None:
            return await self._not_found(request)
        model, method = match.group(2), match.group(3)
        if self.models is not None and match.group(1) == "models" and model not in self.models:
            return self._error(
                GeminiError(
                    404,
                    f"models/{model} is not found for API version v1beta, or is not supported "
                    f"for {method}. Call ListModels to see the list of available models and "
                    "their supported methods.",
                )
            )
        early = await self._common(behaviour, model)
        if early is not None:
            return early
        if method in ("generateContent", "streamGenerateContent"):
            problem = check_generate(body)
            if problem is not None:
                return self._error(GeminiError(400, problem))
            if method == "generateContent":
                return await self._generate(request, body, behaviour, model)
            return await self._stream(request, body, behaviour, model)
        if method in ("embedContent", "batchEmbedContents"):
            return await self._embed(request, body, behaviour, model, method)
        return self._error(GeminiError(404, f"Method {method} not found."))

    async def _generate(
        self, request: web.Request, body: dict[str, Any], behaviour: GeminiBehaviour, model: str
    ) -> web.StreamResponse:
        if isinstance(behaviour, CutStream | StallStream):
            return await self._partial_body(request, behaviour)
        if isinstance(behaviour, MalformedChunk):
            return (await self._common(MalformedJSON(), model)) or web.Response()
        if isinstance(behaviour, Canned) and behaviour.body is not None:
            return web.Response(body=_dumps(dict(behaviour.body)), content_type="application/json")
        if isinstance(behaviour, PromptBlocked):
            blocked = {"promptFeedback": {"blockReason": behaviour.reason,
                                          "safetyRatings": DOC_PROMPT_BLOCKED["promptFeedback"]
                                          ["safetyRatings"]}}
            return web.Response(body=_dumps(blocked), content_type="application/json")
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        await self._pause(reply.delay)
        answer = Answer(body, reply, model, next(self._ids))
        if isinstance(behaviour, CandidateBlocked):
            out = answer.stopped(behaviour.finish_reason)
        elif isinstance(behaviour, StreamError):
            return self._error(behaviour.error, model)
        else:
            out = answer.whole()
            if isinstance(behaviour, EndWithoutFinish):
                out["candidates"][0].pop("finishReason", None)
        return web.Response(body=_dumps(out), content_type="application/json")

    def _stream_events(
        self, body: dict[str, Any], behaviour: GeminiBehaviour, model: str
    ) -> tuple[list[Any], Reply]:
        if isinstance(behaviour, Canned):
            return [dict(e) for e in behaviour.events], Reply()
        if isinstance(behaviour, PromptBlocked):
            return [{"promptFeedback": {"blockReason": behaviour.reason,
                                        "safetyRatings": DOC_PROMPT_BLOCKED["promptFeedback"]
                                        ["safetyRatings"]}}], Reply()
        if isinstance(behaviour, Reply):
            reply = behaviour
        elif isinstance(behaviour, CandidateBlocked):
            reply = Reply(content=behaviour.content)
        else:
            reply = Reply(content="This stream will not finish as it should, sorry.")
        answer = Answer(body, reply, model, next(self._ids))
        if isinstance(behaviour, CandidateBlocked):
            events = answer.events(finish=False)[: behaviour.after_chunks]
            events.append(answer.stopped(behaviour.finish_reason))
            return events, reply
        limit = getattr(behaviour, "after_chunks", None)
        events = answer.events(finish=not isinstance(behaviour, EndWithoutFinish | CutStream |
                                                     StallStream | StreamError))
        if limit is not None:
            events = events[:limit]
        if isinstance(behaviour, StreamError):
            events.append(behaviour.error.body(model))
        return events, reply

    async def _stream(
        self, request: web.Request, body: dict[str, Any], behaviour: GeminiBehaviour, model: str
    ) -> web.StreamResponse:
        events, reply = self._stream_events(body, behaviour, model)
        await self._pause(reply.delay)
        if request.query.get("alt") != "sse":
            # Without alt=sse the API answers one JSON array of responses.
            return web.Response(body=_dumps(events), content_type="application/json")
        resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        resp.charset = "UTF-8"
        await resp.prepare(request)
        eol = self._eol
        try:
            for sent, event in enumerate(events):
                if sent and reply.chunk_delay:
                    await self._pause(reply.chunk_delay)
                await resp.write(b"data: " + _dumps(event) + eol + eol)
            if isinstance(behaviour, CutStream):
                _drop(request)
                return resp
            if isinstance(behaviour, StallStream):
                await self._hang()
                _drop(request)
                return resp
            if isinstance(behaviour, MalformedChunk):
                await resp.write(b"data: {not json" + eol + eol)
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    async def _embed(
        self,
        request: web.Request,
        body: dict[str, Any],
        behaviour: GeminiBehaviour,
        model: str,
        method: str,
    ) -> web.StreamResponse:
        if isinstance(behaviour, CutStream | StallStream):
            return await self._partial_body(request, behaviour)
        if isinstance(behaviour, Canned) and behaviour.body is not None:
            return web.Response(body=_dumps(dict(behaviour.body)), content_type="application/json")
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        await self._pause(reply.delay)
        requests = [body] if method == "embedContent" else body.get("requests")
        if not isinstance(requests, list) or not requests:
            return self._error(GeminiError(400, "* BatchEmbedContentsRequest.requests: "
                                                "requests is not specified\n"))
        vectors = []
        for i, item in enumerate(requests):
            where = "" if method == "embedContent" else f"requests[{i}]."
            if not isinstance(item, dict) or not isinstance(item.get("content"), dict):
                return self._error(
                    GeminiError(400, f"* {where}content: content is not specified\n")
                )
            if method == "batchEmbedContents" and item.get("model") != f"models/{model}":
                return self._error(GeminiError(
                    400, f"Model name in request[{i}] must match the model in the URL."))
            text = " ".join(texts(item["content"]))
            dim = get(item, "outputDimensionality") or self.embedding_dim
            vectors.append({"values": unit_vector(text, int(dim))})
        out = {"embedding": vectors[0]} if method == "embedContent" else {"embeddings": vectors}
        return web.Response(body=_dumps(out), content_type="application/json")


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()

