"""One caller stream made of one or more upstream segments (the streaming rule).

A :class:`Splice` sits between the attempt loop and the caller of ``Router.stream``:

* Leading chunks without content (role-only chunks, empty deltas) are held back, so a
  failure before any text or tool call reached the caller fails over invisibly.
* When a stream breaks after output reached the caller, the next candidate is asked to
  continue: the original messages plus the delivered text as a trailing assistant message
  (*prefill*) for a model with the ``assistant_prefill`` feature; any other model (or one
  that rejected the prefill) restarts the answer, and its output is held back until it
  covers what the caller has seen — then only the rest is streamed, if it begins with exactly
  that text (whitespace-normalised). If it does not, the stream ends with an error naming the
  original break.
* Chunks of a continuation are rewritten to look like the rest of the first segment: the same
  id, no second role, usage summed over every upstream call.

A stream that does not break pays one method call per chunk (:meth:`Splice.feed`), which
keeps the delivered text.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from .errors import (
    ContentFilterError,
    ContextLengthError,
    ProviderError,
    StreamInterruptedError,
)
from .types import CompletionRequest, CompletionResponse, Feature, Model

__all__ = ["Mode", "Segment", "Splice", "SpliceMismatch", "add_usage", "normalise"]

_PREFILL = Feature.ASSISTANT_PREFILL.value


class Mode(enum.Enum):
    """How one upstream call serves the caller's stream."""

    ORIGINAL = "original"
    PREFILL = "prefill"
    RESTART = "restart"


class SpliceMismatch(Exception):
    """A restarted answer does not begin with the text the caller already has."""


def normalise(text: str) -> tuple[str, list[int]]:
    """``text`` with leading whitespace dropped and every whitespace run as one space, and for
    each character of the result its index in ``text``."""
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
                where.append(i)
        else:
            out.append(ch)
            where.append(i)
    return "".join(out), where


