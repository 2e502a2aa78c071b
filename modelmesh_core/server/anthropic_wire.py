"""Anthropic's Messages API at the edge: request parsing, answer shapes, stream events, errors.

The proxy's Anthropic-compatible front door (:mod:`.messages`) turns a Messages API body into
the same :class:`~modelmesh_core.types.CompletionRequest` (OpenAI shape) that
``/v1/chat/completions`` builds, so the router and every adapter behind it serve it unchanged,
and turns the router's answers back into Anthropic's shapes. Pure functions and one small
stream encoder; no I/O.

Requests (:func:`parse_messages_request`), field by field:

* ``system`` (a string or text blocks) → a leading ``system`` message (one block without
  ``cache_control`` → a string; otherwise text parts, ``cache_control`` kept on each);
* ``messages``: ``text`` blocks → text parts; ``image`` blocks (``base64`` / ``url`` source) →
  ``image_url`` parts (a ``data:`` URL for base64); ``document`` blocks holding a base64 PDF →
  ``file`` parts, with a ``text`` source → text parts; an assistant's ``tool_use`` blocks →
  ``tool_calls`` (``input`` JSON-encoded as ``arguments``); a user's ``tool_result`` blocks →
  ``tool`` messages placed before the rest of that user turn (their text joined; ``is_error``
  prefixes ``Error: ``; images in a result go to the user turn that follows); ``thinking``
  blocks of earlier turns are dropped. A trailing assistant message is an assistant prefill
  and is passed on as the last message;
* ``tools`` (``name``, ``description``, ``input_schema``) → function tools; ``tool_choice``
  ``auto`` / ``any`` / ``tool`` / ``none`` → ``auto`` / ``required`` / the named function /
  ``none``, and ``disable_parallel_tool_use`` → ``parallel_tool_calls: false``;
* ``max_tokens`` (required, as Anthropic requires it), ``temperature``; ``stop_sequences`` →
  ``stop``; ``top_p`` and ``top_k`` pass in ``extra``; ``metadata.user_id`` → ``user``;
  ``output_config.format`` (structured outputs, a JSON schema) → ``response_format``
  ``json_schema`` (so only models with ``structured_output`` are candidates); ``stream``.
  Other top-level fields (``thinking``, ``output_config.effort``, ``service_tier``,
  ``container``, ``cache_control``, …) are ignored; server tools (a ``type`` other than
  ``custom``) are refused with a 400.

Validation follows the proxy's limits (:mod:`modelmesh_core.limits`: nesting depth, name
length) and answers Anthropic-style messages naming the field (``max_tokens: Field
required``).

Answers: :func:`message_to_dict` builds a ``message`` object; :class:`EventEncoder` turns the
router's stream chunks into Anthropic's SSE event sequence; :func:`anthropic_error` maps any
exception to Anthropic's error shape and status.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import AllProvidersExhaustedError, ProviderError, RateLimitError
from ..limits import MAX_JSON_DEPTH, MAX_NAME_LENGTH, too_deep
from ..types import CompletionRequest, CompletionResponse
from ..wire import WireError, dumps, error_for_exception, loads

__all__ = [
    "STOP_REASONS",
    "EventEncoder",
    "anthropic_error",
    "error_event",
    "message_to_dict",
    "parse_count_tokens_request",
    "parse_messages_request",
    "usage_to_anthropic",
]

STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI ``finish_reason`` → Anthropic ``stop_reason``."""

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
_OPENAI_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


# --------------------------------------------------------------------------- validation


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _bad(path: str, expected: str, value: Any) -> WireError:
    return WireError(f"{path}: Input should be {expected}, not {_kind(value)}", param=path,
                     code="invalid_type")


def _required(path: str) -> WireError:
    return WireError(f"{path}: Field required", param=path, code="missing_required_parameter")


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise _bad(name, "a number", value)
    if not lo <= value <= hi:
        raise WireError(f"{name}: Input should be between {lo:g} and {hi:g}", param=name,
                        code="invalid_value")
    return float(value)


