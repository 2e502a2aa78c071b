"""Translation between the OpenAI chat shape callers use and Cohere's v2 chat protocol.

Requests: ``messages`` (system / developer → ``system``; user text and ``image_url`` parts;
assistant text, or ``tool_calls`` with the text as ``tool_plan``; tool results), ``tools``
(same function shape), ``tool_choice`` (``none`` / ``required`` / one named function),
``response_format`` (``json_object``, ``json_schema`` → ``json_object`` + ``json_schema``),
``max_tokens``, ``stop`` → ``stop_sequences``, ``temperature``, ``top_p`` → ``p``, and the
Cohere-native parameters given in ``extra`` (``safety_mode``, ``documents``, ``k``, …).

Responses: ``message.content`` text items (``thinking`` items are kept apart), ``tool_calls``,
``finish_reason`` (``COMPLETE`` / ``STOP_SEQUENCE`` → ``stop``, ``MAX_TOKENS`` → ``length``,
``TOOL_CALL`` → ``tool_calls``; ``ERROR`` / ``TIMEOUT`` are failures, not answers) and
``usage`` (``billed_units`` — what Cohere bills — with ``tokens`` as the fallback).
"""

from __future__ import annotations

from typing import Any

from modelmesh_core.types import CompletionRequest, ToolCall

__all__ = [
    "FAILED_FINISH",
    "FINISH",
    "CallerError",
    "chat_body",
    "ends_with_prefill",
    "parse_tool_calls",
    "text_of",
    "usage_of",
]

FINISH: dict[str, str] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
"""Cohere ``finish_reason`` → OpenAI ``finish_reason`` for the answers that succeeded."""

FAILED_FINISH = frozenset({"ERROR", "TIMEOUT", "ERROR_TOXIC", "ERROR_LIMIT", "USER_CANCEL"})
"""Finish reasons that mean the generation failed: raised as errors, never returned."""

# Cohere chat parameters passed through from ``extra`` under the same name.
_NATIVE = frozenset(
    {
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "safety_mode",
        "documents",
        "citation_options",
        "strict_tools",
        "thinking",
        "k",
        "p",
        "priority",
        "stop_sequences",
    }
)


class CallerError(ValueError):
    """The request cannot be expressed in Cohere's protocol (the caller's error)."""


def _parts_text(parts: list[Any]) -> list[dict[str, str]]:
    out = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "text":
            out.append({"type": "text", "text": str(part.get("text") or "")})
        elif isinstance(part, str):
            out.append({"type": "text", "text": part})
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise CallerError(f"content part of type {kind!r} is not supported here")
    return out


