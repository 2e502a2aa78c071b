"""Answers translated to the OpenAI shape: documentation examples, usage, finish reasons,
streaming."""

from __future__ import annotations

import pytest
from gemini_testlib import EMBED, FAST, FLASH, KEY, collect, req
from yarl import URL

from modelmesh_core.types import EmbeddingRequest
from modelmesh_gemini._translate import finish_reason, gemini_usage
from modelmesh_gemini.fake import (
    DOC_BATCH_EMBED_CONTENTS,
    DOC_EMBED_CONTENT,
    DOC_FUNCTION_CALL,
    DOC_GENERATE_CONTENT,
    DOC_MODELS,
    DOC_STREAM_EVENTS,
    Canned,
    FakeGemini,
    Reply,
    tool_call,
)


async def test_documented_generate_content_answer(adapter, fake) -> None:
    fake.script(Canned(body=DOC_GENERATE_CONTENT))
    response = await adapter.complete(FLASH, req(), FAST)
    assert response.content == (
        "OK. I found two theaters in Mountain View that are showing the Barbie movie: AMC "
        "Mountain View 16 and Regal Edwards 14."
    )
    assert response.finish_reason == "stop"
    assert response.role == "assistant"
    assert response.tool_calls == ()
    assert response.model == "alpha.gemini-2.5-flash"
    assert response.provider == "alpha"
    assert response.usage == {}  # that example carries no usageMetadata


async def test_documented_function_call_answer(adapter, fake) -> None:
    fake.script(Canned(body=DOC_FUNCTION_CALL))
    response = await adapter.complete(FLASH, req(), FAST)
    assert response.content == ""
    assert response.finish_reason == "tool_calls"
    (call,) = response.tool_calls
    assert call.name == "find_theaters"
    assert call.type == "function"
    assert call.index is None
    assert call.arguments == '{"movie":"Barbie","location":"Mountain View, CA"}'


async def test_usage_with_cached_and_thinking_tokens(adapter, fake) -> None:
    fake.script(Reply("Four words of answer.", usage={
        "promptTokenCount": 1200, "cachedContentTokenCount": 200,
        "candidatesTokenCount": 30, "thoughtsTokenCount": 10}))
    response = await adapter.complete(FLASH, req(), FAST)
    assert response.usage == {
        "prompt_tokens": 1200,
        "completion_tokens": 40,  # thinking tokens are billed as output
        "total_tokens": 1240,
        "cached_tokens": 200,
        "reasoning_tokens": 10,
    }
    assert response.upstream_model == "gemini-2.5-flash"
    assert response.id.startswith("fake")


def test_usage_counts_tool_use_prompt_tokens_as_prompt() -> None:
    assert gemini_usage({"promptTokenCount": 5, "toolUsePromptTokenCount": 7,
                         "candidatesTokenCount": 2, "totalTokenCount": 14}) == {
        "prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14,
        "cached_tokens": 0, "reasoning_tokens": 0}


@pytest.mark.parametrize(
    ("raw", "calls", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", False, "length"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("OTHER", False, "stop"),
        ("FINISH_REASON_UNSPECIFIED", False, "stop"),
    ],
)
def test_finish_reason_mapping(raw, calls, expected) -> None:
    assert finish_reason(raw, calls) == expected


async def test_max_tokens_finish(adapter, fake) -> None:
    fake.script(Reply("cut sho", finish_reason="MAX_TOKENS"))
    response = await adapter.complete(FLASH, req(max_tokens=2), FAST)
    assert (response.content, response.finish_reason) == ("cut sho", "length")
    chunks = await collect(adapter, req())  # default reply, for contrast
    assert chunks[-1].finish_reason == "stop"
    fake.script(Reply("cut sho", finish_reason="MAX_TOKENS"))
    chunks = await collect(adapter, req())
    assert chunks[-1].finish_reason == "length"


async def test_thought_parts_are_not_content(adapter, fake) -> None:
    fake.script(Canned(body={"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Let me think about the user's greeting", "thought": True},
        {"text": "Hello!"}]}, "finishReason": "STOP"}]}))
    response = await adapter.complete(FLASH, req(), FAST)
    assert response.content == "Hello!"


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
async def test_stream_translation(newline, context, gemini_upstream) -> None:
    from modelmesh_gemini import GeminiAdapter, GeminiConfig

    upstream = await gemini_upstream(sse_newline=newline)
    adapter = GeminiAdapter(context, GeminiConfig(base_url=upstream.base_url, api_key=KEY))
    upstream.script(Reply("Hello there, friend.", usage={
        "cachedContentTokenCount": 2, "thoughtsTokenCount": 3}))
    chunks = await collect(adapter, req())
    assert [c.content for c in chunks] == ["Hello", " there,", " friend.", ""]
    assert [c.role for c in chunks] == ["assistant", None, None, None]
    assert [c.finish_reason for c in chunks] == [None, None, None, "stop"]
    assert all(c.usage == {} for c in chunks[:-1])
    assert chunks[-1].usage == {
        "prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7,
        "cached_tokens": 2, "reasoning_tokens": 3}
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id
    assert {c.upstream_model for c in chunks} == {"gemini-2.5-flash"}