def _integer(body: Mapping[str, Any], name: str, lo: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(name, "a valid integer", value)
    if value < lo:
        raise WireError(f"{name}: Input should be greater than or equal to {lo}", param=name,
                        code="invalid_value")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "a valid string", value)
    return value


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "a valid dictionary", value)
    return value


def _body(body: Any, shallow: bool) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise WireError(f"The request body must be a JSON object, not {_kind(body)}.",
                        code="invalid_body")
    deep = None if shallow else too_deep(body)
    if deep is not None:
        raise WireError(f"The request body nests objects and arrays more than "
                        f"{MAX_JSON_DEPTH} levels deep (at '{deep[:80]}').", param=deep[:80],
                        code="invalid_value")
    return body


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise _required("model")
    model = _string(model, "model")
    if len(model) > MAX_NAME_LENGTH:
        raise WireError(f"model: String should have at most {MAX_NAME_LENGTH} characters",
                        param="model", code="invalid_value")
    model = model.strip()
    if not model:
        raise WireError("model: String should have at least 1 character", param="model",
                        code="invalid_value")
    return model


# --------------------------------------------------------------------------- content blocks


def _text_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": _string(block.get("text"), f"{path}.text")}
    control = block.get("cache_control")
    if control is not None:
        part["cache_control"] = control
    return part


