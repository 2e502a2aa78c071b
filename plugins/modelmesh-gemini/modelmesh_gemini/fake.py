"""A real local HTTP server that speaks the Gemini API, for tests, demos and benchmarks.

:class:`FakeGemini` listens on ``127.0.0.1`` (a free port) and answers what the Gemini API
answers, in Google's documented wire shapes:

* ``POST /v1beta/models/{model}:generateContent`` — a ``GenerateContentResponse``
  (``candidates[].content.parts`` with ``text`` / ``functionCall``, ``finishReason``,
  ``usageMetadata``, ``modelVersion``, ``responseId``); a prompt refused by the content filter
  answers ``promptFeedback.blockReason`` and no candidates;
* ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` — ``text/event-stream`` of
  ``data: <GenerateContentResponse>`` events (text split over several events, the last one
  carrying ``finishReason`` and the final usage; no terminator, the body just ends); without
  ``alt=sse``, one JSON array of those responses;
* ``POST …:embedContent`` / ``…:batchEmbedContents`` — deterministic hash-based unit vectors;
* ``GET /v1beta/models`` — the model list, paginated by ``pageSize`` / ``pageToken``.

The key is read from ``x-goog-api-key`` (or the ``key`` query parameter, as Google accepts
it); errors use Google's body ``{"error": {"code", "message", "status", "details"}}`` with the
``google.rpc`` details (``ErrorInfo``, ``RetryInfo``, ``QuotaFailure``). Request bodies are
checked the way the real API checks them: unknown fields are rejected (``Invalid JSON payload
received. Unknown name …``), roles must be ``user`` or ``model``, contents must not be empty.

Behaviour is scripted as with :class:`modelmesh_core.fakes.FakeUpstream`, one record per
request, and the same records work here: :class:`~modelmesh_core.fakes.Reply` (``usage``
overrides take Gemini's names, ``finish_reason`` a Gemini ``finishReason``),
:class:`~modelmesh_core.fakes.Fail` (``type`` is the Google status, ``code`` the ErrorInfo
reason, ``retry_after`` the RetryInfo delay), ``Silent``, ``CutStream``, ``StallStream``,
``MalformedJSON``, ``MalformedChunk``, ``WrongContentType``, ``Flaky``; plus the Gemini ones
below (:class:`GeminiError`, :class:`PromptBlocked`, :class:`CandidateBlocked`,
:class:`StreamError`, :class:`EndWithoutFinish`, :class:`Canned`)::

    async with FakeGemini(api_keys={"AIza-test-key-000000"}) as fake:
        fake.script(GeminiError.overloaded(), Reply("hello"))
        ...  # point the adapter's base_url at fake.base_url
        assert fake.calls[1].method_name == "generateContent"

Responses taken from Google's documentation examples are module constants
(``DOC_GENERATE_CONTENT``, ``DOC_FUNCTION_CALL``, ``DOC_STREAM_EVENTS``,
``DOC_PROMPT_BLOCKED``, ``DOC_EMBED_CONTENT``, ``DOC_BATCH_EMBED_CONTENTS``, ``DOC_MODELS``);
answer one verbatim with ``Canned``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import math
import random
import re
import struct
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import orjson
from aiohttp import web
from attrs import field, frozen

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
    tool_call,
)

__all__ = [
    "DEFAULT_GEMINI_MODELS",
    "DOC_BATCH_EMBED_CONTENTS",
    "DOC_EMBED_CONTENT",
    "DOC_FUNCTION_CALL",
    "DOC_GENERATE_CONTENT",
    "DOC_MODELS",
    "DOC_PROMPT_BLOCKED",
    "DOC_STREAM_EVENTS",
    "CandidateBlocked",
    "Canned",
    "CutStream",
    "EndWithoutFinish",
    "Fail",
    "FakeGemini",
    "Flaky",
    "GeminiBehaviour",
    "GeminiCall",
    "GeminiError",
    "MalformedChunk",
    "MalformedJSON",
    "PromptBlocked",
    "Reply",
    "Silent",
    "StallStream",
    "StreamError",
    "WrongContentType",
    "tool_call",
]

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

# --------------------------------------------------------------------------- documentation examples
# Answers printed in Google's Gemini API documentation (REST quickstart notebooks of
# google/generative-ai-docs and google-gemini/cookbook); long texts and vectors are cut
# where the documentation itself cut them.

_NEGLIGIBLE = [
    {"category": c, "probability": "NEGLIGIBLE"}
    for c in (
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
    )
]

DOC_GENERATE_CONTENT: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "text": "OK. I found two theaters in Mountain View that are showing the "
                        "Barbie movie: AMC Mountain View 16 and Regal Edwards 14."
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": _NEGLIGIBLE,
        }
    ]
}
"""``generateContent`` answering a function result (function-calling REST quickstart)."""

DOC_FUNCTION_CALL: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {
                        "functionCall": {
                            "name": "find_theaters",
                            "args": {"movie": "Barbie", "location": "Mountain View, CA"},
                        }
                    }
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": _NEGLIGIBLE,
        }
    ],
    "promptFeedback": {"safetyRatings": _NEGLIGIBLE},
}
"""``generateContent`` answering with a function call (function-calling REST quickstart)."""

DOC_STREAM_EVENTS: tuple[dict[str, Any], ...] = (
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {
                            "text": "In the quaint little town of Willow Creek, nestled among "
                            "rolling hills and whispering willows"
                        }
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": _NEGLIGIBLE,
            }
        ],
        "promptFeedback": {"safetyRatings": _NEGLIGIBLE},
    },
    {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {
                            "text": ", there existed an extraordinary backpack that possessed an "
                            "astonishing secret. Its unassuming canvas exterior and worn leather "
                            "straps held a hidden realm brimming with wonder and endless "
                            "possibilities."
                        }
                    ],
                    "role": "model",
                },
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": _NEGLIGIBLE,
            }
        ]
    },
)
"""The first two events of ``streamGenerateContent?alt=sse`` (REST get-started page); that
model put ``finishReason: STOP`` on every event."""

DOC_PROMPT_BLOCKED: dict[str, Any] = {
    "promptFeedback": {
        "blockReason": "SAFETY",
        "safetyRatings": [
            {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "MEDIUM"},
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "NEGLIGIBLE"},
        ],
    }
}
"""``generateContent`` for a prompt the safety filter blocked (safety REST quickstart)."""

DOC_EMBED_CONTENT: dict[str, Any] = {
    "embedding": {
        "values": [
            -0.02342152,
            0.01676572,
            0.009261323,
            -0.06383,
            -0.0026262768,
            0.0010187156,
            -0.01125684,
        ]
    }
}
"""``embedContent`` (embeddings REST quickstart; the vector cut as printed there)."""

DOC_BATCH_EMBED_CONTENTS: dict[str, Any] = {
    "embeddings": [
        {"values": [-0.022374554, -0.004560777, 0.013309286, -0.0545072, -0.02090443]},
        {"values": [-0.007975887, -0.02141119, -0.0016711014, -0.061006967, -0.010629714]},
        {"values": [-0.0047850125, 0.008764064, 0.0062852204, -0.017785408, -0.02952513]},
    ]
}
"""``batchEmbedContents`` for three texts (embeddings REST quickstart; vectors cut)."""

DOC_MODELS: dict[str, Any] = {
    "models": [
        {
            "name": "models/gemini-pro",
            "version": "001",
            "displayName": "Gemini Pro",
            "description": "The best model for scaling across a wide range of tasks",
            "inputTokenLimit": 30720,
            "outputTokenLimit": 2048,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
            "temperature": 0.9,
            "topP": 1,
            "topK": 1,
        },
        {
            "name": "models/embedding-001",
            "version": "001",
            "displayName": "Embedding 001",
            "description": "Obtain a distributed representation of a text.",
            "inputTokenLimit": 2048,
            "outputTokenLimit": 1,
            "supportedGenerationMethods": ["embedContent", "countTextTokens"],
        },
    ]
}
"""Part of ``GET /v1beta/models`` (REST get-started page)."""

# --------------------------------------------------------------------------- behaviours

_GOOGLE_STATUS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


@frozen
class GeminiError:
    """Answer with an HTTP error and Google's error body.

    ``google_status`` and ``message`` default to what the Gemini API sends for ``status``;
    ``reason`` adds a ``google.rpc.ErrorInfo`` detail, ``quota_id`` a ``QuotaFailure``
    violation, ``retry_delay`` (seconds) a ``RetryInfo`` detail. ``delay`` waits first.
    """

    status: int = 500
    message: str | None = None
    google_status: str | None = None
    reason: str | None = None
    quota_id: str | None = None
    retry_delay: float | None = None
    headers: Mapping[str, str] | None = None
    delay: float = 0.0

    @classmethod
    def invalid_key(cls) -> GeminiError:
        """The 400 the Gemini API answers for a key it does not know."""
        return cls(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")

    @classmethod
    def overloaded(cls) -> GeminiError:
        """``503 UNAVAILABLE`` — "The model is overloaded"."""
        return cls(503)

    @classmethod
    def rate_limit(cls, retry_delay: float | None = 20.0) -> GeminiError:
        """A per-minute ``429 RESOURCE_EXHAUSTED`` with a RetryInfo delay."""
        return cls(
            429,
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, head to: "
            "https://ai.google.dev/gemini-api/docs/rate-limits.",
            quota_id="GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            retry_delay=retry_delay,
        )

    @classmethod
    def quota(cls, retry_delay: float | None = 52.0) -> GeminiError:
        """A daily-quota ``429 RESOURCE_EXHAUSTED`` (free-tier requests per day)."""
        return cls(
            429,
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, head to: "
            "https://ai.google.dev/gemini-api/docs/rate-limits.",
            quota_id="GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            retry_delay=retry_delay,
        )

    @classmethod
    def context_length(cls, tokens: int = 1_200_000, limit: int = 1_048_576) -> GeminiError:
        """The 400 for a prompt longer than the model's input limit."""
        return cls(
            400,
            f"The input token count ({tokens}) exceeds the maximum number of tokens allowed "
            f"({limit}).",
        )

    def body(self, model: str = "gemini-2.5-flash") -> dict[str, Any]:
        """The Google error body this failure sends."""
        default_status, default_message = _GOOGLE_STATUS.get(
            self.status, ("UNKNOWN", f"HTTP {self.status}.")
        )
        error: dict[str, Any] = {
            "code": self.status,
            "message": self.message if self.message is not None else default_message,
            "status": self.google_status or default_status,
        }
        details: list[dict[str, Any]] = []
        if self.reason:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            )
        if self.quota_id:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/"
                            "generate_content_free_tier_requests",
                            "quotaId": self.quota_id,
                            "quotaDimensions": {"location": "global", "model": model},
                            "quotaValue": "250",
                        }
                    ],
                }
            )
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [
                        {
                            "description": "Learn more about Gemini API quotas",
                            "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                        }
                    ],
                }
            )
        if self.retry_delay is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{self.retry_delay:g}s",
                }
            )
        if details:
            error["details"] = details
        return {"error": error}


