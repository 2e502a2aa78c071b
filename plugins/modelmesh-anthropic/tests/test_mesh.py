"""anthropic.claude.v1 inside a ModelMesh: discovery, catalogue, cost, tool round trip, failover."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import KEY

from modelmesh_anthropic.fake import FakeAnthropic, Reply, StreamError, tool_use
from modelmesh_core import CompletionRequest
from modelmesh_core.fakes import FakeUpstream
from modelmesh_core.fakes import Reply as OpenAIReply

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


@pytest.fixture
async def second() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_keys={KEY}) as upstream:
        yield upstream


def claude_provider(fake: FakeAnthropic) -> dict[str, Any]:
    return {"connector": "anthropic.claude.v1",
            "config": {"base_url": fake.base_url, "api_key": KEY}}


def config(pool: list[str], **providers: dict[str, Any]) -> dict[str, Any]:
    return {
        "providers": providers,
        "models": {mid: {} for mid in pool},
        "pools": {"chat": {"capability": "chat-completion", "models": pool,
                           "strategy": "priority-selection"}},
    }


async def test_the_connector_is_discovered_and_its_catalogue_used(fake, make_mesh) -> None:
    mesh = await make_mesh(config(["claude.claude-haiku-4-5"], claude=claude_provider(fake)))
    spec = mesh.registry.providers["anthropic.claude.v1"]
    assert spec.plugin  # registered through the entry point
    assert mesh.providers["claude"].connector == "anthropic.claude.v1"
    model = mesh.models["claude.claude-haiku-4-5"]
    assert model.upstream_id == "claude-haiku-4-5"
    assert model.context_window == 200_000 and model.max_output_tokens == 64_000
    decision = await mesh.router.route("chat")
    assert decision.model_id == "claude.claude-haiku-4-5"


async def test_tool_calling_round_trip_through_the_mesh(fake, make_mesh) -> None:
    mesh = await make_mesh(config(["claude.claude-sonnet-4-5"], claude=claude_provider(fake)))
    fake.script(
        Reply("I'll check.", tool_calls=[tool_use("get_weather", {"city": "Paris"},
                                                  id="toolu_01Paris")]),
        Reply("It is 18C and sunny in Paris."),
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await mesh.router.complete("chat", CompletionRequest(messages=messages,
                                                                 tools=[WEATHER]))
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == (
        "toolu_01Paris", "get_weather", {"city": "Paris"})

    messages += [
        {"role": "assistant", "content": first.content, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18C, sunny"},
    ]
    final = await mesh.router.complete("chat", CompletionRequest(messages=messages,
                                                                 tools=[WEATHER]))
    assert final.content == "It is 18C and sunny in Paris."
    assert final.finish_reason == "stop"
    assert fake.calls[1].body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll check."},
            {"type": "tool_use", "id": "toolu_01Paris", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01Paris", "content": "18C, sunny"}]},
    ]


async def test_cached_tokens_are_priced_as_cached_input(fake, make_mesh) -> None:
    mesh = await make_mesh(config(["claude.claude-sonnet-4-5"], claude=claude_provider(fake)))
    fake.script(Reply("ok", usage={"input_tokens": 100_000, "cache_read_input_tokens": 900_000,
                                   "output_tokens": 10_000}))
    response = await mesh.router.complete("chat", CompletionRequest(
        messages=[{"role": "user", "content": "hi"}]))
    # 0.1M fresh at $3 + 0.9M cached at $0.30 + 0.01M output at $15
    assert response.metadata["cost"] == pytest.approx(0.3 + 0.27 + 0.15)


async def test_overloaded_claude_fails_over_to_another_vendor(fake, make_mesh) -> None:
    async with FakeUpstream() as openai:
        fake.default = StreamError(after_events=1)  # 529 for complete, in-stream for stream
        openai.default = OpenAIReply("Answer from the second provider.")
        mesh = await make_mesh(config(
            ["claude.claude-sonnet-4-5", "gpt.gpt-4o-mini"],
            claude=claude_provider(fake),
            gpt={"connector": "openai.llm.v1",
                 "config": {"base_url": openai.base_url, "api_key": "sk-test-0000000000"}},
        ))
        request = CompletionRequest(messages=[{"role": "user", "content": "hi"}])
        response = await mesh.router.complete("chat", request)
        assert response.content == "Answer from the second provider."
        assert response.model == "gpt.gpt-4o-mini"
        assert response.metadata["attempts"] == 2
        assert fake.calls[0].path == "/v1/messages"

        mesh.reactivate("claude.claude-sonnet-4-5")
        chunks = [c async for c in mesh.router.stream("chat", CompletionRequest(
            messages=request.messages, stream=True))]
        assert "".join(c.content for c in chunks) == "Answer from the second provider."
        assert {c.model for c in chunks} == {"gpt.gpt-4o-mini"}
        assert fake.calls[-1].body["stream"] is True


async def test_529_rotates_to_a_second_anthropic_provider(fake, second, make_mesh) -> None:
    from modelmesh_anthropic.fake import Fail

    fake.default = Fail(529)
    second.default = Reply("Claude on the other account.")
    mesh = await make_mesh(config(
        ["one.claude-haiku-4-5", "two.claude-haiku-4-5"],
        one=claude_provider(fake), two=claude_provider(second)))
    response = await mesh.router.complete("chat", CompletionRequest(
        messages=[{"role": "user", "content": "hi"}]))
    assert response.content == "Claude on the other account."
    assert response.model == "two.claude-haiku-4-5"
    assert len(fake.calls) == 1 and len(second.calls) == 1


async def test_features_filter_sees_the_catalogue(fake, make_mesh) -> None:
    mesh = await make_mesh(config(["claude.claude-opus-4-6", "claude.claude-haiku-4-5"],
                                  claude=claude_provider(fake)))
    models = mesh.models
    assert "assistant_prefill" in models["claude.claude-haiku-4-5"].features
    assert "assistant_prefill" not in models["claude.claude-opus-4-6"].features
    assert models["claude.claude-haiku-4-5"].pricing.cached_input == pytest.approx(0.1)
