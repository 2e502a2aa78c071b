"""The Cohere adapter over real HTTP against FakeCohere: exact requests, translated answers."""

from __future__ import annotations

import orjson
import pytest
from aiohttp import web

from modelmesh_cohere import CohereAdapter, CohereConfig, RerankRequest, RerankResult
from modelmesh_cohere.fake import DOC_EXAMPLES, DocExample, FakeCohere, Reply, tool_call
from modelmesh_core.errors import ProviderError
from modelmesh_core.types import (
    CompletionRequest,
    EmbeddingRequest,
    Model,
    ProviderAdapter,
    RateLimitInfo,
    Timeouts,
)

KEY = "co-test-0123456789abcdef"  # the key the ``fake`` fixture accepts

CHAT = Model(
    id="co.command-a-03-2025",
    provider="co",
    upstream_id="command-a-03-2025",
    capabilities=("generation.text-generation.chat-completion",),
)
EMBED = Model(
    id="co.embed-v4.0",
    provider="co",
    upstream_id="embed-v4.0",
    capabilities=("representation.embeddings.text-embeddings",),
)
RERANK = Model(
    id="co.rerank-v3.5", provider="co", upstream_id="rerank-v3.5",
    capabilities=("retrieval.reranking",),
)
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def collect(adapter, request: CompletionRequest, model: Model = CHAT) -> list:
    return [chunk async for chunk in adapter.stream(model, request, FAST)]


async def test_adapter_satisfies_protocol_and_hides_its_key(make_adapter) -> None:
    adapter = make_adapter()
    assert isinstance(adapter, ProviderAdapter)
    assert KEY not in repr(adapter)
    await adapter.close()


async def test_complete_sends_the_documented_request(make_adapter, fake) -> None:
    adapter = make_adapter(client_name="mesh-tests", headers={"X-Extra": "1"})
    request = CompletionRequest(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "say hello"},
        ],
        temperature=0.2,
        max_tokens=50,
        tools=[WEATHER],
        extra={
            "stop": "END",
            "top_p": 0.9,
            "seed": 7,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
            "tool_choice": "required",
            "safety_mode": "STRICT",
            "user": "dropped",
            "stream_options": {"include_usage": True},
        },
    )
    await adapter.complete(CHAT, request, FAST)

    call = fake.calls[0]
    assert (call.method, call.path) == ("POST", "/v2/chat")
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.headers["content-type"] == "application/json"
    assert call.headers["accept"] == "application/json"
    assert call.headers["x-client-name"] == "mesh-tests"
    assert call.headers["x-extra"] == "1"
    assert call.body == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "say hello"},
        ],
        "tools": [WEATHER],
        "tool_choice": "REQUIRED",
        "stop_sequences": ["END"],
        "p": 0.9,
        "seed": 7,
        "safety_mode": "STRICT",
        "response_format": {"type": "json_object", "json_schema": {"type": "object"}},
        "temperature": 0.2,
        "max_tokens": 50,
        "stream": False,
    }


async def test_tool_history_and_images_translate_to_cohere_messages(make_adapter, fake) -> None:
    adapter = make_adapter()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                    "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "I will look up the weather.",
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    named = {"type": "function", "function": {"name": "get_weather"}}
    other = {"type": "function", "function": {"name": "other", "parameters": {}}}
    request = CompletionRequest(messages=messages, tools=[WEATHER, other],
                                extra={"tool_choice": named, "max_completion_tokens": 9})
    await adapter.complete(CHAT, request, FAST)

    assert fake.calls[0].body == {
        "model": "command-a-03-2025",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture, and the weather?"},
                    {"type": "image_url",
                     "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                ],
                "tool_plan": "I will look up the weather.",
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        ],
        # a named tool_choice cannot be said in Cohere: force a call and offer only that tool
        "tools": [WEATHER],
        "tool_choice": "REQUIRED",
        "max_tokens": 9,
        "stream": False,
    }