def add_usage(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """Key-wise sum of two usage dicts."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, int):
            out[key] = out.get(key, 0) + value
    return out


def estimate_tokens(chars: int) -> int:
    """Tokens for ``chars`` characters of text (characters / 4, rounded up)."""
    return (chars + 3) // 4


@attrs.define(kw_only=True)
class Segment:
    """The part of the caller's stream one upstream call served (``metadata["segments"]``)."""

    model: str
    provider: str
    mode: str
    chars: int = 0
    outcome: str = "complete"
    usage: dict[str, int] = attrs.Factory(dict)
    estimated: bool = False
    cost: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able view."""
        return {"model": self.model, "provider": self.provider, "mode": self.mode,
                "chars": self.chars, "outcome": self.outcome, "usage": dict(self.usage),
                "estimated_usage": self.estimated, "cost": self.cost}


class Splice:
    """The caller's view of one streaming request across upstream segments."""

    __slots__ = (
        "_buffer", "_first_created", "_first_id", "_matching", "_no_prefill", "_prior_usage",
        "_target", "broken", "finished", "mode", "parts", "prefill_chars", "prompt_tokens",
        "rate_limit", "released", "request", "seg_chars", "seg_usage", "segments", "tools",
    )

    def __init__(self, request: CompletionRequest, prompt_tokens: int) -> None:
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.parts: list[str] = []
        self.released = False
        self.tools = False
        self.finished = False
        self.mode = Mode.ORIGINAL
        self.seg_chars = 0
        self.prefill_chars = 0
        self.seg_usage: dict[str, int] | None = None
        self.rate_limit: Any = None
        self.broken: ProviderError | None = None
        self.segments: list[Segment] | None = None
        self._prior_usage: dict[str, int] | None = None
        self._first_id = ""
        self._first_created = 0
        self._matching = False
        self._buffer = ""
        self._target = ""
        self._no_prefill: set[str] | None = None

    @property
    def delivered(self) -> str:
        """The text the caller has received so far."""
        return "".join(self.parts)

    # -- the request each segment sends

    def begin(self, model: Model) -> CompletionRequest:
        """Start a segment on ``model``; return the request to send it."""
        self.seg_chars = 0
        self.prefill_chars = 0
        self.seg_usage = None
        self.finished = False
        if self.broken is None:
            self.mode = Mode.ORIGINAL
            return self.request
        delivered = self.delivered
        if _PREFILL in model.features and (
                self._no_prefill is None or model.id not in self._no_prefill):
            self.mode = Mode.PREFILL
            self._matching = False
            self.prefill_chars = len(delivered)
            messages = [*self.request.messages, {"role": "assistant", "content": delivered}]
            return attrs.evolve(self.request, messages=messages)
        self.mode = Mode.RESTART
        self._matching = True
        self._buffer = ""
        self._target = normalise(delivered)[0]
        return self.request

    def rejected_prefill(self, model: Model, exc: ProviderError) -> bool:
        """True when ``exc`` is ``model`` refusing the prefill (a 400 that is not about context
        length or content): the same model may be tried again, restarting the answer."""
        if (self.mode is not Mode.PREFILL or exc.status != 400
                or isinstance(exc, ContentFilterError | ContextLengthError)):
            return False
        if self._no_prefill is None:
            self._no_prefill = set()
        self._no_prefill.add(model.id)
        return True

    # -- chunks

    def feed(self, chunk: CompletionResponse) -> CompletionResponse | None:
        """Take one upstream chunk; return what the caller gets (None: held back)."""
        content = chunk.content
        if chunk.usage:
            self.seg_usage = chunk.usage
        if chunk.finish_reason:
            self.finished = True
        if content:
            self.seg_chars += len(content)
        if self.broken is not None:
            return self._continued(chunk, content)
        if not self.released:
            if not (content or chunk.tool_calls or chunk.finish_reason
                    or chunk.refusal is not None):
                rate = chunk.metadata.get("rate_limit") if chunk.metadata else None
                if rate is not None:
                    self.rate_limit = rate
                return None
            self.released = True
            self._first_id = chunk.id
            self._first_created = chunk.created
            if self.rate_limit is not None and "rate_limit" not in chunk.metadata:
                chunk.metadata["rate_limit"] = self.rate_limit
            if chunk.role is None:
                # The role arrived in a held-back chunk: the first chunk out carries it.
                chunk = attrs.evolve(chunk, role="assistant")
        if content:
            self.parts.append(content)
        if chunk.tool_calls:
            self.tools = True
        return chunk

    def _continued(self, chunk: CompletionResponse, content: str) -> CompletionResponse | None:
        if self._matching:
            if chunk.tool_calls:
                raise SpliceMismatch("the restarted answer calls a tool instead")
            self._buffer += content
            norm, where = normalise(self._buffer)
            target = self._target
            if len(norm) < len(target):
                if not target.startswith(norm):
                    raise SpliceMismatch("the restarted answer differs from the delivered text")
                if chunk.finish_reason:
                    raise SpliceMismatch("the restarted answer is shorter than the delivered text")
                return None
            if not norm.startswith(target):
                raise SpliceMismatch("the restarted answer differs from the delivered text")
            self._matching = False
            cut = where[len(target)] if len(target) < len(where) else len(self._buffer)
            content = self._buffer[cut:]
            self._buffer = ""
        if not (content or chunk.tool_calls or chunk.finish_reason or chunk.refusal is not None
                or chunk.usage):
            return None
        if content:
            self.parts.append(content)
        if chunk.tool_calls:
            self.tools = True
        usage = chunk.usage
        if usage and self._prior_usage:
            usage = add_usage(self._prior_usage, usage)
        return attrs.evolve(chunk, content=content, role=None, id=self._first_id or chunk.id,
                            created=self._first_created or chunk.created, usage=usage,
                            metadata={})

    def complete(self) -> None:
        """The upstream ended normally: check that the segment really served the caller."""
        if not self.released:
            raise StreamInterruptedError("the stream ended before any content", retryable=True)
        if self._matching:
            raise SpliceMismatch("the restarted answer ended before covering the delivered text")
        if not self.finished and self.broken is not None:
            raise StreamInterruptedError("the continuation ended without a finish reason",
                                         retryable=True)

    # -- accounting

    def segment_usage(self) -> tuple[dict[str, int], bool]:
        """The usage of the current segment: what the upstream reported, else an estimate from
        the prompt and the characters it sent (``(usage, estimated)``)."""
        if self.seg_usage:
            return dict(self.seg_usage), False
        prompt = self.prompt_tokens + estimate_tokens(self.prefill_chars)
        completion = estimate_tokens(self.seg_chars)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}, True

    def close_segment(self, model: Model, outcome: str, usage: dict[str, int],
                      estimated: bool, cost: float) -> None:
        """Record the segment that just ended (kept once the stream has broken)."""
        if self.segments is None:
            self.segments = []
        self.segments.append(Segment(
            model=model.id, provider=model.provider, mode=self.mode.value, chars=self.seg_chars,
            outcome=outcome, usage=usage, estimated=estimated, cost=cost))
        self._prior_usage = add_usage(self._prior_usage or {}, usage)

    def break_at(self, exc: ProviderError) -> None:
        """The stream broke after output reached the caller: later segments continue it."""
        if self.broken is None:
            self.broken = exc
