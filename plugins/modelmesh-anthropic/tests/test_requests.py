"""The exact request the adapter sends upstream, for representative calls."""

from __future__ import annotations

import pytest
from conftest import FAST, KEY, claude

from modelmesh_anthropic.fake import Reply
from modelmesh_core.errors import ProviderError
from modelmesh_core.types import CompletionRequest

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5E"
    "rkJggg=="
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


async def test_headers_url_and_minimal_body(make_adapter, fake) -> None:
    adapter = make_adapter(beta=["prompt-caching-2024-07-31", "context-1m-2025-08-07"],
                           headers={"x-team": "search"})
    await adapter.complete(claude(), CompletionRequest(messages=[
        {"role": "user", "content": "Hello, Claude"}]), FAST)

    call = fake.calls[0]
    assert (call.method, call.path) == ("POST", "/v1/messages")
    assert call.headers["x-api-key"] == KEY
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert call.headers["anthropic-beta"] == "prompt-caching-2024-07-31,context-1m-2025-08-07"
    assert call.headers["content-type"] == "application/json"
    assert call.headers["x-team"] == "search"
    assert "authorization" not in call.headers
    # max_tokens is required upstream: the configured default (4096) when the caller gives none
    assert call.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }


async def test_default_max_tokens_is_capped_by_the_model_and_configurable(make_adapter, fake):
    adapter = make_adapter(default_max_tokens=1000)
    request = CompletionRequest(messages=[{"role": "user", "content": "hi"}])
    await adapter.complete(claude(max_output=512), request, FAST)
    await adapter.complete(claude(max_output=None), request, FAST)
    await adapter.complete(claude(), CompletionRequest(
        messages=request.messages, extra={"max_completion_tokens": 77}), FAST)
    assert [c.body["max_tokens"] for c in fake.calls] == [512, 1000, 77]


async def test_system_prompt_is_lifted_out_of_the_messages(make_adapter, fake) -> None:
    adapter = make_adapter()
    await adapter.complete(claude(), CompletionRequest(
        messages=[
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Hi"},
        ],
        temperature=0.3,
        max_tokens=256,
        extra={"stop": ["\n\nHuman:", "END"], "top_p": 0.9, "top_k": 40, "user": "u-42",
               "seed": 7, "presence_penalty": 0.5, "logprobs": False},
    ), FAST)
    assert fake.calls[0].body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "You are a pirate.",
        "messages": [{"role": "user", "content": "Hi"}],
        "stop_sequences": ["\n\nHuman:", "END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-42"},
    }


async def test_several_system_messages_and_cache_control_become_blocks(make_adapter, fake):
    adapter = make_adapter()
    await adapter.complete(claude(), CompletionRequest(
        messages=[
            {"role": "system", "content": [
                {"type": "text", "text": "Long reference text",
                 "cache_control": {"type": "ephemeral"}}]},
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "Q"},
        ],
        temperature=1.7,  # OpenAI allows up to 2; Anthropic's range is 0-1
    ), FAST)
    body = fake.calls[0].body
    assert body["system"] == [
        {"type": "text", "text": "Long reference text", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer briefly."},
    ]
    assert body["messages"] == [{"role": "user", "content": "Q"}]
    assert body["temperature"] == 1.0


async def test_images_in_content_parts(make_adapter, fake) -> None:
    adapter = make_adapter()
    await adapter.complete(claude(), CompletionRequest(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg",
                                            "detail": "high"}},
    ]}]), FAST)
    assert fake.calls[0].body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Compare these."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}]


