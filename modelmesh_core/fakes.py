"""A real local HTTP server that speaks the OpenAI API, for tests, demos and benchmarks.

:class:`FakeUpstream` listens on ``127.0.0.1`` (a free port) and answers the endpoints an
OpenAI-compatible provider adapter talks to, in the documented wire shapes:

* ``POST /v1/chat/completions`` — a ``chat.completion`` object, or with ``"stream": true`` a
  ``text/event-stream`` of ``chat.completion.chunk`` objects (role first, content split over
  several chunks, tool calls as index-keyed deltas, a final chunk carrying ``finish_reason``,
  a usage chunk with ``"choices": []`` when ``stream_options.include_usage`` is true, then
  ``data: [DONE]``);
* ``POST /v1/embeddings`` — deterministic, hash-based unit vectors (``float`` or ``base64``);
* ``GET /v1/models`` — the configured model list;
* ``POST /v1/images/generations`` — ``url`` or ``b64_json`` images (``dall-e-*`` shape, with
  ``revised_prompt`` for ``dall-e-3``; ``gpt-image-*`` always answers ``b64_json`` with token
  ``usage`` and rejects ``response_format``); ``POST /v1/audio/speech`` — deterministic
  audio bytes of the asked format, sent chunked; ``POST /v1/audio/transcriptions`` and
  ``/v1/audio/translations`` — a multipart upload answered as ``json``, ``text``, ``srt``,
  ``vtt`` or ``verbose_json`` (the transcript is :class:`Reply` ``content``);
  ``POST /v1/moderations`` — OpenAI's moderation object (inputs with violent words are
  flagged);
* the Azure OpenAI shapes ``/openai/deployments/{deployment}/chat/completions`` and
  ``…/embeddings`` (authenticated by an ``api-key`` header); see
  :attr:`FakeUpstream.azure_base_url`;
* the Files and Batch APIs (``/v1/files``, ``/v1/batches``), batches processed
  asynchronously and scripted with :class:`BatchRun` (see :mod:`modelmesh_core.fakebatches`).

Every answer carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers; the
remaining counts go down within a one-minute window of the injectable clock. Errors use the
OpenAI error body ``{"error": {"message", "type", "param", "code"}}``.

What the server does is scripted with frozen *behaviour* records consumed one per request
(:meth:`FakeUpstream.script`), falling back to :attr:`FakeUpstream.default`::

    async with FakeUpstream(api_keys={"sk-test-1234567890"}) as fake:
        fake.script(Fail(429, code="insufficient_quota"), Reply("hello"))
        ...  # point an adapter or the OpenAI SDK at fake.base_url
        assert fake.calls[1].behaviour == Reply("hello")

For synchronous code (a demo command, sync tests) the server runs on its own event loop in a
daemon thread::

    with FakeUpstream.running_in_thread() as fake:
        openai.OpenAI(base_url=fake.base_url, api_key="x").models.list()
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import itertools
import math
import random
import re
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import orjson
from aiohttp import web
from attrs import define, evolve, field, frozen

from . import fakebatches as _fakebatches
from .fakebase import FakeServer
from .fakebatches import BatchRun, FilesBatchesMixin

__all__ = [
    "DEFAULT_FAKE_MODELS",
    "BatchRun",
    "Behaviour",
    "CutStream",
    "Fail",
    "FakeUpstream",
    "Flaky",
    "MalformedChunk",
    "MalformedJSON",
    "ManualClock",
    "NoDone",
    "Prefill",
    "RateLimited",
    "RecordedCall",
    "Reply",
    "Silent",
    "StallStream",
    "StreamError",
    "WrongContentType",
    "fake_audio",
    "format_reset",
    "tool_call",
]

DEFAULT_FAKE_MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
)
"""Models listed by ``GET /v1/models`` unless the fake is given others."""

_WINDOW = 60.0


# --------------------------------------------------------------------------- behaviours


def _tool_calls(value: Sequence[Mapping[str, Any]] | None) -> tuple[Mapping[str, Any], ...] | None:
    return None if value is None else tuple(value)


def tool_call(name: str, arguments: str | Mapping[str, Any], id: str | None = None) -> dict:
    """A tool call for :class:`Reply` ``tool_calls``; ``arguments`` may be a dict (JSON-encoded)."""
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments).decode()
    call: dict[str, Any] = {"name": name, "arguments": arguments}
    if id is not None:
        call["id"] = id
    return call


@frozen
class Reply:
    """Answer successfully.

    Attributes:
        content: the assistant text (split into several chunks when streaming).
        tool_calls: ``[{"name", "arguments", "id"?}]`` (see :func:`tool_call`); when given, the
            answer carries ``tool_calls`` and finishes with ``"tool_calls"``.
        delay: seconds before the response headers are sent.
        chunk_delay: seconds between two stream chunks.
        usage: overrides of the computed usage (``prompt_tokens``, ``completion_tokens``,
            ``cached_tokens``, ``reasoning_tokens``).
        model: the model name reported (default: the requested one).
        finish_reason: overrides ``"stop"`` / ``"tool_calls"``.
    """

    content: str = "Hello from the fake upstream!"
    tool_calls: tuple[Mapping[str, Any], ...] | None = field(default=None, converter=_tool_calls)
    delay: float = 0.0
    chunk_delay: float = 0.0
    usage: Mapping[str, int] | None = None
    model: str | None = None
    finish_reason: str | None = None


_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key in your account settings.",
    ),
    403: (
        "invalid_request_error",
        "unsupported_country_region_territory",
        "Country, region, or territory not supported.",
    ),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    408: ("timeout", None, "Request timed out."),
    409: ("conflict", None, "The request conflicts with another request."),
    422: ("invalid_request_error", None, "Unprocessable request."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    504: ("server_error", None, "Gateway timeout."),
}

_QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."


@frozen
class Fail:
    """Answer with an HTTP error and an OpenAI error body.

    ``type``, ``code`` and ``message`` default to what OpenAI sends for ``status``; a 429 with
    ``code="insufficient_quota"`` is an exhausted account quota, the default 429
    (``rate_limit_exceeded``) a transient per-minute limit. ``retry_after`` (seconds) becomes a
    ``retry-after`` header; ``headers`` are added as given; ``delay`` waits before answering.
    """

    status: int = 500
    message: str | None = None
    type: str | None = None
    code: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None
    delay: float = 0.0

    @classmethod
    def quota(cls, retry_after: float | None = None) -> Fail:
        """A 429 meaning the account quota is exhausted (``insufficient_quota``)."""
        return cls(429, code="insufficient_quota", retry_after=retry_after)

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0) -> Fail:
        """A transient 429 (``rate_limit_exceeded``) with a Retry-After header."""
        return cls(429, code="rate_limit_exceeded", retry_after=retry_after)

    @classmethod
    def context_length(cls, limit: int = 128000) -> Fail:
        """A 400 ``context_length_exceeded`` as OpenAI sends for an over-long prompt."""
        return cls(
            400,
            code="context_length_exceeded",
            message=(
                f"This model's maximum context length is {limit} tokens. However, your "
                "messages resulted in more tokens. Please reduce the length of the messages."
            ),
        )

    @classmethod
    def content_filter(cls) -> Fail:
        """A 400 refusing the prompt on content-policy grounds."""
        return cls(
            400,
            code="content_policy_violation",
            message="Your request was rejected as a result of our safety system.",
        )

    def body(self) -> dict[str, Any]:
        """The OpenAI error body this failure sends."""
        kind, code, message = _ERROR_DEFAULTS.get(
            self.status,
            (
                "server_error" if self.status >= 500 else "invalid_request_error",
                None,
                f"HTTP {self.status}.",
            ),
        )
        code = self.code if self.code is not None else code
        if self.status == 429 and code == "insufficient_quota":
            kind, message = "insufficient_quota", _QUOTA_MESSAGE
        return {
            "error": {
                "message": self.message if self.message is not None else message,
                "type": self.type if self.type is not None else kind,
                "param": None,
                "code": code,
            }
        }


@frozen
class Silent:
    """Accept the request and never answer (until the server stops: then a 503)."""


@frozen
class CutStream:
    """Send ``after_chunks`` stream events, then drop the connection (no ``[DONE]``).

    ``after_words=N`` instead sends the role chunk and the first N words. For a non-streaming
    request: send part of the JSON body, then drop the connection.
    """

    after_chunks: int = 2
    after_words: int | None = None


@frozen
class StallStream:
    """Send ``after_chunks`` stream events, then send nothing more until the server stops.

    ``after_chunks=0`` sends the response headers only; ``after_words=N`` sends the role chunk
    and the first N words. For a non-streaming request: headers and part of the body, then
    nothing.
    """

    after_chunks: int = 1
    after_words: int | None = None


@frozen
class StreamError:
    """Send the role chunk and ``after_words`` words, then an in-band error event
    (``data: {"error": {...}}``, as OpenAI sends when a stream fails on its side), then end
    the body without ``[DONE]``."""

    after_words: int = 2
    message: str = "The server had an error while processing your request. Sorry about that!"
    type: str = "server_error"
    code: str | None = None


@frozen
class NoDone:
    """Stream the answer, then end the body cleanly without ``data: [DONE]``.

    With ``finish_reason=True`` every event is sent (the chunk carrying ``finish_reason`` and
    the usage chunk included): a complete answer missing only its terminator. With
    ``finish_reason=False`` only the role chunk and the words are sent: a truncated answer.
    """

    finish_reason: bool = True


@frozen
class MalformedJSON:
    """Answer 200 ``application/json`` with a truncated, unparsable JSON body."""


@frozen
class MalformedChunk:
    """Send ``after_chunks`` good stream events, then ``data: {not json`` (then ``[DONE]``).

    ``after_words=N`` instead sends the role chunk and the first N words before the bad event.
    For a non-streaming request this behaves like :class:`MalformedJSON`.
    """

    after_chunks: int = 1
    after_words: int | None = None


@frozen
class WrongContentType:
    """Answer with an HTML page (as a captive portal or misconfigured proxy does)."""

    status: int = 200


@frozen
class Flaky:
    """Fail with probability ``rate`` (answer ``fail``), else answer ``then``.

    Draws from a private ``random.Random(seed)``, so a seeded fake is reproducible.
    """

    rate: float
    then: Behaviour = field(factory=Reply)
    fail: Behaviour = field(factory=lambda: Fail(500))
    seed: int | None = None


@frozen
class RateLimited:
    """Answer ``then`` for the first ``rpm`` requests of each clock minute, then 429.

    The 429 carries ``retry-after`` (seconds to the end of the window, rounded up) and
    ``x-ratelimit-*`` headers showing the exhausted ``rpm`` limit. The window follows the
    fake's ``clock``.
    """

    rpm: int
    then: Behaviour = field(factory=Reply)


Behaviour: TypeAlias = (
    Reply
    | Fail
    | Silent
    | CutStream
    | StallStream
    | MalformedJSON
    | MalformedChunk
    | WrongContentType
    | Flaky
    | RateLimited
    | StreamError
    | NoDone
)
"""Any scriptable behaviour record."""

# fakebatches is imported above this alias (its mixin is a base of FakeUpstream): give its
# annotations the alias, so that typing.get_type_hints resolves BatchRun's fields.
_fakebatches.Behaviour = Behaviour  # type: ignore[attr-defined]


class Prefill(enum.StrEnum):
    """What the fake does with a chat request whose last message is the assistant's (a
    *prefill*, as a router sends to continue a broken stream).

    ``IGNORE`` answers the canned reply in full, as OpenAI's own API does; ``CONTINUE``
    continues the prefill when it is a (whitespace-normalised) prefix of the canned reply —
    only the rest is generated, as llama.cpp or vLLM with ``continue_final_message`` and
    Anthropic do — and otherwise answers in full; ``REJECT`` answers 400, as a model that does
    not support prefill does.
    """

    IGNORE = "ignore"
    CONTINUE = "continue"
    REJECT = "reject"


_PREFILL_REJECTED = (
    "This model does not support assistant message prefill. The conversation must end with a "
    "user message."
)


def _continuation(content: str, prefix: str) -> str | None:
    """The part of ``content`` after ``prefix`` (both whitespace-normalised), or None when
    ``prefix`` does not begin ``content``."""
    target = " ".join(prefix.split())
    i, j, n = 0, 0, len(content)
    while i < n and content[i].isspace():
        i += 1
    while j < len(target):
        if i >= n:
            return None
        if target[j] == " ":
            if not content[i].isspace():
                return None
            while i < n and content[i].isspace():
                i += 1
        elif content[i] != target[j]:
            return None
        else:
            i += 1
        j += 1
    if prefix[-1:].isspace():
        while i < n and content[i].isspace():
            i += 1
    return content[i:]


@frozen(kw_only=True)
class RecordedCall:
    """One request the fake received.

    ``headers`` has lower-case names; ``body`` is the parsed JSON (None for GET or an
    unparsable body); ``time`` is ``time.monotonic()`` at arrival; ``behaviour`` is the leaf
    behaviour that answered (a :class:`Flaky` is recorded as the branch it took; an
    authentication failure as a ``Fail(401)``); ``scripted`` tells a queued behaviour from the
    default.
    """

    path: str
    method: str
    headers: dict[str, str]
    body: Any
    time: float
    behaviour: Behaviour | None
    scripted: bool = False

    @property
    def api_key(self) -> str | None:
        """The key the request authenticated with (bearer token or ``api-key`` header)."""
        auth = self.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return self.headers.get("api-key")


class ManualClock:
    """A clock for :class:`FakeUpstream` (``clock=``) that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


