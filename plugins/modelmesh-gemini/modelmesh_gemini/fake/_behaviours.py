"""Scriptable behaviours of :class:`~modelmesh_gemini.fake.FakeGemini` and its call record."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeAlias

from attrs import field, frozen

from modelmesh_core.fakes import (
    CutStream,
    Fail,
    Flaky,
    MalformedChunk,
    MalformedJSON,
    Reply,
    Silent,
    StallStream,
    WrongContentType,
)

TARGET = re.compile(r"/v1beta/(models|tunedModels)/([^/:]+):(\w+)$")
"""``(collection, model, method)`` of a ``…/models/{model}:{method}`` path."""


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
        match = TARGET.search(self.path)
        return match.group(2) if match else None

    @property
    def method_name(self) -> str | None:
        """``generateContent``, ``streamGenerateContent``, ``embedContent``, … or None."""
        match = TARGET.search(self.path)
        return match.group(3) if match else None


