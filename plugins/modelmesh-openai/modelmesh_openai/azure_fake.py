"""A local fake Azure OpenAI resource, for tests: :class:`FakeAzureOpenAI`.

It is :class:`modelmesh_core.fakes.FakeUpstream` (same behaviour records, same recording)
with Azure's surface instead of OpenAI's:

* ``POST /openai/deployments/{deployment}/chat/completions`` and ``…/embeddings``, which need
  the ``api-version`` query parameter (one of ``api_versions``; otherwise 404 "Resource not
  found", as Azure answers) and a known deployment (otherwise 404 ``DeploymentNotFound``);
* the GA v1 paths ``POST /openai/v1/chat/completions``, ``/openai/v1/embeddings`` (the
  deployment is the body's ``model``) and ``GET /openai/v1/models``; ``GET /openai/models``;
* authentication by ``api-key: <key>`` (``api_keys``) or ``Authorization: Bearer <token>``
  (``entra_tokens``), with Azure's 401 bodies;
* Azure's error body ``{"error": {"code": "<status or name>", "message": …}}`` for every
  :class:`~modelmesh_core.fakes.Fail`, and :class:`PromptFiltered` — the content-filter
  rejection of a prompt (400, ``code: content_filter``, ``innererror.content_filter_result``)
  as shown in Azure's content-filtering documentation; :class:`AnswerFiltered` — an answer cut
  by the filter (``finish_reason: "content_filter"``, with ``prompt_filter_results`` /
  ``content_filter_results`` annotations, streamed or not).

Recorded calls keep the query string in ``path`` (``/openai/deployments/d/…?api-version=…``).
Plain replies are OpenAI-shaped without Azure's filter annotations (clients ignore them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson
from aiohttp import web
from attrs import frozen

from modelmesh_core.fakes import Behaviour, Fail, FakeUpstream

__all__ = ["PROMPT_FILTER_BODY", "AnswerFiltered", "FakeAzureOpenAI", "PromptFiltered"]

PROMPT_FILTER_BODY: dict[str, Any] = {
    "error": {
        "message": (
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry. To learn more about our "
            "content filtering policies please read our documentation: "
            "https://go.microsoft.com/fwlink/?linkid=2198766"
        ),
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": True, "severity": "high"},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}
"""The 400 answer to a filtered prompt (Azure's content-filtering documentation)."""

_SAFE = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
_FILTERED = {**_SAFE, "violence": {"filtered": True, "severity": "medium"}}

_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    403: "Public access is disabled. Please configure private endpoint.",
    404: "Resource not found",
    429: (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. "
        "Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you "
        "would like to further increase the default rate limit."
    ),
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The service is temporarily unable to process your request. Please try again later.",
}
_KEY_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
_TOKEN_401 = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)
_NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again."
)


@frozen
class PromptFiltered:
    """Reject the prompt as Azure's content filter does (HTTP 400, ``content_filter``)."""


@frozen
class AnswerFiltered:
    """Answer ``content`` and then stop it with ``finish_reason: "content_filter"``."""

    content: str = "Here is the beginning of an answer that"


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