@frozen
class PromptBlocked:
    """Answer 200 with ``promptFeedback.blockReason`` and no candidates (streaming: one event)."""

    reason: str = "SAFETY"


@frozen
class CandidateBlocked:
    """The candidate stops with ``finish_reason`` (a filter reason) after ``after_chunks``
    text events; the stopping event has no content, as Gemini's does when streaming."""

    finish_reason: str = "SAFETY"
    after_chunks: int = 0
    content: str = "This answer was going somewhere until the filter stopped it."


@frozen
class StreamError:
    """Stream ``after_chunks`` events, then an in-band ``data: {"error": …}`` event and the end."""

    after_chunks: int = 1
    error: GeminiError = field(factory=GeminiError.overloaded)


@frozen
class EndWithoutFinish:
    """Stream ``after_chunks`` events, none with a ``finishReason``, then end the body cleanly."""

    after_chunks: int = 2


@frozen
class Canned:
    """Answer exactly ``body`` (a dict) or, when streaming, exactly ``events`` (then end)."""

    body: Mapping[str, Any] | None = None
    events: tuple[Mapping[str, Any], ...] = ()


GeminiBehaviour: TypeAlias = (
    Reply
    | Fail
    | GeminiError
    | Silent
    | CutStream
    | StallStream
    | MalformedJSON
    | MalformedChunk
    | WrongContentType
    | Flaky
    | PromptBlocked
    | CandidateBlocked
    | StreamError
    | EndWithoutFinish
    | Canned
)
"""Any behaviour :class:`FakeGemini` can be scripted with."""


