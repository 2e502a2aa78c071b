"""Anthropic's streaming events → OpenAI-shaped delta chunks, and every way a stream can end."""

from __future__ import annotations

import pytest
from conftest import FAST, claude

from modelmesh_anthropic.fake import (
    DOC_OVERLOADED_EVENT,
    DOC_STREAM,
    DOC_TOOL_STREAM,
    CutStream,
    MalformedEvent,
    Raw,
    Reply,
    StallStream,
    StreamError,
    WrongContentType,
    tool_use,
)
from modelmesh_core.errors import (
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    StreamInterruptedError,
)
from modelmesh_core.types import CompletionRequest, RateLimitInfo, ToolCall

HI = CompletionRequest(messages=[{"role": "user", "content": "Hello"}])
SSE = "text/event-stream"


async def collect(adapter, request=HI, model=None):
    return [c async for c in adapter.stream(model or claude(), request, FAST)]


async def test_documentation_stream(make_adapter, fake) -> None:
    fake.script(Raw(DOC_STREAM, content_type=SSE))
    chunks = await collect(make_adapter())
    # message_start, ping and block start/stop carry nothing: the role rides on the first text
    assert [(c.role, c.content, c.finish_reason) for c in chunks] == [
        ("assistant", "Hello", None), (None, "!", None), (None, "", "stop")]
    assert {c.id for c in chunks} == {"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"}
    assert chunks[0].upstream_model == "claude-sonnet-4-5-20250929"
    # usage: input from message_start, output from message_delta, on the last chunk only
    assert [c.usage for c in chunks[:-1]] == [{}, {}]
    assert chunks[-1].usage == {
        "prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40,
        "cached_tokens": 0, "reasoning_tokens": 0, "cache_creation_tokens": 0,
    }
    assert isinstance(chunks[0].metadata["rate_limit"], RateLimitInfo)
    assert all(not c.metadata for c in chunks[1:])


async def test_documentation_tool_use_stream(make_adapter, fake) -> None:
    fake.script(Raw(DOC_TOOL_STREAM, content_type=SSE))
    chunks = await collect(make_adapter())
    text = "".join(c.content for c in chunks)
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    calls = [call for c in chunks for call in c.tool_calls]
    assert calls[0] == ToolCall(id="toolu_01T1x1fJ34qAmk2tNTrN7Up6", name="get_weather",
                                arguments="", index=0)
    assert all(c.index == 0 and c.id is None and c.name is None for c in calls[1:])
    assert "".join(c.arguments for c in calls) == (
        '{"location": "San Francisco, CA", "unit": "fahrenheit"}')
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage["completion_tokens"] == 89


async def test_parallel_tool_calls_get_their_own_indexes(make_adapter, fake) -> None:
    fake.script(Reply("", tool_calls=[tool_use("a", {"x": 1}, id="toolu_A"),
                                      tool_use("b", {"y": [2, 3]}, id="toolu_B")]))
    chunks = await collect(make_adapter())
    calls: dict[int, list[ToolCall]] = {}
    for chunk in chunks:
        for call in chunk.tool_calls:
            calls.setdefault(call.index, []).append(call)
    assert sorted(calls) == [0, 1]
    assert [(p[0].id, p[0].name) for p in calls.values()] == [("toolu_A", "a"), ("toolu_B", "b")]
    assert "".join(c.arguments for c in calls[0]) == '{"x":1}'
    assert "".join(c.arguments for c in calls[1]) == '{"y":[2,3]}'
    assert chunks[-1].finish_reason == "tool_calls"


async def test_stream_cache_usage(make_adapter, fake) -> None:
    fake.script(Reply("cached answer", usage={"input_tokens": 5, "cache_read_input_tokens": 1000,
                                              "cache_creation_input_tokens": 20,
                                              "output_tokens": 2}))
    chunks = await collect(make_adapter())
    assert chunks[-1].usage == {
        "prompt_tokens": 1025, "completion_tokens": 2, "total_tokens": 1027,
        "cached_tokens": 1000, "reasoning_tokens": 0, "cache_creation_tokens": 20,
    }


