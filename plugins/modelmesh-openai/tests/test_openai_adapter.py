"""Happy paths of the OpenAI adapter over real HTTP against FakeUpstream."""

from __future__ import annotations

import orjson
from aiohttp import web

from modelmesh_core.fakes import FakeUpstream, Reply, tool_call
from modelmesh_core.types import (
    CompletionRequest,
    EmbeddingRequest,
    Model,
    ProviderAdapter,
    RateLimitInfo,
    Timeouts,
)
from modelmesh_openai import OpenAIConfig, modelmesh_providers

KEY = "sk-test-0123456789abcdef"  # the key the ``fake`` fixture accepts
MODEL = Model(
    id="alpha.gpt-4o-mini",
    provider="alpha",
    upstream_id="gpt-4o-mini",
    capabilities=("generation.text-generation.chat-completion",),
)
EMBED_MODEL = Model(
    id="alpha.text-embedding-3-small",
    provider="alpha",
    upstream_id="text-embedding-3-small",
    capabilities=("representation.embeddings.text-embeddings",),
)
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)

HELLO = [{"role": "user", "content": "say hello to the nice people"}]


async def test_adapter_satisfies_protocol(make_adapter) -> None:
    adapter = make_adapter()
    assert isinstance(adapter, ProviderAdapter)
    await adapter.close()


async def test_complete_builds_request_and_parses_response(make_adapter, fake) -> None:
    adapter = make_adapter(organization="org-1", headers={"X-Title": "mesh"})
    fake.script(Reply("Hello, nice people.", usage={"cached_tokens": 3, "reasoning_tokens": 2}))
    request = CompletionRequest(
        messages=HELLO,
        temperature=0.2,
        max_tokens=50,
        extra={"response_format": {"type": "json_object"}, "seed": 7, "stream_options": {}},
    )
    response = await adapter.complete(MODEL, request, FAST)

    assert response.content == "Hello, nice people."
    assert response.model == "alpha.gpt-4o-mini"
    assert response.provider == "alpha"
    assert response.upstream_model == "gpt-4o-mini"
    assert response.finish_reason == "stop"
    assert response.id.startswith("chatcmpl-")
    assert response.created > 0
    assert response.tool_calls == ()
    assert response.latency_ms > 0
    assert response.usage == {
        "prompt_tokens": 6,
        "completion_tokens": 3,
        "total_tokens": 9,
        "cached_tokens": 3,
        "reasoning_tokens": 2,
    }
    rate = response.metadata["rate_limit"]
    assert isinstance(rate, RateLimitInfo)
    assert rate.limit_requests == 10_000
    assert rate.remaining_requests == 9_999
    assert 0 < rate.reset_requests <= 60

    call = fake.calls[0]
    assert call.path == "/v1/chat/completions"
    assert call.api_key == KEY
    assert call.headers["openai-organization"] == "org-1"
    assert call.headers["x-title"] == "mesh"
    assert call.body == {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "temperature": 0.2,
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
        "seed": 7,
    }


async def test_remaining_requests_count_down(make_adapter) -> None:
    adapter = make_adapter()
    request = CompletionRequest(messages=HELLO)
    first = await adapter.complete(MODEL, request, FAST)
    second = await adapter.complete(MODEL, request, FAST)
    assert (
        first.metadata["rate_limit"].remaining_requests
        - second.metadata["rate_limit"].remaining_requests
        == 1
    )
    assert second.metadata["rate_limit"].remaining_tokens < 2_000_000


