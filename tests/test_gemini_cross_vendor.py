"""Cross-vendor failover in one request: a Gemini model (native protocol) that fails and an
OpenAI model that answers, and the other way round, through the library and the proxy.
Needs both plugin packages (modelmesh-gemini, modelmesh-openai) installed."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from aiohttp import web
from modelmesh_gemini.fake import FakeGemini, GeminiError, Reply, StreamError

from modelmesh_core import CompletionRequest
from modelmesh_core.fakes import Fail, FakeUpstream
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import create_app

GEMINI_KEY = "AIzaSyTEST-cross-vendor-000000000000000"
OPENAI_KEY = "sk-test-0000000000"
HI: Any = [{"role": "user", "content": "hello"}]


def config(gemini: FakeGemini, oai: FakeUpstream, first: str) -> dict[str, Any]:
    return {
        "providers": {
            "g": {"connector": "google.gemini.v1",
                  "config": {"base_url": gemini.base_url, "api_key": GEMINI_KEY}},
            "o": {"connector": "openai.llm.v1",
                  "config": {"base_url": oai.base_url, "api_key": OPENAI_KEY}},
        },
        "models": {"g.gemini-2.5-flash": {}, "o.gpt-4o-mini": {}},
        "pools": {"chat": {
            "capability": "chat-completion",
            "strategy": {"connector": "priority-selection",
                         "config": {"provider_priority": [first, "g" if first == "o" else "o"]}},
        }},
    }


@pytest.fixture
async def upstreams() -> Any:
    async with FakeGemini(api_keys={GEMINI_KEY}) as gemini, FakeUpstream(
            api_keys={OPENAI_KEY}) as oai:
        yield gemini, oai


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_gemini_overloaded_openai_answers(make_mesh, upstreams, stream) -> None:
    gemini, oai = upstreams
    gemini.default = GeminiError.overloaded()
    mesh = await make_mesh(config(gemini, oai, first="g"))
    request = CompletionRequest(messages=HI)
    if stream:
        chunks = [c async for c in mesh.router.stream("chat", request)]
        text, model = "".join(c.content for c in chunks), chunks[0].model
        assert chunks[0].metadata["attempts"] == 2
    else:
        resp = await mesh.router.complete("chat", request)
        text, model = resp.content, resp.model
        assert resp.metadata["attempts"] == 2
    assert (text, model) == ("Hello from the fake upstream!", "o.gpt-4o-mini")
    assert gemini.calls[0].method_name == ("streamGenerateContent" if stream
                                           else "generateContent")


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_openai_fails_gemini_answers(make_mesh, upstreams, stream) -> None:
    gemini, oai = upstreams
    oai.default = Fail(503)
    gemini.script(Reply("Gemini took over."))
    mesh = await make_mesh(config(gemini, oai, first="o"))
    request = CompletionRequest(messages=HI)
    if stream:
        chunks = [c async for c in mesh.router.stream("chat", request)]
        text, model = "".join(c.content for c in chunks), chunks[0].model
        assert chunks[-1].finish_reason == "stop"
    else:
        resp = await mesh.router.complete("chat", request)
        text, model = resp.content, resp.model
    assert (text, model) == ("Gemini took over.", "g.gemini-2.5-flash")


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
async def test_through_the_proxy_with_the_openai_sdk(upstreams, stream) -> None:
    gemini, oai = upstreams
    gemini.default = StreamError(after_chunks=0) if stream else GeminiError.overloaded()
    mesh = ModelMesh(config(gemini, oai, first="g"))
    runner = web.AppRunner(create_app(mesh))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = openai.AsyncOpenAI(base_url=f"http://{host}:{port}/v1", api_key="unused",
                                max_retries=0)
    try:
        if stream:
            chunks: Any = await client.chat.completions.create(
                model="chat", messages=HI, stream=True)
            parts = [c async for c in chunks]
            text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            model = parts[0].model
        else:
            out: Any = await client.chat.completions.create(model="chat", messages=HI)
            text, model = out.choices[0].message.content, out.model
    finally:
        await client.close()
        await runner.cleanup()
    assert (text, model) == ("Hello from the fake upstream!", "o.gpt-4o-mini")
    assert len(gemini.calls) >= 1
