"""The OpenAI-shaped in-process clients and the application testing helper."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import modelmesh_core
from modelmesh_core import AllProvidersExhaustedError, ProviderError, RateLimitError
from modelmesh_core.fakes import Fail, FakeUpstream, Reply
from modelmesh_core.testing import mock_client, openai_config

HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture
def upstreams():
    with FakeUpstream.running_in_thread() as a, FakeUpstream.running_in_thread() as b:
        yield a, b


def test_sync_client_over_real_http_with_failover(upstreams):
    a, b = upstreams
    a.default = Fail(503)
    with modelmesh_core.create("chat", config=openai_config([("a", a), ("b", b)])) as client:
        reply = client.chat.completions.create(model="chat", messages=HI)
        assert reply.object == "chat.completion"
        assert reply.choices[0].message.content == "Hello from the fake upstream!"
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason == "stop"
        assert reply.model == "b.gpt-4o-mini"
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        # default model from create()
        assert client.chat.completions.create(messages=HI).model == "b.gpt-4o-mini"
        assert client.usage["requests"] == 2


def test_sync_streaming_and_early_close(upstreams):
    a, b = upstreams
    with modelmesh_core.create(config=openai_config([("a", a), ("b", b)])) as client:
        chunks = list(client.chat.completions.create(
            model="chat", messages=HI, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from the fake upstream!"
        assert chunks[0].choices[0].delta.role == "assistant"
        assert len({c.id for c in chunks}) == 1
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
        stream = client.chat.completions.create(model="chat", messages=HI, stream=True)
        next(iter(stream))
        stream.close()
        assert client.chat.completions.create(model="chat", messages=HI).choices


def test_sync_client_works_inside_a_running_loop(upstreams):
    a, _ = upstreams

    async def inside() -> str:
        client = modelmesh_core.create(config=openai_config([("a", a)]))
        try:
            return client.chat.completions.create(model="chat", messages=HI).model
        finally:
            client.close()

    assert asyncio.run(inside()) == "a.gpt-4o-mini"


async def test_async_client(fake_upstream):
    a = await fake_upstream()
    async with modelmesh_core.create_async("chat", config=openai_config([("a", a)])) as client:
        reply = await client.chat.completions.create(messages=HI)
        assert reply.choices[0].message.content == "Hello from the fake upstream!"
        stream = await client.chat.completions.create(messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "Hello from the fake upstream!"
        listed = await client.models.list()
        assert {m.id for m in listed.data} >= {"chat", "a.gpt-4o-mini"}
        why = await client.explain("chat", HI)
        assert why["selected"] == "a.gpt-4o-mini" and why["pool"] == "chat"
        status = await client.pool_status()
        assert status["chat"]["models"][0]["requests"] == 2


def test_tools_and_embeddings(upstreams):
    a, _ = upstreams
    a.script(Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris"}'}]))
    cfg = openai_config([("a", a)], models=("gpt-4o-mini", "text-embedding-3-small"))
    cfg["models"]["a.gpt-4o-mini"]["features"] = ["tool_calling"]
    cfg["models"]["a.text-embedding-3-small"] = {"capabilities": ["text-embeddings"]}
    with modelmesh_core.create(config=cfg) as client:
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
        reply = client.chat.completions.create(model="chat", messages=HI, tools=tools)
        call = reply.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert call.function.arguments == '{"city": "Paris"}'
        assert reply.choices[0].finish_reason == "tool_calls"
        sent = [c.body for c in a.calls if c.path.endswith("/chat/completions")][-1]
        assert sent["tools"] == tools and sent["model"] == "gpt-4o-mini"
        emb = client.embeddings.create(model="text-embeddings", input=["x", "y"])
        assert len(emb.data) == 2 and emb.data[1].index == 1


def test_auto_detect_from_environment(upstreams, monkeypatch):
    a, _ = upstreams
    for var in ("GROQ_API_KEY", "ANTHROPIC_API_KEY", "MISTRAL_API_KEY", "OLLAMA_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-autodetected-123456")
    monkeypatch.setenv("OPENAI_BASE_URL", a.base_url)
    with modelmesh_core.create("chat-completion") as client:
        described = client.describe()
        assert "openai" in described["providers"]
        assert "chat-completion" in described["pools"]
        reply = client.chat.completions.create(messages=HI)
        assert reply.model.startswith("openai.")
        assert a.calls[-1].api_key == "sk-autodetected-123456"
        assert "sk-autodetected-123456" not in repr(client.mesh.config)


def test_mock_client_scripts_errors_and_records():
    client = mock_client("first", RateLimitError("slow down", retry_after=30), "third",
                         providers=("m1", "m2"))
    try:
        assert client.chat.completions.create(messages=HI).choices[0].message.content == "first"
        second = client.chat.completions.create(messages=HI)
        assert second.model == "m2.mock-chat"  # failed over past the injected 429
        assert [c.kind for c in client.mock.calls] == ["complete", "complete"]
        assert client.mock.calls[0].request.messages == HI
        assert len(client.mocks["m2"].calls) == 1
    finally:
        client.close()


def test_mock_client_latency_and_chaos():
    client = mock_client(latency=0.02, chaos_rate=1.0, providers=("only",))
    try:
        t0 = time.monotonic()
        with pytest.raises(AllProvidersExhaustedError) as info:
            client.chat.completions.create(messages=HI)
        assert time.monotonic() - t0 >= 0.02
        last = info.value.last_error
        assert isinstance(last, ProviderError) and last.status == 503
        assert "chaos: injected failure" in str(last)
        assert len(client.mock.calls) == 1  # one attempt: the only model, then exhausted
    finally:
        client.close()


def test_sync_call_from_the_mesh_loop_thread_fails_clearly():
    client = mock_client("x")
    errors: list[BaseException] = []

    async def on_loop() -> None:
        try:
            client.chat.completions.create(messages=HI)
        except RuntimeError as exc:
            errors.append(exc)

    try:
        client.mesh.run_sync(on_loop())
    finally:
        client.close()
    assert errors and "inside the mesh's own event loop" in str(errors[0])
    assert threading.active_count() >= 1


def test_max_completion_tokens_is_forwarded_as_given(upstreams):
    a, _ = upstreams
    with modelmesh_core.create(config=openai_config([("a", a)])) as client:
        client.chat.completions.create(model="chat", messages=HI, max_completion_tokens=50)
        sent = [c.body for c in a.calls if c.path.endswith("/chat/completions")][-1]
        assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent
        client.chat.completions.create(model="chat", messages=HI, max_tokens=40)
        sent = [c.body for c in a.calls if c.path.endswith("/chat/completions")][-1]
        assert sent["max_tokens"] == 40 and "max_completion_tokens" not in sent