@frozen(kw_only=True)
class GeminiCall:
    """One request the fake received.

    ``path`` is the URL path (``/v1beta/models/gemini-2.5-flash:generateContent``), ``query``
    the query parameters, ``headers`` lower-cased, ``body`` the parsed JSON (None for GET),
    ``behaviour`` the leaf behaviour that answered (an auth failure as a ``GeminiError``).
    """

    path: str
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    time: float
    behaviour: GeminiBehaviour | None
    scripted: bool = False

    @property
    def api_key(self) -> str | None:
        """The key sent in ``x-goog-api-key`` (or, if so, in the ``key`` query parameter)."""
        return self.headers.get("x-goog-api-key") or self.query.get("key")

    @property
    def model(self) -> str | None:
        """``gemini-2.5-flash`` for ``…/models/gemini-2.5-flash:generateContent``."""
        match = _TARGET.search(self.path)
        return match.group(2) if match else None

    @property
    def method_name(self) -> str | None:
        """``generateContent``, ``streamGenerateContent``, ``embedContent``, … or None."""
        match = _TARGET.search(self.path)
        return match.group(3) if match else None


# --------------------------------------------------------------------------- request checks

_TARGET = re.compile(r"/v1beta/(models|tunedModels)/([^/:]+):(\w+)$")
_WORD = re.compile(r"\s*\S+")
_REQUEST_FIELDS = frozenset(
    {
        "model",
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
    }
)
_GENERATION_FIELDS = frozenset(
    {
        "stopSequences",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "candidateCount",
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseLogprobs",
        "logprobs",
        "enableEnhancedCivicAnswers",
        "speechConfig",
        "thinkingConfig",
        "mediaResolution",
    }
)
_PART_FIELDS = frozenset(
    {
        "text",
        "inlineData",
        "functionCall",
        "functionResponse",
        "fileData",
        "executableCode",
        "codeExecutionResult",
        "thought",
        "thoughtSignature",
        "videoMetadata",
    }
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _unknown(obj: Mapping[str, Any], known: frozenset[str]) -> str | None:
    for key in obj:
        if _camel(key) not in known:
            return key
    return None


def _get(obj: Mapping[str, Any], name: str) -> Any:
    """A field by its JSON (lowerCamel) or proto (snake_case) name, as Google accepts both."""
    if name in obj:
        return obj[name]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name))