async def test_tools_tool_choice_and_parallel_tool_calls(make_adapter, fake) -> None:
    adapter = make_adapter()
    request = CompletionRequest(
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "now"}}],
        extra={"tool_choice": {"type": "function", "function": {"name": "get_weather"}},
               "parallel_tool_calls": False},
    )
    await adapter.complete(claude(), request, FAST)
    body = fake.calls[0].body
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {
        "type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
async def test_tool_choice_words(make_adapter, fake, choice, expected) -> None:
    adapter = make_adapter()
    await adapter.complete(claude(), CompletionRequest(
        messages=[{"role": "user", "content": "x"}], tools=[WEATHER_TOOL],
        extra={"tool_choice": choice}), FAST)
    assert fake.calls[0].body["tool_choice"] == expected


async def test_tool_calls_and_results_in_the_history(make_adapter, fake) -> None:
    adapter = make_adapter()
    await adapter.complete(claude(), CompletionRequest(
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking both.", "tool_calls": [
                {"id": "toolu_01A", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
                {"id": "toolu_01B", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "18C, sunny"},
            {"role": "tool", "tool_call_id": "toolu_01B",
             "content": [{"type": "text", "text": "24C, clear"}]},
            {"role": "user", "content": "Which is warmer?"},
        ],
        tools=[WEATHER_TOOL],
    ), FAST)
    assert fake.calls[0].body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
             "input": {"location": "Paris"}},
            {"type": "tool_use", "id": "toolu_01B", "name": "get_weather",
             "input": {"location": "Rome"}},
        ]},
        # the results of one parallel call share one user turn, the follow-up text joins it
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C, sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_01B",
             "content": [{"type": "text", "text": "24C, clear"}]},
            {"type": "text", "text": "Which is warmer?"},
        ]},
    ]


async def test_prefill_is_sent_as_the_last_message_without_trailing_whitespace(make_adapter, fake):
    adapter = make_adapter()
    fake.script(Reply(" Helios. It is the Greek name."))
    response = await adapter.complete(claude(), CompletionRequest(messages=[
        {"role": "user", "content": "Greek name for the Sun? (A) Sol (B) Helios"},
        {"role": "assistant", "content": "The best answer is (B) "},
    ]), FAST)
    assert fake.calls[0].body["messages"][-1] == {
        "role": "assistant", "content": "The best answer is (B)"}
    # the caller already has the trailing space: the continuation does not repeat it
    assert response.content == "Helios. It is the Greek name."


async def test_prefill_that_is_only_whitespace_is_dropped(make_adapter, fake) -> None:
    adapter = make_adapter()
    fake.script(Reply("\n\nSecond paragraph."))
    response = await adapter.complete(claude(), CompletionRequest(messages=[
        {"role": "user", "content": "Write two paragraphs."},
        {"role": "assistant", "content": [{"type": "text", "text": "First."},
                                          {"type": "text", "text": "\n\n"}]},
    ]), FAST)
    assert fake.calls[0].body["messages"][-1] == {
        "role": "assistant", "content": [{"type": "text", "text": "First."}]}
    assert response.content == "Second paragraph."


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (CompletionRequest(messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]),
         "input_audio"),
        (CompletionRequest(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]), "scheme"),
        (CompletionRequest(messages=[{"role": "user", "content": "x"}], extra={"n": 2}), "n must"),
        (CompletionRequest(messages=[{"role": "user", "content": "x"}],
                           extra={"response_format": {"type": "json_object"}}), "json_mode"),
        (CompletionRequest(messages=[{"role": "assistant", "content": "", "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "f", "arguments": "{not json"}}]}]), "not valid JSON"),
        (CompletionRequest(messages=[{"role": "system", "content": "only a system prompt"}]),
         "no user message"),
    ],
)
async def test_untranslatable_requests_are_the_callers_400(make_adapter, fake, request_, problem):
    adapter = make_adapter()
    with pytest.raises(ProviderError) as info:
        await adapter.complete(claude(), request_, FAST)
    assert info.value.status == 400
    assert not info.value.retryable
    assert problem in str(info.value)
    assert fake.calls == []  # nothing was sent


async def test_streaming_request_sets_stream_and_accepts_event_stream(make_adapter, fake):
    adapter = make_adapter()
    chunks = [c async for c in adapter.stream(claude(), CompletionRequest(
        messages=[{"role": "user", "content": "hi"}], max_tokens=64,
        extra={"stream_options": {"include_usage": True}}), FAST)]
    assert chunks
    call = fake.calls[0]
    assert call.headers["accept"] == "text/event-stream"
    assert call.body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
