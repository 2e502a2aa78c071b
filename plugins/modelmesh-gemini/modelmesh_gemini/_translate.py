"""Translation between the OpenAI chat shape callers use and Gemini's ``generateContent``.

Requests: OpenAI ``messages`` become ``contents`` (roles ``user`` / ``model``) plus a
``systemInstruction``; ``tools`` become ``functionDeclarations``; sampling parameters and
``response_format`` become ``generationConfig``. Responses: the first candidate's parts become
content and tool calls, ``finishReason`` becomes ``finish_reason`` and ``usageMetadata`` the
usage dict ModelMesh bills on. Google's error body ``{"error": {"code", "message", "status",
"details"}}`` becomes a typed error.

Everything here is plain functions over dicts; nothing is precomputed per request beyond what
the request itself carries.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable, Mapping
from typing import Any

from modelmesh_core.errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    ProviderError,
    RateLimitError,
)
from modelmesh_core.redaction import redact
from modelmesh_core.types import CompletionRequest, RateLimitInfo

__all__ = [
    "FILTER_REASONS",
    "SYNTHETIC_ID_PREFIX",
    "build_body",
    "error_from_body",
    "finish_reason",
    "gemini_usage",
    "to_schema",
]

SYNTHETIC_ID_PREFIX = "call_mmg_"
"""Tool-call ids ModelMesh made up because Gemini sent none; never sent back upstream."""

FILTER_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "LANGUAGE",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
"""Finish reasons that mean a content filter stopped the candidate (OpenAI ``content_filter``)."""

BROKEN_REASONS = frozenset(
    {"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"}
)
"""Finish reasons that mean the model produced an unusable tool call."""

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **{reason: "content_filter" for reason in FILTER_REASONS},
}

_THINKING_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "default",
        "minimum",
        "maximum",
        "propertyOrdering",
        "required",
    }
)
_NATIVE_TOP_LEVEL = ("safetySettings", "cachedContent", "toolConfig")
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(.*)$", re.DOTALL)
_CONTEXT_PHRASES = ("exceeds the maximum number of tokens", "input token count", "too long")
_MAX_SCHEMA_DEPTH = 32


class RequestError(ValueError):
    """The caller's request cannot be expressed in Gemini's protocol (a 400 of the caller's)."""


# --------------------------------------------------------------------------- requests


def _text_of(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text":
                parts.append({"text": str(item.get("text") or "")})
            elif isinstance(item, str):
                parts.append({"text": item})
            else:
                raise RequestError(f"{where}: only text parts are allowed here")
        return parts
    raise RequestError(f"{where}: content must be a string or a list of parts")


def _media_part(url: str, default_mime: str) -> dict[str, Any]:
    match = _DATA_URL.match(url)
    if match:
        return {"inlineData": {"mimeType": match.group(1) or default_mime, "data": match.group(2)}}
    if url.startswith("data:"):
        raise RequestError("an image data URL must be base64-encoded (data:<mime>;base64,...)")
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or default_mime
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise RequestError(f"{where}: content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for i, item in enumerate(content):
        if not isinstance(item, dict):
            raise RequestError(f"{where}.content[{i}]: a part must be an object")
        kind = item.get("type")
        if kind == "text":
            parts.append({"text": str(item.get("text") or "")})
        elif kind == "image_url":
            image = item.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise RequestError(f"{where}.content[{i}]: image_url needs a url")
            parts.append(_media_part(url, "image/jpeg"))
        elif kind == "input_audio":
            audio = item.get("input_audio") or {}
            fmt = str(audio.get("format") or "wav")
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": audio.get("data")}})
        elif kind == "file":
            file = item.get("file") or {}
            data = file.get("file_data")
            if not isinstance(data, str):
                raise RequestError(f"{where}.content[{i}]: a file part needs file_data")
            parts.append(_media_part(data, "application/pdf"))
        else:
            raise RequestError(f"{where}.content[{i}]: part type {kind!r} is not supported")
    return parts


def _function_response(content: Any, loads: Callable[[str], Any]) -> dict[str, Any]:
    """Gemini wants an object: a JSON object is passed as is, anything else as ``output``."""
    if isinstance(content, list):
        content = "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict)
        )
    if isinstance(content, str):
        try:
            value = loads(content)
        except ValueError:
            return {"output": content}
        return value if isinstance(value, dict) else {"output": value}
    if isinstance(content, dict):
        return content
    return {"output": content}


def _contents(
    messages: list[dict[str, Any]], loads: Callable[[str], Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(contents, system parts)`` from OpenAI messages."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    responses: list[dict[str, Any]] | None = None
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise RequestError(f"{where}: a message must be an object")
        role = msg.get("role")
        content = msg.get("content")
        if role == "tool" or role == "function":
            call_id = msg.get("tool_call_id")
            name = msg.get("name") or (names.get(call_id) if isinstance(call_id, str) else None)
            if not name:
                raise RequestError(
                    f"{where}: tool_call_id {call_id!r} matches no earlier assistant tool call "
                    "(Gemini needs the function name of every tool result)"
                )
            answer: dict[str, Any] = {"name": name, "response": _function_response(content, loads)}
            if isinstance(call_id, str) and not call_id.startswith(SYNTHETIC_ID_PREFIX):
                answer["id"] = call_id
            part = {"functionResponse": answer}
            if responses is None:
                # Answers to one turn's (parallel) calls travel together in one user content.
                responses = [part]
                contents.append({"role": "user", "parts": responses})
            else:
                responses.append(part)
            continue
        responses = None
        if role == "system" or role == "developer":
            system.extend(_text_of(content, where))
        elif role == "user":
            contents.append({"role": "user", "parts": _user_parts(content, where)})
        elif role == "assistant":
            parts = _text_of(content, where)
            for j, call in enumerate(msg.get("tool_calls") or ()):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not function.get("name"):
                    raise RequestError(f"{where}.tool_calls[{j}]: needs function.name")
                raw = function.get("arguments") or "{}"
                try:
                    args = loads(raw) if isinstance(raw, str) else raw
                except ValueError:
                    raise RequestError(
                        f"{where}.tool_calls[{j}]: arguments are not valid JSON"
                    ) from None
                if not isinstance(args, dict):
                    raise RequestError(f"{where}.tool_calls[{j}]: arguments must be an object")
                fc: dict[str, Any] = {"name": function["name"], "args": args}
                call_id = call.get("id")
                if isinstance(call_id, str) and call_id:
                    names[call_id] = function["name"]
                    if not call_id.startswith(SYNTHETIC_ID_PREFIX):
                        fc["id"] = call_id
                parts.append({"functionCall": fc})
            if parts:
                contents.append({"role": "model", "parts": parts})
        else:
            raise RequestError(f"{where}: unknown role {role!r}")
    return contents, system


def to_schema(schema: Any, defs: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A JSON Schema (as OpenAI tools and ``json_schema`` carry it) as a Gemini ``Schema``.

    Gemini takes an OpenAPI 3.0 subset: local ``$ref``s are inlined, ``type: [x, "null"]``
    becomes ``nullable``, ``oneOf`` becomes ``anyOf``, ``const`` a one-value ``enum``, and
    keywords Gemini does not know (``additionalProperties``, ``$schema``, ``strict`` …) are
    dropped.
    """
    if not isinstance(schema, dict):
        return schema
    if depth > _MAX_SCHEMA_DEPTH:
        raise RequestError("the JSON schema nests too deeply (recursive $ref?)")
    if defs is None:
        defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        if name not in defs:
            raise RequestError(f"the JSON schema refers to {ref!r}, which it does not define")
        merged = {**defs[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        return to_schema(merged, defs, depth + 1)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_KEYS:
            out[key] = value
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        if len(kinds) == 1:
            out["type"] = kinds[0]
        else:
            out.pop("type", None)
            out["anyOf"] = [{"type": k} for k in kinds]
    if "const" in schema and "enum" not in out:
        out["enum"] = [schema["const"]]
        out.setdefault("type", "string")
    props = schema.get("properties")
    if isinstance(props, dict):
        out["properties"] = {k: to_schema(v, defs, depth + 1) for k, v in props.items()}
    items = schema.get("items")
    if isinstance(items, dict):
        out["items"] = to_schema(items, defs, depth + 1)
    variants = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(variants, list):
        nonnull = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        if len(nonnull) < len(variants):
            out["nullable"] = True
        if len(nonnull) == 1:
            out.update(to_schema(nonnull[0], defs, depth + 1))
        else:
            out["anyOf"] = [to_schema(v, defs, depth + 1) for v in nonnull]
    all_of = schema.get("allOf")
    if isinstance(all_of, list):
        for part in all_of:
            converted = to_schema(part, defs, depth + 1)
            if isinstance(converted, dict):
                out.update(converted)
    return out


def _declaration(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise RequestError(f"tools[{i}]: only function tools are supported by Gemini")
    function = tool.get("function")
    if not isinstance(function, dict) or not function.get("name"):
        raise RequestError(f"tools[{i}]: needs function.name")
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    params = function.get("parameters")
    # Gemini rejects an OBJECT schema without properties: a function with no parameters
    # is declared without any.
    if isinstance(params, dict) and params.get("properties"):
        out["parameters"] = to_schema(params)
    return out


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        mode: dict[str, Any] = {"mode": "AUTO"}
    elif choice == "none":
        mode = {"mode": "NONE"}
    elif choice == "required":
        mode = {"mode": "ANY"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        mode = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    else:
        raise RequestError(f"tool_choice {choice!r} is not supported")
    return {"functionCallingConfig": mode}


def _generation_config(request: CompletionRequest, extra: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    limit = extra.get("max_completion_tokens") or request.max_tokens
    if limit is not None:
        config["maxOutputTokens"] = limit
    if not extra:
        return config
    if extra.get("top_p") is not None:
        config["topP"] = extra["top_p"]
    if extra.get("top_k") is not None:
        config["topK"] = extra["top_k"]
    stop = extra.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    for ours, theirs in (
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if extra.get(ours) is not None:
            config[theirs] = extra[ours]
    fmt = extra.get("response_format")
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_object":
            config["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            config["responseMimeType"] = "application/json"
            spec = fmt.get("json_schema") or {}
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if isinstance(schema, dict):
                config["responseSchema"] = to_schema(schema)
        elif kind not in (None, "text"):
            raise RequestError(f"response_format type {kind!r} is not supported")
    effort = extra.get("reasoning_effort")
    if isinstance(effort, str):
        if effort not in _THINKING_BUDGETS:
            raise RequestError(
                f"reasoning_effort {effort!r} is not one of {sorted(_THINKING_BUDGETS)}"
            )
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGETS[effort]}
    native = extra.get("generationConfig")
    if isinstance(native, dict):
        config.update(native)
    return config


def build_body(
    request: CompletionRequest,
    safety: list[dict[str, str]] | None,
    loads: Callable[[str], Any],
) -> tuple[dict[str, Any], bool]:
    """``(generateContent body, whether it ends with a model turn)``; raises RequestError."""
    contents, system = _contents(request.messages, loads)
    if not contents:
        raise RequestError("messages: Gemini needs at least one user message")
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    extra = request.extra
    if request.tools:
        body["tools"] = [
            {"functionDeclarations": [_declaration(t, i) for i, t in enumerate(request.tools)]}
        ]
        config = _tool_config(extra.get("tool_choice")) if extra else None
        if config is not None:
            body["toolConfig"] = config
    if safety:
        body["safetySettings"] = safety
    generation = _generation_config(request, extra)
    if generation:
        body["generationConfig"] = generation
    if extra:
        for key in _NATIVE_TOP_LEVEL:
            if key in extra:
                body[key] = extra[key]
    return body, contents[-1]["role"] == "model"


# --------------------------------------------------------------------------- responses


def finish_reason(raw: str, tool_calls: bool) -> str:
    """OpenAI's ``finish_reason`` for a Gemini ``finishReason``."""
    mapped = _FINISH.get(raw, "stop")
    if mapped == "stop" and tool_calls:
        return "tool_calls"
    return mapped


def gemini_usage(raw: Any) -> dict[str, int]:
    """``usageMetadata`` as ModelMesh's usage dict.

    ``prompt_tokens`` counts the prompt (cached tokens included, as Gemini reports them) and
    tool-use prompt tokens; ``completion_tokens`` counts the candidates and the thinking
    tokens (both are billed as output, and OpenAI's ``completion_tokens`` includes reasoning
    tokens the same way).
    """
    if not isinstance(raw, dict):
        return {}
    prompt = (raw.get("promptTokenCount") or 0) + (raw.get("toolUsePromptTokenCount") or 0)
    thoughts = raw.get("thoughtsTokenCount") or 0
    completion = (raw.get("candidatesTokenCount") or 0) + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": raw.get("totalTokenCount") or prompt + completion,
        "cached_tokens": raw.get("cachedContentTokenCount") or 0,
        "reasoning_tokens": thoughts,
    }


# --------------------------------------------------------------------------- errors


def _seconds(value: Any) -> float | None:
    """A ``google.protobuf.Duration`` in JSON (``"52s"``, ``"1.203s"``) as seconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            return max(float(value[:-1]), 0.0)
        except ValueError:
            return None
    return None


def error_fields(raw: bytes, loads: Callable[[bytes], Any]) -> dict[str, Any]:
    """``{"code", "message", "status", "reason", "retry_delay", "quota_ids"}`` of an error body."""
    try:
        data = loads(raw) if raw else None
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        text = raw[:300].decode("utf-8", "replace").strip()
        return {"code": None, "message": text, "status": None, "reason": None,
                "retry_delay": None, "quota_ids": ()}
    reason = None
    delay = None
    quota_ids: list[str] = []
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type") or "")
        if kind.endswith("google.rpc.ErrorInfo"):
            reason = detail.get("reason")
        elif kind.endswith("google.rpc.RetryInfo"):
            delay = _seconds(detail.get("retryDelay"))
        elif kind.endswith("google.rpc.QuotaFailure"):
            for violation in detail.get("violations") or ():
                if isinstance(violation, dict) and violation.get("quotaId"):
                    quota_ids.append(str(violation["quotaId"]))
    code = error.get("code")
    return {
        "code": code if isinstance(code, int) else None,
        "message": str(error.get("message") or ""),
        "status": error.get("status"),
        "reason": reason,
        "retry_delay": delay,
        "quota_ids": tuple(quota_ids),
    }


def error_from_body(
    status: int | None,
    raw: bytes,
    headers: Mapping[str, str],
    loads: Callable[[bytes], Any],
    *,
    provider_id: str,
    model_id: str | None,
    prefill: bool = False,
) -> ProviderError:
    """Translate a Gemini error answer (HTTP status + Google error body) into a typed error."""
    fields = error_fields(raw, loads)
    status = status if status is not None else fields["code"]
    google = fields["status"]
    reason = fields["reason"]
    message = redact(fields["message"]) if fields["message"] else "(no error message)"
    tags = ", ".join(f"{k}={v}" for k, v in (("status", google), ("reason", reason)) if v)
    text = f"{message} [{tags}]" if tags else message
    wait = fields["retry_delay"]
    if wait is None and headers.get("retry-after"):
        try:
            wait = max(float(headers["retry-after"]), 0.0)
        except ValueError:
            wait = None
    kept = {"retry-after": headers["retry-after"]} if headers.get("retry-after") else {}
    common: dict[str, Any] = {
        "provider_id": provider_id,
        "model_id": model_id,
        "status": status,
        "headers": kept,
        "rate_limit": RateLimitInfo(retry_after=wait) if wait is not None else None,
    }
    lowered = message.lower()
    if (
        status == 401
        or google == "UNAUTHENTICATED"
        or (isinstance(reason, str) and reason.startswith("API_KEY_"))
        or "api key not valid" in lowered
        or "api key expired" in lowered
    ):
        return AuthenticationError(
            f"{text}; check the API key of provider {provider_id!r}", retryable=False, **common
        )
    if status == 403 or google == "PERMISSION_DENIED":
        if "model" in lowered:
            return ProviderError(
                f"{text}; this key may not use model {model_id!r}", retryable=False, **common
            )
        return AuthenticationError(
            f"{text}; check the API key of provider {provider_id!r} and that the Generative "
            "Language API is enabled for its project",
            retryable=False,
            **common,
        )
    if status == 429 or google == "RESOURCE_EXHAUSTED":
        quota = any("PerDay" in q for q in fields["quota_ids"]) or "per day" in lowered
        return RateLimitError(text, retry_after=wait, quota=quota, **common)
    if google == "FAILED_PRECONDITION":
        # e.g. "User location is not supported for the API use" or a billing requirement:
        # this provider cannot serve the account at all, another one may.
        return AuthenticationError(
            f"{text}; the Gemini API refuses this account (region or billing)",
            retryable=False,
            **common,
        )
    if status == 400 and any(p in lowered for p in _CONTEXT_PHRASES):
        return ContextLengthError(
            f"{text}; shorten the prompt or route to a model with a larger context window",
            retryable=False,
            **common,
        )
    if status == 400 and prefill:
        return ProviderError(
            f"{text}; the request ended with an assistant message (prefill), which this "
            "Gemini model may not accept",
            retryable=False,
            **common,
        )
    if status is not None and 400 <= status < 500 and status not in (408, 409, 425):
        return ProviderError(text, retryable=False, **common)
    return ProviderError(text, retryable=True, **common)


def blocked_error(
    reason: str, *, provider_id: str, model_id: str, prompt: bool
) -> ContentFilterError:
    """The caller's content was refused: never a reason to rotate or blame the model."""
    what = "the prompt was blocked" if prompt else "the answer was stopped"
    return ContentFilterError(
        f"{what} by Gemini's content filter ({'blockReason' if prompt else 'finishReason'} "
        f"{reason}); rephrase the request or adjust the provider's safety_settings",
        provider_id=provider_id,
        model_id=model_id,
        retryable=False,
    )
