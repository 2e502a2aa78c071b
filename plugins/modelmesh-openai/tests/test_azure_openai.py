"""azure.openai.v1 against FakeAzureOpenAI: deployments, api-version, api-key / Entra ID,
Azure's error and content-filter shapes, and failover through a ModelMesh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from modelmesh_core import CompletionRequest, ModelMesh
from modelmesh_core.errors import (
    AuthenticationError,
    ConfigError,
    ContentFilterError,
    ProviderError,
    RateLimitError,
)
from modelmesh_core.fakes import Fail, FakeUpstream, Reply, tool_call
from modelmesh_core.types import EmbeddingRequest, Model, Timeouts
from modelmesh_openai import AzureOpenAIAdapter, AzureOpenAIConfig, modelmesh_providers
from modelmesh_openai.azure_fake import (
    PROMPT_FILTER_BODY,
    AnswerFiltered,
    FakeAzureOpenAI,
    PromptFiltered,
)

AZ_KEY = "azure-key-0123456789abcdef"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.fake-entra-token"
SPEC = {s.name: s for s in modelmesh_providers()}["azure.openai.v1"]
CHAT = Model(id="az.gpt4o-prod", provider="az", upstream_id="gpt4o-prod",
             capabilities=("generation.text-generation.chat-completion",))
EMBED = Model(id="az.embed-small", provider="az", upstream_id="embed-small",
              capabilities=("representation.embeddings.text-embeddings",))
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)
HI = CompletionRequest(messages=[{"role": "user", "content": "hello"}])

_provided: list[str] = []


def token_provider() -> str:
    """An Entra ID token provider (what azure.identity's bearer provider looks like)."""
    _provided.append(TOKEN)
    return TOKEN


async def async_token_provider() -> str:
    """The awaitable flavour."""
    _provided.append(TOKEN)
    return TOKEN


@pytest.fixture
async def azure() -> AsyncIterator[FakeAzureOpenAI]:
    async with FakeAzureOpenAI(api_keys={AZ_KEY}, entra_tokens={TOKEN}) as fake:
        yield fake


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION",
                "AZURE_OPENAI_AD_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    _provided.clear()


@pytest.fixture
def make(context, azure):
    def build(**config: Any) -> AzureOpenAIAdapter:
        config.setdefault("base_url", azure.endpoint)
        if config.get("auth") != "entra":
            config.setdefault("api_key", AZ_KEY)
        adapter = SPEC.factory(context, AzureOpenAIConfig(**config))
        assert isinstance(adapter, AzureOpenAIAdapter)
        return adapter

    return build


async def test_deployment_url_default_api_version_and_api_key(make, azure) -> None:
    adapter = make()
    response = await adapter.complete(CHAT, CompletionRequest(
        messages=[{"role": "user", "content": "hello"}], max_tokens=20), FAST)
    assert response.content == "Hello from the fake upstream!"
    call = azure.calls[0]
    assert call.path == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    assert call.headers["api-key"] == AZ_KEY
    assert "authorization" not in call.headers
    assert call.body == {"model": "gpt4o-prod", "messages": HI.messages, "max_tokens": 20}


async def test_api_version_from_config_then_environment(make, azure, monkeypatch) -> None:
    await make(api_version="2024-06-01").complete(CHAT, HI, FAST)
    monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")
    await make().complete(CHAT, HI, FAST)
    assert [c.path.split("?")[1] for c in azure.calls] == [
        "api-version=2024-06-01", "api-version=2025-04-01-preview"]


async def test_unknown_api_version_and_deployment_are_not_retryable(make, azure) -> None:
    with pytest.raises(ProviderError) as info:
        await make(api_version="1999-01-01").complete(CHAT, HI, FAST)
    assert info.value.status == 404 and info.value.retryable is False
    missing = Model(id="az.nope", provider="az", upstream_id="nope", capabilities=())
    with pytest.raises(ProviderError, match="DeploymentNotFound") as info:
        await make().complete(missing, HI, FAST)
    assert info.value.status == 404 and not info.value.retryable
    assert "'nope'" in str(info.value)


async def test_embeddings_use_the_embedding_deployment(make, azure) -> None:
    result = await make().embed(EMBED, EmbeddingRequest(input=["a", "b"]), FAST)
    assert len(result.data) == 2
    assert azure.calls[0].path == (
        "/openai/deployments/embed-small/embeddings?api-version=2024-10-21"
    )
    assert azure.calls[0].body == {"model": "embed-small", "input": ["a", "b"]}


@pytest.mark.parametrize("style", [{"api_style": "v1"}, {"suffix": "/openai/v1"}])
async def test_ga_v1_paths(make, azure, style) -> None:
    config: dict[str, Any] = {}
    if "suffix" in style:
        config["base_url"] = azure.endpoint + style["suffix"]
    else:
        config["api_style"] = "v1"
    adapter = make(**config)
    assert adapter.api_style == "v1"
    await adapter.complete(CHAT, HI, FAST)
    chunks = [c async for c in adapter.stream(CHAT, HI, FAST)]
    await adapter.embed(EMBED, EmbeddingRequest(input="x"), FAST)
    assert await adapter.list_models(FAST) == ["gpt4o-prod", "embed-small"]
    assert [c.path for c in azure.calls] == [
        "/openai/v1/chat/completions", "/openai/v1/chat/completions",
        "/openai/v1/embeddings", "/openai/v1/models"]
    assert azure.calls[0].body["model"] == "gpt4o-prod"
    assert "".join(c.content for c in chunks) == "Hello from the fake upstream!"


async def test_entra_token_is_a_bearer_header_without_api_key(make, azure, monkeypatch) -> None:
    adapter = make(auth="entra", entra_token=TOKEN)
    await adapter.complete(CHAT, HI, FAST)
    call = azure.calls[0]
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert "api-key" not in call.headers
    assert TOKEN not in repr(adapter)
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", TOKEN)
    chunks = [c async for c in make(auth="entra").stream(CHAT, HI, FAST)]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert azure.calls[1].headers["authorization"] == f"Bearer {TOKEN}"


async def test_entra_without_a_token_is_a_config_error(context, azure) -> None:
    with pytest.raises(ConfigError, match="entra_token"):
        SPEC.factory(context, AzureOpenAIConfig(base_url=azure.endpoint, auth="entra"))
    with pytest.raises(ConfigError, match="cannot load"):
        SPEC.factory(context, AzureOpenAIConfig(base_url=azure.endpoint, auth="entra",
                                                entra_token_provider="no_such_module:fn"))


@pytest.mark.parametrize("provider", ["token_provider", "async_token_provider"])
async def test_entra_token_provider_is_cached_and_refreshed(make, azure, provider) -> None:
    adapter = make(auth="entra", entra_token_provider=f"test_azure_openai:{provider}",
                   entra_token_ttl=60.0)
    now = [1000.0]
    adapter.clock = lambda: now[0]
    await adapter.complete(CHAT, HI, FAST)
    await adapter.complete(CHAT, HI, FAST)
    assert len(_provided) == 1
    now[0] += 61.0
    await adapter.complete(CHAT, HI, FAST)
    assert len(_provided) == 2
    # a rejected token is dropped: the next call asks the provider again
    azure.entra_tokens = frozenset()
    with pytest.raises(AuthenticationError, match="Access token is missing, invalid"):
        await adapter.complete(CHAT, HI, FAST)
    azure.entra_tokens = frozenset({TOKEN})
    await adapter.complete(CHAT, HI, FAST)
    assert len(_provided) == 3
    assert {c.headers["authorization"] for c in azure.calls} == {f"Bearer {TOKEN}"}


async def test_bad_key_gets_azure_s_401(make, azure) -> None:
    with pytest.raises(AuthenticationError, match="invalid subscription key") as info:
        await make(api_key="azure-wrong-key-00000000").complete(CHAT, HI, FAST)
    assert info.value.status == 401


async def test_filtered_prompt_is_a_content_filter_error(make, azure) -> None:
    azure.script(PromptFiltered(), PromptFiltered())
    adapter = make()
    for call in (adapter.complete(CHAT, HI, FAST), _drain(adapter)):
        with pytest.raises(ContentFilterError) as info:
            await call
        error = info.value
        assert error.status == 400 and error.retryable is False
        assert "hate (high)" in str(error) and "violence (medium)" in str(error)
        assert "self_harm" not in str(error)
        assert PROMPT_FILTER_BODY["error"]["message"][:40] in str(error)


async def _drain(adapter: AzureOpenAIAdapter, request: CompletionRequest = HI) -> list:
    return [c async for c in adapter.stream(CHAT, request, FAST)]


async def test_filtered_answer_raises_and_a_filtered_stream_raises_after_its_chunks(
    make, azure
) -> None:
    azure.script(AnswerFiltered("Here is the start of"), AnswerFiltered("Here is the start of"))
    adapter = make()
    with pytest.raises(ContentFilterError, match="content_filter"):
        await adapter.complete(CHAT, HI, FAST)
    chunks = []
    with pytest.raises(ContentFilterError, match="streamed answer"):
        async for chunk in adapter.stream(CHAT, HI, FAST):
            chunks.append(chunk)
    assert "".join(c.content for c in chunks) == "Here is the start of "
    assert all(c.finish_reason is None for c in chunks)


async def test_429_retry_after_from_headers_or_azure_s_message(make, azure) -> None:
    azure.script(Fail(429, retry_after=3), Fail(429))
    adapter = make()
    with pytest.raises(RateLimitError) as info:
        await adapter.complete(CHAT, HI, FAST)
    assert info.value.retry_after == 3.0
    with pytest.raises(RateLimitError) as info:
        await adapter.complete(CHAT, HI, FAST)
    assert info.value.retry_after == 6.0  # "Please retry after 6 seconds"
    assert info.value.quota is False


def config(*providers: tuple[str, str, Any], pool: dict[str, Any] | None = None) -> dict:
    out: dict[str, Any] = {"providers": {}, "models": {},
                           "pools": {"chat": {"capability": "chat-completion", **(pool or {})}}}
    for name, connector, fake in providers:
        if connector == "azure.openai.v1":
            cfg = {"base_url": fake.endpoint, "api_key": AZ_KEY}
            # deployment names are the user's: capabilities and features come from the config
            out["models"][f"{name}.gpt4o-prod"] = {"capabilities": ["chat-completion"],
                                                   "features": ["tool_calling"]}
        else:
            cfg = {"base_url": fake.base_url, "api_key": "sk-test-0123456789"}
            out["models"][f"{name}.gpt-4o-mini"] = {}
        out["providers"][name] = {"connector": connector, "config": cfg}
    return out


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as fake:
        yield fake


async def test_failover_from_failing_azure_to_openai(make_mesh, azure, openai_fake) -> None:
    azure.default = Fail(503)
    mesh: ModelMesh = await make_mesh(config(("az", "azure.openai.v1", azure),
                                             ("oa", "openai.llm.v1", openai_fake)))
    response = await mesh.router.complete("chat", HI)
    assert response.provider == "oa"
    chunks = [c async for c in mesh.router.stream("chat", CompletionRequest(
        messages=HI.messages, stream=True))]
    assert {c.provider for c in chunks} == {"oa"}
    assert len(azure.calls) >= 1


async def test_content_filter_is_not_failed_over(make_mesh, azure, openai_fake) -> None:
    azure.default = PromptFiltered()
    mesh = await make_mesh(config(("az", "azure.openai.v1", azure),
                                  ("oa", "openai.llm.v1", openai_fake)))
    with pytest.raises(ContentFilterError):
        await mesh.router.complete("chat", HI)
    assert openai_fake.calls == []


async def test_tool_calling_round_trip_through_azure(make_mesh, azure) -> None:
    mesh = await make_mesh(config(("az", "azure.openai.v1", azure)))
    azure.script(Reply("", tool_calls=[tool_call("get_time", {"tz": "UTC"}, id="call_t1")]),
                 Reply("It is noon."))
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {}}}]
    first = await mesh.router.complete("chat", CompletionRequest(messages=HI.messages,
                                                                 tools=tools))
    (call,) = first.tool_calls
    messages = [*HI.messages,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call.id, "type": "function",
                     "function": {"name": call.name, "arguments": call.arguments}}]},
                {"role": "tool", "tool_call_id": call.id, "content": "12:00"}]
    final = await mesh.router.complete("chat", CompletionRequest(messages=messages,
                                                                 tools=tools))
    assert final.content == "It is noon."
    assert azure.calls[1].body["messages"][1:] == messages[1:]
    assert all(c.path.startswith("/openai/deployments/gpt4o-prod/") for c in azure.calls)
