"""The OpenAI wire format at the edge: request parsing, response shapes and error mapping.

Shared by the HTTP proxy (:mod:`modelmesh_core.server`) and the in-process client. Requests are
validated once, strictly, and turned into :class:`~modelmesh_core.types.CompletionRequest` /
:class:`~modelmesh_core.types.EmbeddingRequest`; every OpenAI parameter ModelMesh does not act
on travels unchanged in ``extra``. Responses are rebuilt exactly in OpenAI's shape, with the
ModelMesh id of the model that answered (``alpha.gpt-4o-mini``) in ``model``.

Error mapping (:func:`error_for_exception`), status by status:

====== ==================================================================================
400    malformed request (names the field; nesting and name length limited by
       :mod:`modelmesh_core.limits`), context length exceeded (also when the prompt or
       ``max_tokens`` is beyond every candidate: ``context_length_exceeded``), a request an
       adapter cannot encode, content filtered, invalid configuration (admin reload), no
       model supports what the request needs
401    missing or unknown proxy key
403    the key may not use this pool / the admin API
404    unknown model name (lists close matches and what exists)
413    request body too large
429    every candidate was rate limited (``Retry-After`` = the smallest wait upstream asked
       for), a virtual key over its rpm (``Retry-After``), or a budget exhausted (code
       ``budget_exceeded``, ``x-should-retry: false`` so SDKs do not retry in vain; 429 rather
       than 402 because every OpenAI client already handles 429 ``insufficient_quota``)
502    every provider failed (names each model, its provider and why; secrets redacted), or
       the upstream rejected ModelMesh's own credentials
503    a pool matched but no model in it is active (standby, cooldown, budget)
504    the attempts timed out
500    an unexpected bug (message only, never a traceback)
====== ==================================================================================
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from .errors import (
    AllProvidersExhaustedError,
    AuthenticationError,
    BudgetExceededError,
    CapabilityNotFoundError,
    ConfigError,
    ContentFilterError,
    ContextLengthError,
    InvalidRequestError,
    ModelMeshError,
    NoActiveModelError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    RoutingError,
    StreamInterruptedError,
)
from .limits import MAX_JSON_DEPTH, MAX_NAME_LENGTH, OversizeReason, too_deep
from .redaction import redact
from .types import (
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ToolCall,
)

__all__ = [
    "WireError",
    "chunk_to_dict",
    "completion_to_dict",
    "completion_to_text_completion_dict",
    "dumps",
    "embeddings_to_dict",
    "error_body",
    "error_for_exception",
    "include_usage",
    "loads",
    "parse_chat_request",
    "parse_completion_request",
    "parse_embeddings_request",
    "text_chunk_to_dict",
    "usage_chunk_dict",
    "usage_to_dict",
]

dumps = orjson.dumps
"""Serialise to JSON bytes (orjson)."""

loads = orjson.loads
"""Parse JSON bytes or text (orjson)."""


class WireError(ModelMeshError):
    """A request that does not follow the OpenAI wire format, or that the edge refuses.

    ``param`` names the offending field (``"messages[0].role"``); ``status`` is the HTTP status
    to answer with; ``code`` and ``type`` go into the OpenAI error body; ``headers`` are extra
    response headers (``Retry-After`` for rate limits).
    """

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        code: str | None = "invalid_request",
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code
        self.type = type or _TYPE_BY_STATUS.get(status, "invalid_request_error")
        self.headers: dict[str, str] = dict(headers or {})


_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


# --------------------------------------------------------------------------- validation helpers


def _type_name(value: Any) -> str:
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


def _bad(param: str, expected: str, value: Any) -> WireError:
    return WireError(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)}.",
        param=param,
        code="invalid_type",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: Mapping[str, Any], name: str, lo: float | None, hi: float | None) -> None:
    value = body.get(name)
    if value is None:
        return
    if not _is_number(value) or not math.isfinite(value):
        raise _bad(name, "a number", value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise WireError(
            f"Invalid value for '{name}': {value} is outside [{lo}, {hi}].",
            param=name, code="invalid_value",
        )


def _integer(body: Mapping[str, Any], name: str, lo: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise _bad(name, "an integer", value)
    if lo is not None and value < lo:
        raise WireError(
            f"Invalid value for '{name}': {value} is less than the minimum of {lo}.",
            param=name, code="invalid_value",
        )
    return int(value)


def _boolean(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _bad(name, "a boolean", value)
    return value


def _object(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(name, "an object", value)
    return value


def _require_object(body: Any, shallow: bool = False) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise WireError(
            f"The request body must be a JSON object, not {_type_name(body)}.",
            code="invalid_body",
        )
    deep = None if shallow else too_deep(body)
    if deep is not None:
        raise WireError(
            f"The request body nests objects and arrays more than {MAX_JSON_DEPTH} levels "
            f"deep (at '{deep[:80]}').", param=deep[:80], code="invalid_value",
        )
    return body


def _model(body: Mapping[str, Any]) -> str:
    if "model" not in body or body["model"] is None:
        raise WireError("Missing required parameter: 'model'.", param="model",
                        code="missing_required_parameter")
    model = body["model"]
    if not isinstance(model, str):
        raise _bad("model", "a string", model)
    if len(model) > MAX_NAME_LENGTH:
        raise WireError(f"Invalid value for 'model': longer than {MAX_NAME_LENGTH} characters.",
                        param="model", code="invalid_value")
    model = model.strip()
    if not model:
        raise WireError("Invalid value for 'model': must not be empty.", param="model",
                        code="invalid_value")
    return model


def _n(body: Mapping[str, Any]) -> None:
    n = _integer(body, "n", 1)
    if n is not None and n > 1:
        raise WireError("'n' greater than 1 is not supported by ModelMesh; send n requests.",
                        param="n", code="unsupported_parameter")


_VALID_ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "messages" not in body or body["messages"] is None:
        raise WireError("Missing required parameter: 'messages'.", param="messages",
                        code="missing_required_parameter")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _bad("messages", "an array of message objects", messages)
    if not messages:
        raise WireError("Invalid 'messages': empty array. Expected at least one message.",
                        param="messages", code="empty_array")
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(where, "an object", msg)
        role = msg.get("role")
        if role is None:
            raise WireError(f"Missing required parameter: '{where}.role'.",
                            param=f"{where}.role", code="missing_required_parameter")
        if not isinstance(role, str):
            raise _bad(f"{where}.role", "a string", role)
        if role not in _VALID_ROLES:
            raise WireError(
                f"Invalid value for '{where}.role': {role!r}. Supported values are: "
                + ", ".join(sorted(_VALID_ROLES)) + ".",
                param=f"{where}.role", code="invalid_value",
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"{where}.content", "a string or an array of content parts", content)
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(f"{where}.content[{j}]", "an object with a string 'type'", part)
        if content is None and role in ("user", "system", "developer"):
            raise WireError(f"Missing required parameter: '{where}.content'.",
                            param=f"{where}.content", code="missing_required_parameter")
        tool_calls = msg.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise _bad(f"{where}.tool_calls", "an array", tool_calls)
    return messages


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("tools", "an array of tool objects", tools)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"tools[{i}]", "an object", tool)
        if not isinstance(tool.get("type"), str):
            raise WireError(f"Missing required parameter: 'tools[{i}].type'.",
                            param=f"tools[{i}].type", code="missing_required_parameter")
        if tool["type"] == "function":
            fn = tool.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise WireError(
                    f"Missing required parameter: 'tools[{i}].function.name'.",
                    param=f"tools[{i}].function.name", code="missing_required_parameter",
                )
    return tools or None


def _stop(body: Mapping[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _bad("stop", "a string or an array of strings", stop)


def _common_sampling(body: Mapping[str, Any]) -> float | None:
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    _number(body, "presence_penalty", -2.0, 2.0)
    _number(body, "frequency_penalty", -2.0, 2.0)
    _integer(body, "seed")
    _stop(body)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "a string", user)
    _n(body)
    temperature = body.get("temperature")
    return float(temperature) if temperature is not None else None


# Parameters consumed into CompletionRequest fields; everything else goes to ``extra``.
_CHAT_CONSUMED = frozenset(
    {"model", "messages", "temperature", "max_tokens", "stream", "tools"}
)


def parse_chat_request(body: Any, *, shallow: bool = False) -> tuple[str, CompletionRequest]:
    """Validate a ``/v1/chat/completions`` body and build the request.

    Returns ``(model, request)`` where ``model`` is the name the caller asked for (a pool,
    capability alias or path, or a concrete model id). ``max_completion_tokens`` is passed
    through unchanged in ``extra`` and also sets ``max_tokens`` (the smaller of the two when
    both are given), which routing uses to estimate cost and context needs; an upstream that
    receives ``max_completion_tokens`` gets no ``max_tokens``. Unknown parameters are passed
    through in ``request.extra`` unchanged; so is
    ``stream_options`` (read it back with :func:`include_usage`).

    Raises :class:`WireError` (status 400) naming the field on the first problem found.
    ``shallow=True`` says the caller already knows the body nests no deeper than
    :data:`~modelmesh_core.limits.MAX_JSON_DEPTH` (see
    :func:`~modelmesh_core.limits.cannot_be_too_deep`).
    """
    body = _require_object(body, shallow)
    model = _model(body)
    messages = _messages(body)
    temperature = _common_sampling(body)
    max_tokens = _integer(body, "max_tokens", 1)
    max_completion = _integer(body, "max_completion_tokens", 1)
    if max_completion is not None:
        max_tokens = max_completion if max_tokens is None else min(max_tokens, max_completion)
    stream = _boolean(body, "stream") or False
    stream_options = _object(body, "stream_options")
    if stream_options is not None:
        if not stream:
            raise WireError("'stream_options' is only allowed when 'stream' is true.",
                            param="stream_options", code="invalid_value")
        flag = stream_options.get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise _bad("stream_options.include_usage", "a boolean", flag)
    tools = _tools(body)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not isinstance(tool_choice, str | dict):
        raise _bad("tool_choice", "a string or an object", tool_choice)
    _object(body, "response_format")
    _boolean(body, "logprobs")
    _integer(body, "top_logprobs", 0)
    _boolean(body, "parallel_tool_calls")
    extra = {k: v for k, v in body.items() if k not in _CHAT_CONSUMED and v is not None}
    return model, CompletionRequest(
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        stream=stream,
        tools=tools,
        extra=extra,
    )


def include_usage(request: CompletionRequest) -> bool:
    """Whether a streaming request asked for a final usage chunk (``stream_options``)."""
    options = request.extra.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


_LEGACY_CONSUMED = frozenset({"model", "prompt", "temperature", "max_tokens", "stream"})


def parse_completion_request(body: Any, *, shallow: bool = False) -> tuple[str, CompletionRequest]:
    """Validate a legacy ``/v1/completions`` body; the prompt becomes one user message.

    ``prompt`` must be a string (or an array holding exactly one string); token arrays,
    ``echo``, ``suffix``, ``best_of`` > 1 and integer ``logprobs`` have no chat equivalent
    and are refused with a 400 naming the field.
    """
    body = _require_object(body, shallow)
    model = _model(body)
    if "prompt" not in body or body["prompt"] is None:
        raise WireError("Missing required parameter: 'prompt'.", param="prompt",
                        code="missing_required_parameter")
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise WireError(
                "'prompt' must be a string or an array with exactly one string; "
                "send one request per prompt (token arrays are not supported).",
                param="prompt", code="unsupported_parameter",
            )
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", "a string", prompt)
    temperature = _common_sampling(body)
    max_tokens = _integer(body, "max_tokens", 1)
    stream = _boolean(body, "stream") or False
    if _boolean(body, "echo"):
        raise WireError("'echo' is not supported by ModelMesh.", param="echo",
                        code="unsupported_parameter")
    if body.get("suffix") is not None:
        raise WireError("'suffix' is not supported by ModelMesh.", param="suffix",
                        code="unsupported_parameter")
    best_of = _integer(body, "best_of", 1)
    if best_of is not None and best_of > 1:
        raise WireError("'best_of' greater than 1 is not supported by ModelMesh.",
                        param="best_of", code="unsupported_parameter")
    if body.get("logprobs") is not None:
        raise WireError("'logprobs' is not supported on /v1/completions by ModelMesh.",
                        param="logprobs", code="unsupported_parameter")
    stream_options = _object(body, "stream_options")
    if stream_options is not None and not stream:
        raise WireError("'stream_options' is only allowed when 'stream' is true.",
                        param="stream_options", code="invalid_value")
    extra = {
        k: v for k, v in body.items()
        if k not in _LEGACY_CONSUMED and v is not None and k not in ("best_of", "echo", "n")
    }
    return model, CompletionRequest(
        messages=[{"role": "user", "content": prompt}],
        temperature=temperature,
        max_tokens=max_tokens,
        stream=stream,
        extra=extra,
    )


def parse_embeddings_request(body: Any, *, shallow: bool = False) -> tuple[str, EmbeddingRequest]:
    """Validate a ``/v1/embeddings`` body.

    ``input`` is a non-empty string or a non-empty array of non-empty strings.
    ``encoding_format`` (``float`` or ``base64`` — the official SDK asks for base64 by default)
    is answered by the proxy and kept out of what goes upstream: it is stored in
    ``request.metadata["encoding_format"]``. ``dimensions`` and ``user`` pass through in
    ``extra``.
    """
    body = _require_object(body, shallow)
    model = _model(body)
    if "input" not in body or body["input"] is None:
        raise WireError("Missing required parameter: 'input'.", param="input",
                        code="missing_required_parameter")
    value = body["input"]
    if isinstance(value, str):
        if not value:
            raise WireError("'input' must not be empty.", param="input", code="invalid_value")
    elif isinstance(value, list):
        if not value:
            raise WireError("'input' must not be an empty array.", param="input",
                            code="invalid_value")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise WireError(
                    f"Invalid type for 'input[{i}]': expected a string, but got "
                    f"{_type_name(item)} (token arrays are not supported).",
                    param=f"input[{i}]", code="invalid_type",
                )
            if not item:
                raise WireError(f"'input[{i}]' must not be empty.", param=f"input[{i}]",
                                code="invalid_value")
    else:
        raise _bad("input", "a string or an array of strings", value)
    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise WireError(
            f"Invalid value for 'encoding_format': {fmt!r}. Supported values are: "
            "'float' and 'base64'.",
            param="encoding_format", code="invalid_value",
        )
    _integer(body, "dimensions", 1)
    extra = {
        k: v for k, v in body.items()
        if k not in ("model", "input", "encoding_format") and v is not None
    }
    return model, EmbeddingRequest(
        input=value, extra=extra, metadata={"encoding_format": fmt}
    )


# --------------------------------------------------------------------------- responses


def usage_to_dict(usage: Mapping[str, int] | None) -> dict[str, Any]:
    """OpenAI's chat ``usage`` object from a ModelMesh usage dict."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens", 0))
    completion = int(usage.get("completion_tokens", 0))
    total = int(usage.get("total_tokens", 0)) or prompt + completion
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": int(usage.get("cached_tokens", 0))},
        "completion_tokens_details": {
            "reasoning_tokens": int(usage.get("reasoning_tokens", 0))
        },
    }


