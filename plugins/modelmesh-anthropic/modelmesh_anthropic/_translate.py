"""Translation between the OpenAI chat shape ModelMesh speaks and Anthropic's Messages API.

Requests (``CompletionRequest`` → Messages body):

* ``system`` / ``developer`` messages are lifted out into ``system`` (a string for one plain
  system message, else a list of text blocks, so ``cache_control`` on a part survives);
* content parts: ``text`` → text block (``cache_control`` kept); ``image_url`` with a
  ``data:`` URL → ``{"type": "image", "source": {"type": "base64", ...}}``, with an
  ``http(s)`` URL → ``{"source": {"type": "url", ...}}``; ``file`` parts holding a PDF data
  URL → a base64 ``document`` block; Anthropic-native blocks (``image`` with ``source``,
  ``document``, ``tool_use``, ``tool_result``, ``thinking``…) pass through;
* assistant ``tool_calls`` → ``tool_use`` blocks (arguments parsed from their JSON string);
  ``tool`` messages → ``tool_result`` blocks in one user turn (consecutive results of a
  parallel call share that turn, as the API requires);
* ``tools`` → ``{"name", "description", "input_schema"}``; ``tool_choice`` ``auto`` /
  ``none`` / ``required`` / a named function → ``auto`` / ``none`` / ``any`` / ``tool``;
  ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``;
* ``stop`` → ``stop_sequences``; ``user`` → ``metadata.user_id``; ``temperature`` is clamped
  to Anthropic's 0-1; ``max_tokens`` (or ``max_completion_tokens``) else the configured
  default; ``top_p`` and the native ``top_k`` and ``thinking`` pass through, so do
  ``metadata.user_id`` and the ``service_tier`` values Anthropic knows (``auto``,
  ``standard_only``); every other parameter (OpenAI-only knobs the API would reject:
  ``seed``, penalties, ``logit_bias``, ``logprobs``, ``stream_options``, …) is dropped;
  ``n`` > 1 and a JSON ``response_format`` are refused (:class:`TranslationError`);
* a trailing assistant message is an **assistant prefill**: it is sent as the last message
  and Claude continues it. The API rejects a final assistant turn ending in whitespace, so
  that whitespace is cut from the request and, since the caller already has it, cut from the
  start of the continuation too (:class:`Prefill`).

Responses: text blocks → ``content``; ``tool_use`` blocks → ``ToolCall`` (arguments as a JSON
string); ``stop_reason`` → ``finish_reason``; ``usage`` → the OpenAI usage keys, the cache
reads counted as ``cached_tokens`` (billed at the model's ``cached_input`` price) and every
cached or cache-written token counted in ``prompt_tokens`` (Anthropic's ``input_tokens``
excludes both). ``cache_creation_tokens`` is kept beside them for reporting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modelmesh_core.types import ToolCall

__all__ = [
    "FINISH_REASONS",
    "Prefill",
    "TranslationError",
    "build_body",
    "parse_message",
    "usage_from",
]

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic ``stop_reason`` → OpenAI ``finish_reason``."""

_PASS_THROUGH = ("top_p", "top_k", "thinking")
_SERVICE_TIERS = frozenset({"auto", "standard_only"})
_NATIVE_BLOCKS = frozenset(
    {
        "image",
        "document",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "search_result",
    }
)
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class TranslationError(ValueError):
    """The request cannot be expressed in the Messages API (the caller's 400)."""