class FakeAzureOpenAI(FakeUpstream):
    """A fake Azure OpenAI resource over real HTTP on 127.0.0.1.

    Args (beyond :class:`~modelmesh_core.fakes.FakeUpstream`'s):
        deployments: deployment name → model name (the model reported in answers).
        api_keys: keys accepted in the ``api-key`` header.
        entra_tokens: tokens accepted as ``Authorization: Bearer``.
        api_versions: accepted ``api-version`` values on the deployment paths.

    ``endpoint`` is the resource endpoint to configure (``http://127.0.0.1:PORT``).
    """

    def __init__(
        self,
        *,
        deployments: Mapping[str, str] | None = None,
        entra_tokens: Sequence[str] = (),
        api_versions: Sequence[str] = ("2024-10-21", "2024-06-01", "2025-04-01-preview"),
        **kwargs: Any,
    ) -> None:
        deployments = dict(deployments or {"gpt4o-prod": "gpt-4o", "embed-small":
                                           "text-embedding-3-small"})
        super().__init__(models=tuple(deployments), **kwargs)
        self.deployments = deployments
        self.entra_tokens = frozenset(entra_tokens)
        self.api_versions = frozenset(api_versions)

    @property
    def endpoint(self) -> str:
        """The resource endpoint (what ``AZURE_OPENAI_ENDPOINT`` holds)."""
        return self.url

    def _routes(self, app: web.Application) -> None:
        route = "/openai/deployments/{deployment}"
        app.router.add_post(f"{route}/chat/completions", self._deployment(self._chat))
        app.router.add_post(f"{route}/embeddings", self._deployment(self._embeddings))
        app.router.add_get("/openai/models", self._versioned(self._models))
        app.router.add_post("/openai/v1/chat/completions", self._v1(self._chat))
        app.router.add_post("/openai/v1/embeddings", self._v1(self._embeddings))
        app.router.add_get("/openai/v1/models", self._models)

    # ------------------------------------------------------------------ routing

    def _azure_error(self, status: int, code: str, message: str) -> web.Response:
        return web.Response(status=status, body=_dumps({"error": {"code": code,
                                                                  "message": message}}),
                            content_type="application/json")

    def _versioned(self, handler: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if request.query.get("api-version") not in self.api_versions:
                return self._azure_error(404, "404", "Resource not found")
            return await handler(request)

        return wrapped

    def _deployment(self, handler: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if request.query.get("api-version") not in self.api_versions:
                return self._azure_error(404, "404", "Resource not found")
            if request.match_info["deployment"] not in self.deployments:
                return self._azure_error(404, "DeploymentNotFound", _NO_DEPLOYMENT)
            return await handler(request)

        return wrapped

    def _v1(self, handler: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                body = None
            model = body.get("model") if isinstance(body, dict) else None
            if model is not None and model not in self.deployments:
                return self._azure_error(404, "DeploymentNotFound", _NO_DEPLOYMENT)
            return await handler(request)

        return wrapped

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._azure_error(404, "404", "Resource not found")

    # ------------------------------------------------------------------ protocol details

    def _auth_failure(self, request: web.Request) -> Fail | None:
        key = request.headers.get("api-key")
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if token is not None:
            if token in self.entra_tokens:
                return None
            return Fail(401, code="401", message=_TOKEN_401)
        if self.api_keys is None or (key and key in self.api_keys):
            return None
        return Fail(401, code="401", message=_KEY_401)

    async def _accept(
        self, request: web.Request
    ) -> tuple[Any, Behaviour, dict[str, str]] | web.Response:
        accepted = await super()._accept(request)
        if self.calls and request.query_string:
            last = self.calls[-1]
            self.calls[-1] = attrs.evolve(last, path=request.path_qs)
        if not isinstance(accepted, web.Response):
            headers = accepted[2]
            headers.pop("x-request-id", None)
            headers["apim-request-id"] = str(uuid.uuid4())
            headers["x-ms-region"] = "Sweden Central"
        return accepted

    def _error(self, fail: Fail, headers: dict[str, str]) -> web.Response:
        out = dict(headers)
        if fail.retry_after is not None:
            ra = fail.retry_after
            out["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            out["retry-after-ms"] = str(int(ra * 1000))
        if fail.headers:
            out.update(fail.headers)
        message = fail.message if fail.message is not None else _MESSAGES.get(
            fail.status, f"HTTP {fail.status}"
        )
        code = fail.code if fail.code is not None else str(fail.status)
        return web.Response(status=fail.status,
                            body=_dumps({"error": {"code": code, "message": message}}),
                            headers=out, content_type="application/json")

    async def _common(
        self, request: web.Request, behaviour: Behaviour, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        if isinstance(behaviour, PromptFiltered):
            return web.Response(status=400, body=_dumps(PROMPT_FILTER_BODY), headers=headers,
                                content_type="application/json")
        if isinstance(behaviour, AnswerFiltered):
            body = orjson.loads(await request.read())
            return await self._filtered_answer(request, body, behaviour, headers)
        return await super()._common(request, behaviour, headers)

    async def _filtered_answer(
        self, request: web.Request, body: dict[str, Any], behaviour: AnswerFiltered,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        deployment = request.match_info.get("deployment") or str(body.get("model"))
        model = self.deployments.get(deployment, deployment)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        prompt_results = [{"prompt_index": 0, "content_filter_results": _SAFE}]
        if not body.get("stream"):
            answer = {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "prompt_filter_results": prompt_results,
                "choices": [{
                    "index": 0, "finish_reason": "content_filter",
                    "message": {"role": "assistant", "content": behaviour.content},
                    "content_filter_results": _FILTERED,
                }],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            }
            return web.Response(body=_dumps(answer), headers=headers,
                                content_type="application/json")
        resp = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None, results: Any) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if results is not None:
                choice["content_filter_results"] = results
            return b"data: " + _dumps({"id": ident, "object": "chat.completion.chunk",
                                       "created": created, "model": model,
                                       "choices": [choice]}) + b"\n\n"

        # Azure's first chunk carries only the prompt annotations.
        await resp.write(b"data: " + _dumps({"id": "", "object": "", "created": 0, "model": "",
                                             "prompt_filter_results": prompt_results,
                                             "choices": []}) + b"\n\n")
        await resp.write(chunk({"role": "assistant", "content": ""}, None, {}))
        for word in behaviour.content.split(" "):
            await resp.write(chunk({"content": word + " "}, None, _SAFE))
        await resp.write(chunk({}, "content_filter", _FILTERED))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
