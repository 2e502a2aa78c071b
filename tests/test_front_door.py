"""The Anthropic-compatible front door: the official ``anthropic`` SDK against the proxy, with
fake upstreams speaking each vendor's own protocol behind it (OpenAI-compatible, Gemini,
Claude). Asserts what the SDK sees and the exact request each upstream received.

Needs the modelmesh-anthropic, modelmesh-gemini and modelmesh-openai packages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp import web
from modelmesh_anthropic.fake import Fail as AnthropicFail
from modelmesh_anthropic.fake import FakeAnthropic, tool_use
from modelmesh_anthropic.fake import Reply as AnthropicReply
from modelmesh_gemini.fake import FakeGemini
from modelmesh_gemini.fake import Reply as GeminiReply

from modelmesh_core import CompletionRequest
from modelmesh_core.config import ProxyConfig, ProxyLimitsConfig
from modelmesh_core.fakes import Fail, FakeUpstream, Reply, StreamError, tool_call
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.router import estimate_request
from modelmesh_core.server import SERVER_STATE, create_app
from modelmesh_core.server.anthropic_wire import (
    EventEncoder,
    anthropic_error,
    parse_messages_request,
)
from modelmesh_core.types import CompletionResponse, ToolCall
from modelmesh_core.wire import WireError

OPENAI_KEY = "sk-test-front-door-0000000000"
GEMINI_KEY = "AIzaSyTEST-front-door-00000000000000000"
CLAUDE_KEY = "sk-ant-test-front-door-000000000000"
KEY = "sk-mm-front-door-team-0000000000"
SCOPED = "sk-mm-front-door-scoped-000000000"
SLOW = "sk-mm-front-door-slow-00000000000"

OAI = "o.gpt-4o-mini"
GEM = "g.gemini-2.5-flash"
CLAUDE = "claude.claude-haiku-4-5"
HELLO: Any = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]},
}
WEATHER_FUNCTION = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
           "AAAABJRU5ErkJggg==")


class Vendors:
    """Three fake upstreams, one per protocol."""

    def __init__(self, oai: FakeUpstream, gemini: FakeGemini, claude: FakeAnthropic) -> None:
        self.oai, self.gemini, self.claude = oai, gemini, claude


def mesh_config(v: Vendors) -> dict[str, Any]:
    return {
        "providers": {
            "o": {"connector": "openai.llm.v1",
                  "config": {"base_url": v.oai.base_url, "api_key": OPENAI_KEY}},
            "g": {"connector": "google.gemini.v1",
                  "config": {"base_url": v.gemini.base_url, "api_key": GEMINI_KEY}},
            "claude": {"connector": "anthropic.claude.v1",
                       "config": {"base_url": v.claude.base_url, "api_key": CLAUDE_KEY}},
        },
        "models": {OAI: {}, GEM: {}, CLAUDE: {}},
        "pools": {"chat": {"models": [OAI, GEM],
                           "retry": {"initial_delay": "1ms", "max_delay": "5ms"}}},
        "proxy": {"auth": {"keys": [
            {"key": KEY, "name": "team"},
            {"key": SCOPED, "name": "scoped", "pools": ["chat"]},
            {"key": SLOW, "name": "slow", "rpm": 1},
        ]}},
    }


class Proxy:
    """A running proxy and the SDK clients made for it."""

    def __init__(self, url: str, app: web.Application) -> None:
        self.url = url
        self.server = app[SERVER_STATE]
        self.clients: list[anthropic.AsyncAnthropic] = []

    def client(self, api_key: str = KEY) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(base_url=self.url, api_key=api_key, max_retries=0)
        self.clients.append(client)
        return client

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None,
                   method: str = "POST") -> tuple[int, dict[str, str], bytes]:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        sent = {"x-api-key": KEY, "content-type": "application/json",
                "anthropic-version": "2023-06-01"}
        sent.update(headers or {})
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, data=data, headers=sent) as resp:
            return resp.status, dict(resp.headers), await resp.read()


@contextlib.asynccontextmanager
async def running(config: dict[str, Any], proxy: ProxyConfig | None = None
                  ) -> AsyncIterator[Proxy]:
    app = create_app(ModelMesh(config), proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    p = Proxy(f"http://{host}:{port}", app)
    try:
        yield p
    finally:
        for client in p.clients:
            await client.close()
        await runner.cleanup()


@pytest.fixture
async def vendors() -> AsyncIterator[Vendors]:
    async with (FakeUpstream(api_keys={OPENAI_KEY}) as oai,
                FakeGemini(api_keys={GEMINI_KEY}) as gemini,
                FakeAnthropic(api_keys={CLAUDE_KEY}) as claude):
        yield Vendors(oai, gemini, claude)


@pytest.fixture
async def proxy(vendors: Vendors) -> AsyncIterator[Proxy]:
    async with running(mesh_config(vendors)) as p:
        yield p


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each event of an SSE body, checking the framing."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith(
            "data: "), block
        events.append((lines[0][7:], orjson.loads(lines[1][6:])))
    return events


# --------------------------------------------------------------------------- answers


async def test_a_message_routed_to_an_openai_upstream(vendors, proxy):
    client = proxy.client()
    raw = await client.messages.with_raw_response.create(
        model=OAI, max_tokens=100, system="Be brief.", messages=HELLO, stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 5})
    message = await raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == OAI
    assert [(b.type, b.text) for b in message.content] == [  # type: ignore[union-attr]
        ("text", "Hello from the fake upstream!")]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    # The fake counts words: 3 in the prompt, 5 in the answer.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 5)
    assert message.usage.cache_read_input_tokens == 0
    assert raw.headers["x-modelmesh-provider"] == "o"
    assert raw.headers["x-modelmesh-model"] == OAI
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert vendors.oai.calls[-1].body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello"}],
        "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop": ["END"],
        "user": "user-7",
    }


async def test_images_and_blocks_reach_the_upstream_as_content_parts(vendors, proxy):
    await proxy.client().messages.create(model=OAI, max_tokens=50, system=[
        {"type": "text", "text": "You describe images."},
        {"type": "text", "text": "Stay short.", "cache_control": {"type": "ephemeral"}},
    ], messages=[{"role": "user", "content": [
        {"type": "text", "text": "What are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}])
    assert vendors.oai.calls[-1].body["messages"] == [
        {"role": "system", "content": [
            {"type": "text", "text": "You describe images."},
            {"type": "text", "text": "Stay short.", "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "What are these?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]},
    ]


async def test_routed_to_claude_the_request_round_trips_to_the_messages_api(vendors, proxy):
    vendors.claude.script(AnthropicReply("Bonjour.", usage={
        "input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20}))
    message = await proxy.client().messages.create(
        model=CLAUDE, max_tokens=256, system="Answer in French.", messages=HELLO,
        tools=[WEATHER_TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        stop_sequences=["###"], metadata={"user_id": "user-7"}, extra_body={"top_k": 3})
    assert vendors.claude.calls[-1].body == {
        "model": "claude-haiku-4-5", "max_tokens": 256, "system": "Answer in French.",
        "messages": [{"role": "user", "content": "Hello"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["###"], "top_k": 3, "metadata": {"user_id": "user-7"},
    }
    assert message.content[0].text == "Bonjour."  # type: ignore[union-attr]
    # Cache reads and writes keep their own counters, as Anthropic reports them.
    assert message.usage.input_tokens == 12
    assert message.usage.cache_read_input_tokens == 100
    assert message.usage.cache_creation_input_tokens == 20
    assert message.usage.output_tokens == 3


async def test_a_trailing_assistant_message_is_a_prefill(vendors, proxy):
    vendors.claude.script(AnthropicReply(" 4."))
    message = await proxy.client().messages.create(model=CLAUDE, max_tokens=20, messages=[
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "The answer is"}])
    assert vendors.claude.calls[-1].body["messages"][-1] == {
        "role": "assistant", "content": "The answer is"}
    assert message.content[0].text == " 4."  # type: ignore[union-attr]


# --------------------------------------------------------------------------- streaming


async def test_stream_helper_gives_the_text_and_the_final_message(vendors, proxy):
    async with proxy.client().messages.stream(model=OAI, max_tokens=100,
                                              messages=HELLO) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "Hello from the fake upstream!" and len(pieces) == 5
    assert final.content[0].text == "Hello from the fake upstream!"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.model == OAI
    # The fake counts words: 1 in the prompt, 5 in the answer.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (1, 5)
    body = vendors.oai.calls[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_raw_event_sequence_follows_anthropic_framing(vendors, proxy):
    status, headers, raw = await proxy.post("/v1/messages", {
        "model": OAI, "max_tokens": 100, "messages": HELLO, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["x-modelmesh-provider"] == "o"
    events = sse_events(raw)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names == (["message_start", "ping", "content_block_start"]
                     + ["content_block_delta"] * 5
                     + ["content_block_stop", "message_delta", "message_stop"])
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == []
    assert start["stop_reason"] is None and start["model"] == OAI
    assert events[2][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}
    assert events[3][1] == {"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": "Hello"}}
    assert events[-2][1] == {"type": "message_delta",
                             "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"input_tokens": 1, "cache_creation_input_tokens": 0,
                                       "cache_read_input_tokens": 0, "output_tokens": 5}}


async def test_streamed_text_and_parallel_tool_calls_become_consecutive_blocks(vendors, proxy):
    vendors.oai.script(Reply("Checking both.", tool_calls=[
        tool_call("get_weather", {"city": "Paris"}, id="call_a"),
        tool_call("get_weather", {"city": "Rome"}, id="call_b")]))
    status, _, raw = await proxy.post("/v1/messages", {
        "model": OAI, "max_tokens": 100, "messages": HELLO, "tools": [WEATHER_TOOL],
        "stream": True})
    assert status == 200
    events = sse_events(raw)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts == [{"type": "text", "text": ""},
                      {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
                      {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}}]
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1, 2]
    for index, city in ((1, "Paris"), (2, "Rome")):
        partial = "".join(d["delta"]["partial_json"] for n, d in events
                          if n == "content_block_delta" and d["index"] == index)
        assert orjson.loads(partial) == {"city": city}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_a_stream_that_breaks_after_it_started_ends_with_an_error_event(vendors, proxy):
    vendors.oai.script(StreamError(after_words=2))
    client = proxy.client()
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with client.messages.stream(model=OAI, max_tokens=100, messages=HELLO) as stream:
            async for text in stream.text_stream:
                seen.append(text)
    assert "".join(seen) == "Hello from"
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "server had an error" in body["error"]["message"]


# --------------------------------------------------------------------------- tools


def _weather_turns(first: Any) -> list[Any]:
    tool_id = next(b.id for b in first.content if b.type == "tool_use")
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                          for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": "18°C and sunny"}]},
    ]


async def _converse(client: anthropic.AsyncAnthropic, model: str, stream: bool) -> tuple[Any, Any]:
    ask: Any = {"model": model, "max_tokens": 200, "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    if stream:
        async with client.messages.stream(**ask) as s:
            first = await s.get_final_message()
        ask.pop("tool_choice")
        async with client.messages.stream(**{**ask, "messages": _weather_turns(first)}) as s:
            final = await s.get_final_message()
    else:
        first = await client.messages.create(**ask)
        ask.pop("tool_choice")
        final = await client.messages.create(**{**ask, "messages": _weather_turns(first)})
    return first, final


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_tool_conversation_through_an_openai_upstream(vendors, proxy, stream):
    vendors.oai.script(
        Reply("", tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="call_w1")]),
        Reply("It is 18°C and sunny in Paris."))
    first, final = await _converse(proxy.client(), OAI, stream)
    assert first.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in first.content] == [
        ("tool_use", "call_w1", "get_weather", {"city": "Paris"})]
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == "It is 18°C and sunny in Paris."
    asked, answered = (c.body for c in vendors.oai.calls[-2:])
    assert asked["tools"] == [WEATHER_FUNCTION] and asked["tool_choice"] == "required"
    assert answered["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_w1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_w1", "content": "18°C and sunny"},
    ]
    assert "tool_choice" not in answered


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_tool_conversation_through_gemini(vendors, proxy, stream):
    vendors.gemini.script(
        GeminiReply("", tool_calls=[tool_call("get_weather", {"city": "Paris"}, id="fc_1")]),
        GeminiReply("Sunny, 18°C."))
    first, final = await _converse(proxy.client(), GEM, stream)
    assert [(b.type, b.id, b.name, b.input) for b in first.content] == [
        ("tool_use", "fc_1", "get_weather", {"city": "Paris"})]
    assert first.stop_reason == "tool_use" and first.model == GEM
    assert final.content[0].text == "Sunny, 18°C." and final.stop_reason == "end_turn"
    asked, answered = (c.body for c in vendors.gemini.calls[-2:])
    declaration = {"name": "get_weather", "description": "The current weather in a city.",
                   "parameters": {"type": "object", "required": ["city"],
                                  "properties": {"city": {"type": "string"}}}}
    assert asked["tools"] == [{"functionDeclarations": [declaration]}]
    assert asked["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert answered["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {
            "name": "get_weather", "args": {"city": "Paris"}, "id": "fc_1"}}]},
        {"role": "user", "parts": [{"functionResponse": {
            "name": "get_weather", "response": {"output": "18°C and sunny"}, "id": "fc_1"}}]},
    ]


async def test_tool_conversation_through_claude_keeps_native_blocks(vendors, proxy):
    vendors.claude.script(
        AnthropicReply("Let me check.", tool_calls=[
            tool_use("get_weather", {"city": "Paris"}, id="toolu_01A")]),
        AnthropicReply("Sunny."))
    first, final = await _converse(proxy.client(), CLAUDE, stream=True)
    assert [b.type for b in first.content] == ["text", "tool_use"]
    assert first.content[1].input == {"city": "Paris"}
    assert final.content[0].text == "Sunny."
    assert vendors.claude.calls[-1].body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18°C and sunny"}]},
    ]


# --------------------------------------------------------------------------- failover


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_failover_is_invisible_to_the_sdk(vendors, proxy, stream):
    vendors.oai.default = Fail(500)
    vendors.gemini.default = GeminiReply("Gemini took over.")
    client = proxy.client()
    if stream:
        async with client.messages.stream(model="chat", max_tokens=50, messages=HELLO) as s:
            message = await s.get_final_message()
    else:
        raw = await client.messages.with_raw_response.create(model="chat", max_tokens=50,
                                                             messages=HELLO)
        message = await raw.parse()
        assert raw.headers["x-modelmesh-provider"] == "g"
        assert raw.headers["x-modelmesh-pool"] == "chat"
        assert int(raw.headers["x-modelmesh-attempts"]) == len(vendors.oai.calls) + 1
    assert message.content[0].text == "Gemini took over."  # type: ignore[union-attr]
    assert message.model == GEM and message.stop_reason == "end_turn"
    assert vendors.oai.calls and len(vendors.gemini.calls) == 1


# --------------------------------------------------------------------------- errors


async def test_missing_max_tokens_is_a_400_invalid_request_error(proxy):
    status, headers, raw = await proxy.post("/v1/messages", {"model": OAI, "messages": HELLO})
    assert status == 400
    assert orjson.loads(raw) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        "request_id": headers["request-id"]}


async def test_unknown_model_is_a_404_not_found_error(vendors, proxy):
    with pytest.raises(anthropic.NotFoundError) as info:
        await proxy.client().messages.create(model="claude-3-opus-nonexistent", max_tokens=10,
                                             messages=HELLO)
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert "claude-3-opus-nonexistent" in body["error"]["message"]
    assert not vendors.oai.calls and not vendors.gemini.calls and not vendors.claude.calls


async def test_a_bad_key_is_a_401_authentication_error(proxy):
    with pytest.raises(anthropic.AuthenticationError) as info:
        await proxy.client(api_key="sk-wrong").messages.create(model=OAI, max_tokens=10,
                                                               messages=HELLO)
    assert info.value.status_code == 401
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    status, _, raw = await proxy.post("/v1/messages", {"model": OAI, "max_tokens": 10,
                                                       "messages": HELLO},
                                      headers={"x-api-key": ""})
    assert status == 401 and orjson.loads(raw)["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
async def test_the_key_is_read_from_x_api_key_or_a_bearer_token(vendors, proxy, header):
    sent = {"x-api-key": KEY} if header == "x-api-key" else {"authorization": f"Bearer {KEY}"}
    if header == "authorization":
        sent["x-api-key"] = ""
    status, _, raw = await proxy.post("/v1/messages", {"model": OAI, "max_tokens": 10,
                                                       "messages": HELLO}, headers=sent)
    assert status == 200 and orjson.loads(raw)["type"] == "message"


async def test_key_scoping_and_rate_limits_apply(vendors, proxy):
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await proxy.client(SCOPED).messages.create(model=OAI, max_tokens=10, messages=HELLO)
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert "through its pool" in denied.value.body["error"]["message"]  # type: ignore[index]
    ok = await proxy.client(SCOPED).messages.create(model="chat", max_tokens=10, messages=HELLO)
    assert ok.type == "message"
    slow = proxy.client(SLOW)
    await slow.messages.create(model=OAI, max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as limited:
        await slow.messages.create(model=OAI, max_tokens=10, messages=HELLO)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert limited.value.response.headers["retry-after"]


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_a_key_pays_for_what_it_used_and_stops_at_its_budget(vendors, stream):
    config = mesh_config(vendors)
    config["models"][OAI] = {"pricing": {"input": 1_000_000, "output": 1_000_000}}  # $1/token
    config["proxy"]["auth"]["keys"] = [{"key": KEY, "name": "team", "budget": {"daily": 5.5}}]
    async with running(config) as p:
        client = p.client()
        if stream:
            async with client.messages.stream(model=OAI, max_tokens=10, messages=HELLO) as s:
                await s.get_final_message()
        else:
            await client.messages.create(model=OAI, max_tokens=10, messages=HELLO)
        spent = p.server.key_usage(p.server.keys[KEY])["day_spend"]
        assert spent == pytest.approx(6.0)  # 1 prompt token + 5 answer tokens
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(model=OAI, max_tokens=10, messages=HELLO)
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "key:team daily budget" in info.value.body["error"]["message"]  # type: ignore[index]
    assert info.value.response.headers["x-should-retry"] == "false"


async def test_an_overloaded_upstream_is_a_529_overloaded_error(vendors, proxy):
    vendors.claude.default = AnthropicFail(529)
    with pytest.raises(anthropic.OverloadedError) as info:
        await proxy.client().messages.create(model=CLAUDE, max_tokens=10, messages=HELLO)
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_protocol_errors_are_anthropic_shaped(vendors, proxy):
    status, _, raw = await proxy.post("/v1/messages", b"{not json")
    assert status == 400 and orjson.loads(raw)["error"]["type"] == "invalid_request_error"
    status, _, raw = await proxy.post("/v1/messages", b"", method="GET")
    assert status == 405
    assert orjson.loads(raw)["error"] == {
        "type": "invalid_request_error",
        "message": "Method GET is not allowed on /v1/messages."}
    status, _, raw = await proxy.post("/v1/messages", {
        "model": OAI, "max_tokens": 10, "messages": HELLO,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    assert status == 400 and "server tool" in orjson.loads(raw)["error"]["message"]
    assert not vendors.oai.calls
    # The OpenAI front door keeps its own shape.
    status, _, raw = await proxy.post("/v1/chat/completions", {"model": OAI})
    assert status == 400 and set(orjson.loads(raw)) == {"error"}


async def test_a_body_over_the_limit_is_a_413_request_too_large(vendors):
    limits = ProxyConfig(limits=ProxyLimitsConfig(max_body_size=2048))  # type: ignore[arg-type]
    async with running(mesh_config(vendors), limits) as p:
        status, _, raw = await p.post("/v1/messages", {
            "model": OAI, "max_tokens": 10,
            "messages": [{"role": "user", "content": "x" * 4096}]})
    assert status == 413
    assert orjson.loads(raw)["error"]["type"] == "request_too_large"


# --------------------------------------------------------------------------- count_tokens


async def test_count_tokens_estimates_like_the_router(proxy):
    count = await proxy.client().messages.count_tokens(
        model="chat", system="Be brief.", tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    # The router's estimate: (9 + 17 characters) / 4 + 4 per message, plus the tool
    # definitions at 4 characters a token.
    assert count.input_tokens == 26 // 4 + 2 * 4 + len(orjson.dumps([WEATHER_FUNCTION])) // 4
    with pytest.raises(anthropic.NotFoundError):
        await proxy.client().messages.count_tokens(model="nope", messages=HELLO)


# --------------------------------------------------------------------------- translation


def test_tool_results_come_first_and_their_images_follow_in_the_user_turn():
    _, request = parse_messages_request({
        "model": "chat", "max_tokens": 10, "messages": [
            {"role": "user", "content": "Look."},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "tool_use", "id": "t1", "name": "shot", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "read", "input": {"path": "a"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Both done."},
                {"type": "tool_result", "tool_use_id": "t1", "content": [
                    {"type": "text", "text": "screenshot:"},
                    {"type": "image", "source": {"type": "url",
                                                 "url": "https://x.test/s.png"}}]},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": True,
                 "content": "no such file"}]},
        ]})
    assert request.messages[1:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}},
            {"id": "t2", "type": "function",
             "function": {"name": "read", "arguments": '{"path":"a"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "screenshot:"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no such file"},
        {"role": "user", "content": [
            {"type": "text", "text": "Both done."},
            {"type": "image_url", "image_url": {"url": "https://x.test/s.png"}}]},
    ]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}},
      "parallel_tool_calls": False}),
])
def test_tool_choice(choice, expected):
    _, request = parse_messages_request({"model": "m", "max_tokens": 5, "messages": HELLO,
                                         "tools": [WEATHER_TOOL], "tool_choice": choice})
    assert request.extra == expected and request.tools == [WEATHER_FUNCTION]


@pytest.mark.parametrize(("body", "message"), [
    ({"max_tokens": 5, "messages": HELLO}, "model: Field required"),
    ({"model": "m", "max_tokens": 0, "messages": HELLO},
     "max_tokens: Input should be greater than or equal to 1"),
    ({"model": "m", "max_tokens": 5, "messages": []},
     "messages: at least one message is required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages.0.role: Input should be 'user' or 'assistant'"),
    ({"model": "m", "max_tokens": 5, "messages": HELLO, "temperature": 1.5},
     "temperature: Input should be between 0 and 1"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages.0.content.0.source.type: Input should be 'base64' or 'url'"),
    ({"model": "m", "max_tokens": 5, "messages": HELLO, "tools": [{"name": "t"}]},
     "tools.0.input_schema: Field required"),
])
def test_invalid_requests_name_the_field(body, message):
    with pytest.raises(WireError) as info:
        parse_messages_request(body)
    assert info.value.message == message and info.value.status == 400


def test_encoder_opens_a_block_per_tool_call_given_whole():
    first = CompletionResponse(content="", model="g.x", provider="g")
    encoder = EventEncoder(first, input_estimate=7)
    assert b'"input_tokens":7' in encoder.opening()
    whole = CompletionResponse(content="", model="g.x", provider="g", tool_calls=(
        ToolCall(id="a", name="f", arguments='{"x":1}'),
        ToolCall(id="b", name="f", arguments='{"x":2}')), finish_reason="tool_calls")
    events = sse_events(encoder.frames(first) + encoder.frames(whole) + encoder.closing())
    assert [(n, d.get("index")) for n, d in events] == [
        ("content_block_start", 0), ("content_block_delta", 0),
        ("content_block_stop", 0), ("content_block_start", 1), ("content_block_delta", 1),
        ("content_block_stop", 1), ("message_delta", None), ("message_stop", None)]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_errors_map_to_anthropic_types():
    for status, kind in ((400, "invalid_request_error"), (401, "authentication_error"),
                         (403, "permission_error"), (404, "not_found_error"),
                         (408, "invalid_request_error"), (413, "request_too_large"),
                         (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
                         (503, "overloaded_error"), (504, "timeout_error")):
        code, body, _ = anthropic_error(WireError("x", status=status))
        assert (code, body["error"]["type"]) == (529 if status == 503 else status, kind)


def test_count_tokens_estimate_is_the_routers():
    _, request = parse_messages_request({"model": "m", "max_tokens": 5, "messages": HELLO})
    assert estimate_request(request)[0] == estimate_request(
        CompletionRequest(messages=[{"role": "user", "content": "Hello"}]))[0]


async def test_structured_output_becomes_a_json_schema_response_format(vendors, proxy):
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    vendors.oai.script(Reply('{"city":"Paris"}'))
    message = await proxy.client().messages.create(
        model=OAI, max_tokens=50, messages=HELLO,
        output_config={"format": {"type": "json_schema", "schema": schema}})
    assert message.content[0].text == '{"city":"Paris"}'  # type: ignore[union-attr]
    assert vendors.oai.calls[-1].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_the_stop_sequence_claude_matched_reaches_the_client(vendors, proxy, stream):
    vendors.claude.script(AnthropicReply("1, 2, 3", stop_reason="stop_sequence",
                                         stop_sequence="4"))
    ask: Any = {"model": CLAUDE, "max_tokens": 50, "messages": HELLO, "stop_sequences": ["4"]}
    if stream:
        async with proxy.client().messages.stream(**ask) as s:
            message = await s.get_final_message()
    else:
        message = await proxy.client().messages.create(**ask)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "4")
    # Other upstreams do not say which sequence stopped them: a natural end_turn.
    message = await proxy.client().messages.create(**{**ask, "model": OAI})
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