def _image_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = _object(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media = _string(source.get("media_type"), f"{path}.source.media_type")
        data = _string(source.get("data"), f"{path}.source.data")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        url = _string(source.get("url"), f"{path}.source.url")
    else:
        raise WireError(f"{path}.source.type: Input should be 'base64' or 'url'",
                        param=f"{path}.source.type", code="invalid_value")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = _object(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64" and source.get("media_type") == "application/pdf":
        data = _string(source.get("data"), f"{path}.source.data")
        part: dict[str, Any] = {"type": "file",
                                "file": {"file_data": f"data:application/pdf;base64,{data}"}}
        title = block.get("title")
        if isinstance(title, str) and title:
            part["file"]["filename"] = title
        return part
    if kind == "text":
        return {"type": "text", "text": _string(source.get("data"), f"{path}.source.data")}
    raise WireError(f"{path}.source: ModelMesh passes on documents holding a base64 PDF or "
                    "plain text only", param=f"{path}.source", code="unsupported_parameter")


def _result_content(block: Mapping[str, Any], path: str,
                    images: list[dict[str, Any]]) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts = []
        for k, item in enumerate(content):
            where = f"{path}.content.{k}"
            item = _object(item, where)
            kind = item.get("type")
            if kind == "text":
                texts.append(_string(item.get("text"), f"{where}.text"))
            elif kind == "image":
                images.append(_image_part(item, where))
            elif kind == "document":
                part = _document_part(item, where)
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(part)
            else:
                raise WireError(f"{where}.type: tool results may hold text, image and "
                                "document blocks", param=f"{where}.type",
                                code="invalid_value")
        text = "\n".join(texts)
    else:
        raise _bad(f"{path}.content", "a valid string or a list of blocks", content)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return text


def _blocks(content: Any, path: str, allowed: frozenset[str]) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise _bad(path, "a valid string or a list of content blocks", content)
    for j, block in enumerate(content):
        where = f"{path}.{j}"
        if not isinstance(block, dict):
            raise _bad(where, "a valid dictionary", block)
        kind = block.get("type")
        if not isinstance(kind, str):
            raise _required(f"{where}.type")
        if kind not in allowed:
            raise WireError(
                f"{where}.type: ModelMesh does not pass on {kind!r} blocks in this turn "
                f"(supported: {', '.join(sorted(allowed))})", param=f"{where}.type",
                code="unsupported_parameter")
    return content


def _user_turn(content: Any, path: str) -> list[dict[str, Any]]:
    """One user turn → its tool messages (first, as OpenAI wants them right after the
    assistant's tool calls), then the user message with every other part."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    blocks = _blocks(content, path, _USER_BLOCKS)
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"{path}.{j}"
        kind = block["type"]
        if kind == "text":
            parts.append(_text_part(block, where))
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind == "document":
            parts.append(_document_part(block, where))
        else:
            call_id = _string(block.get("tool_use_id"), f"{where}.tool_use_id")
            out.append({"role": "tool", "tool_call_id": call_id,
                        "content": _result_content(block, where, images)})
    parts.extend(images)
    if parts:
        out.append({"role": "user", "content": _simple(parts)})
    elif not out:
        out.append({"role": "user", "content": ""})
    return out


def _simple(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


def _assistant_turn(content: Any, path: str) -> dict[str, Any] | None:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    blocks = _blocks(content, path, _ASSISTANT_BLOCKS)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where = f"{path}.{j}"
        kind = block["type"]
        if kind == "text":
            texts.append(_string(block.get("text"), f"{where}.text"))
        elif kind == "tool_use":
            call_id = _string(block.get("id"), f"{where}.id")
            name = _string(block.get("name"), f"{where}.name")
            arguments = _object(block.get("input", {}), f"{where}.input")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": dumps(arguments).decode()}})
    text = "".join(texts)
    if calls:
        return {"role": "assistant", "content": text or None, "tool_calls": calls}
    if not text:
        return None  # only thinking blocks: nothing another model can use
    return {"role": "assistant", "content": text}


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if raw is None:
        raise _required("messages")
    if not isinstance(raw, list):
        raise _bad("messages", "a valid list", raw)
    if not raw:
        raise WireError("messages: at least one message is required", param="messages",
                        code="invalid_value")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        where = f"messages.{i}"
        message = _object(message, where)
        role = message.get("role")
        content = message.get("content")
        if content is None:
            raise _required(f"{where}.content")
        if role == "user":
            out.extend(_user_turn(content, f"{where}.content"))
        elif role == "assistant":
            turn = _assistant_turn(content, f"{where}.content")
            if turn is not None:
                out.append(turn)
        elif role is None:
            raise _required(f"{where}.role")
        else:
            raise WireError(f"{where}.role: Input should be 'user' or 'assistant'",
                            param=f"{where}.role", code="invalid_value")
    return out


def _system(body: Mapping[str, Any]) -> dict[str, Any] | None:
    system = body.get("system")
    if system is None:
        return None
    if isinstance(system, str):
        return {"role": "system", "content": system} if system else None
    blocks = _blocks(system, "system", frozenset({"text"}))
    parts = [_text_part(block, f"system.{j}") for j, block in enumerate(blocks)]
    if not parts:
        return None
    return {"role": "system", "content": _simple(parts)}


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    raw = body.get("tools")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("tools", "a valid list", raw)
    out = []
    for i, tool in enumerate(raw):
        where = f"tools.{i}"
        tool = _object(tool, where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise WireError(
                f"{where}.type: ModelMesh routes client tools only; the server tool "
                f"{str(kind)[:60]!r} runs on Anthropic's side and has no equivalent on other "
                "vendors", param=f"{where}.type", code="unsupported_parameter")
        name = tool.get("name")
        if name is None:
            raise _required(f"{where}.name")
        function: dict[str, Any] = {"name": _string(name, f"{where}.name")}
        description = tool.get("description")
        if description is not None:
            function["description"] = _string(description, f"{where}.description")
        schema = tool.get("input_schema")
        if schema is None:
            raise _required(f"{where}.input_schema")
        function["parameters"] = _object(schema, f"{where}.input_schema")
        out.append({"type": "function", "function": function})
    return out or None


def _tool_choice(body: Mapping[str, Any], extra: dict[str, Any]) -> None:
    raw = body.get("tool_choice")
    if raw is None:
        return
    choice = _object(raw, "tool_choice")
    kind = choice.get("type")
    if kind not in _TOOL_CHOICES:
        raise WireError("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
                        param="tool_choice.type", code="invalid_value")
    if kind == "tool":
        name = choice.get("name")
        if name is None:
            raise _required("tool_choice.name")
        extra["tool_choice"] = {"type": "function",
                                "function": {"name": _string(name, "tool_choice.name")}}
    else:
        extra["tool_choice"] = _OPENAI_CHOICE[kind]
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _bad("tool_choice.disable_parallel_tool_use", "a valid boolean", disable)
    if disable and kind != "none":
        extra["parallel_tool_calls"] = False


def _stop_sequences(body: Mapping[str, Any]) -> list[str] | None:
    raw = body.get("stop_sequences")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise _bad("stop_sequences", "a valid list of strings", raw)
    kept = [s for s in raw if s]
    return kept or None


def _user_id(body: Mapping[str, Any]) -> str | None:
    raw = body.get("metadata")
    if raw is None:
        return None
    metadata = _object(raw, "metadata")
    user = metadata.get("user_id")
    if user is None:
        return None
    return _string(user, "metadata.user_id") or None


def _output_format(body: Mapping[str, Any], extra: dict[str, Any]) -> None:
    raw = body.get("output_config")
    if raw is None:
        return
    fmt = _object(raw, "output_config").get("format")
    if fmt is None:
        return
    fmt = _object(fmt, "output_config.format")
    if fmt.get("type") != "json_schema":
        raise WireError("output_config.format.type: Input should be 'json_schema'",
                        param="output_config.format.type", code="invalid_value")
    schema = _object(fmt.get("schema"), "output_config.format.schema")
    extra["response_format"] = {"type": "json_schema",
                                "json_schema": {"name": "output", "schema": schema}}


def _conversation(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]],
                                                       list[dict[str, Any]] | None]:
    messages = _messages(body)
    system = _system(body)
    if system is not None:
        messages.insert(0, system)
    return messages, _tools(body)


def parse_messages_request(body: Any, *, shallow: bool = False
                           ) -> tuple[str, CompletionRequest]:
    """Validate a ``POST /v1/messages`` body and build the router's request.

    Returns ``(model, request)``: ``model`` is the name asked for (pool, capability alias or
    model id), ``request`` the OpenAI-shaped :class:`CompletionRequest`. Raises
    :class:`~modelmesh_core.wire.WireError` (400) naming the field on the first problem.
    ``shallow`` says the body is known to nest within the depth limit.
    """
    body = _body(body, shallow)
    model = _model(body)
    if body.get("max_tokens") is None:
        raise _required("max_tokens")
    max_tokens = _integer(body, "max_tokens", 1)
    messages, tools = _conversation(body)
    temperature = _number(body, "temperature", 0.0, 1.0)
    extra: dict[str, Any] = {}
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        extra["top_p"] = body["top_p"]
    top_k = _integer(body, "top_k", 0)
    if top_k is not None:
        extra["top_k"] = top_k
    stop = _stop_sequences(body)
    if stop:
        extra["stop"] = stop
    if tools:
        _tool_choice(body, extra)
    user = _user_id(body)
    if user:
        extra["user"] = user
    _output_format(body, extra)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "a valid boolean", stream)
    return model, CompletionRequest(messages=messages, temperature=temperature,
                                    max_tokens=max_tokens, stream=bool(stream), tools=tools,
                                    extra=extra)


def parse_count_tokens_request(body: Any, *, shallow: bool = False
                               ) -> tuple[str, CompletionRequest]:
    """Validate a ``POST /v1/messages/count_tokens`` body (``model``, ``messages``,
    ``system``, ``tools``; no ``max_tokens``) into ``(model, request)``."""
    body = _body(body, shallow)
    model = _model(body)
    messages, tools = _conversation(body)
    return model, CompletionRequest(messages=messages, tools=tools)


# --------------------------------------------------------------------------- answers


def _message_id(resp: CompletionResponse) -> str:
    rid = resp.id
    if rid.startswith("msg_"):
        return rid
    return "msg_" + os.urandom(12).hex()


def usage_to_anthropic(usage: Mapping[str, int] | None) -> dict[str, int]:
    """Anthropic's ``usage`` from a ModelMesh usage dict: ``input_tokens`` excludes the cache
    reads and writes, which have their own counters (as Anthropic counts them)."""
    usage = usage or {}
    read = int(usage.get("cached_tokens", 0) or 0)
    written = int(usage.get("cache_creation_tokens", 0) or 0)
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    return {
        "input_tokens": max(prompt - read - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": int(usage.get("completion_tokens", 0) or 0),
    }


def _stop(finish: str | None, tools: bool, metadata: Mapping[str, Any]
          ) -> tuple[str, str | None]:
    sequence = metadata.get("stop_sequence")
    if isinstance(sequence, str) and finish in (None, "stop"):
        return "stop_sequence", sequence
    if finish is None:
        return ("tool_use" if tools else "end_turn"), None
    return STOP_REASONS.get(finish, "end_turn"), None


def _tool_input(arguments: str, name: str | None) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = loads(arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise WireError(f"The model called tool {name!r} with arguments that are not a JSON "
                        "object, which the Messages API cannot express.", status=502,
                        code="invalid_tool_arguments")
    return value


def message_to_dict(resp: CompletionResponse) -> dict[str, Any]:
    """An Anthropic ``message`` object from the router's answer (``model`` is the ModelMesh
    id of the model that answered, as on ``/v1/chat/completions``)."""
    content: list[dict[str, Any]] = []
    if resp.content:
        content.append({"type": "text", "text": resp.content})
    elif resp.refusal:
        content.append({"type": "text", "text": resp.refusal})
    for call in resp.tool_calls:
        content.append({"type": "tool_use", "id": call.id or _tool_id(),
                        "name": call.name or "", "input": _tool_input(call.arguments, call.name)})
    reason, sequence = _stop(resp.finish_reason, bool(resp.tool_calls), resp.metadata)
    return {
        "id": _message_id(resp),
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_to_anthropic(resp.usage),
    }


def _tool_id() -> str:
    return "toolu_" + os.urandom(12).hex()


def _event(name: bytes, obj: Any) -> bytes:
    return b"event: " + name + b"\ndata: " + dumps(obj) + b"\n\n"


_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_DELTA_HEAD = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":')
_TEXT_MID = b',"delta":{"type":"text_delta","text":'
_JSON_MID = b',"delta":{"type":"input_json_delta","partial_json":'


class EventEncoder:
    """Anthropic's SSE event sequence for one stream of router chunks.

    :meth:`opening` gives ``message_start`` and a ``ping``; :meth:`frames` the events of one
    chunk (``content_block_start`` / ``content_block_delta`` / ``content_block_stop``; text
    and tool calls become consecutive blocks); :meth:`closing` ends the open block and sends
    ``message_delta`` (stop reason, final usage) and ``message_stop``. :attr:`last` is the
    last chunk seen (the router leaves the stream's cost on it).
    """

    __slots__ = ("_block", "_next", "_open", "_tools", "finish", "id", "input_estimate",
                 "last", "model", "usage")

    def __init__(self, first: CompletionResponse, *, input_estimate: int = 0) -> None:
        self.id = _message_id(first)
        self.model = first.model
        self.input_estimate = input_estimate
        self.last = first
        self.usage: dict[str, int] | None = None
        self.finish: str | None = None
        self._next = 0  # index of the next content block
        self._open: str | None = None  # kind of the open block: "text", "tool" or None
        self._block = -1  # index of the open block
        self._tools: dict[int, int] = {}  # OpenAI tool-call index → block index

    @property
    def cost(self) -> float | None:
        """The stream's cost, once the router has put it on the last chunk."""
        cost = self.last.metadata.get("cost")
        return float(cost) if isinstance(cost, int | float) else None

    def opening(self) -> bytes:
        """``message_start`` (usage: the router's estimate of the input tokens; the real
        count follows in ``message_delta``) and a ``ping``."""
        usage = {"input_tokens": self.input_estimate, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0, "output_tokens": 0}
        message: dict[str, Any] = {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage}
        return _event(b"message_start", {"type": "message_start", "message": message}) + _PING

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event(b"content_block_stop", {"type": "content_block_stop",
                                              "index": self._block})

    def _start(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._open, self._block = kind, self._next
        self._next += 1
        return out + _event(b"content_block_start", {"type": "content_block_start",
                                                     "index": self._block,
                                                     "content_block": block})

    def frames(self, chunk: CompletionResponse) -> bytes:
        """The events for one chunk (``b""`` when it carries nothing to send)."""
        self.last = chunk
        if chunk.usage:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
        text = chunk.content or chunk.refusal
        if text and self._open == "text" and not chunk.tool_calls:
            return _DELTA_HEAD + str(self._block).encode() + _TEXT_MID + dumps(text) + b"}}\n\n"
        out = b""
        if text:
            if self._open != "text":
                out += self._start("text", {"type": "text", "text": ""})
            out += _DELTA_HEAD + str(self._block).encode() + _TEXT_MID + dumps(text) + b"}}\n\n"
        for position, call in enumerate(chunk.tool_calls):
            key = call.index if call.index is not None else len(self._tools) + position
            block = self._tools.get(key)
            if block is None:
                out += self._start("tool", {"type": "tool_use", "id": call.id or _tool_id(),
                                            "name": call.name or "", "input": {}})
                block = self._tools[key] = self._block
            if call.arguments:
                out += (_DELTA_HEAD + str(block).encode() + _JSON_MID + dumps(call.arguments)
                        + b"}}\n\n")
        return out

    def closing(self) -> bytes:
        """Close the open block; ``message_delta`` and ``message_stop``."""
        reason, sequence = _stop(self.finish, bool(self._tools), self.last.metadata)
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": reason, "stop_sequence": sequence},
                 "usage": usage_to_anthropic(self.usage)}
        return (self._close() + _event(b"message_delta", delta)
                + b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


# --------------------------------------------------------------------------- errors


def _overloaded(exc: BaseException) -> bool:
    if isinstance(exc, AllProvidersExhaustedError):
        errors = [e for _, e in exc.attempts]
        return bool(errors) and all(_overloaded(e) for e in errors)
    return (isinstance(exc, ProviderError) and not isinstance(exc, RateLimitError)
            and exc.status in (503, 529))


def anthropic_error(exc: BaseException, *, available: Any = None,
                    request_id: str | None = None
                    ) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` of Anthropic's error answer for ``exc``.

    The status and message are the proxy's own (:func:`~modelmesh_core.wire.error_for_exception`,
    secrets redacted) with Anthropic's types: 400 ``invalid_request_error`` (also other 4xx),
    401 ``authentication_error``, 403 ``permission_error``, 404 ``not_found_error``, 413
    ``request_too_large``, 429 ``rate_limit_error``, 500 / 502 ``api_error``, 504
    ``timeout_error``; "no model active right now" (503) and upstreams that were all
    overloaded become 529 ``overloaded_error``.
    """
    status, body, headers = error_for_exception(exc, available=available)
    if status == 503 or (status == 502 and _overloaded(exc)):
        status = 529
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500
                                        else "invalid_request_error")
    out: dict[str, Any] = {"type": "error",
                           "error": {"type": kind, "message": body["error"]["message"]}}
    if request_id is not None:
        out["request_id"] = request_id
    return status, out, headers


def error_event(exc: BaseException) -> bytes:
    """The in-band ``event: error`` for a stream that fails after it started."""
    _, body, _ = anthropic_error(exc)
    return _event(b"error", body)