def text_of(content: Any) -> str:
    """The plain text of an OpenAI message ``content`` (string, None or text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in _parts_text(content))
    raise CallerError(f"message content of type {type(content).__name__} is not supported")


def _user_content(content: Any) -> Any:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise CallerError(f"message content of type {type(content).__name__} is not supported")
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            item: dict[str, Any] = {"url": url}
            if isinstance(image, dict) and image.get("detail"):
                item["detail"] = image["detail"]
            out.append({"type": "image_url", "image_url": item})
        else:
            out.extend(_parts_text([part]))
    return out


def _tool_calls_out(calls: Any) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        function = call.get("function") or {}
        out.append(
            {
                "id": call.get("id"),
                "type": "function",
                "function": {
                    "name": function.get("name"),
                    "arguments": function.get("arguments") or "{}",
                },
            }
        )
    return out


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise CallerError(f"messages[{index}] is not an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": text_of(content)})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(content)})
        elif role == "assistant":
            calls = message.get("tool_calls")
            text = text_of(content)
            if calls:
                item: dict[str, Any] = {"role": "assistant", "tool_calls": _tool_calls_out(calls)}
                if text:
                    # Cohere's place for the text that accompanies tool calls.
                    item["tool_plan"] = text
                out.append(item)
            else:
                out.append({"role": "assistant", "content": text})
        elif role == "tool":
            result = content if isinstance(content, str) else _parts_text(content or [])
            out.append(
                {"role": "tool", "tool_call_id": message.get("tool_call_id"), "content": result}
            )
        else:
            raise CallerError(f"messages[{index}]: role {role!r} is not supported by Cohere")
    return out


def _tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> tuple[str | None, Any]:
    """``(cohere tool_choice, tools to send)`` for an OpenAI ``tool_choice``."""
    if choice is None or choice == "auto":
        return None, tools
    if choice == "none":
        return "NONE", tools
    if choice == "required":
        return "REQUIRED", tools
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        chosen = [t for t in tools or () if (t.get("function") or {}).get("name") == name]
        if not chosen:
            raise CallerError(f"tool_choice names {name!r}, which is not among the tools")
        # Cohere cannot force one named tool: force a tool call and offer only that one.
        return "REQUIRED", chosen
    raise CallerError(f"tool_choice {choice!r} is not supported")


def _response_format(fmt: Any) -> dict[str, Any] | None:
    if not isinstance(fmt, dict):
        raise CallerError("response_format must be an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema")
        return {"type": "json_object", "json_schema": schema} if schema else {"type": "json_object"}
    raise CallerError(f"response_format type {kind!r} is not supported")


def chat_body(upstream_id: str, request: CompletionRequest, stream: bool) -> dict[str, Any]:
    """The ``POST /v2/chat`` body for ``request`` (raises :class:`CallerError`)."""
    body: dict[str, Any] = {"model": upstream_id, "messages": _messages(request.messages)}
    tools = request.tools
    extra = request.extra
    if extra:
        choice, tools = _tool_choice(extra.get("tool_choice"), tools)
        if choice is not None:
            body["tool_choice"] = choice
        for key, value in extra.items():
            if key in _NATIVE:
                body[key] = value
        if "top_p" in extra:
            body["p"] = extra["top_p"]
        stop = extra.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        fmt = extra.get("response_format")
        if fmt is not None:
            converted = _response_format(fmt)
            if converted is not None:
                body["response_format"] = converted
        if request.max_tokens is None and extra.get("max_completion_tokens") is not None:
            body["max_tokens"] = extra["max_completion_tokens"]
    if tools:
        body["tools"] = tools
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    body["stream"] = stream
    return body


def ends_with_prefill(request: CompletionRequest) -> bool:
    """True when the last message is an assistant text (a prefill to continue)."""
    messages = request.messages
    if not messages:
        return False
    last = messages[-1]
    return isinstance(last, dict) and last.get("role") == "assistant" and not last.get(
        "tool_calls"
    )


def _count(raw: Any, key: str) -> int | None:
    if isinstance(raw, dict):
        value = raw.get(key)
        if isinstance(value, int | float):
            return int(value)
    return None


def usage_of(raw: Any) -> dict[str, int]:
    """OpenAI-shaped usage from a Cohere ``usage`` (billed units first, then tokens)."""
    if not isinstance(raw, dict):
        return {}
    billed = raw.get("billed_units")
    tokens = raw.get("tokens")
    prompt = _count(billed, "input_tokens")
    if prompt is None:
        prompt = _count(tokens, "input_tokens") or 0
    completion = _count(billed, "output_tokens")
    if completion is None:
        completion = _count(tokens, "output_tokens") or 0
    cached = raw.get("cached_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "cached_tokens": int(cached) if isinstance(cached, int | float) else 0,
        "reasoning_tokens": 0,
    }


def parse_tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """``message.tool_calls`` of a Cohere answer as ``ToolCall`` values."""
    if not raw:
        return ()
    calls = []
    for item in raw:
        function = item.get("function") or {}
        calls.append(
            ToolCall(
                id=item.get("id"),
                name=function.get("name"),
                arguments=function.get("arguments") or "",
                type=item.get("type") or "function",
            )
        )
    return tuple(calls)