async def test_prefill_continuation_does_not_repeat_the_cut_whitespace(make_adapter, fake):
    fake.script(Reply("\n\nThird line."))
    chunks = await collect(make_adapter(), CompletionRequest(messages=[
        {"role": "user", "content": "Three lines please"},
        {"role": "assistant", "content": "First line.\nSecond line.\n\n"},
    ]))
    assert fake.calls[0].body["messages"][-1]["content"] == "First line.\nSecond line."
    assert "".join(c.content for c in chunks) == "Third line."


async def test_in_stream_overloaded_error_is_retryable(make_adapter, fake) -> None:
    fake.script(StreamError(after_events=4))
    with pytest.raises(ProviderError) as info:
        await collect(make_adapter())
    assert info.value.status == 529
    assert info.value.retryable
    assert "overloaded_error" in str(info.value)


async def test_documented_error_event(make_adapter, fake) -> None:
    head = DOC_STREAM.split(b"event: content_block_stop")[0]
    fake.script(Raw(head + DOC_OVERLOADED_EVENT, content_type=SSE))
    seen: list[str] = []
    with pytest.raises(ProviderError, match="Overloaded") as info:
        async for chunk in make_adapter().stream(claude(), HI, FAST):
            seen.append(chunk.content)
    assert seen == ["Hello", "!"]
    assert (info.value.status, info.value.retryable) == (529, True)


async def test_in_stream_rate_limit_error_is_typed(make_adapter, fake) -> None:
    fake.script(StreamError(after_events=1, type="rate_limit_error", message="slow down"))
    with pytest.raises(RateLimitError):
        await collect(make_adapter())


async def test_cut_stream_is_interrupted_not_success(make_adapter, fake) -> None:
    fake.script(CutStream(after_events=4))
    with pytest.raises(StreamInterruptedError) as info:
        await collect(make_adapter())
    assert info.value.retryable


async def test_stream_ending_without_message_stop_before_the_stop_reason(make_adapter, fake):
    body = DOC_STREAM.split(b"event: message_delta")[0]
    fake.script(Raw(body, content_type=SSE))
    with pytest.raises(StreamInterruptedError, match="without message_stop"):
        await collect(make_adapter())


async def test_stream_with_stop_reason_and_usage_but_no_message_stop_is_complete(
    make_adapter, fake
) -> None:
    body = DOC_STREAM.split(b"event: message_stop")[0]
    fake.script(Raw(body, content_type=SSE))
    chunks = await collect(make_adapter())
    assert "".join(c.content for c in chunks) == "Hello!"
    assert chunks[-1].finish_reason == "stop"


async def test_malformed_event(make_adapter, fake) -> None:
    fake.script(MalformedEvent(after_events=3))
    with pytest.raises(ProviderError, match="malformed stream event") as info:
        await collect(make_adapter())
    assert info.value.retryable


async def test_event_missing_documented_fields(make_adapter, fake) -> None:
    fake.script(Raw(b'event: message_start\ndata: {"type": "message_start"}\n\n',
                    content_type=SSE))
    with pytest.raises(ProviderError, match="lacks the fields"):
        await collect(make_adapter())


async def test_wrong_content_type(make_adapter, fake) -> None:
    fake.script(WrongContentType())
    with pytest.raises(ProviderError, match="expected an event stream") as info:
        await collect(make_adapter())
    assert info.value.retryable


async def test_stalled_stream_times_out_idle(make_adapter, fake) -> None:
    from modelmesh_core.types import Timeouts

    fake.script(StallStream(after_events=3))
    quick = Timeouts(connect=1.0, first_byte=1.0, idle=0.3, total=5.0)
    with pytest.raises(ProviderTimeoutError) as info:
        async for _ in make_adapter().stream(claude(), HI, quick):
            pass
    assert info.value.phase == "idle"


async def test_error_status_before_the_stream(make_adapter, fake) -> None:
    from modelmesh_anthropic.fake import Fail

    fake.script(Fail(529))
    with pytest.raises(ProviderError) as info:
        await collect(make_adapter())
    assert (info.value.status, info.value.retryable) == (529, True)