async def test_stream_tool_calls_get_indexes_and_finish_tool_calls(adapter, fake) -> None:
    fake.script(Reply("Checking.", tool_calls=[
        tool_call("get_weather", {"city": "Paris"}, id="fc-1"),
        tool_call("get_weather", {"city": "Rome"})]))
    chunks = await collect(adapter, req())
    calls = [c for chunk in chunks for c in chunk.tool_calls]
    assert [(c.index, c.name, c.arguments) for c in calls] == [
        (0, "get_weather", '{"city":"Paris"}'), (1, "get_weather", '{"city":"Rome"}')]
    assert calls[0].id == "fc-1"
    assert calls[1].id.startswith("call_mmg_")
    assert chunks[-1].finish_reason == "tool_calls"
    assert "".join(c.content for c in chunks) == "Checking."


async def test_documented_stream_with_finish_reason_on_every_event(adapter, fake) -> None:
    # That documented model put finishReason STOP on each event: the finish is reported
    # once, on a final chunk, after the body ended.
    fake.script(Canned(events=DOC_STREAM_EVENTS))
    chunks = await collect(adapter, req())
    assert "".join(c.content for c in chunks) == (
        "In the quaint little town of Willow Creek, nestled among rolling hills and whispering "
        "willows, there existed an extraordinary backpack that possessed an astonishing "
        "secret. Its unassuming canvas exterior and worn leather straps held a hidden realm "
        "brimming with wonder and endless possibilities."
    )
    assert [c.finish_reason for c in chunks] == [None, None, "stop"]


async def test_stream_without_alt_sse_json_array_is_accepted(adapter, fake, session) -> None:
    # Gemini answers one JSON array when alt=sse is missing (e.g. a proxy dropped the query).
    url = f"{fake.base_url}/models/gemini-2.5-flash:streamGenerateContent"
    async with session.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]},
                            headers={"x-goog-api-key": KEY}) as resp:
        assert resp.content_type == "application/json"
        assert isinstance(await resp.json(), list)
    adapter._urls[("gemini-2.5-flash", "streamGenerateContent")] = URL(url)
    chunks = await collect(adapter, req())
    assert "".join(c.content for c in chunks) == "Hello from the fake upstream!"
    assert chunks[-1].finish_reason == "stop"


async def test_documented_embed_content(adapter, fake) -> None:
    fake.script(Canned(body=DOC_EMBED_CONTENT))
    response = await adapter.embed(EMBED, EmbeddingRequest(input="Hello world"), FAST)
    assert response.data == [DOC_EMBED_CONTENT["embedding"]["values"]]
    assert response.model == "alpha.gemini-embedding-001"
    assert response.usage == {"prompt_tokens": 3, "total_tokens": 3}  # estimated: none sent


async def test_documented_batch_embed_contents_keeps_order(adapter, fake) -> None:
    fake.script(Canned(body=DOC_BATCH_EMBED_CONTENTS))
    texts = ["What is the meaning of life?", "How much wood would a woodchuck chuck?",
             "How does the brain work?"]
    response = await adapter.embed(EMBED, EmbeddingRequest(input=texts), FAST)
    assert response.data == [e["values"] for e in DOC_BATCH_EMBED_CONTENTS["embeddings"]]


async def test_fake_embeddings_are_deterministic_unit_vectors(adapter) -> None:
    a = await adapter.embed(EMBED, EmbeddingRequest(input=["x", "y", "x"]), FAST)
    assert a.data[0] == a.data[2] != a.data[1]
    assert abs(sum(v * v for v in a.data[0]) - 1.0) < 1e-9


async def test_documented_model_list(adapter, fake) -> None:
    fake.script(Canned(body=DOC_MODELS))
    assert await adapter.list_models(FAST) == ["gemini-pro", "embedding-001"]


async def test_model_list_follows_page_tokens(context) -> None:
    from modelmesh_gemini import GeminiConfig, modelmesh_providers

    names = tuple(f"gemini-test-{i}" for i in range(5))
    async with FakeGemini(models=names, max_page_size=2) as upstream:
        adapter = modelmesh_providers()[0].factory(
            context, GeminiConfig(base_url=upstream.base_url))
        assert await adapter.list_models(FAST) == list(names)
        assert [c.query for c in upstream.calls] == [
            {"pageSize": "1000"},
            {"pageSize": "1000", "pageToken": "2"},
            {"pageSize": "1000", "pageToken": "4"},
        ]
        assert "x-goog-api-key" not in upstream.calls[-1].headers  # no key configured
