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
    tool_call,
)

from ._behaviours import (
    CandidateBlocked,
    Canned,
    EndWithoutFinish,
    GeminiBehaviour,
    GeminiCall,
    GeminiError,
    PromptBlocked,
    StreamError,
)
from ._docs import (
    DOC_BATCH_EMBED_CONTENTS,
    DOC_EMBED_CONTENT,
    DOC_FUNCTION_CALL,
    DOC_GENERATE_CONTENT,
    DOC_MODELS,
    DOC_PROMPT_BLOCKED,
    DOC_STREAM_EVENTS,
)
from ._server import DEFAULT_GEMINI_MODELS, FakeGemini

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
