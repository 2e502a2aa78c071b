"""Unit tests of the OpenAI wire layer: parsing, response shapes, error mapping."""

from __future__ import annotations

import base64
import struct

import pytest

from modelmesh_core.errors import (
    AllProvidersExhaustedError,
    AuthenticationError,
    BudgetExceededError,
    CapabilityNotFoundError,
    ContextLengthError,
    NoActiveModelError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
)
from modelmesh_core.redaction import register_secret
from modelmesh_core.types import CompletionResponse, EmbeddingResponse, ToolCall
from modelmesh_core.wire import (
    WireError,
    chunk_to_dict,
    completion_to_dict,
    completion_to_text_completion_dict,
    embeddings_to_dict,
    error_body,
    error_for_exception,
    include_usage,
    parse_chat_request,
    parse_completion_request,
    parse_embeddings_request,
    usage_chunk_dict,
)

MSG = [{"role": "user", "content": "hi"}]


def test_parse_chat_minimal_and_passthrough() -> None:
    model, req = parse_chat_request(
        {"model": "chat", "messages": MSG, "temperature": 0.5, "max_tokens": 10, "top_p": 0.9,
         "stop": ["x"], "seed": 3, "tool_choice": "auto",
         "response_format": {"type": "json_object"},
         "some_future_param": {"a": 1}}
    )
    assert model == "chat"
    assert req.messages == MSG
    assert req.temperature == 0.5
    assert req.max_tokens == 10
    assert req.stream is False
    assert req.extra == {"top_p": 0.9, "stop": ["x"], "seed": 3, "tool_choice": "auto",
                         "response_format": {"type": "json_object"},
                         "some_future_param": {"a": 1}}


def test_parse_chat_max_completion_tokens_and_stream_options() -> None:
    _, req = parse_chat_request({"model": "m", "messages": MSG, "max_completion_tokens": 7,
                                 "stream": True, "stream_options": {"include_usage": True}})
    assert req.max_tokens == 7
    assert req.stream is True
    assert include_usage(req)
    # forwarded as given (newer OpenAI models reject max_tokens); max_tokens is the routing
    # estimate's view of the same limit
    assert req.extra["max_completion_tokens"] == 7
    _, req = parse_chat_request({"model": "m", "messages": MSG, "stream": True})
    assert not include_usage(req)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MSG}, "model"),
        ({"model": 3, "messages": MSG}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": MSG, "temperature": True}, "temperature"),
        ({"model": "m", "messages": MSG, "temperature": 3}, "temperature"),
        ({"model": "m", "messages": MSG, "max_tokens": 1.5}, "max_tokens"),
        ({"model": "m", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MSG, "tools": {"a": 1}}, "tools"),
        ({"model": "m", "messages": MSG, "tools": [{"type": "function"}]},
         "tools[0].function.name"),
        ({"model": "m", "messages": MSG, "stop": [1]}, "stop"),
        # n > 1 is served (passed through or fanned out), but not for streams
        ({"model": "m", "messages": MSG, "n": 2, "stream": True}, "n"),
        ({"model": "m", "messages": MSG, "n": 129}, "n"),
        ({"model": "m", "messages": MSG, "stream_options": {"include_usage": True}},
         "stream_options"),
        ({"model": "m", "messages": MSG, "stream": True,
          "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_parse_chat_rejects_with_param(body: dict, param: str) -> None:
    with pytest.raises(WireError) as info:
        parse_chat_request(body)
    assert info.value.param == param
    assert info.value.status == 400
    assert param.split("[")[0].split(".")[0] in info.value.message


def test_parse_chat_body_not_object() -> None:
    with pytest.raises(WireError) as info:
        parse_chat_request([1, 2])
    assert "JSON object" in info.value.message


def test_parse_chat_accepts_content_parts_and_tool_messages() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "x"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    _, req = parse_chat_request({"model": "m", "messages": messages, "tools": tools})
    assert req.tools == tools


def test_parse_completion_request() -> None:
    model, req = parse_completion_request({"model": "m", "prompt": ["Say hi"], "max_tokens": 5,
                                           "top_p": 1})
    assert model == "m"
    assert req.messages == [{"role": "user", "content": "Say hi"}]
    assert req.max_tokens == 5
    assert req.extra == {"top_p": 1}
    for body, param in [({"model": "m"}, "prompt"), ({"model": "m", "prompt": [1, 2]}, "prompt"),
                        ({"model": "m", "prompt": "x", "echo": True}, "echo"),
                        ({"model": "m", "prompt": "x", "best_of": 3}, "best_of")]:
        with pytest.raises(WireError) as info:
            parse_completion_request(body)
        assert info.value.param == param


def test_parse_embeddings_request() -> None:
    model, req = parse_embeddings_request({"model": "e", "input": ["a", "b"],
                                           "encoding_format": "base64", "dimensions": 8})
    assert model == "e"
    assert req.input == ["a", "b"]
    assert req.metadata["encoding_format"] == "base64"
    assert req.extra == {"dimensions": 8}
    for body, param in [({"model": "e"}, "input"), ({"model": "e", "input": [1, 2]}, "input[0]"),
                        ({"model": "e", "input": []}, "input"),
                        ({"model": "e", "input": "x", "encoding_format": "int8"},
                         "encoding_format")]:
        with pytest.raises(WireError) as info:
            parse_embeddings_request(body)
        assert info.value.param == param


def _resp(**kw: object) -> CompletionResponse:
    base: dict = {"content": "hello", "model": "alpha.gpt-4o-mini", "provider": "alpha",
                  "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                            "cached_tokens": 1, "reasoning_tokens": 0},
                  "id": "chatcmpl-1", "created": 123, "finish_reason": "stop"}
    base.update(kw)
    return CompletionResponse(**base)


def test_completion_to_dict_shape() -> None:
    out = completion_to_dict(_resp())
    assert out == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 123,
        "model": "alpha.gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello",
                                             "refusal": None},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                  "prompt_tokens_details": {"cached_tokens": 1},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "system_fingerprint": None,
    }


def test_completion_to_dict_tool_calls_and_validates_with_sdk() -> None:
    from openai.types.chat import ChatCompletion

    calls = (ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}'),)
    out = completion_to_dict(_resp(content="", tool_calls=calls, finish_reason="tool_calls",
                                   id=""))
    msg = out["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [{"id": "call_1", "type": "function",
                                  "function": {"name": "get_weather",
                                               "arguments": '{"city":"Paris"}'}}]
    assert out["id"].startswith("chatcmpl-")
    parsed = ChatCompletion.model_validate(out)
    assert parsed.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_chunk_to_dict_and_usage_chunk() -> None:
    from openai.types.chat import ChatCompletionChunk

    first = chunk_to_dict(_resp(content="he", finish_reason=None), True, first=True, id="c",
                          created=5)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "he"}
    assert first["usage"] is None
    later = chunk_to_dict(_resp(content="llo", finish_reason=None), False, id="c", created=5)
    assert later["choices"][0]["delta"] == {"content": "llo"}
    assert "usage" not in later
    tc = chunk_to_dict(_resp(content="", finish_reason=None, tool_calls=(
        ToolCall(id=None, name=None, arguments='{"a', index=0),)), False, id="c", created=5)
    assert tc["choices"][0]["delta"] == {"tool_calls": [{"index": 0,
                                                          "function": {"arguments": '{"a'}}]}
    usage = usage_chunk_dict({"prompt_tokens": 1, "completion_tokens": 2}, id="c", created=5,
                             model="alpha.x")
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 3
    for chunk in (first, later, tc, usage):
        ChatCompletionChunk.model_validate(chunk)


