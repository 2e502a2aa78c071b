"""Cross-vendor failover in one request, over the vendors' own protocols: an Anthropic model
answering ``overloaded_error`` and a Gemini model that answers give the caller one OpenAI-shaped
answer (library and proxy, streaming and not); a stream broken on an OpenAI-compatible upstream
is continued on Claude through its native assistant prefill.

Needs the modelmesh-anthropic, modelmesh-gemini and modelmesh-openai packages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web
from modelmesh_anthropic.fake import Fail as AnthropicFail
from modelmesh_anthropic.fake import FakeAnthropic
from modelmesh_anthropic.fake import Reply as AnthropicReply
from modelmesh_anthropic.fake import StreamError as AnthropicStreamError
from modelmesh_gemini.fake import FakeGemini
from modelmesh_gemini.fake import Reply as GeminiReply

from modelmesh_core import CompletionRequest
from modelmesh_core.fakes import CutStream, FakeUpstream, Reply
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import create_app

ANTHROPIC_KEY = "sk-ant-test-cross-vendor-0000000000"
GEMINI_KEY = "AIzaSyTEST-cross-vendor-000000000000000"
OPENAI_KEY = "sk-test-cross-vendor-0000"
HI: Any = [{"role": "user", "content": "hello there"}]
GEMINI_TEXT = "Gemini answers when Claude is overloaded."


def config(claude: FakeAnthropic, gemini: FakeGemini) -> dict[str, Any]:
    return {
        "providers": {
            "claude": {"connector": "anthropic.claude.v1",
                       "config": {"base_url": claude.base_url, "api_key": ANTHROPIC_KEY}},
            "gem": {"connector": "google.gemini.v1",
                    "config": {"base_url": gemini.base_url, "api_key": GEMINI_KEY}},
        },
        "models": {"claude.claude-haiku-4-5": {}, "gem.gemini-2.5-flash": {}},
        "pools": {"chat": {
            "capability": "chat-completion",
            "strategy": {"connector": "priority-selection",
                         "config": {"provider_priority": ["claude", "gem"]}},
        }},
    }


@pytest.fixture
async def vendors() -> AsyncIterator[tuple[FakeAnthropic, FakeGemini]]:
    async with (FakeAnthropic(api_keys={ANTHROPIC_KEY}) as claude,
                FakeGemini(api_keys={GEMINI_KEY}) as gemini):
        gemini.default = GeminiReply(GEMINI_TEXT)
        yield claude, gemini


@contextlib.asynccontextmanager
async def proxy(cfg: dict[str, Any]) -> AsyncIterator[tuple[openai.AsyncOpenAI, ModelMesh]]:
    mesh = ModelMesh(cfg)
    runner = web.AppRunner(create_app(mesh))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = openai.AsyncOpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused",
                                max_retries=0)
    try:
        yield client, mesh
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.parametrize("overload", ["http-529", "in-stream"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_claude_overloaded_gemini_answers_in_the_library(make_mesh, vendors, stream,
                                                               overload):
    claude, gemini = vendors
    claude.default = (AnthropicFail(529) if overload == "http-529" or not stream
                      else AnthropicStreamError(after_events=1))
    mesh = await make_mesh(config(claude, gemini))
    request = CompletionRequest(messages=HI)
    if stream:
        chunks = [c async for c in mesh.router.stream("chat", request)]
        text = "".join(c.content for c in chunks)
        assert {c.model for c in chunks} == {"gem.gemini-2.5-flash"}
        assert chunks[0].metadata["attempts"] == 2
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    else:
        resp = await mesh.router.complete("chat", request)
        text = resp.content
        assert resp.model == "gem.gemini-2.5-flash" and resp.metadata["attempts"] == 2
    assert text == GEMINI_TEXT
    assert len(claude.calls) == 1 and claude.calls[0].path == "/v1/messages"
    assert mesh.state.model("claude.claude-haiku-4-5").failures == 1


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_claude_overloaded_gemini_answers_through_the_proxy(vendors, stream):
    claude, gemini = vendors
    claude.default = AnthropicFail(529)
    async with proxy(config(claude, gemini)) as (client, _):
        if stream:
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=HI, stream=True)
            assert raw.headers["x-modelmesh-provider"] == "gem"
            chunks = [c async for c in raw.parse()]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert chunks[0].object == "chat.completion.chunk"
        else:
            resp = await client.chat.completions.create(model="chat", messages=HI)
            text = resp.choices[0].message.content or ""
            assert resp.object == "chat.completion"
            assert resp.model == "gem.gemini-2.5-flash"
    assert text == GEMINI_TEXT


async def test_a_broken_stream_is_continued_on_claude_by_native_prefill(make_mesh):
    answer = "Claude continues the words another model began to stream."
    words = answer.split()
    async with (FakeUpstream(default=Reply(answer)) as oai,
                FakeAnthropic(api_keys={ANTHROPIC_KEY}) as claude):
        oai.script(CutStream(after_words=4))
        rest = answer[len(" ".join(words[:4])):]
        claude.default = AnthropicReply(rest)
        mesh = await make_mesh({
            "providers": {
                "o": {"connector": "openai.llm.v1",
                      "config": {"base_url": oai.base_url, "api_key": OPENAI_KEY}},
                "claude": {"connector": "anthropic.claude.v1",
                           "config": {"base_url": claude.base_url, "api_key": ANTHROPIC_KEY}},
            },
            "models": {"o.gpt-4o-mini": {}, "claude.claude-haiku-4-5": {}},
            "pools": {"chat": {"models": ["o.gpt-4o-mini", "claude.claude-haiku-4-5"]}},
        })
        assert "assistant_prefill" in mesh.models["claude.claude-haiku-4-5"].features
        chunks = [c async for c in mesh.router.stream("chat", CompletionRequest(messages=HI))]
    assert "".join(c.content for c in chunks) == answer
    sent = claude.calls[-1].body
    assert sent["messages"][-1] == {"role": "assistant", "content": " ".join(words[:4])}
    assert sent["stream"] is True
    segments = chunks[-1].metadata["segments"]
    assert [(s["model"], s["mode"]) for s in segments] == [
        ("o.gpt-4o-mini", "original"), ("claude.claude-haiku-4-5", "prefill")]