class Prefill:
    """Whitespace cut from a prefill, removed again from the head of the continuation.

    ``text`` is what the caller already has after the prefill sent upstream; ``take(piece)``
    returns ``piece`` without the part of it that repeats ``text`` and stops trimming at the
    first character that differs.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def take(self, piece: str) -> str:
        """``piece`` without its leading characters that match the pending whitespace."""
        pending = self.text
        if not pending or not piece:
            return piece
        n = 0
        limit = min(len(pending), len(piece))
        while n < limit and piece[n] == pending[n]:
            n += 1
        if n == len(piece) and n < len(pending):
            self.text = pending[n:]
        else:
            self.text = ""
        return piece[n:]


# --------------------------------------------------------------------------- request


def _image_block(part: Mapping[str, Any]) -> dict[str, Any]:
    raw = part.get("image_url")
    url = raw.get("url") if isinstance(raw, Mapping) else raw
    if not isinstance(url, str) or not url:
        raise TranslationError("an image_url part has no url")
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        media = header[5:].split(";", 1)[0]
        if not sep or ";base64" not in header or not media:
            raise TranslationError(
                "an image data URL must be base64 encoded (data:image/png;base64,...)"
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"unsupported image URL scheme in {url[:24]!r}")


def _file_block(part: Mapping[str, Any]) -> dict[str, Any]:
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, Mapping) else None
    if isinstance(data, str) and data.startswith("data:application/pdf;base64,"):
        return {
            "type": "document",
            "source": {
                "type": "base64",
                "media_type": "application/pdf",
                "data": data.partition(",")[2],
            },
        }
    raise TranslationError("only file parts holding a PDF data URL (file.file_data) are supported")


def _block(part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, Mapping):
        raise TranslationError(f"a content part is a {type(part).__name__}, not an object")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise TranslationError("a text part has no text")
        block: dict[str, Any] = {"type": "text", "text": text}
        control = part.get("cache_control")
        if control is not None:
            block["cache_control"] = control
        return block
    if kind == "image_url":
        return _image_block(part)
    if kind == "file":
        return _file_block(part)
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind in _NATIVE_BLOCKS:
        return dict(part)
    raise TranslationError(f"content parts of type {kind!r} are not supported by Claude")


def _content(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        return [_block(part) for part in content]
    raise TranslationError(f"message content is a {type(content).__name__}")


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _system_blocks(content: Any) -> list[dict[str, Any]]:
    blocks = _as_blocks(_content(content))
    for block in blocks:
        if block.get("type") != "text":
            raise TranslationError("a system message may hold text only")
    return blocks


def _tool_use(call: Any, loads: Callable[[str], Any]) -> dict[str, Any]:
    if not isinstance(call, Mapping):
        raise TranslationError("a tool call is not an object")
    function = call.get("function")
    if not isinstance(function, Mapping) or not function.get("name"):
        raise TranslationError("a tool call has no function.name")
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        parsed: Any = {}
    elif isinstance(arguments, str):
        try:
            parsed = loads(arguments)
        except ValueError:
            raise TranslationError(
                f"the arguments of tool call {call.get('id')!r} are not valid JSON"
            ) from None
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        raise TranslationError(f"the arguments of tool call {call.get('id')!r} are not an object")
    call_id = call.get("id")
    if not call_id:
        raise TranslationError("a tool call has no id (tool_use blocks need one)")
    return {"type": "tool_use", "id": call_id, "name": function["name"], "input": parsed}


def _tool_result(message: Mapping[str, Any]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not call_id:
        raise TranslationError("a tool message has no tool_call_id")
    content = _content(message.get("content"))
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id, "content": content}
    return block


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if function is None:
            if isinstance(tool, Mapping) and tool.get("name"):
                out.append(dict(tool))  # already Anthropic-shaped (custom or server tool)
                continue
            raise TranslationError("a tool has neither function nor name")
        if tool.get("type", "function") != "function" or not isinstance(function, Mapping):
            raise TranslationError(f"tools of type {tool.get('type')!r} are not supported")
        name = function.get("name")
        if not name:
            raise TranslationError("a function tool has no name")
        item: dict[str, Any] = {"name": name}
        if function.get("description"):
            item["description"] = function["description"]
        item["input_schema"] = function.get("parameters") or _EMPTY_SCHEMA
        out.append(item)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        result = {"type": "none"}
    elif choice in ("required", "any"):
        result = {"type": "any"}
    elif isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "function":
            function = choice.get("function")
            name = function.get("name") if isinstance(function, Mapping) else None
            if not name:
                raise TranslationError("tool_choice names no function")
            result = {"type": "tool", "name": name}
        elif kind in ("auto", "any", "tool", "none"):
            result = dict(choice)
        else:
            raise TranslationError(f"unsupported tool_choice type {kind!r}")
    else:
        raise TranslationError(f"unsupported tool_choice {choice!r}")
    if parallel is False:
        result = result or {"type": "auto"}
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


def _stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value] if value else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        kept = [v for v in value if v]
        return kept or None
    raise TranslationError("stop must be a string or a list of strings")


def build_body(
    upstream_id: str,
    request: Any,
    *,
    default_max_tokens: int,
    max_output_tokens: int | None,
    stream: bool,
    loads: Callable[[str], Any],
) -> tuple[dict[str, Any], Prefill | None]:
    """The Messages API body for ``request`` and the prefill state (None without prefill).

    Raises :class:`TranslationError` for requests the API cannot express.
    """
    extra: Mapping[str, Any] = request.extra or {}
    system: list[dict[str, Any]] = []
    plain_system: list[str] = []
    messages: list[dict[str, Any]] = []
    tool_turn = False  # the last message is a user turn of tool results
    for message in request.messages:
        if not isinstance(message, Mapping):
            raise TranslationError("a message is not an object")
        role = message.get("role")
        if role == "user":
            content = _content(message.get("content"))
            if tool_turn:
                messages[-1]["content"].extend(_as_blocks(content))
            else:
                messages.append({"role": "user", "content": content})
            tool_turn = False
        elif role == "tool":
            block = _tool_result(message)
            if tool_turn:
                messages[-1]["content"].append(block)
            else:
                messages.append({"role": "user", "content": [block]})
            tool_turn = True
        elif role == "assistant":
            tool_turn = False
            content = _content(message.get("content"))
            calls = message.get("tool_calls")
            if calls:
                blocks = [b for b in _as_blocks(content) if b.get("type") != "text" or b["text"]]
                blocks.extend(_tool_use(call, loads) for call in calls)
                messages.append({"role": "assistant", "content": blocks})
            elif content:
                messages.append({"role": "assistant", "content": content})
        elif role in ("system", "developer"):
            raw = message.get("content")
            if isinstance(raw, str):
                plain_system.append(raw)
            system.extend(_system_blocks(raw))
        else:
            raise TranslationError(f"messages with role {role!r} are not supported by Claude")
    prefill = _prefill(messages)
    if not messages:
        raise TranslationError("the request has no user message")

    max_tokens = request.max_tokens or extra.get("max_completion_tokens")
    if not max_tokens:
        max_tokens = default_max_tokens
        if max_output_tokens:
            max_tokens = min(max_tokens, max_output_tokens)
    body: dict[str, Any] = {"model": upstream_id, "max_tokens": max_tokens}
    if system:
        if len(plain_system) == 1 and len(system) == 1 and "cache_control" not in system[0]:
            body["system"] = plain_system[0]
        else:
            body["system"] = system
    body["messages"] = messages
    if request.tools:
        body["tools"] = _tools(request.tools)
        choice = _tool_choice(extra.get("tool_choice"), extra.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    stop = _stop(extra.get("stop", extra.get("stop_sequences")))
    if stop:
        body["stop_sequences"] = stop
    if request.temperature is not None:
        body["temperature"] = min(max(float(request.temperature), 0.0), 1.0)
    for key in _PASS_THROUGH:
        value = extra.get(key)
        if value is not None:
            body[key] = value
    if extra:
        _check_unsupported(extra)
        # OpenAI's metadata is free-form (stored completions); Anthropic's takes user_id only.
        meta = extra.get("metadata")
        user = meta.get("user_id") if isinstance(meta, Mapping) else None
        user = user or extra.get("user")
        if user:
            body["metadata"] = {"user_id": str(user)}
        tier = extra.get("service_tier")
        if tier in _SERVICE_TIERS:
            body["service_tier"] = tier
    if stream:
        body["stream"] = True
    return body, prefill


def _check_unsupported(extra: Mapping[str, Any]) -> None:
    n = extra.get("n")
    if n not in (None, 1):
        raise TranslationError("Claude returns one choice per request (n must be 1)")
    fmt = extra.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") not in (None, "text"):
        raise TranslationError(
            f"response_format {fmt.get('type')!r} is not translated for Claude; route the "
            "request to a model with json_mode / structured_output"
        )


def _prefill(messages: list[dict[str, Any]]) -> Prefill | None:
    if not messages or messages[-1]["role"] != "assistant":
        return None
    last = messages[-1]
    content = last["content"]
    if isinstance(content, str):
        kept = content.rstrip()
        cut = content[len(kept) :]
        if kept:
            last["content"] = kept
        else:
            messages.pop()
        return Prefill(cut)
    if any(block.get("type") == "tool_use" for block in content):
        return None
    cut = ""
    while content and content[-1].get("type") == "text":
        text = content[-1]["text"]
        kept = text.rstrip()
        cut = text[len(kept) :] + cut
        if kept:
            content[-1] = {**content[-1], "text": kept}
            break
        content.pop()
    if not content:
        messages.pop()
    return Prefill(cut)


# --------------------------------------------------------------------------- response


def usage_from(raw: Any) -> dict[str, int]:
    """OpenAI usage keys from an Anthropic ``usage`` object."""
    if not isinstance(raw, Mapping):
        return {}
    fresh = raw.get("input_tokens") or 0
    read = raw.get("cache_read_input_tokens") or 0
    written = raw.get("cache_creation_input_tokens") or 0
    output = raw.get("output_tokens") or 0
    prompt = fresh + read + written
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "cached_tokens": read,
        "reasoning_tokens": 0,
        "cache_creation_tokens": written,
    }


def parse_message(
    payload: Any, dumps: Callable[[Any], bytes]
) -> tuple[str, tuple[ToolCall, ...], str | None]:
    """``(text, tool_calls, finish_reason)`` of a ``message`` object.

    Raises ``KeyError`` / ``TypeError`` for a payload that is not a message.
    """
    if payload.get("type") != "message":
        raise KeyError("type")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in payload["content"]:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=block.get("id"),
                    name=block.get("name"),
                    arguments=dumps(block.get("input") or {}).decode(),
                )
            )
    stop = payload.get("stop_reason")
    finish = FINISH_REASONS.get(stop, stop) if stop else None
    return "".join(texts), tuple(calls), finish
