"""``cohere.nlp.v1`` through a ModelMesh: discovery, catalogue, tool round trip, failover."""

from __future__ import annotations

from typing import Any

import pytest

from modelmesh_cohere.fake import Fail, FakeCohere, Reply, tool_call
from modelmesh_core import CompletionRequest, ContentFilterError, EmbeddingRequest
from modelmesh_core.plugins import PluginRegistry, load_plugins

KEY = "co-test-0123456789abcdef"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def config(*fakes: tuple[str, FakeCohere], model: str = "command-r-08-2024") -> dict[str, Any]:
    return {
        "providers": {
            name: {"connector": "cohere.nlp.v1", "config": {"base_url": fake.url,
                                                            "api_key": KEY}}
            for name, fake in fakes
        },
        "models": {f"{name}.{model}": {} for name, _ in fakes},
        "pools": {"chat": {"capability": "chat-completion"}},
    }


@pytest.fixture
async def cohere_pair():
    async with FakeCohere(api_keys={KEY}) as a, FakeCohere(api_keys={KEY}) as b:
        yield a, b


def test_entry_point_registers_the_connector() -> None:
    pm, report = load_plugins(entry_points=True, strict=True)
    registry = PluginRegistry.from_manager(pm, report)
    spec = registry.providers["cohere.nlp.v1"]
    assert spec.env_vars == ("CO_API_KEY", "COHERE_API_KEY")
    assert spec.default_base_url == "https://api.cohere.com"
    names = {info.name: info for info in spec.catalogue}
    assert {"command-a-03-2025", "command-r-plus-08-2024", "command-r-08-2024",
            "command-r7b-12-2024", "embed-v4.0", "embed-english-v3.0",
            "rerank-v3.5"} <= set(names)
    assert names["command-a-03-2025"].context_window == 256_000
    assert "tool_calling" in names["command-a-03-2025"].features
    assert names["rerank-v3.5"].capabilities == ("retrieval.reranking",)


async def test_catalogue_fills_capability_pools(make_mesh, cohere_pair) -> None:
    a, _ = cohere_pair
    mesh = await make_mesh({
        "providers": {"co": {"connector": "cohere.nlp.v1",
                             "config": {"base_url": a.url, "api_key": KEY}}},
        "pools": {"chat": {"capability": "chat-completion"},
                  "vectors": {"capability": "text-embeddings"},
                  "rank": {"capability": "reranking"}},
    })
    chat = {m.id for m in mesh.router.get_pool("chat").models}
    assert "co.command-a-03-2025" in chat and "co.embed-v4.0" not in chat
    assert {m.id for m in mesh.router.get_pool("rank").models} == {"co.rerank-v3.5"}
    vectors = await mesh.router.embed("vectors", EmbeddingRequest(input=["a", "b"]))
    assert len(vectors.data) == 2
    assert a.calls[-1].path == "/v2/embed"


async def test_tool_calling_round_trip_through_the_mesh(make_mesh, cohere_pair) -> None:
    a, _ = cohere_pair
    mesh = await make_mesh(config(("co", a)))
    a.script(
        Reply("I will check the weather.",
              tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="get_weather_p1")]),
        Reply("It is 21 degrees in Paris."),
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await mesh.router.complete("chat", CompletionRequest(messages=messages,
                                                                 tools=[WEATHER]))
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert (call.id, call.name, call.arguments) == ("get_weather_p1", "get_weather",
                                                    '{"city":"Paris"}')
    messages += [
        {"role": "assistant", "content": first.content or None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
    ]
    final = await mesh.router.complete("chat", CompletionRequest(messages=messages,
                                                                 tools=[WEATHER]))
    assert final.content == "It is 21 degrees in Paris."
    assert final.finish_reason == "stop"
    assert a.calls[1].body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [
            {"id": "get_weather_p1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "get_weather_p1", "content": '{"celsius": 21}'},
    ]
    assert a.calls[1].body["tools"] == [WEATHER]


async def test_streamed_tool_call_round_trip_through_the_mesh(make_mesh, cohere_pair) -> None:
    a, _ = cohere_pair
    mesh = await make_mesh(config(("co", a)))
    a.script(Reply("", tool_calls=[tool_call("get_weather", {"city": "Rome"}, id="gw_1")]),
             Reply("Sunny in Rome."))
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Rome?"}]
    chunks = [c async for c in mesh.router.stream("chat", CompletionRequest(
        messages=messages, tools=[WEATHER], stream=True))]
    args = "".join(tc.arguments for c in chunks for tc in c.tool_calls)
    ids = [tc.id for c in chunks for tc in c.tool_calls if tc.id]
    assert (ids, args) == (["gw_1"], '{"city":"Rome"}')
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].finish_reason == "tool_calls"
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "gw_1", "type": "function",
             "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "gw_1", "content": "sunny"},
    ]
    answer = [c async for c in mesh.router.stream("chat", CompletionRequest(
        messages=messages, tools=[WEATHER], stream=True))]
    assert "".join(c.content for c in answer) == "Sunny in Rome."
    assert a.calls[1].body["messages"][-1] == {"role": "tool", "tool_call_id": "gw_1",
                                               "content": "sunny"}


@pytest.mark.parametrize("failure", [Fail(503), Fail(429, retry_after=1), Fail(402)])
async def test_failover_from_a_failing_cohere_provider(make_mesh, cohere_pair, failure) -> None:
    a, b = cohere_pair
    a.default = failure
    mesh = await make_mesh(config(("a", a), ("b", b)))
    response = await mesh.router.complete("chat", CompletionRequest(
        messages=[{"role": "user", "content": "hello"}]))
    assert response.provider == "b"
    assert response.content == "Hello from the fake upstream!"
    assert [c.path for c in a.calls] == ["/v2/chat"]
    assert [c.path for c in b.calls] == ["/v2/chat"]


async def test_stream_fails_over_before_the_first_chunk(make_mesh, cohere_pair) -> None:
    a, b = cohere_pair
    a.default = Fail(500)
    mesh = await make_mesh(config(("a", a), ("b", b)))
    chunks = [c async for c in mesh.router.stream("chat", CompletionRequest(
        messages=[{"role": "user", "content": "hello"}], stream=True))]
    assert {c.provider for c in chunks} == {"b"}
    assert "".join(c.content for c in chunks) == "Hello from the fake upstream!"
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1]["prompt_tokens"] == 1


async def test_content_filter_is_the_callers_not_a_rotation(make_mesh, cohere_pair) -> None:
    a, b = cohere_pair
    a.default = Fail(498)
    mesh = await make_mesh(config(("a", a), ("b", b)))
    with pytest.raises(ContentFilterError):
        await mesh.router.complete("chat", CompletionRequest(
            messages=[{"role": "user", "content": "blocked"}]))
    assert b.calls == []