async def test_documented_chat_answer_is_translated(make_adapter, fake) -> None:
    fake.script(DocExample("chat"))
    response = await make_adapter().complete(
        CHAT, CompletionRequest(messages=[{"role": "user", "content": "What is an LLM?"}]), FAST
    )
    doc = DOC_EXAMPLES["chat"]
    assert response.content == doc["message"]["content"][0]["text"]
    assert response.content.startswith("LLMs stand for Large Language Models")
    assert response.id == "c14c80c3-18eb-4519-9460-6c92edd8cfb4"
    assert response.finish_reason == "stop"
    assert response.role == "assistant"
    assert response.tool_calls == ()
    # billed units are what Cohere charges for; tokens (71 in) include its own preamble
    assert response.usage == {"prompt_tokens": 5, "completion_tokens": 418,
                              "total_tokens": 423, "cached_tokens": 0, "reasoning_tokens": 0}


async def test_documented_tool_call_answer_is_translated(make_adapter, fake) -> None:
    fake.script(DocExample("chat_tools"))
    response = await make_adapter().complete(
        CHAT, CompletionRequest(messages=[{"role": "user", "content": "sales?"}]), FAST
    )
    assert response.finish_reason == "tool_calls"
    assert response.content == ""
    assert response.metadata["thinking"].startswith("I will first find the sales summary")
    assert [(c.id, c.name, c.arguments, c.type) for c in response.tool_calls] == [
        ("query_daily_sales_report_hgxxmkby3wta", "query_daily_sales_report",
         '{"day": "2023-09-29"}', "function"),
        ("query_product_catalog_rpg0z5h8yyz2", "query_product_catalog",
         '{"category": "Electronics"}', "function"),
    ]
    assert response.usage["prompt_tokens"] == 127
    assert response.usage["completion_tokens"] == 69


@pytest.mark.parametrize(
    ("cohere", "openai"),
    [("COMPLETE", "stop"), ("STOP_SEQUENCE", "stop"), ("MAX_TOKENS", "length")],
)
async def test_finish_reasons_map_to_openai(make_adapter, fake, cohere, openai) -> None:
    fake.script(Reply("cut short", finish_reason=cohere), Reply("cut", finish_reason=cohere))
    adapter = make_adapter()
    request = CompletionRequest(messages=[{"role": "user", "content": "go"}])
    assert (await adapter.complete(CHAT, request, FAST)).finish_reason == openai
    chunks = await collect(adapter, request)
    assert chunks[-1].finish_reason == openai


async def test_documented_stream_is_translated(make_adapter, fake) -> None:
    fake.script(DocExample("chat_stream"))
    adapter = make_adapter()
    chunks = await collect(adapter, CompletionRequest(messages=[{"role": "user",
                                                                 "content": "LLM?"}]))
    call = fake.calls[0]
    assert call.headers["accept"] == "text/event-stream"
    assert call.body["stream"] is True
    texts = [e["delta"]["message"]["content"]["text"] for e in DOC_EXAMPLES["chat_stream"]
             if e["type"] == "content-delta"]
    # one role chunk, one chunk per content-delta, one finishing chunk
    assert len(chunks) == len(texts) + 2
    assert chunks[0].role == "assistant" and chunks[0].content == ""
    assert chunks[0].id == "29f14a5a-11de-4cae-9800-25e4747408ea"
    assert [c.content for c in chunks[1:-1]] == texts
    assert "".join(c.content for c in chunks).startswith("LLMs stand for Large Language")
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == {"prompt_tokens": 5, "completion_tokens": 26,
                                "total_tokens": 31, "cached_tokens": 0, "reasoning_tokens": 0}
    assert {c.id for c in chunks} == {"29f14a5a-11de-4cae-9800-25e4747408ea"}


async def test_documented_tool_stream_becomes_indexed_tool_call_deltas(make_adapter, fake) -> None:
    fake.script(DocExample("chat_stream_tools"))
    chunks = await collect(make_adapter(), CompletionRequest(messages=[{"role": "user",
                                                                        "content": "sales?"}]))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        assert chunk.content == ""
        for call in chunk.tool_calls:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += call.name or ""
            entry["arguments"] += call.arguments
    assert calls == {
        0: {"id": "query_daily_sales_report_j3f0adww9pmr", "name": "query_daily_sales_report",
            "arguments": '{"day": "2023-09-29"}'},
        1: {"id": "query_product_catalog_c66nf11r6s8g", "name": "query_product_catalog",
            "arguments": '{"category": "Electronics"}'},
    }
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage["prompt_tokens"] == 126


