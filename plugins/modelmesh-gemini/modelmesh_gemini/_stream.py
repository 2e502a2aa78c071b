"""Translation of streamed (and whole) ``GenerateContentResponse`` objects into OpenAI-shaped
``CompletionResponse`` chunks: one small slotted state object per answer."""

from __future__ import annotations

import itertools
import os
from typing import Any

import orjson

from modelmesh_core.errors import ProviderError
from modelmesh_core.types import CompletionResponse, ToolCall

from ._translate import (
    BROKEN_REASONS,
    FILTER_REASONS,
    SYNTHETIC_ID_PREFIX,
    blocked_error,
    finish_reason,
    gemini_usage,
)

__all__ = ["AnswerState"]

_RUN = os.urandom(4).hex()
_IDS = itertools.count(1)


def _synthetic_id() -> str:
    return f"{SYNTHETIC_ID_PREFIX}{_RUN}{next(_IDS):x}"


def _parts(parts: Any, calls: list[ToolCall], index: int) -> str:
    """Text of ``parts`` (thought summaries left out); function calls appended to ``calls``."""
    text = ""
    for part in parts:
        value = part.get("text")
        if value is not None:
            if not part.get("thought"):
                text += value
            continue
        fc = part.get("functionCall")
        if fc is not None:
            calls.append(
                ToolCall(
                    id=fc.get("id") or _synthetic_id(),
                    name=fc.get("name"),
                    arguments=orjson.dumps(fc.get("args") or {}).decode(),
                    index=index + len(calls),
                )
            )
    return text


class AnswerState:
    """Translation state of one streamed answer (one per call, slotted)."""

    __slots__ = ("calls", "finish", "id", "model_id", "provider", "sent", "start", "upstream",
                 "usage")

    def __init__(self, provider: str, model_id: str, start: float) -> None:
        self.provider = provider
        self.model_id = model_id
        self.start = start
        self.finish: str | None = None
        self.usage: Any = None
        self.calls = 0
        self.sent = False
        self.id = ""
        self.upstream = ""

    def event(self, obj: Any, now: float) -> CompletionResponse | None:
        """One ``GenerateContentResponse``: the chunk to yield, or None when it carries none."""
        if not isinstance(obj, dict):
            raise TypeError("not an object")
        usage = obj.get("usageMetadata")
        if usage is not None:
            self.usage = usage
        if not self.id:
            self.id = obj.get("responseId") or ""
            self.upstream = obj.get("modelVersion") or ""
        candidates = obj.get("candidates")
        if not candidates:
            feedback = obj.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                raise blocked_error(
                    str(feedback["blockReason"]),
                    provider_id=self.provider,
                    model_id=self.model_id,
                    prompt=True,
                )
            return None
        candidate = candidates[0]
        text = ""
        calls: list[ToolCall] = []
        content = candidate.get("content")
        if content:
            parts = content.get("parts")
            if parts:
                text = _parts(parts, calls, self.calls)
        raw_finish = candidate.get("finishReason")
        if raw_finish:
            if not (text or calls or self.sent):
                self._refuse(str(raw_finish))
            self.finish = str(raw_finish)
        if not (text or calls):
            return None
        self.calls += len(calls)
        role = None if self.sent else "assistant"
        self.sent = True
        return CompletionResponse(
            content=text,
            model=self.model_id,
            provider=self.provider,
            latency_ms=(now - self.start) * 1000.0,
            id=self.id,
            tool_calls=tuple(calls),
            role=role,
            upstream_model=self.upstream,
        )

    def _refuse(self, raw: str) -> None:
        """A candidate finished without producing anything: say why, as a typed error."""
        if raw in FILTER_REASONS:
            raise blocked_error(
                raw, provider_id=self.provider, model_id=self.model_id, prompt=False
            )
        if raw in BROKEN_REASONS:
            raise ProviderError(
                f"the model produced an unusable tool call (finishReason {raw}) and no "
                "answer; another attempt may succeed",
                provider_id=self.provider,
                model_id=self.model_id,
                retryable=True,
            )
        if raw not in ("STOP", "MAX_TOKENS"):
            raise ProviderError(
                f"the model stopped without an answer (finishReason {raw})",
                provider_id=self.provider,
                model_id=self.model_id,
                retryable=True,
            )

    def final(self, now: float) -> CompletionResponse:
        """The last chunk: OpenAI ``finish_reason`` and the usage of the whole answer."""
        assert self.finish is not None
        return CompletionResponse(
            content="",
            model=self.model_id,
            provider=self.provider,
            usage=gemini_usage(self.usage),
            latency_ms=(now - self.start) * 1000.0,
            id=self.id,
            finish_reason=finish_reason(self.finish, self.calls > 0),
            role=None if self.sent else "assistant",
            upstream_model=self.upstream,
        )