def format_reset(seconds: float) -> str:
    """Format a duration the way OpenAI's ``x-ratelimit-reset-*`` headers do.

    ``0.02`` → ``"20ms"``, ``1`` → ``"1s"``, ``1.5`` → ``"1.5s"``, ``360`` → ``"6m0s"``,
    ``3725`` → ``"1h2m5s"``.
    """
    if seconds < 1.0:
        return f"{max(round(seconds * 1000), 0)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


# --------------------------------------------------------------------------- helpers

_WORD = re.compile(r"\s*\S+")


def _words(text: str) -> int:
    return len(text.split())


def _message_words(messages: Any) -> int:
    count = 0
    if not isinstance(messages, list):
        return 0
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, str):
            count += _words(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    count += _words(part["text"])
    return count


def _unit_vector(text: str, dim: int) -> list[float]:
    raw = b""
    counter = 0
    seed = text.encode()
    while len(raw) < dim * 4:
        raw += hashlib.sha256(seed + counter.to_bytes(4, "little")).digest()
        counter += 1
    values = [(v / 2147483647.5) - 1.0 for v in struct.unpack(f"<{dim}I", raw[: dim * 4])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _mask(key: str) -> str:
    return f"{key[:3]}{'*' * 4}{key[-4:]}" if len(key) > 8 else "****"


@define
class _Window:
    start: float
    requests: int = 0
    tokens: int = 0


# --------------------------------------------------------------------------- server


class FakeUpstream(FilesBatchesMixin, FakeServer[Behaviour, RecordedCall]):
    """A local fake OpenAI upstream over real HTTP.

    Args:
        api_keys: when given, requests must authenticate with one of these keys
            (``Authorization: Bearer <key>`` or ``api-key: <key>``), else 401.
        models: names listed by ``GET /v1/models``.
        embedding_dim: vector size when the request gives no ``dimensions``.
        rpm_limit / tpm_limit: the limits reported in ``x-ratelimit-*`` headers.
        default: the behaviour when the script queue is empty (default ``Reply()``).
        clock: monotonic seconds for the rate-limit windows (see :class:`ManualClock`).
        host / port: where to listen; port 0 picks a free port.
        prefill: what a chat request ending with an assistant message gets (:class:`Prefill`;
            assign :attr:`prefill` to change it).

    Attributes:
        calls: every request received, in order (:class:`RecordedCall`).
        default: the fallback behaviour; assign to change it.
    """

    server_name = "FakeUpstream"

    def __init__(
        self,
        *,
        api_keys: Sequence[str] | set[str] | None = None,
        models: Sequence[str] = DEFAULT_FAKE_MODELS,
        embedding_dim: int = 16,
        rpm_limit: int = 10_000,
        tpm_limit: int = 2_000_000,
        default: Behaviour | None = None,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
        prefill: Prefill = Prefill.IGNORE,
    ) -> None:
        self.api_keys: frozenset[str] | None = None if api_keys is None else frozenset(api_keys)
        self.models = tuple(models)
        self.embedding_dim = embedding_dim
        self.rpm_limit = rpm_limit
        self.tpm_limit = tpm_limit
        super().__init__(default=default if default is not None else Reply(), host=host,
                         port=port)
        self.clock = clock
        self.prefill = Prefill(prefill)
        self._state: dict[int, tuple[Behaviour, Any]] = {}
        self._window = _Window(start=clock())
        self._ids = itertools.count(1)
        self._init_batches()

    # ------------------------------------------------------------------ public API

    @property
    def base_url(self) -> str:
        """The OpenAI SDK style base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def azure_base_url(self) -> str:
        """The Azure OpenAI style base, ``http://127.0.0.1:PORT/openai``."""
        return f"{self.url}/openai"

    def reset(self) -> None:
        """Forget calls, the script, behaviour state, rate windows, files and batches; restore
        the defaults."""
        super().reset()
        self._state.clear()
        self._window = _Window(start=self.clock())
        self._reset_batches()

    def _routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/audio/translations", self._transcriptions)
        app.router.add_post("/v1/moderations", self._moderations)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embeddings)
        app.router.add_get("/openai/models", self._models)
        self._add_batch_routes(app)

    # ------------------------------------------------------------------ dispatch

    def _resolve(self, behaviour: Behaviour) -> Behaviour:
        while True:
            if isinstance(behaviour, Flaky):
                rng = self._stateful(behaviour, functools.partial(random.Random, behaviour.seed))
                behaviour = behaviour.fail if rng.random() < behaviour.rate else behaviour.then
            elif isinstance(behaviour, RateLimited):
                window = self._stateful(behaviour, lambda: _Window(start=self.clock()))
                now = self.clock()
                if now - window.start >= _WINDOW:
                    window.start, window.requests = now, 0
                window.requests += 1
                if window.requests <= behaviour.rpm:
                    behaviour = behaviour.then
                    continue
                wait = max(window.start + _WINDOW - now, 0.0)
                return Fail(
                    429,
                    code="rate_limit_exceeded",
                    message=(
                        f"Rate limit reached for requests per min (RPM): Limit "
                        f"{behaviour.rpm}, Used {behaviour.rpm}, Requested 1. Please try "
                        f"again in {format_reset(wait)}."
                    ),
                    retry_after=float(math.ceil(wait)),
                    headers={
                        "x-ratelimit-limit-requests": str(behaviour.rpm),
                        "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": format_reset(wait),
                    },
                )
            else:
                return behaviour

    def _stateful(self, behaviour: Behaviour, make: Callable[[], Any]) -> Any:
        entry = self._state.get(id(behaviour))
        if entry is None or entry[0] is not behaviour:
            entry = (behaviour, make())
            self._state[id(behaviour)] = entry
        return entry[1]

    def _auth_failure(self, request: web.Request) -> Fail | None:
        if self.api_keys is None:
            return None
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("api-key")
        if key and key in self.api_keys:
            return None
        if not key:
            return Fail(
                401,
                code=None,
                message=(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                    "YOUR_KEY)."
                ),
            )
        return Fail(
            401,
            code="invalid_api_key",
            message=(
                f"Incorrect API key provided: {_mask(key)}. You can find your API key in "
                "your account settings."
            ),
        )

    def _rate_headers(self, tokens: int) -> dict[str, str]:
        now = self.clock()
        window = self._window
        if now - window.start >= _WINDOW:
            window.start, window.requests, window.tokens = now, 0, 0
        window.requests += 1
        window.tokens += tokens
        reset = format_reset(max(window.start + _WINDOW - now, 0.0))
        return {
            "x-ratelimit-limit-requests": str(self.rpm_limit),
            "x-ratelimit-remaining-requests": str(max(self.rpm_limit - window.requests, 0)),
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-limit-tokens": str(self.tpm_limit),
            "x-ratelimit-remaining-tokens": str(max(self.tpm_limit - window.tokens, 0)),
            "x-ratelimit-reset-tokens": reset,
        }

    async def _accept(
        self, request: web.Request
    ) -> tuple[Any, Behaviour, dict[str, str]] | web.Response:
        body: Any = None
        if request.method == "POST":
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                body = None
        failure = self._auth_failure(request)
        if failure is not None:
            behaviour: Behaviour = failure
            scripted = False
        else:
            picked, scripted = self._next()
            behaviour = self._resolve(picked)
        self.calls.append(
            RecordedCall(
                path=request.path,
                method=request.method,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                time=time.monotonic(),
                behaviour=behaviour,
                scripted=scripted,
            )
        )
        if request.method == "POST" and not isinstance(body, dict) and failure is None:
            return self._error(
                Fail(400, message="We could not parse the JSON body of your request."), {}
            )
        tokens = _message_words(body.get("messages")) if isinstance(body, dict) else 0
        headers = self._rate_headers(tokens)
        headers["x-request-id"] = f"req_fake{next(self._ids):012d}"
        return body, behaviour, headers

    def _error(self, fail: Fail, headers: dict[str, str]) -> web.Response:
        out = dict(headers)
        if fail.retry_after is not None:
            ra = fail.retry_after
            out["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
        if fail.headers:
            out.update(fail.headers)
        return web.Response(
            status=fail.status,
            body=_dumps(fail.body()),
            headers=out,
            content_type="application/json",
        )

    async def _common(
        self, request: web.Request, behaviour: Behaviour, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """Answer the behaviours that do not depend on the endpoint; None for the rest."""
        if isinstance(behaviour, Fail):
            await self._pause(behaviour.delay)
            return self._error(behaviour, headers)
        if isinstance(behaviour, Silent):
            await self._hang()
            return web.Response(status=503, text="fake upstream shutting down")
        if isinstance(behaviour, WrongContentType):
            return web.Response(
                status=behaviour.status,
                text="<html><head><title>Gateway</title></head><body><h1>Please sign in"
                "</h1></body></html>",
                content_type="text/html",
                headers=headers,
            )
        if isinstance(behaviour, MalformedJSON):
            return web.Response(
                body=b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"in',
                content_type="application/json",
                headers=headers,
            )
        return None

    async def _partial_body(
        self, request: web.Request, behaviour: CutStream | StallStream, headers: dict[str, str]
    ) -> web.StreamResponse:
        payload = b'{"id": "chatcmpl-partial", "object": "chat.completion", "choices": ['
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "application/json"
        resp.content_length = len(payload) * 4
        await resp.prepare(request)
        try:
            await resp.write(payload)
            if isinstance(behaviour, CutStream):
                _drop(request)
            else:
                await self._hang()
                _drop(request)
        except ConnectionError:
            pass
        return resp

    # ------------------------------------------------------------------ endpoints

    async def _not_found(self, request: web.Request) -> web.Response:
        return web.Response(
            status=404,
            body=_dumps(
                {
                    "error": {
                        "message": f"Invalid URL ({request.method} {request.path})",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            ),
            content_type="application/json",
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        _, behaviour, headers = accepted
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        if isinstance(behaviour, Reply):
            await self._pause(behaviour.delay)
        data = {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for name in self.models
            ],
        }
        return web.Response(body=_dumps(data), content_type="application/json", headers=headers)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
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
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        await self._pause(reply.delay)
        raw_input = body.get("input", "")
        inputs = [raw_input] if isinstance(raw_input, str) else list(raw_input)
        texts = [x if isinstance(x, str) else orjson.dumps(x).decode() for x in inputs]
        dim = body.get("dimensions") or self.embedding_dim
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = _unit_vector(text, int(dim))
            embedding: Any = vector
            if as_base64:
                embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(max(_words(t), 1) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        if reply.usage:
            usage.update(reply.usage)
        answer = {
            "object": "list",
            "data": data,
            "model": reply.model or body.get("model", "text-embedding-3-small"),
            "usage": usage,
        }
        return web.Response(body=_dumps(answer), content_type="application/json", headers=headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        stream = bool(body.get("stream"))
        if not stream:
            if isinstance(behaviour, CutStream | StallStream):
                return await self._partial_body(request, behaviour, headers)
            if isinstance(behaviour, MalformedChunk):
                return (await self._common(request, MalformedJSON(), headers)) or web.Response()
            if isinstance(behaviour, StreamError):
                return self._error(Fail(500, message=behaviour.message, type=behaviour.type,
                                        code=behaviour.code), headers)
        # A stream fault (cut, stall, …) breaks the canned answer: the default Reply's text.
        reply = (
            behaviour
            if isinstance(behaviour, Reply)
            else self.default
            if isinstance(self.default, Reply)
            else Reply(content="This stream will not finish as it should, sorry.")
        )
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if (isinstance(last, Mapping) and last.get("role") == "assistant"
                and isinstance(last.get("content"), str) and self.prefill is not Prefill.IGNORE):
            if self.prefill is Prefill.REJECT:
                return self._error(Fail(400, message=_PREFILL_REJECTED), headers)
            rest = _continuation(reply.content, last["content"])
            if rest is not None:
                reply = evolve(reply, content=rest)
        await self._pause(reply.delay)
        completion = _Completion(self, body, reply, next(self._ids))
        if not stream:
            return web.Response(
                body=_dumps(_with_n(completion.object(), body.get("n"))),
                content_type="application/json",
                headers=headers,
            )
        return await self._sse(request, body, behaviour, reply, completion, headers)

    async def _sse(
        self,
        request: web.Request,
        body: dict[str, Any],
        behaviour: Behaviour,
        reply: Reply,
        completion: _Completion,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
        events: Iterator[dict[str, Any]] = completion.chunks(include_usage)
        limit = getattr(behaviour, "after_chunks", None)
        words = getattr(behaviour, "after_words", None)
        if words is not None:
            limit = 1 + words
        elif isinstance(behaviour, NoDone) and not behaviour.finish_reason:
            limit = 1 + len(_WORD.findall(reply.content))
        resp = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        resp.charset = "utf-8"
        await resp.prepare(request)
        try:
            for sent, event in enumerate(events):
                if limit is not None and sent >= limit:
                    break
                if sent and reply.chunk_delay:
                    await self._pause(reply.chunk_delay)
                await resp.write(b"data: " + _dumps(event) + b"\n\n")
            if isinstance(behaviour, CutStream):
                _drop(request)
                return resp
            if isinstance(behaviour, StallStream):
                await self._hang()
                _drop(request)
                return resp
            if isinstance(behaviour, StreamError):
                error = {"error": {"message": behaviour.message, "type": behaviour.type,
                                   "param": None, "code": behaviour.code}}
                await resp.write(b"data: " + _dumps(error) + b"\n\n")
                await resp.write_eof()
                return resp
            if isinstance(behaviour, NoDone):
                await resp.write_eof()
                return resp
            if isinstance(behaviour, MalformedChunk):
                await resp.write(b"data: {not json\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp


    # ------------------------------------------------------------------ other operations

    async def _accept_multipart(
        self, request: web.Request
    ) -> tuple[dict[str, Any], Behaviour, dict[str, str]] | web.Response:
        """Like ``_accept`` for a ``multipart/form-data`` upload: the recorded body holds the
        form fields, and the file part as ``{"filename", "content_type", "size", "data"}``."""
        fields: dict[str, Any] = {}
        parse_error = None
        try:
            form = await request.post()
        except ValueError as exc:
            form, parse_error = None, str(exc)
        if form is not None:
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    data = value.file.read()
                    fields[key] = {"filename": value.filename,
                                   "content_type": value.content_type,
                                   "size": len(data), "data": data}
                elif key in fields:
                    previous = fields[key]
                    fields[key] = [*previous, value] if isinstance(previous, list) else [
                        previous, value]
                else:
                    fields[key] = value
        failure = self._auth_failure(request)
        if failure is not None:
            behaviour: Behaviour = failure
            scripted = False
        else:
            picked, scripted = self._next()
            behaviour = self._resolve(picked)
        self.calls.append(RecordedCall(
            path=request.path, method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=fields, time=time.monotonic(), behaviour=behaviour, scripted=scripted))
        if failure is None and (parse_error is not None
                                or not request.content_type.startswith("multipart/")):
            return self._error(Fail(400, message=(
                "Expected a multipart/form-data request body with a 'file' part.")), {})
        headers = self._rate_headers(0)
        headers["x-request-id"] = f"req_fake{next(self._ids):012d}"
        return fields, behaviour, headers

    async def _early(self, request: web.Request, behaviour: Behaviour,
                     headers: dict[str, str]) -> web.StreamResponse | None:
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        if isinstance(behaviour, CutStream | StallStream):
            return await self._partial_body(request, behaviour, headers)
        if isinstance(behaviour, MalformedChunk):
            return await self._common(request, MalformedJSON(), headers)
        return None

    def _reply(self, behaviour: Behaviour) -> Reply:
        return behaviour if isinstance(behaviour, Reply) else (
            self.default if isinstance(self.default, Reply) else Reply())

    async def _images(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        early = await self._early(request, behaviour, headers)
        if early is not None:
            return early
        reply = self._reply(behaviour)
        await self._pause(reply.delay)
        model = str(body.get("model") or "dall-e-2")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return self._error(Fail(400, message="'prompt' is a required property"), headers)
        n = body.get("n") or 1
        fmt = body.get("response_format")
        gpt_image = model.startswith("gpt-image")
        if gpt_image and fmt is not None:
            return self._error(Fail(400, message="Unknown parameter: 'response_format'.",
                                    code="unknown_parameter"), headers)
        stamp = hashlib.sha256(f"{model}:{prompt}".encode()).hexdigest()[:16]
        data = []
        for i in range(int(n)):
            item: dict[str, Any]
            if gpt_image or fmt == "b64_json":
                item = {"b64_json": base64.b64encode(_FAKE_PNG + stamp.encode()).decode()}
            else:
                item = {"url": f"{self.url}/images/{stamp}-{i}.png"}
            if model == "dall-e-3":
                item["revised_prompt"] = f"A detailed rendering of: {prompt}"
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if gpt_image:
            words = max(_words(prompt), 1)
            answer["usage"] = {
                "total_tokens": words + 272 * int(n), "input_tokens": words,
                "output_tokens": 272 * int(n),
                "input_tokens_details": {"text_tokens": words, "image_tokens": 0}}
        return web.Response(body=_dumps(answer), content_type="application/json",
                            headers=headers)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        reply = self._reply(behaviour)
        await self._pause(reply.delay)
        text = body.get("input")
        if not isinstance(text, str) or not text or not body.get("voice"):
            return self._error(Fail(400, message="'input' and 'voice' are required"),
                               headers)
        fmt = str(body.get("response_format") or "mp3")
        media = _AUDIO_MEDIA.get(fmt)
        if media is None:
            return self._error(Fail(400, message=f"Invalid response_format {fmt!r}."),
                               headers)
        audio = fake_audio(text, str(body.get("voice")), fmt)
        resp = web.StreamResponse(headers=headers)
        resp.content_type = media
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        step = max(len(audio) // 4, 1)
        try:
            for sent, start in enumerate(range(0, len(audio), step)):
                if isinstance(behaviour, CutStream | StallStream) and sent >= 1:
                    if isinstance(behaviour, StallStream):
                        await self._hang()
                    _drop(request)
                    return resp
                if sent and reply.chunk_delay:
                    await self._pause(reply.chunk_delay)
                await resp.write(audio[start:start + step])
            await resp.write_eof()
        except ConnectionError:
            pass
        return resp

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept_multipart(request)
        if isinstance(accepted, web.Response):
            return accepted
        fields, behaviour, headers = accepted
        early = await self._early(request, behaviour, headers)
        if early is not None:
            return early
        reply = self._reply(behaviour)
        await self._pause(reply.delay)
        upload = fields.get("file")
        if not isinstance(upload, dict) or not upload.get("size"):
            return self._error(Fail(400, message="Missing required parameter: 'file'.",
                                    code="missing_required_parameter"), headers)
        model = str(fields.get("model") or "whisper-1")
        fmt = str(fields.get("response_format") or "json")
        text = reply.content
        duration = round(max(upload["size"] / 16000.0, 0.1), 2)
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain", headers=headers)
        if fmt in ("srt", "vtt"):
            stamp = f"00:00:00{',' if fmt == 'srt' else '.'}000 --> 00:00:0" + (
                f"{min(int(duration), 9)}{',' if fmt == 'srt' else '.'}000")
            doc = (f"1\n{stamp}\n{text}\n\n" if fmt == "srt"
                   else f"WEBVTT\n\n{stamp}\n{text}\n\n")
            return web.Response(text=doc, content_type="text/plain", headers=headers)
        translate = request.path.endswith("/translations")
        answer: dict[str, Any]
        if fmt == "verbose_json":
            answer = {"task": "translate" if translate else "transcribe",
                      "language": "english", "duration": duration, "text": text,
                      "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration,
                                    "text": text, "tokens": [], "temperature": 0.0,
                                    "avg_logprob": -0.2, "compression_ratio": 1.0,
                                    "no_speech_prob": 0.01}]}
        elif fmt == "json":
            answer = {"text": text}
            if model.startswith("gpt-4o"):
                audio_tokens = max(int(upload["size"]) // 1000, 1)
                out = max(_words(text), 1)
                answer["usage"] = {
                    "type": "tokens", "input_tokens": audio_tokens, "output_tokens": out,
                    "total_tokens": audio_tokens + out,
                    "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens}}
            else:
                answer["usage"] = {"type": "duration", "seconds": math.ceil(duration)}
        else:
            return self._error(Fail(400, message=f"Invalid response_format {fmt!r}."),
                               headers)
        return web.Response(body=_dumps(answer), content_type="application/json",
                            headers=headers)

    async def _moderations(self, request: web.Request) -> web.StreamResponse:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        body, behaviour, headers = accepted
        early = await self._early(request, behaviour, headers)
        if early is not None:
            return early
        reply = self._reply(behaviour)
        await self._pause(reply.delay)
        raw = body.get("input")
        inputs = raw if isinstance(raw, list) else [raw]
        results = [_moderation_result(x if isinstance(x, str) else "") for x in inputs]
        answer = {"id": f"modr-fake{next(self._ids):012d}",
                  "model": str(body.get("model") or "omni-moderation-latest"),
                  "results": results}
        return web.Response(body=_dumps(answer), content_type="application/json",
                            headers=headers)


_FAKE_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
"""A 1x1 PNG; fake images are it plus a stamp of the prompt (deterministic, distinct)."""

_AUDIO_MEDIA = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
                "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
_AUDIO_MAGIC = {"mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00", "flac": b"fLaC",
                "wav": b"RIFF\x00\x00\x00\x00WAVE", "opus": b"OggS", "aac": b"\xff\xf1"}


def fake_audio(text: str, voice: str, fmt: str) -> bytes:
    """The deterministic bytes the fake answers for speech: the format's magic bytes, then
    a hash-derived body whose length grows with the text (at least 4 kB)."""
    seed = hashlib.sha256(f"{voice}:{fmt}:{text}".encode()).digest()
    size = max(4096, 64 * len(text))
    body = (seed * (size // len(seed) + 1))[:size]
    return _AUDIO_MAGIC.get(fmt, b"") + body


_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
_VIOLENT = re.compile(r"(?i)\b(kill|murder|attack|stab)\b")


def _moderation_result(text: str) -> dict[str, Any]:
    """OpenAI's moderation result for one text: flagged for ``violence`` when it has a
    violent word (the scores are fixed, the shape is the documented one)."""
    violent = bool(_VIOLENT.search(text))
    scores = {c: 0.0001 for c in _MODERATION_CATEGORIES}
    if violent:
        scores["violence"] = 0.86
        scores["harassment/threatening"] = 0.41
    return {
        "flagged": violent,
        "categories": {c: scores[c] > 0.5 for c in _MODERATION_CATEGORIES},
        "category_scores": scores,
        "category_applied_input_types": {c: ["text"] for c in _MODERATION_CATEGORIES},
    }


def _with_n(answer: dict[str, Any], n: Any) -> dict[str, Any]:
    """An answer with ``n`` choices (the same message), as OpenAI sends for ``n > 1``."""
    if not isinstance(n, int) or n < 2:
        return answer
    first = answer["choices"][0]
    answer["choices"] = [{**first, "index": i} for i in range(n)]
    usage = answer["usage"]
    usage["completion_tokens"] *= n
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return answer


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


class _Completion:
    """Builds one completion (object or chunks) deterministically from a request and a Reply."""

    def __init__(self, fake: FakeUpstream, body: dict[str, Any], reply: Reply, n: int) -> None:
        self.id = f"chatcmpl-fake{n:010d}"
        self.created = int(time.time())
        self.model = reply.model or str(body.get("model") or "gpt-4o-mini")
        self.reply = reply
        self.calls = [
            {
                "id": call.get("id") or f"call_fake{n:06d}{index:03d}",
                "name": call["name"],
                "arguments": call.get("arguments", ""),
            }
            for index, call in enumerate(reply.tool_calls or ())
        ]
        self.finish = reply.finish_reason or ("tool_calls" if self.calls else "stop")
        prompt = max(_message_words(body.get("messages")), 1)
        completion = _words(reply.content) + sum(_words(c["arguments"]) for c in self.calls)
        over = dict(reply.usage or {})
        prompt = over.get("prompt_tokens", prompt)
        completion = over.get("completion_tokens", max(completion, 1))
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {
                "cached_tokens": over.get("cached_tokens", 0),
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": over.get("reasoning_tokens", 0),
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def object(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self.calls and not self.reply.content else self.reply.content,
            "refusal": None,
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.calls
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish}
            ],
            "usage": self.usage,
            "system_fingerprint": "fp_fake",
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None, usage: bool) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, include_usage: bool) -> Iterator[dict[str, Any]]:
        yield self._chunk(
            {"role": "assistant", "content": "", "refusal": None}, None, include_usage
        )
        for piece in _WORD.findall(self.reply.content):
            yield self._chunk({"content": piece}, None, include_usage)
        for index, call in enumerate(self.calls):
            yield self._chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                },
                None,
                include_usage,
            )
            args = call["arguments"]
            step = max(len(args) // 3, 1)
            for start in range(0, len(args), step):
                yield self._chunk(
                    {
                        "tool_calls": [
                            {"index": index, "function": {"arguments": args[start : start + step]}}
                        ]
                    },
                    None,
                    include_usage,
                )
        yield self._chunk({}, self.finish, include_usage)
        if include_usage:
            yield {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": self.usage,
            }


if __name__ == "__main__":  # python -m modelmesh_core.fakes: run it from the shell
    import sys

    from .fakeserver import main

    sys.exit(main())
