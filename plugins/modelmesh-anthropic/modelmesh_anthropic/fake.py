"""A real local HTTP server that speaks Anthropic's API, for tests, demos and benchmarks.

:class:`FakeAnthropic` listens on ``127.0.0.1`` (a free port) and answers, in the documented
wire shapes:

* ``POST /v1/messages`` — a ``message`` object, or with ``"stream": true`` a
  ``text/event-stream`` of named events: ``message_start``, ``content_block_start``,
  ``ping``, ``content_block_delta`` (``text_delta`` split over several events,
  ``input_json_delta`` for tool inputs), ``content_block_stop``, ``message_delta`` (stop reason
  and cumulative usage), ``message_stop``;
* ``GET /v1/models`` — the configured models, paginated with ``limit`` / ``after_id``;
* ``POST /v1/messages/batches``, ``GET /v1/messages/batches/{id}``,
  ``GET /v1/messages/batches/{id}/results`` (JSONL, not in request order, as documented),
  ``POST /v1/messages/batches/{id}/cancel``. Creating a batch takes one scripted behaviour
  per request (``Reply`` → ``succeeded``, ``Fail`` → ``errored`` with its error body); the
  other batch endpoints take one for the whole answer (e.g. ``Raw(DOC_BATCH)``, ``Fail``).

Like the real API it checks what it can cheaply: the key (``x-api-key``, or an
``Authorization: Bearer`` as recent SDKs send it; when ``api_keys`` is given), that an
``anthropic-version`` header is present, a ``max_tokens`` and ``messages`` in the body, and a
final assistant message ending in whitespace (400, as Anthropic answers it); models listed in
``no_prefill_models`` refuse any trailing assistant message. Errors use Anthropic's body
``{"type": "error", "error": {"type", "message"}, "request_id"}``; every answer carries
``request-id`` and ``anthropic-ratelimit-*`` headers (RFC 3339 resets).

What it answers is scripted with behaviour records consumed one per request
(:meth:`FakeAnthropic.script`), falling back to :attr:`FakeAnthropic.default`::

    async with FakeAnthropic(api_keys={"sk-ant-test"}) as fake:
        fake.script(Fail(529), Reply("hello"))
        ...  # point an adapter or the anthropic SDK at fake.base_url
        assert fake.calls[1].body["max_tokens"] == 1024

The ``DOC_*`` constants are response examples from Anthropic's documentation (API reference,
streaming guide, errors page, batch processing guide), replayed byte for byte with :class:`Raw`.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson
from aiohttp import web
from attrs import define, field, frozen

from modelmesh_core.fakebase import FakeServer

__all__ = [
    "DOC_BATCH",
    "DOC_BATCH_RESULTS",
    "DOC_ERROR",
    "DOC_MESSAGE",
    "DOC_MODELS",
    "DOC_OVERLOADED_EVENT",
    "DOC_STREAM",
    "DOC_TOOL_STREAM",
    "Behaviour",
    "CutStream",
    "Fail",
    "FakeAnthropic",
    "MalformedEvent",
    "MalformedJSON",
    "Raw",
    "RecordedCall",
    "Reply",
    "Silent",
    "StallStream",
    "StreamError",
    "WrongContentType",
    "tool_use",
]

# --------------------------------------------------------------------------- documentation

DOC_MESSAGE = (
    b'{"content":[{"text":"Hi! My name is Claude.","type":"text"}],'
    b'"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","model":"claude-sonnet-4-5-20250929",'
    b'"role":"assistant","stop_reason":"end_turn","stop_sequence":null,"type":"message",'
    b'"usage":{"input_tokens":2095,"output_tokens":503}}'
)
"""The ``Message`` example of the Messages API reference (``POST /v1/messages``)."""

DOC_STREAM = b"""event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"""  # noqa: E501
"""The "basic streaming request" example of the streaming guide."""

DOC_TOOL_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" let"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'s"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" check"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" the"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" weather"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" for"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" Francisco"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":","}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" CA"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":":"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" Francisc"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"o,"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" CA\\""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":", "}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"unit\\": \\"fah"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"renheit\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""  # noqa: E501
"""The "streaming request with tool use" example of the streaming guide."""

DOC_OVERLOADED_EVENT = (
    b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
    b'"message": "Overloaded"}}\n\n'
)
"""The in-stream error event of the streaming guide ("error events")."""

DOC_ERROR = (
    b'{"type":"error","error":{"type":"not_found_error",'
    b'"message":"The requested resource could not be found."},'
    b'"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}'
)
"""The error shape example of the errors page."""

DOC_MODELS = (
    b'{"data":[{"created_at":"2025-02-19T00:00:00Z","display_name":"Claude Sonnet 4",'
    b'"id":"claude-sonnet-4-20250514","type":"model"}],'
    b'"first_id":"claude-sonnet-4-20250514","has_more":false,'
    b'"last_id":"claude-sonnet-4-20250514"}'
)
"""The ``GET /v1/models`` example of the Models API reference."""

DOC_BATCH = (
    b'{"archived_at":null,"cancel_initiated_at":null,'
    b'"created_at":"2024-09-24T18:37:24.100435Z","ended_at":null,'
    b'"expires_at":"2024-09-25T18:37:24.100435Z","id":"msgbatch_013Zva2CMHLNnXjNJJKqJ2EF",'
    b'"processing_status":"in_progress","request_counts":{"canceled":0,"errored":0,'
    b'"expired":0,"processing":2,"succeeded":0},"results_url":null,"type":"message_batch"}'
)
"""The ``message_batch`` object of the batch processing guide, right after creation."""

DOC_BATCH_RESULTS = (
    b'{"custom_id":"my-second-request","result":{"type":"succeeded","message":{"id":'
    b'"msg_014VwiXbi91y3JMjcpyGBHX5","type":"message","role":"assistant","model":'
    b'"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hello again! It\'s nice '
    b"to see you. How can I assist you today? Is there anything specific you'd like to chat "
    b'about or any questions you have?"}],"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":11,"output_tokens":36}}}}\n'
    b'{"custom_id":"my-first-request","result":{"type":"succeeded","message":{"id":'
    b'"msg_01FqfsLoHwgeFbguDgpz48m7","type":"message","role":"assistant","model":'
    b'"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hello! How can I assist '
    b"you today? Feel free to ask me any questions or let me know if there's anything you'd "
    b'like to chat about."}],"stop_reason":"end_turn","stop_sequence":null,"usage":'
    b'{"input_tokens":10,"output_tokens":34}}}}\n'
)
"""The results JSONL example of the batch processing guide (any order, keyed by custom_id)."""

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error",
          "There was an issue with the format or content of your request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error",
          "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Your account has hit a rate limit."),
    500: ("api_error", "An unexpected error has occurred internal to Anthropic's systems."),
    504: ("timeout_error", "The request timed out."),
    529: ("overloaded_error", "Overloaded"),
}  # fmt: skip
_WORD = re.compile(r"\s*\S+")
_TRAILING_WS = "messages: final assistant content cannot end with trailing whitespace"
_NO_PREFILL = "Prefilling assistant messages is not supported for this model."


# --------------------------------------------------------------------------- behaviours


def tool_use(name: str, input: Mapping[str, Any], id: str | None = None) -> dict[str, Any]:
    """A tool call for :class:`Reply` ``tool_calls``."""
    call: dict[str, Any] = {"name": name, "input": dict(input)}
    if id is not None:
        call["id"] = id
    return call


def _calls(value: Sequence[Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...]:
    return () if value is None else tuple(value)


@frozen
class Reply:
    """Answer successfully.

    Attributes:
        content: the text (one text block; split over several deltas when streaming).
        tool_calls: ``tool_use`` blocks after the text (see :func:`tool_use`); the answer then
            stops with ``tool_use``.
        usage: overrides of ``input_tokens``, ``output_tokens``, ``cache_read_input_tokens``,
            ``cache_creation_input_tokens``.
        stop_reason / stop_sequence: override ``end_turn`` / ``tool_use``.
        model: the model reported (default: the requested one).
        delay: seconds before the response headers; chunk_delay: between stream events.
    """

    content: str = "Hello from the fake Anthropic upstream!"
    tool_calls: tuple[Mapping[str, Any], ...] = field(default=(), converter=_calls)
    usage: Mapping[str, int] | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None
    model: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0


@frozen
class Fail:
    """Answer with an HTTP error and Anthropic's error body.

    ``type`` and ``message`` default to what Anthropic documents for ``status``;
    ``retry_after`` (seconds) becomes a ``retry-after`` header; ``headers`` are added.
    """

    status: int = 500
    type: str | None = None
    message: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None
    details: Mapping[str, Any] | None = None

    def body(self, request_id: str) -> dict[str, Any]:
        """The error body this failure sends."""
        kind, message = _ERRORS.get(
            self.status,
            ("api_error" if self.status >= 500 else "invalid_request_error", f"HTTP {self.status}"),
        )
        error: dict[str, Any] = {
            "type": self.type or kind,
            "message": self.message if self.message is not None else message,
        }
        if self.details is not None:
            error["details"] = dict(self.details)
        return {"type": "error", "error": error, "request_id": request_id}


@frozen
class StreamError:
    """Stream ``after_events`` events of a normal answer, then an ``event: error``.

    The default is the documented ``overloaded_error``. A non-streaming request gets the
    matching HTTP error instead.
    """

    after_events: int = 3
    type: str = "overloaded_error"
    message: str = "Overloaded"
    then: Reply = field(factory=Reply)


@frozen
class CutStream:
    """Send ``after_events`` stream events, then drop the connection (no ``message_stop``).

    A non-streaming request gets part of the JSON body, then the connection drops.
    """

    after_events: int = 3


@frozen
class StallStream:
    """Send ``after_events`` stream events, then nothing more until the server stops."""

    after_events: int = 2


@frozen
class MalformedEvent:
    """Send ``after_events`` good events, then ``data: {not json``, then the rest."""

    after_events: int = 2


@frozen
class MalformedJSON:
    """Answer 200 ``application/json`` with a truncated, unparsable body."""


@frozen
class WrongContentType:
    """Answer with an HTML page (as a captive portal or misconfigured proxy does)."""

    status: int = 200


@frozen
class Silent:
    """Accept the request and never answer (until the server stops)."""


@frozen
class Raw:
    """Answer exactly ``body`` (e.g. a ``DOC_*`` example) with ``content_type``."""

    body: bytes
    content_type: str = "application/json"
    status: int = 200
    headers: Mapping[str, str] | None = None


Behaviour: TypeAlias = (
    Reply
    | Fail
    | StreamError
    | CutStream
    | StallStream
    | MalformedEvent
    | MalformedJSON
    | WrongContentType
    | Silent
    | Raw
)


@frozen(kw_only=True)
class RecordedCall:
    """One request the fake received (header names lower-case; ``body`` parsed JSON or None)."""

    path: str
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    behaviour: Behaviour | None
    time: float

    @property
    def api_key(self) -> str | None:
        """The key the request carried: ``x-api-key``, else an ``Authorization`` bearer."""
        return _key(self.headers)


@define
class _Batch:
    id: str
    created: str
    results: list[tuple[str, dict[str, Any]]]
    polls: int = 0
    status: str = "in_progress"
    cancel_at: str | None = None
    ended_at: str | None = None


def _now_iso(offset: float = 0.0) -> str:
    stamp = datetime.fromtimestamp(time.time() + offset, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(headers: Mapping[str, str]) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization", "")
    return auth[7:].strip() or None if auth[:7].lower() == "bearer " else None


def _words(text: str) -> int:
    return len(text.split())


def _prompt_words(body: Mapping[str, Any]) -> int:
    count = 0
    system = body.get("system")
    if isinstance(system, str):
        count += _words(system)
    elif isinstance(system, list):
        count += sum(_words(b.get("text", "")) for b in system if isinstance(b, Mapping))
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            count += _words(content)
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                    count += _words(block["text"])
    return max(count, 1)


def _event(obj: Mapping[str, Any]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


# --------------------------------------------------------------------------- server


class FakeAnthropic(FakeServer[Behaviour, RecordedCall]):
    """A local fake of Anthropic's API over real HTTP.

    Args:
        api_keys: when given, requests must carry one of them in ``x-api-key`` (else 401).
        models: ids listed by ``GET /v1/models``.
        no_prefill_models: models that answer a trailing assistant message with a 400.
        batch_polls: ``GET`` status polls a batch stays ``in_progress`` for.
        rpm_limit / tpm_limit: limits reported in ``anthropic-ratelimit-*`` headers.
        default: behaviour when the script is empty (default ``Reply()``).

    Attributes:
        calls: every request received, in order (:class:`RecordedCall`).
    """

    server_name = "FakeAnthropic"

    def __init__(
        self,
        *,
        api_keys: Sequence[str] | set[str] | None = None,
        models: Sequence[str] = ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-6"),
        no_prefill_models: Sequence[str] = (),
        batch_polls: int = 1,
        rpm_limit: int = 4000,
        tpm_limit: int = 400_000,
        default: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.models = tuple(models)
        self.no_prefill_models = frozenset(no_prefill_models)
        self.batch_polls = batch_polls
        self.rpm_limit = rpm_limit
        self.tpm_limit = tpm_limit
        super().__init__(default=default if default is not None else Reply(), host=host,
                         port=port)
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._requests = 0

    # ------------------------------------------------------------------ public API

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, as the anthropic SDK and the adapter take it."""
        return f"http://{self._host}:{self.port}"

    def reset(self) -> None:
        """Forget calls, script, batches; restore the default."""
        super().reset()
        self.batches.clear()

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/messages/batches", self._batch_create)
        app.router.add_get("/v1/messages/batches/{id}", self._batch_get)
        app.router.add_get("/v1/messages/batches/{id}/results", self._batch_results)
        app.router.add_post("/v1/messages/batches/{id}/cancel", self._batch_cancel)

    # ------------------------------------------------------------------ plumbing

    def _headers(self) -> dict[str, str]:
        self._requests += 1
        reset = _now_iso(60)
        return {
            "request-id": f"req_fake{next(self._ids):016d}",
            "anthropic-organization-id": "00000000-0000-4000-8000-000000000000",
            "anthropic-ratelimit-requests-limit": str(self.rpm_limit),
            "anthropic-ratelimit-requests-remaining": str(max(self.rpm_limit - self._requests, 0)),
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": str(self.tpm_limit),
            "anthropic-ratelimit-tokens-remaining": str(self.tpm_limit - 100 * self._requests),
            "anthropic-ratelimit-tokens-reset": reset,
            "anthropic-ratelimit-input-tokens-limit": str(self.tpm_limit),
            "anthropic-ratelimit-input-tokens-remaining": str(self.tpm_limit),
            "anthropic-ratelimit-input-tokens-reset": reset,
            "anthropic-ratelimit-output-tokens-limit": str(self.tpm_limit // 5),
            "anthropic-ratelimit-output-tokens-remaining": str(self.tpm_limit // 5),
            "anthropic-ratelimit-output-tokens-reset": reset,
        }

    def _error(self, fail: Fail, headers: dict[str, str]) -> web.Response:
        out = dict(headers)
        if fail.retry_after is not None:
            ra = fail.retry_after
            out["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        if fail.headers:
            out.update(fail.headers)
        return web.Response(
            status=fail.status,
            body=orjson.dumps(fail.body(out["request-id"])),
            headers=out,
            content_type="application/json",
        )

    async def _accept(
        self, request: web.Request, scripted: bool = True
    ) -> tuple[Any, Behaviour, dict[str, str]] | web.Response:
        """Record the call; return ``(body, behaviour, headers)`` or an early error answer."""
        body: Any = None
        raw = await request.read() if request.method == "POST" else b""
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        headers = self._headers()
        failure = self._check(request, raw, body)
        behaviour = failure if failure is not None else (self._next()[0] if scripted else Reply())
        self.calls.append(
            RecordedCall(
                path=request.path,
                method=request.method,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                behaviour=behaviour,
                time=time.monotonic(),
            )
        )
        if failure is not None:
            return self._error(failure, headers)
        return body, behaviour, headers

    def _check(self, request: web.Request, raw: bytes, body: Any) -> Fail | None:
        if self.api_keys is not None:
            key = _key({k.lower(): v for k, v in request.headers.items()})
            if not key or key not in self.api_keys:
                return Fail(401)
        if not request.headers.get("anthropic-version"):
            return Fail(400, message="anthropic-version: header is required")
        if raw and body is None:
            return Fail(400, message="There was an issue with the format of your request: "
                                     "the body is not valid JSON")
        return None

    def _check_message(self, body: Any) -> Fail | None:
        if not isinstance(body, dict):
            return Fail(400, message="messages: Field required")
        if not isinstance(body.get("max_tokens"), int):
            return Fail(400, message="max_tokens: Field required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return Fail(400, message="messages: Field required")
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            if body.get("model") in self.no_prefill_models:
                return Fail(400, message=_NO_PREFILL)
            content = last.get("content")
            text = content if isinstance(content, str) else (
                content[-1].get("text") if isinstance(content, list) and content
                and isinstance(content[-1], dict) and content[-1].get("type") == "text" else None
            )
            if isinstance(text, str) and text != text.rstrip():
                return Fail(400, message=_TRAILING_WS)
        return None

    # ------------------------------------------------------------------ endpoints

    async def _not_found(self, request: web.Request) -> web.Response:
        return self._error(Fail(404), self._headers())

    async def _models(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        _, behaviour, headers = accepted
        if not isinstance(behaviour, Reply):
            return await self._other(request, behaviour, headers, stream=False)
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after_id")
        ids = list(self.models)
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        page = ids[:limit]
        data = {
            "data": [
                {"created_at": "2025-09-29T00:00:00Z", "display_name": name, "id": name,
                 "type": "model"}
                for name in page
            ],
            "first_id": page[0] if page else None,
            "has_more": len(ids) > limit,
            "last_id": page[-1] if page else None,
        }
        return web.json_response(data, headers=headers, dumps=lambda v: orjson.dumps(v).decode())

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        problem = self._check_message(body)
        if problem is not None:
            return self._error(problem, headers)
        stream = bool(body.get("stream"))
        if isinstance(behaviour, Reply):
            await self._pause(behaviour.delay)
            message = self._message(body, behaviour)
            if not stream:
                return web.Response(body=orjson.dumps(message), headers=headers,
                                    content_type="application/json")
            return await self._sse(request, headers, _stream_events(message, behaviour))
        return await self._other(request, behaviour, headers, stream, body)

    async def _other(
        self,
        request: web.Request,
        behaviour: Behaviour,
        headers: dict[str, str],
        stream: bool,
        body: Any = None,
    ) -> web.StreamResponse:
        if isinstance(behaviour, Fail):
            return self._error(behaviour, headers)
        if isinstance(behaviour, Raw):
            return web.Response(status=behaviour.status, body=behaviour.body,
                                headers={**headers, **(behaviour.headers or {})},
                                content_type=behaviour.content_type)
        if isinstance(behaviour, Silent):
            await self._hang()
            return web.Response(status=503, text="fake upstream shutting down")
        if isinstance(behaviour, WrongContentType):
            return web.Response(status=behaviour.status, headers=headers,
                                text="<html><body><h1>Please sign in</h1></body></html>",
                                content_type="text/html")
        if isinstance(behaviour, MalformedJSON) or (
            isinstance(behaviour, MalformedEvent) and not stream
        ):
            return web.Response(body=b'{"id":"msg_broken","type":"message","content":[{"ty',
                                headers=headers, content_type="application/json")
        if isinstance(behaviour, StreamError) and not stream:
            status = {v[0]: k for k, v in _ERRORS.items()}.get(behaviour.type, 500)
            return self._error(Fail(status, type=behaviour.type, message=behaviour.message),
                               headers)
        reply = behaviour.then if isinstance(behaviour, StreamError) else Reply(
            "This answer will not arrive whole, sorry about that.")
        message = self._message(body if isinstance(body, dict) else {}, reply)
        if not stream:
            return await self._partial(request, behaviour, headers)
        return await self._sse(request, headers, _stream_events(message, reply), behaviour)

    async def _partial(
        self, request: web.Request, behaviour: Behaviour, headers: dict[str, str]
    ) -> web.StreamResponse:
        payload = b'{"id":"msg_partial","type":"message","role":"assistant","content":['
        resp = web.StreamResponse(headers=headers)
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

    async def _sse(
        self,
        request: web.Request,
        headers: dict[str, str],
        events: Iterator[dict[str, Any]],
        behaviour: Behaviour | None = None,
    ) -> web.StreamResponse:
        limit = getattr(behaviour, "after_events", None)
        delay = behaviour.then.chunk_delay if isinstance(behaviour, StreamError) else 0.0
        resp = web.StreamResponse(headers={**headers, "cache-control": "no-cache"})
        resp.content_type = "text/event-stream"
        resp.charset = "utf-8"
        await resp.prepare(request)
        try:
            for sent, event in enumerate(events):
                if limit is not None and sent >= limit:
                    break
                pause = event.pop("_delay", delay)
                if sent and pause:
                    await self._pause(pause)
                await resp.write(_event(event))
            if isinstance(behaviour, StreamError):
                error = {"type": "error",
                         "error": {"type": behaviour.type, "message": behaviour.message}}
                await resp.write(_event(error))
            elif isinstance(behaviour, CutStream):
                _drop(request)
                return resp
            elif isinstance(behaviour, StallStream):
                await self._hang()
                _drop(request)
                return resp
            elif isinstance(behaviour, MalformedEvent):
                await resp.write(b"event: content_block_delta\ndata: {not json\n\n")
                for event in events:
                    event.pop("_delay", None)
                    await resp.write(_event(event))
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    def _message(self, body: Mapping[str, Any], reply: Reply) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.content or not reply.tool_calls:
            content.append({"type": "text", "text": reply.content})
        n = next(self._ids)
        for index, call in enumerate(reply.tool_calls):
            content.append({
                "type": "tool_use",
                "id": call.get("id") or f"toolu_fake{n:08d}{index:02d}",
                "name": call["name"],
                "input": dict(call.get("input") or {}),
            })
        over = dict(reply.usage or {})
        output = _words(reply.content) + sum(
            len(orjson.dumps(c["input"])) // 4 for c in content if c["type"] == "tool_use")
        usage = {
            "input_tokens": over.get("input_tokens", _prompt_words(body)),
            "cache_creation_input_tokens": over.get("cache_creation_input_tokens", 0),
            "cache_read_input_tokens": over.get("cache_read_input_tokens", 0),
            "output_tokens": over.get("output_tokens", max(output, 1)),
            "service_tier": "standard",
        }
        stop = reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")
        return {
            "id": f"msg_fake{n:016d}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or str(body.get("model") or "claude-sonnet-4-5"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": reply.stop_sequence,
            "usage": usage,
        }

    # ------------------------------------------------------------------ batches

    def _batch_object(self, batch: _Batch) -> dict[str, Any]:
        counts = {"canceled": 0, "errored": 0, "expired": 0, "processing": 0, "succeeded": 0}
        for _, result in batch.results:
            if batch.status == "in_progress":
                counts["processing"] += 1
            else:
                counts[result["type"]] += 1
        ended = batch.status == "ended"
        return {
            "archived_at": None,
            "cancel_initiated_at": batch.cancel_at,
            "created_at": batch.created,
            "ended_at": batch.ended_at,
            "expires_at": _now_iso(86400),
            "id": batch.id,
            "processing_status": batch.status,
            "request_counts": counts,
            "results_url": f"{self.base_url}/v1/messages/batches/{batch.id}/results"
            if ended else None,
            "type": "message_batch",
        }

    async def _batch_create(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request, scripted=False)
        if isinstance(accepted, web.Response):
            return accepted
        body, _, headers = accepted
        items = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return self._error(Fail(400, message="requests: Field required"), headers)
        results: list[tuple[str, dict[str, Any]]] = []
        for item in items:
            params = item.get("params") if isinstance(item, dict) else None
            behaviour = self._next()[0]
            problem = self._check_message(params)
            if problem is None and isinstance(behaviour, Fail):
                problem = behaviour
            if problem is not None:
                error = problem.body(f"req_fake{next(self._ids):016d}")
                error.pop("request_id")
                results.append((item.get("custom_id", ""),
                                {"type": "errored", "error": error}))
            else:
                reply = behaviour if isinstance(behaviour, Reply) else Reply()
                results.append((item.get("custom_id", ""), {
                    "type": "succeeded", "message": self._message(params or {}, reply)}))
        batch = _Batch(id=f"msgbatch_fake{next(self._ids):012d}", created=_now_iso(),
                       results=results)
        self.batches[batch.id] = batch
        return web.json_response(self._batch_object(batch), headers=headers)

    def _find(self, request: web.Request) -> _Batch | None:
        return self.batches.get(request.match_info["id"])

    async def _batch_get(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        _, behaviour, headers = accepted
        if not isinstance(behaviour, Reply):
            return await self._other(request, behaviour, headers, stream=False)
        batch = self._find(request)
        if batch is None:
            return self._error(Fail(404), headers)
        batch.polls += 1
        if batch.status != "ended" and batch.polls >= self.batch_polls:
            batch.status, batch.ended_at = "ended", _now_iso()
        return web.json_response(self._batch_object(batch), headers=headers)

    async def _batch_cancel(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        _, behaviour, headers = accepted
        if not isinstance(behaviour, Reply):
            return await self._other(request, behaviour, headers, stream=False)
        batch = self._find(request)
        if batch is None:
            return self._error(Fail(404), headers)
        if batch.status == "in_progress":
            batch.status, batch.cancel_at = "canceling", _now_iso()
            batch.results = [(cid, {"type": "canceled"}) for cid, _ in batch.results]
        return web.json_response(self._batch_object(batch), headers=headers)

    async def _batch_results(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        _, behaviour, headers = accepted
        if not isinstance(behaviour, Reply):
            return await self._other(request, behaviour, headers, stream=False)
        batch = self._find(request)
        if batch is None or batch.status != "ended":
            return self._error(Fail(404, message="No results are available for this batch "
                                                 "until it has ended."), headers)
        lines = [orjson.dumps({"custom_id": cid, "result": result})
                 for cid, result in reversed(batch.results)]
        return web.Response(body=b"\n".join(lines) + b"\n", headers=headers,
                            content_type="application/binary")


def _stream_events(message: dict[str, Any], reply: Reply) -> Iterator[dict[str, Any]]:
    """The documented event sequence for one message."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    yield {"type": "message_start", "message": start}
    delay = reply.chunk_delay
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield {"type": "content_block_start", "index": index,
                   "content_block": {"type": "text", "text": ""}, "_delay": delay}
            if index == 0:
                yield {"type": "ping", "_delay": delay}
            for piece in _WORD.findall(block["text"]):
                yield {"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": piece}, "_delay": delay}
        else:
            yield {"type": "content_block_start", "index": index,
                   "content_block": {"type": "tool_use", "id": block["id"],
                                     "name": block["name"], "input": {}}, "_delay": delay}
            args = orjson.dumps(block["input"]).decode()
            yield {"type": "content_block_delta", "index": index,
                   "delta": {"type": "input_json_delta", "partial_json": ""}, "_delay": delay}
            step = max(len(args) // 3, 1)
            for at in range(0, len(args), step):
                yield {"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": args[at:at + step]},
                       "_delay": delay}
        yield {"type": "content_block_stop", "index": index, "_delay": delay}
    usage = {k: v for k, v in message["usage"].items() if k != "service_tier"}
    yield {"type": "message_delta",
           "delta": {"stop_reason": message["stop_reason"],
                     "stop_sequence": message["stop_sequence"]},
           "usage": usage, "_delay": delay}
    yield {"type": "message_stop", "_delay": delay}