def _tool_call_dict(call: ToolCall, delta: bool) -> dict[str, Any]:
    fn: dict[str, Any] = {}
    if call.name is not None or not delta:
        fn["name"] = call.name or ""
    fn["arguments"] = call.arguments
    out: dict[str, Any] = {}
    if delta:
        out["index"] = call.index if call.index is not None else 0
    if call.id is not None or not delta:
        out["id"] = call.id or ""
    if call.id is not None or call.name is not None or not delta:
        out["type"] = call.type
    out["function"] = fn
    return out


def _response_id(resp: CompletionResponse, prefix: str) -> str:
    return resp.id or f"{prefix}-{uuid.uuid4().hex}"


def completion_to_dict(resp: CompletionResponse) -> dict[str, Any]:
    """A ``chat.completion`` object exactly in OpenAI's shape."""
    message: dict[str, Any] = {
        "role": resp.role or "assistant",
        "content": resp.content if (resp.content or not resp.tool_calls) else None,
        "refusal": resp.refusal,
    }
    if resp.tool_calls:
        message["tool_calls"] = [_tool_call_dict(c, delta=False) for c in resp.tool_calls]
    finish = resp.finish_reason or ("tool_calls" if resp.tool_calls else "stop")
    return {
        "id": _response_id(resp, "chatcmpl"),
        "object": "chat.completion",
        "created": resp.created or int(time.time()),
        "model": resp.model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        ],
        "usage": usage_to_dict(resp.usage),
        "system_fingerprint": None,
    }


