"""The fake upstream, driven by Anthropic's official SDK: its wire format is the real one."""

from __future__ import annotations

import anthropic
import pytest
from conftest import KEY

from modelmesh_anthropic.fake import (
    DOC_TOOL_STREAM,
    Fail,
    FakeAnthropic,
    Raw,
    Reply,
    StreamError,
    tool_use,
)


def client(fake: FakeAnthropic) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.base_url, max_retries=0)


async def test_sdk_message_and_request_shape(fake) -> None:
    fake.script(Reply("Bonjour.", usage={"cache_read_input_tokens": 7}))
    async with client(fake) as sdk:
        message = await sdk.messages.create(
            model="claude-haiku-4-5", max_tokens=100, system="Answer in French.",
            messages=[{"role": "user", "content": "Hello"}])
    assert message.content[0].type == "text" and message.content[0].text == "Bonjour."
    assert message.stop_reason == "end_turn"
    assert message.usage.cache_read_input_tokens == 7
    call = fake.calls[0]
    assert call.headers["anthropic-version"]  # the SDK's own version (2026-10-21 in 2.14)
    assert call.api_key == KEY
    assert call.body == {"model": "claude-haiku-4-5", "max_tokens": 100,
                         "system": "Answer in French.",
                         "messages": [{"role": "user", "content": "Hello"}]}


async def test_sdk_stream_with_tools_accumulates(fake) -> None:
    fake.script(Reply("Checking.", tool_calls=[tool_use("get_weather", {"city": "Paris"}),
                                               tool_use("get_time", {"tz": "CET"})]))
    async with client(fake) as sdk:
        async with sdk.messages.stream(
            model="claude-haiku-4-5", max_tokens=100,
            messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        ) as stream:
            final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[1].input == {"city": "Paris"}
    assert final.content[2].input == {"tz": "CET"}
    assert final.stop_reason == "tool_use"


async def test_sdk_reads_the_documentation_stream(fake) -> None:
    fake.script(Raw(DOC_TOOL_STREAM, content_type="text/event-stream"))
    async with client(fake) as sdk:
        async with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=100,
                                       messages=[{"role": "user", "content": "x"}]) as stream:
            final = await stream.get_final_message()
    assert final.content[1].input == {"location": "San Francisco, CA", "unit": "fahrenheit"}


async def test_sdk_sees_typed_errors(fake) -> None:
    fake.script(Fail(529), Fail(429, retry_after=3), StreamError(after_events=2))
    async with client(fake) as sdk:
        with pytest.raises(anthropic.InternalServerError) as info:
            await sdk.messages.create(model="m", max_tokens=5,
                                      messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 529
        assert info.value.body["error"]["type"] == "overloaded_error"
        with pytest.raises(anthropic.RateLimitError):
            await sdk.messages.create(model="m", max_tokens=5,
                                      messages=[{"role": "user", "content": "x"}])
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            async with sdk.messages.stream(model="m", max_tokens=5,
                                           messages=[{"role": "user", "content": "x"}]) as s:
                await s.get_final_message()


async def test_sdk_models_and_batches(fake) -> None:
    async with client(fake) as sdk:
        page = await sdk.models.list()
        assert [m.id for m in page.data] == list(fake.models)
        fake.script(Reply("first"), Fail(400, message="bad request"))
        batch = await sdk.messages.batches.create(requests=[
            {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 10,
                                          "messages": [{"role": "user", "content": "1"}]}},
            {"custom_id": "b", "params": {"model": "claude-haiku-4-5", "max_tokens": 10,
                                          "messages": [{"role": "user", "content": "2"}]}},
        ])
        assert batch.processing_status == "in_progress"
        done = await sdk.messages.batches.retrieve(batch.id)
        assert done.processing_status == "ended"
        assert (done.request_counts.succeeded, done.request_counts.errored) == (1, 1)
        results = {r.custom_id: r.result async for r in await sdk.messages.batches.results(
            batch.id)}
    assert results["a"].type == "succeeded"
    assert results["b"].type == "errored"