async def test_newline_delimited_framing_is_read_too(make_adapter, fake) -> None:
    adapter = make_adapter()
    # Without "Accept: text/event-stream" Cohere sends one JSON object per line.
    adapter._stream_headers = {**adapter._stream_headers, "Accept": "application/json"}
    fake.script(Reply("one two three"))
    chunks = await collect(adapter, CompletionRequest(messages=[{"role": "user",
                                                                 "content": "count"}]))
    assert "".join(c.content for c in chunks) == "one two three"
    assert chunks[-1].finish_reason == "stop"


async def test_stream_with_tool_plan_and_calls_from_reply(make_adapter, fake) -> None:
    fake.script(Reply("Let me check.", tool_calls=[tool_call("get_weather", {"city": "Oslo"},
                                                             id="get_weather_1")]))
    chunks = await collect(make_adapter(), CompletionRequest(
        messages=[{"role": "user", "content": "weather in Oslo?"}], tools=[WEATHER]))
    assert "".join(c.content for c in chunks) == ""  # the plan is not the answer
    args = "".join(tc.arguments for c in chunks for tc in c.tool_calls)
    assert args == '{"city":"Oslo"}'
    starts = [tc for c in chunks for tc in c.tool_calls if tc.id]
    assert [(t.id, t.name, t.index) for t in starts] == [("get_weather_1", "get_weather", 0)]


async def test_embed_sends_the_documented_request_and_reads_the_documented_answer(
    make_adapter, fake
) -> None:
    fake.script(DocExample("embed"))
    doc_request = DOC_EXAMPLES["embed_request"]
    response = await make_adapter().embed(
        EMBED,
        EmbeddingRequest(input=doc_request["texts"], extra={"input_type": "classification"}),
        FAST,
    )
    assert fake.calls[0].path == "/v2/embed"
    assert fake.calls[0].body == {**doc_request, "model": "embed-v4.0"}
    vectors = DOC_EXAMPLES["embed"]["embeddings"]["float"]
    assert response.data == vectors
    assert len(response.data[0]) == 1024
    assert response.usage == {"prompt_tokens": 2, "total_tokens": 2}


async def test_embed_defaults_and_batches_of_96(make_adapter, fake) -> None:
    adapter = make_adapter(embed_input_type="search_query")
    texts = [f"text number {i}" for i in range(100)]
    response = await adapter.embed(EMBED, EmbeddingRequest(input=texts,
                                                           extra={"dimensions": 8}), FAST)
    assert [len(c.body["texts"]) for c in fake.calls] == [96, 4]
    assert fake.calls[0].body == {"model": "embed-v4.0", "input_type": "search_query",
                                  "embedding_types": ["float"], "output_dimension": 8,
                                  "texts": texts[:96]}
    assert len(response.data) == 100 and all(len(v) == 8 for v in response.data)
    single = await adapter.embed(EMBED, EmbeddingRequest(input="text number 3",
                                                         extra={"dimensions": 8}), FAST)
    assert single.data == [response.data[3]]
    assert response.usage["prompt_tokens"] == 300


async def test_rerank_with_the_documented_example(make_adapter, fake) -> None:
    fake.script(DocExample("rerank"))
    doc_request = DOC_EXAMPLES["rerank_request"]
    result = await make_adapter().rerank(
        RERANK, RerankRequest(query=doc_request["query"], documents=doc_request["documents"],
                              top_n=doc_request["top_n"]), FAST
    )
    assert fake.calls[0].path == "/v2/rerank"
    assert fake.calls[0].body == {**doc_request, "model": "rerank-v3.5"}
    assert result.results == (
        RerankResult(index=3, relevance_score=0.999071, document=doc_request["documents"][3]),
        RerankResult(index=4, relevance_score=0.7867867, document=doc_request["documents"][4]),
        RerankResult(index=0, relevance_score=0.32713068, document=doc_request["documents"][0]),
    )
    assert result.usage == {"search_units": 1}
    assert result.id == "07734bd2-2473-4f07-94e1-0d9f0e6843cf"


