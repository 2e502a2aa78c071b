"""Responses, usage, rate limits and the model list, over real HTTP against FakeAnthropic."""

from __future__ import annotations

import pytest
from conftest import FAST, claude

from modelmesh_anthropic import CONNECTOR, modelmesh_providers
from modelmesh_anthropic.fake import DOC_MESSAGE, DOC_MODELS, Raw, Reply, tool_use
from modelmesh_core.types import CompletionRequest, ProviderAdapter, RateLimitInfo, ToolCall

HI = CompletionRequest(messages=[{"role": "user", "content": "Hello"}])


async def test_adapter_satisfies_the_protocol_and_hides_its_key(make_adapter) -> None:
    adapter = make_adapter()
    assert isinstance(adapter, ProviderAdapter)
    assert "sk-ant" not in repr(adapter)
    spec = modelmesh_providers()[0]
    assert spec.name == CONNECTOR == "anthropic.claude.v1"
    assert spec.env_vars == ("ANTHROPIC_API_KEY",)
    prefill = {m.name for m in spec.catalogue if "assistant_prefill" in m.features}
    assert "claude-sonnet-4-5" in prefill and "claude-opus-4-6" not in prefill
    for model in spec.catalogue:
        assert {"tool_calling", "vision", "system_prompt"} <= model.features
        assert model.pricing.cached_input == pytest.approx(model.pricing.input / 10)
        assert model.context_window and model.max_output_tokens


async def test_documentation_message_example(make_adapter, fake) -> None:
    fake.script(Raw(DOC_MESSAGE))
    response = await make_adapter().complete(claude(), HI, FAST)
    assert response.content == "Hi! My name is Claude."
    assert response.id == "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert response.upstream_model == "claude-sonnet-4-5-20250929"
    assert response.model == "claude.claude-sonnet-4-5"
    assert response.provider == "claude"
    assert response.finish_reason == "stop"
    assert response.role == "assistant"
    assert response.usage == {
        "prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598,
        "cached_tokens": 0, "reasoning_tokens": 0, "cache_creation_tokens": 0,
    }


async def test_tool_use_blocks_become_tool_calls(make_adapter, fake) -> None:
    fake.script(Reply("Let me look.", tool_calls=[
        tool_use("get_weather", {"location": "Paris"}, id="toolu_01P"),
        tool_use("get_weather", {"location": "Rome"}, id="toolu_01R"),
    ]))
    response = await make_adapter().complete(claude(), HI, FAST)
    assert response.content == "Let me look."
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall(id="toolu_01P", name="get_weather", arguments='{"location":"Paris"}'),
        ToolCall(id="toolu_01R", name="get_weather", arguments='{"location":"Rome"}'),
    )


async def test_cache_usage_counts_as_prompt_and_cached_tokens(make_adapter, fake) -> None:
    fake.script(Reply("ok", usage={"input_tokens": 21, "cache_read_input_tokens": 1800,
                                   "cache_creation_input_tokens": 300, "output_tokens": 9}))
    response = await make_adapter().complete(claude(), HI, FAST)
    # Anthropic's input_tokens excludes cache reads and writes; OpenAI's prompt_tokens includes
    # them and cached_tokens (priced at cached_input) is the part read from the cache.
    assert response.usage == {
        "prompt_tokens": 2121, "completion_tokens": 9, "total_tokens": 2130,
        "cached_tokens": 1800, "reasoning_tokens": 0, "cache_creation_tokens": 300,
    }


@pytest.mark.parametrize(
    ("stop", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
     ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
     ("model_context_window_exceeded", "length")],
)
async def test_stop_reasons(make_adapter, fake, stop, finish) -> None:
    fake.script(Reply("x", stop_reason=stop))
    assert (await make_adapter().complete(claude(), HI, FAST)).finish_reason == finish


async def test_rate_limit_headers_become_rate_limit_info(make_adapter, fake) -> None:
    response = await make_adapter().complete(claude(), HI, FAST)
    rate = response.metadata["rate_limit"]
    assert isinstance(rate, RateLimitInfo)
    assert (rate.limit_requests, rate.remaining_requests) == (4000, 3999)
    assert (rate.limit_tokens, rate.remaining_tokens) == (400_000, 399_900)
    # resets are RFC 3339 times one minute ahead, read as seconds from now
    assert 55 <= rate.reset_requests <= 61 and 55 <= rate.reset_tokens <= 61
    assert rate.retry_after is None


async def test_list_models_follows_pages(make_adapter, fake) -> None:
    fake.models = tuple(f"claude-{i}" for i in range(1500))
    names = await make_adapter().list_models(FAST)
    assert names == list(fake.models)
    assert [c.query for c in fake.calls] == [
        {"limit": "1000"}, {"limit": "1000", "after_id": "claude-999"}]
    assert all(c.path == "/v1/models" and c.method == "GET" for c in fake.calls)


async def test_list_models_documentation_example(make_adapter, fake) -> None:
    fake.script(Raw(DOC_MODELS))
    assert await make_adapter().list_models(FAST) == ["claude-sonnet-4-20250514"]


async def test_embeddings_are_not_offered(make_adapter, fake) -> None:
    from modelmesh_core.errors import ProviderError
    from modelmesh_core.types import EmbeddingRequest

    with pytest.raises(ProviderError, match="no embeddings API") as info:
        await make_adapter().embed(claude(), EmbeddingRequest(input="x"), FAST)
    assert info.value.status == 404 and not info.value.retryable
    assert fake.calls == []