def chunk_to_dict(
    resp: CompletionResponse,
    include_usage: bool,
    *,
    first: bool = False,
    id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` for one streamed delta.

    ``first`` adds ``delta.role``; ``id`` / ``created`` keep every chunk of one stream under
    the same id (OpenAI's shape). With ``include_usage`` the chunk carries ``"usage": null``,
    as OpenAI's do; the usage itself goes into a final chunk from :func:`usage_chunk_dict`.
    """
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = resp.role or "assistant"
    if resp.content or first:
        delta["content"] = resp.content
    if resp.tool_calls:
        delta["tool_calls"] = [_tool_call_dict(c, delta=True) for c in resp.tool_calls]
    if resp.refusal is not None:
        delta["refusal"] = resp.refusal
    out: dict[str, Any] = {
        "id": id or _response_id(resp, "chatcmpl"),
        "object": "chat.completion.chunk",
        "created": created or resp.created or int(time.time()),
        "model": resp.model,
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": resp.finish_reason}
        ],
    }
    if include_usage:
        out["usage"] = None
    return out


def usage_chunk_dict(
    usage: Mapping[str, int] | None, *, id: str, created: int, model: str,
    object: str = "chat.completion.chunk",
) -> dict[str, Any]:
    """The last chunk of a stream asked with ``include_usage``: empty ``choices``, ``usage``."""
    return {
        "id": id,
        "object": object,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage_to_dict(usage) if object == "chat.completion.chunk"
        else _text_usage(usage),
    }


def _text_usage(usage: Mapping[str, int] | None) -> dict[str, int]:
    full = usage_to_dict(usage)
    return {k: full[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def completion_to_text_completion_dict(resp: CompletionResponse) -> dict[str, Any]:
    """A legacy ``text_completion`` object (``/v1/completions``) from a chat response."""
    return {
        "id": _response_id(resp, "cmpl"),
        "object": "text_completion",
        "created": resp.created or int(time.time()),
        "model": resp.model,
        "choices": [
            {
                "text": resp.content,
                "index": 0,
                "logprobs": None,
                "finish_reason": resp.finish_reason or "stop",
            }
        ],
        "usage": _text_usage(resp.usage),
        "system_fingerprint": None,
    }


def text_chunk_to_dict(
    resp: CompletionResponse, *, id: str, created: int, include_usage: bool = False
) -> dict[str, Any]:
    """A streamed legacy ``text_completion`` chunk."""
    out: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": resp.model,
        "system_fingerprint": None,
        "choices": [
            {"text": resp.content, "index": 0, "logprobs": None,
             "finish_reason": resp.finish_reason}
        ],
    }
    if include_usage:
        out["usage"] = None
    return out


def _b64_floats(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings_to_dict(resp: EmbeddingResponse, encoding_format: str = "float") -> dict[str, Any]:
    """An OpenAI embeddings ``list``; ``base64`` packs each vector as little-endian float32."""
    encode = _b64_floats if encoding_format == "base64" else list
    prompt = int(resp.usage.get("prompt_tokens", 0))
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(vec)}
            for i, vec in enumerate(resp.data)
        ],
        "model": resp.model,
        "usage": {
            "prompt_tokens": prompt,
            "total_tokens": int(resp.usage.get("total_tokens", 0)) or prompt,
        },
    }


# --------------------------------------------------------------------------- errors


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _retry_after_header(seconds: float | None, default: int = 1) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return str(default)
    return str(max(1, math.ceil(seconds)))


def _budget_reset(limit_type: str, now: float | None = None) -> float | None:
    """Seconds until a daily / monthly UTC budget window resets."""
    current = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    if limit_type == "daily":
        nxt = (current + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    elif limit_type == "monthly":
        year, month = (current.year + 1, 1) if current.month == 12 else (
            current.year, current.month + 1)
        nxt = datetime(year, month, 1, tzinfo=UTC)
    else:
        return None
    return (nxt - current).total_seconds()


def _describe_attempt(model_id: str, err: BaseException) -> str:
    provider = getattr(err, "provider_id", "") or model_id.partition(".")[0]
    detail = getattr(err, "detail", None) or str(err) or type(err).__name__
    status = getattr(err, "status", None)
    kind = type(err).__name__
    code = f" HTTP {status}" if status is not None else ""
    return f"{model_id} (provider {provider}): {kind}{code}: {detail}"


def _classify_failure(errors: Sequence[BaseException]) -> str:
    if errors and all(isinstance(e, RateLimitError) for e in errors):
        return "rate_limited"
    if errors and all(isinstance(e, ProviderTimeoutError | TimeoutError) for e in errors):
        return "timeout"
    if errors and all(isinstance(e, ContextLengthError) for e in errors):
        return "context_length"
    return "failed"


def error_for_exception(
    exc: BaseException, *, available: Sequence[str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Map an exception to ``(status, OpenAI error body, extra headers)``.

    ``available`` (model names the caller could use) is appended to 404 messages. Every
    message passes through :func:`~modelmesh_core.redaction.redact`. See the module docstring
    for the table of statuses.
    """
    status, type_, code, param, message, headers = _map(exc, available)
    return status, error_body(redact(message), type_, param, code), headers


def _map(
    exc: BaseException, available: Sequence[str] | None
) -> tuple[int, str, str | None, str | None, str, dict[str, str]]:
    if isinstance(exc, WireError):
        return exc.status, exc.type, exc.code, exc.param, exc.message, exc.headers
    if isinstance(exc, InvalidRequestError):
        return 400, "invalid_request_error", "invalid_value", exc.param, str(exc), {}
    if isinstance(exc, CapabilityNotFoundError):
        msg = str(exc)
        if available:
            names = list(available)
            shown = ", ".join(names[:40]) + (f", … ({len(names) - 40} more)" if len(names) > 40
                                            else "")
            msg = f"{msg}. Available models: {shown}. See GET /v1/models."
        return 404, "invalid_request_error", "model_not_found", "model", msg, {}
    if isinstance(exc, NoActiveModelError):
        oversize = _oversize_param(exc.reasons)
        if oversize is not None:
            return (400, "invalid_request_error", "context_length_exceeded", oversize,
                    f"{exc}. The request is larger than every candidate model accepts; "
                    f"shorten the prompt or lower '{oversize}'.", {})
        headers = ({"Retry-After": _retry_after_header(exc.retry_after)}
                   if exc.retry_after is not None else {})
        if exc.rate_limited:
            return (429, "requests", "rate_limit_exceeded", None,
                    f"{exc}. Every model that could serve this request is rate limited by its "
                    "provider; retry after the time in the Retry-After header.",
                    headers or {"Retry-After": "1"})
        return (503, "service_unavailable", "no_active_model", None,
                f"{exc}. Every model that could serve this request is inactive; retry later or "
                "reactivate one (POST /admin/models/{id}/reactivate).", headers)
    if isinstance(exc, AllProvidersExhaustedError):
        return _map_exhausted(exc)
    if isinstance(exc, RoutingError):
        return 400, "invalid_request_error", "no_capable_model", "model", str(exc), {}
    if isinstance(exc, BudgetExceededError):
        headers = {"x-should-retry": "false"}
        reset = _budget_reset(exc.limit_type)
        if reset is not None:
            headers["Retry-After"] = _retry_after_header(reset)
        return 429, "insufficient_quota", "budget_exceeded", None, str(exc), headers
    if isinstance(exc, ProviderError):
        return _map_provider(exc)
    if isinstance(exc, ConfigError):
        return 400, "invalid_request_error", "invalid_config", None, str(exc), {}
    if isinstance(exc, TimeoutError):
        return 504, "timeout_error", "timeout", None, "The request timed out.", {}
    if isinstance(exc, ModelMeshError):
        return 500, "server_error", "internal_error", None, str(exc), {}
    return (500, "server_error", "internal_error", None,
            f"Internal error in ModelMesh ({type(exc).__name__}); see the server log.", {})


def _oversize_param(reasons: Mapping[str, str]) -> str | None:
    """The field to blame when every candidate was dropped because the request is too large
    for it (see :class:`~modelmesh_core.limits.OversizeReason`), else None."""
    if not reasons or not all(isinstance(r, OversizeReason) for r in reasons.values()):
        return None
    params = {r.param for r in reasons.values()}  # type: ignore[attr-defined]
    return "max_tokens" if params == {"max_tokens"} else "messages"


def _map_provider(
    exc: ProviderError,
) -> tuple[int, str, str | None, str | None, str, dict[str, str]]:
    msg = str(exc)
    if isinstance(exc, ContextLengthError):
        return 400, "invalid_request_error", "context_length_exceeded", "messages", msg, {}
    if isinstance(exc, ContentFilterError):
        return 400, "invalid_request_error", "content_filter", None, msg, {}
    if isinstance(exc, RateLimitError):
        return (429, "rate_limit_error", "rate_limit_exceeded", None, msg,
                {"Retry-After": _retry_after_header(exc.retry_after)})
    if isinstance(exc, ProviderTimeoutError):
        return 504, "timeout_error", "upstream_timeout", None, msg, {}
    if isinstance(exc, AuthenticationError):
        # The upstream refused ModelMesh's own key: not the caller's fault, so not a 401.
        return (502, "upstream_error", "upstream_authentication_failed", None,
                f"{msg}. Check the API key configured for this provider.", {})
    if isinstance(exc, StreamInterruptedError):
        return 502, "upstream_error", "stream_interrupted", None, msg, {}
    if exc.status in (400, 422) and not exc.retryable:
        return 400, "invalid_request_error", "upstream_rejected_request", None, msg, {}
    if exc.status == 413:
        return 413, "invalid_request_error", "request_too_large", None, msg, {}
    return 502, "upstream_error", "upstream_error", None, msg, {}


def _map_exhausted(
    exc: AllProvidersExhaustedError,
) -> tuple[int, str, str | None, str | None, str, dict[str, str]]:
    errors = [e for _, e in exc.attempts]
    if not errors and exc.last_error is not None:
        errors = [exc.last_error]
    lines = "; ".join(_describe_attempt(m, e) for m, e in exc.attempts)
    count = len(exc.attempts)
    summary = f"All {count} attempt{'s' if count != 1 else ''} failed: {lines}" if lines else str(
        exc)
    kind = _classify_failure(errors)
    if kind == "rate_limited":
        return (429, "rate_limit_error", "rate_limit_exceeded", None,
                f"Every candidate model is rate limited. {summary}",
                {"Retry-After": _retry_after_header(exc.retry_after)})
    if kind == "timeout":
        return 504, "timeout_error", "upstream_timeout", None, f"Upstream timed out. {summary}", {}
    if kind == "context_length":
        return (400, "invalid_request_error", "context_length_exceeded", "messages",
                f"The request exceeds every candidate's context window. {summary}", {})
    return 502, "upstream_error", "all_providers_failed", None, summary, {}