async def test_rerank_orders_by_relevance_and_omits_top_n_when_none(make_adapter, fake) -> None:
    docs = ["bananas are yellow", "the capital of France is Paris", "Paris"]
    result = await make_adapter().rerank(
        RERANK, RerankRequest(query="capital of France", documents=docs), FAST)
    assert "top_n" not in fake.calls[0].body
    assert [r.index for r in result.results] == [1, 0, 2]
    assert result.results[0].document == docs[1]


async def test_rerank_index_outside_the_documents_is_an_error(make_adapter, fake) -> None:
    fake.script(DocExample("rerank"))  # answers indexes up to 4
    with pytest.raises(ProviderError, match="results"):
        await make_adapter().rerank(
            RERANK, RerankRequest(query="q", documents=["only one"], top_n=3), FAST)


async def test_list_models(make_adapter, fake) -> None:
    names = await make_adapter().list_models(FAST)
    assert names == ["command-a-03-2025", "command-r-08-2024", "embed-v4.0", "rerank-v3.5"]
    assert fake.calls[0].method == "GET"
    assert fake.calls[0].path == "/v1/models"


async def test_trial_key_counters_become_rate_limit_info(context, monkeypatch) -> None:
    monkeypatch.delenv("CO_API_KEY", raising=False)
    async with FakeCohere(api_keys={KEY}, trial_limit=20) as fake:
        adapter = CohereAdapter(context, CohereConfig(base_url=fake.url, api_key=KEY))
        first = await adapter.complete(CHAT, CompletionRequest(
            messages=[{"role": "user", "content": "a"}]), FAST)
        chunks = await collect(adapter, CompletionRequest(messages=[{"role": "user",
                                                                     "content": "b"}]))
    assert first.metadata["rate_limit"] == RateLimitInfo(limit_requests=20, remaining_requests=19)
    assert chunks[0].metadata["rate_limit"].remaining_requests == 18


async def test_key_and_base_url_from_the_environment(context, fake, monkeypatch) -> None:
    monkeypatch.delenv("CO_API_KEY", raising=False)
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    monkeypatch.setenv("CO_API_URL", fake.url + "/v2/")
    adapter = CohereAdapter(context, None)
    assert adapter.base_url == fake.url
    await adapter.complete(CHAT, CompletionRequest(messages=[{"role": "user", "content": "x"}]),
                           FAST)
    assert fake.calls[-1].api_key == KEY
    monkeypatch.setenv("CO_API_KEY", "co-other-key-000000")
    assert CohereConfig().resolve_key() == "co-other-key-000000"  # CO_API_KEY is read first


async def test_unsupported_input_is_the_callers_error_and_sends_nothing(make_adapter, fake):
    adapter = make_adapter()
    for request in (
        CompletionRequest(messages=[{"role": "function", "name": "f", "content": "x"}]),
        CompletionRequest(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]),
        CompletionRequest(messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
                          extra={"tool_choice": {"type": "function",
                                                 "function": {"name": "nope"}}}),
    ):
        with pytest.raises(ProviderError) as info:
            await adapter.complete(CHAT, request, FAST)
        assert info.value.status == 400 and info.value.retryable is False
    assert fake.calls == []


async def test_answer_without_message_is_a_bad_payload(make_adapter, session) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"id": "x", "text": "a v1 answer"})

    app = web.Application()
    app.router.add_post("/v2/chat", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        adapter = make_adapter(base_url=f"http://127.0.0.1:{port}")
        with pytest.raises(ProviderError, match="no message") as info:
            await adapter.complete(CHAT, CompletionRequest(messages=[{"role": "user",
                                                                      "content": "x"}]), FAST)
        assert info.value.retryable is True
    finally:
        await runner.cleanup()


def test_doc_examples_are_the_documented_shapes() -> None:
    stream = DOC_EXAMPLES["chat_stream"]
    assert stream[0]["type"] == "message-start" and stream[-1]["type"] == "message-end"
    assert orjson.loads(orjson.dumps(DOC_EXAMPLES["rerank"]))["results"][0]["index"] == 3