def _check_generate(body: Any) -> str | None:
    """What the real API would say about a malformed ``GenerateContentRequest``, else None."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    bad = _unknown(body, _REQUEST_FIELDS)
    if bad is not None:
        return f'Invalid JSON payload received. Unknown name "{bad}": Cannot find field.'
    generation = _get(body, "generationConfig")
    if isinstance(generation, dict):
        bad = _unknown(generation, _GENERATION_FIELDS)
        if bad is not None:
            return (
                f'Invalid JSON payload received. Unknown name "{bad}" at '
                "'generation_config': Cannot find field."
            )
    contents = body.get("contents")
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    if not isinstance(contents, list):
        contents = [contents]
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not content.get("parts"):
            return (
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be "
                "empty.\n"
            )
        if content.get("role") not in (None, "user", "model"):
            return "Please use a valid role: user, model."
        parts = content["parts"]
        for part in parts if isinstance(parts, list) else [parts]:
            bad = _unknown(part, _PART_FIELDS) if isinstance(part, dict) else "part"
            if bad is not None:
                return (
                    f'Invalid JSON payload received. Unknown name "{bad}" at '
                    f"'contents[{i}].parts[0]': Cannot find field."
                )
    return None


def _words(text: str) -> int:
    return len(text.split())


def _texts(value: Any) -> Iterator[str]:
    """Every ``text`` inside a request's contents / system instruction."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


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


# --------------------------------------------------------------------------- the answer builder


