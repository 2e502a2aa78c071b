"""One encoder for streamed answers, shared by the proxy (SSE frames) and the in-process client
(chunk objects), so both give the same chunks and bill the same cost.

The router yields :class:`~modelmesh_core.types.CompletionResponse` deltas. The encoder keeps
what OpenAI keeps constant across a stream (id, created), holds back chunks with nothing to
say (role-only, pings) after the first, remembers the usage and the last chunk (the router
puts the stream's cost, and any other end-of-stream metadata, on the last chunk's
``metadata``), and builds the closing usage chunk when the caller asked for one.

The proxy's frames for a plain content delta — nearly every chunk of a stream — are built
from two byte templates around the JSON-encoded content: no dict, one small encode. They are
byte for byte what encoding :func:`~modelmesh_core.wire.chunk_to_dict` would give.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..types import CompletionResponse
from ..wire import chunk_to_dict, dumps, text_chunk_to_dict, usage_chunk_dict

__all__ = ["DONE", "StreamEncoder", "frame"]

DONE = b"data: [DONE]\n\n"
"""The SSE frame that ends an OpenAI stream."""


def frame(obj: Any) -> bytes:
    """One SSE ``data:`` frame holding ``obj`` as JSON."""
    return b"data: " + dumps(obj) + b"\n\n"


class StreamEncoder:
    """The OpenAI encoding of one stream (chat chunks, or legacy ``text_completion`` ones).

    ``first`` is the router's first chunk; feed every chunk, the first included, to
    :meth:`encode` (objects) or :meth:`frame` (SSE bytes), then :meth:`closing` /
    :meth:`closing_frames`. ``usage``, ``last`` and :attr:`cost` describe what was streamed.
    """

    __slots__ = ("_head", "_head_model", "_pending_first", "_tail", "created", "id",
                 "include_usage", "last", "legacy", "model", "usage")

    def __init__(self, first: CompletionResponse, *, include_usage: bool,
                 legacy: bool = False) -> None:
        self.id = first.id or f"{'cmpl' if legacy else 'chatcmpl'}-{os.urandom(12).hex()}"
        self.created = first.created or int(time.time())
        self.model = first.model
        self.include_usage = include_usage
        self.legacy = legacy
        self.usage: dict[str, int] | None = None
        self.last: CompletionResponse = first
        self._pending_first = True
        self._head = b""
        self._head_model: str | None = None
        self._tail = (b'},"logprobs":null,"finish_reason":null}]'
                      + (b',"usage":null' if include_usage else b"") + b"}\n\n")

    @property
    def cost(self) -> float | None:
        """The stream's cost, once the router has put it on the last chunk."""
        cost = self.last.metadata.get("cost")
        return float(cost) if isinstance(cost, int | float) else None

    def _see(self, chunk: CompletionResponse) -> bool:
        """Record ``chunk``; whether it has something to send."""
        self.last = chunk
        if chunk.usage:
            self.usage = chunk.usage
        return bool(self._pending_first or chunk.content or chunk.tool_calls
                    or chunk.finish_reason or chunk.refusal is not None)

    def encode(self, chunk: CompletionResponse) -> dict[str, Any] | None:
        """The OpenAI chunk object for ``chunk``, or None when it is held back."""
        if not self._see(chunk):
            return None
        first, self._pending_first = self._pending_first, False
        if self.legacy:
            return text_chunk_to_dict(chunk, id=self.id, created=self.created,
                                      include_usage=self.include_usage)
        return chunk_to_dict(chunk, self.include_usage, first=first, id=self.id,
                             created=self.created)

    def frame(self, chunk: CompletionResponse) -> bytes | None:
        """The SSE frame for ``chunk``, or None when it is held back."""
        if (not self._pending_first and chunk.content and not self.legacy
                and not chunk.tool_calls and chunk.finish_reason is None
                and chunk.refusal is None):
            self.last = chunk
            if chunk.usage:
                self.usage = chunk.usage
            if chunk.model != self._head_model:
                self._head = (b'data: {"id":' + dumps(self.id)
                              + b',"object":"chat.completion.chunk","created":'
                              + dumps(self.created) + b',"model":' + dumps(chunk.model)
                              + b',"system_fingerprint":null,"choices":[{"index":0,'
                              b'"delta":{"content":')
                self._head_model = chunk.model
            return self._head + dumps(chunk.content) + self._tail
        obj = self.encode(chunk)
        return None if obj is None else frame(obj)

    def served_by(self) -> dict[str, Any] | None:
        """For a stream the router continued on other models after a break: which model
        served which part (``{"continuations", "segments": [{model, provider, mode, chars,
        outcome, cost}]}``), else None."""
        md = self.last.metadata
        segments = md.get("segments")
        if not segments:
            return None
        keep = ("model", "provider", "mode", "chars", "outcome", "cost")
        return {"continuations": md.get("continuations", len(segments) - 1),
                "segments": [{k: s[k] for k in keep if k in s} for s in segments]}

    def closing(self) -> dict[str, Any] | None:
        """The final usage chunk when the caller asked for one (``include_usage``); for a
        continued stream it also carries ``x_modelmesh`` (see :meth:`served_by`)."""
        if not self.include_usage:
            return None
        obj = usage_chunk_dict(self.usage, id=self.id, created=self.created, model=self.model,
                               object="text_completion" if self.legacy
                               else "chat.completion.chunk")
        served = self.served_by()
        if served is not None:
            obj["x_modelmesh"] = served
        return obj

    def closing_frames(self) -> bytes:
        """The usage frame (when asked for) and ``data: [DONE]``. A continued stream without
        a usage frame says who served it in an SSE comment (ignored by SSE clients)."""
        obj = self.closing()
        if obj is not None:
            return frame(obj) + DONE
        served = self.served_by()
        if served is not None:
            return b": x-modelmesh " + dumps(served) + b"\n\n" + DONE
        return DONE