def test_text_completion_and_embeddings_shapes() -> None:
    from openai.types import Completion, CreateEmbeddingResponse

    text = completion_to_text_completion_dict(_resp())
    assert text["object"] == "text_completion"
    assert text["choices"][0]["text"] == "hello"
    Completion.model_validate(text)
    emb = EmbeddingResponse(data=[[0.5, -1.0], [0.25, 2.0]], model="alpha.emb", provider="alpha",
                            usage={"prompt_tokens": 4})
    out = embeddings_to_dict(emb)
    assert out["data"][1] == {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]}
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    CreateEmbeddingResponse.model_validate(out)
    b64 = embeddings_to_dict(emb, "base64")["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(b64)) == (0.5, -1.0)


def test_error_body_shape() -> None:
    assert error_body("m", "t", "p", "c") == {"error": {"message": "m", "type": "t", "param": "p",
                                                        "code": "c"}}


def test_error_mapping_statuses() -> None:
    status, body, _ = error_for_exception(CapabilityNotFoundError("unknown model 'chta'"),
                                          available=["chat", "alpha.gpt"])
    assert status == 404
    assert body["error"]["code"] == "model_not_found"
    assert "chat, alpha.gpt" in body["error"]["message"]

    assert error_for_exception(NoActiveModelError("no active model in pool 'chat'"))[0] == 503
    assert error_for_exception(ContextLengthError("too long", provider_id="a",
                                                  status=400))[0] == 400
    assert error_for_exception(BudgetExceededError("daily", 1.0, 1.5))[0] == 429
    status, body, headers = error_for_exception(BudgetExceededError("daily", 1.0, 1.5))
    assert body["error"]["code"] == "budget_exceeded"
    assert headers["x-should-retry"] == "false"
    assert 1 <= int(headers["Retry-After"]) <= 86400
    assert error_for_exception(AuthenticationError("bad key", provider_id="a",
                                                   status=401))[0] == 502
    status, body, _ = error_for_exception(KeyError("boom"))
    assert status == 500
    assert "Traceback" not in body["error"]["message"]


def test_exhausted_rate_limited_is_429_with_retry_after() -> None:
    exc = AllProvidersExhaustedError("all failed", attempts=[
        ("a.m", RateLimitError("slow down", provider_id="a", model_id="a.m", retry_after=2.2)),
        ("b.m", RateLimitError("slow down", provider_id="b", model_id="b.m", retry_after=7)),
    ])
    status, body, headers = error_for_exception(exc)
    assert status == 429
    assert headers["Retry-After"] == "3"
    assert body["error"]["type"] == "rate_limit_error"


def test_exhausted_mixed_is_502_naming_providers_and_redacting() -> None:
    register_secret("sk-supersecretvalue123")
    exc = AllProvidersExhaustedError("all failed", attempts=[
        ("a.m", ProviderError("server error key sk-supersecretvalue123", provider_id="a",
                              model_id="a.m", status=500, retryable=True)),
        ("b.m", RateLimitError("slow down", provider_id="b", model_id="b.m")),
    ])
    status, body, headers = error_for_exception(exc)
    assert status == 502
    msg = body["error"]["message"]
    assert "a.m (provider a)" in msg and "b.m (provider b)" in msg
    assert "HTTP 500" in msg
    assert "supersecret" not in msg
    assert "Retry-After" not in headers


def test_exhausted_timeouts_is_504() -> None:
    exc = AllProvidersExhaustedError("all failed", attempts=[
        ("a.m", ProviderTimeoutError("no answer", provider_id="a", phase="first_byte")),
        ("b.m", ProviderTimeoutError("no answer", provider_id="b", phase="total")),
    ])
    assert error_for_exception(exc)[0] == 504