class _Answer:
    """One candidate built from a ``Reply`` (whole or as stream events), deterministically."""

    def __init__(self, body: dict[str, Any], reply: Reply, model: str, n: int) -> None:
        self.reply = reply
        self.model = reply.model or model
        self.response_id = f"fake{n:012d}"
        self.calls = []
        for call in reply.tool_calls or ():
            args = call.get("arguments") or "{}"
            fc: dict[str, Any] = {
                "name": call["name"],
                "args": orjson.loads(args) if isinstance(args, str) else dict(args),
            }
            if call.get("id"):
                fc["id"] = call["id"]
            self.calls.append({"functionCall": fc})
        self.finish = reply.finish_reason or "STOP"
        prompt = max(sum(_words(t) for t in _texts(body.get("contents"))), 1) + sum(
            _words(t) for t in _texts(_get(body, "systemInstruction"))
        )
        out = _words(reply.content) + sum(
            len(orjson.dumps(c["functionCall"]["args"])) // 4 for c in self.calls
        )
        over = dict(reply.usage or {})
        self.prompt = over.get("promptTokenCount", prompt)
        self.candidates = over.get("candidatesTokenCount", max(out, 1))
        self.thoughts = over.get("thoughtsTokenCount", 0)
        self.cached = over.get("cachedContentTokenCount", 0)
        self.tool_prompt = over.get("toolUsePromptTokenCount", 0)

    def usage(self, final: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": self.prompt}
        total = self.prompt + self.tool_prompt
        if final:
            usage["candidatesTokenCount"] = self.candidates
            total += self.candidates + self.thoughts
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        if self.tool_prompt:
            usage["toolUsePromptTokenCount"] = self.tool_prompt
        if final and self.thoughts:
            usage["thoughtsTokenCount"] = self.thoughts
        usage["totalTokenCount"] = total
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.prompt}]
        return usage

    def _response(
        self, parts: list[dict[str, Any]], finish: str | None, final: bool
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": self.usage(final),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def whole(self) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if self.reply.content or not self.calls:
            parts.append({"text": self.reply.content})
        parts.extend(self.calls)
        return self._response(parts, self.finish, True)

    def events(self, finish: bool = True) -> list[dict[str, Any]]:
        pieces: list[list[dict[str, Any]]] = [
            [{"text": p}] for p in _WORD.findall(self.reply.content)
        ]
        if self.calls:
            pieces.append(list(self.calls))
        if not pieces:
            pieces.append([{"text": ""}])
        last = len(pieces) - 1
        return [
            self._response(parts, self.finish if finish and i == last else None, i == last)
            for i, parts in enumerate(pieces)
        ]

    def stopped(self, reason: str) -> dict[str, Any]:
        """The event of a candidate a filter stopped: no content, only the reason."""
        return {
            "candidates": [
                {
                    "content": {"parts": [], "role": "model"},
                    "finishReason": reason,
                    "index": 0,
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
                         "blocked": True}
                    ],
                }
            ],
            "usageMetadata": self.usage(True),
            "modelVersion": self.model,
            "responseId": self.response_id,
        }


# --------------------------------------------------------------------------- server


class FakeGemini:
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
        self._initial_default: GeminiBehaviour = default if default is not None else Reply()
        self.default: GeminiBehaviour = self._initial_default
        self.calls: list[GeminiCall] = []
        self._eol = sse_newline.encode()
        self.max_page_size = max_page_size
        self._host = host
        self._port = port
        self._queue: deque[GeminiBehaviour] = deque()
        self._rngs: dict[int, tuple[Flaky, random.Random]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if not self._port:
            raise RuntimeError("FakeGemini has no port yet; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the adapter's ``base_url`` takes: ``http://127.0.0.1:PORT/v1beta``."""
        return f"{self.url}/v1beta"

    def script(self, *behaviours: GeminiBehaviour) -> None:
        """Queue behaviours; each answers one request, in order, before :attr:`default`."""
        self._queue.extend(behaviours)

    @property
    def pending(self) -> int:
        """How many scripted behaviours have not been consumed yet."""
        return len(self._queue)

    def reset(self) -> None:
        """Forget calls, the script and behaviour state; restore the default."""
        self.calls.clear()
        self._queue.clear()
        self._rngs.clear()
        self.default = self._initial_default

    async def start(self) -> FakeGemini:
        """Start listening; returns ``self``."""
        if self._runner is not None:
            return self
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/v1beta/models", self._list_models)
        app.router.add_post("/v1beta/{target:.+}", self._post)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            self._port = sock.getsockname()[1]
            break
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop listening; requests still waiting (``Silent``, stalls) are released first."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> FakeGemini:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ dispatch

    def _next(self) -> tuple[GeminiBehaviour, bool]:
        try:
            return self._queue.popleft(), True
        except IndexError:
            return self.default, False

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

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0 or self._closing is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _hang(self) -> None:
        if self._closing is not None:
            await self._closing.wait()

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
        match = _TARGET.search(request.path)
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
            problem = _check_generate(body)
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
        answer = _Answer(body, reply, model, next(self._ids))
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
        answer = _Answer(body, reply, model, next(self._ids))
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
            text = " ".join(_texts(item["content"]))
            dim = _get(item, "outputDimensionality") or self.embedding_dim
            vectors.append({"values": _unit_vector(text, int(dim))})
        out = {"embedding": vectors[0]} if method == "embedContent" else {"embeddings": vectors}
        return web.Response(body=_dumps(out), content_type="application/json")


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()