async def test_complete_with_tool_calls(make_adapter, fake) -> None:
    fake.script(
        Reply(
            "",
            tool_calls=[
                tool_call("get_weather", {"city": "Paris"}, id="call_1"),
                tool_call("get_time", "{}"),
            ],
        )
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request = CompletionRequest(messages=HELLO, tools=tools, extra={"tool_choice": "auto"})
    response = await make_adapter().complete(MODEL, request, FAST)

    assert response.finish_reason == "tool_calls"
    assert response.content == ""
    assert [(c.id, c.name, c.arguments, c.type) for c in response.tool_calls] == [
        ("call_1", "get_weather", '{"city":"Paris"}', "function"),
        (response.tool_calls[1].id, "get_time", "{}", "function"),
    ]
    assert response.tool_calls[1].id
    assert fake.calls[0].body["tools"] == tools
    assert fake.calls[0].body["tool_choice"] == "auto"


async def test_stream_with_include_usage(make_adapter, fake) -> None:
    fake.script(Reply("one two three four"))
    request = CompletionRequest(messages=HELLO, extra={"stream_options": {"include_usage": True}})
    chunks = [c async for c in make_adapter().stream(MODEL, request, FAST)]

    assert fake.calls[0].body["stream"] is True
    assert fake.calls[0].body["stream_options"] == {"include_usage": True}
    assert chunks[0].role == "assistant"
    assert all(c.role is None for c in chunks[1:])
    assert "rate_limit" in chunks[0].metadata
    assert "".join(c.content for c in chunks) == "one two three four"
    assert len([c for c in chunks if c.content]) == 4
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == {
        "prompt_tokens": 6,
        "completion_tokens": 4,
        "total_tokens": 10,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert all(not c.usage for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.model == "alpha.gpt-4o-mini" and c.provider == "alpha" for c in chunks)
    latencies = [c.latency_ms for c in chunks]
    assert latencies == sorted(latencies)


async def test_stream_always_asks_the_upstream_for_usage(make_adapter, fake) -> None:
    # The caller did not ask for usage, but the router bills from it: the adapter asks anyway
    # (the wire encoders only pass the usage chunk on when the caller asked).
    chunks = [
        c async for c in make_adapter().stream(MODEL, CompletionRequest(messages=HELLO), FAST)
    ]
    sent = fake.calls[-1].body
    assert sent["stream_options"] == {"include_usage": True}
    assert chunks[-2].finish_reason == "stop"
    assert chunks[-1].usage["total_tokens"] > 0 and chunks[-1].finish_reason is None
    kept = CompletionRequest(messages=HELLO,
                             extra={"stream_options": {"include_obfuscation": False}})
    [c async for c in make_adapter().stream(MODEL, kept, FAST)]
    assert fake.calls[-1].body["stream_options"] == {"include_obfuscation": False,
                                                     "include_usage": True}


async def test_stream_tool_calls_as_index_keyed_deltas(make_adapter, fake) -> None:
    fake.script(
        Reply(
            "",
            tool_calls=[
                tool_call("search", {"q": "weather in Paris"}),
                tool_call("clock", {"tz": "UTC"}),
            ],
        )
    )
    chunks = [
        c async for c in make_adapter().stream(MODEL, CompletionRequest(messages=HELLO), FAST)
    ]
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls:
            assert delta.index is not None
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            entry["name"] += delta.name or ""
            entry["arguments"] += delta.arguments
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "search"
    assert orjson.loads(calls[0]["arguments"]) == {"q": "weather in Paris"}
    assert orjson.loads(calls[1]["arguments"]) == {"tz": "UTC"}
    assert calls[0]["id"] and calls[0]["id"] != calls[1]["id"]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_embeddings_are_deterministic(make_adapter, fake) -> None:
    adapter = make_adapter()
    first = await adapter.embed(EMBED_MODEL, EmbeddingRequest(input=["alpha", "beta"]), FAST)
    second = await adapter.embed(
        EMBED_MODEL, EmbeddingRequest(input=["beta", "alpha"], extra={"dimensions": 8}), FAST
    )
    single = await adapter.embed(EMBED_MODEL, EmbeddingRequest(input="alpha"), FAST)

    assert len(first.data) == 2 and len(first.data[0]) == 16
    assert first.data[0] != first.data[1]
    assert single.data == [first.data[0]]
    assert len(second.data[0]) == 8
    assert abs(sum(v * v for v in first.data[0]) - 1.0) < 1e-9
    assert first.usage == {"prompt_tokens": 2, "total_tokens": 2}
    assert first.model == "alpha.text-embedding-3-small"
    assert first.upstream_model == "text-embedding-3-small"
    assert fake.calls[1].body == {
        "model": "text-embedding-3-small",
        "input": ["beta", "alpha"],
        "dimensions": 8,
    }


async def test_embeddings_base64_are_decoded(make_adapter) -> None:
    adapter = make_adapter()
    floats = await adapter.embed(EMBED_MODEL, EmbeddingRequest(input="gamma"), FAST)
    packed = await adapter.embed(
        EMBED_MODEL, EmbeddingRequest(input="gamma", extra={"encoding_format": "base64"}), FAST
    )
    assert [round(v, 5) for v in packed.data[0]] == [round(v, 5) for v in floats.data[0]]


async def test_list_models(make_adapter, fake) -> None:
    names = await make_adapter().list_models(FAST)
    assert names == list(fake.models)
    assert fake.calls[0].method == "GET" and fake.calls[0].path == "/v1/models"


async def test_azure_uses_deployments_url_api_version_and_api_key(make_adapter, fake) -> None:
    adapter = make_adapter("azure.openai.v1", base_url=fake.url, api_version="2024-06-01")
    response = await adapter.complete(MODEL, CompletionRequest(messages=HELLO), FAST)
    await adapter.embed(EMBED_MODEL, EmbeddingRequest(input="x"), FAST)
    assert response.content
    chat, embed = fake.calls
    assert chat.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert embed.path == "/openai/deployments/text-embedding-3-small/embeddings"
    assert chat.headers["api-key"] == KEY
    assert "authorization" not in chat.headers
    assert (await adapter.list_models(FAST)) == list(fake.models)
    assert fake.calls[-1].path == "/openai/models"


async def _sse_app_server(lines: list[bytes], content_type: str = "text/event-stream"):
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        resp.content_type = content_type
        await resp.prepare(request)
        for line in lines:
            await resp.write(line)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def test_stream_ignores_comments_and_joins_multiline_data(make_adapter) -> None:
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    body = orjson.dumps(chunk)
    chunk["choices"][0]["finish_reason"] = "stop"
    last = orjson.dumps(chunk)
    half = last.index(b',"choices"')
    lines = [
        b": keep-alive\n\n",
        b"\n",
        b"event: message\nid: 1\nretry: 100\n",
        b"data: " + body + b"\r\n\r\n",
        b"data: " + last[:half] + b"\ndata: " + last[half:] + b"\n\n",
        b": another keep-alive\n\n",
        b"data: [DONE]\n\n",
    ]
    runner, base_url = await _sse_app_server(lines)
    try:
        adapter = make_adapter(base_url=base_url)
        chunks = [c async for c in adapter.stream(MODEL, CompletionRequest(messages=HELLO), FAST)]
    finally:
        await runner.cleanup()
    assert [c.content for c in chunks] == ["hi", "hi"]


async def test_stream_accepts_a_whole_json_answer(make_adapter) -> None:
    """A compatible server that ignores "stream" gets its answer turned into one chunk."""
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "whole"},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    runner, base_url = await _sse_app_server([orjson.dumps(answer)], "application/json")
    try:
        adapter = make_adapter(base_url=base_url)
        chunks = [c async for c in adapter.stream(MODEL, CompletionRequest(messages=HELLO), FAST)]
    finally:
        await runner.cleanup()
    assert len(chunks) == 1
    assert chunks[0].content == "whole" and chunks[0].finish_reason == "stop"
    assert chunks[0].usage["total_tokens"] == 2


async def test_local_connector_sends_no_auth(context, monkeypatch) -> None:
    spec = {s.name: s for s in modelmesh_providers()}["ollama.local.v1"]
    async with FakeUpstream() as upstream:
        monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{upstream.port}")
        adapter = spec.factory(context, OpenAIConfig())
        assert adapter.base_url == upstream.base_url
        response = await adapter.complete(MODEL, CompletionRequest(messages=HELLO), FAST)
        assert response.content
        assert "authorization" not in upstream.calls[0].headers
