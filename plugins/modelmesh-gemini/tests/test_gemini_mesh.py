"""google.gemini.v1 inside a ModelMesh: discovery, catalogue, tool-calling round trips (library
and proxy with the official openai SDK), safety blocks, failover between Gemini providers.
(Failover across vendors, which needs modelmesh-openai too, is in the repository's
tests/test_gemini_cross_vendor.py.)"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web
from gemini_testlib import KEY, gemini_config

from modelmesh_core import AllProvidersExhaustedError, CompletionRequest, ContentFilterError
from modelmesh_core.errors import ConfigError
from modelmesh_core.fakes import Fail
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import create_app
from modelmesh_gemini.fake import (
    DOC_FUNCTION_CALL,
    DOC_GENERATE_CONTENT,
    CandidateBlocked,
    Canned,
    GeminiError,
    PromptBlocked,
    Reply,
    StreamError,
    tool_call,
)

QUESTION = "Which theaters in Mountain View show Barbie movie?"
THEATERS_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "find_theaters",
        "description": "find theaters based on location and optionally movie title",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "movie": {"type": "string"}},
            "required": ["location"],
        },
    },
}
RESULT = '{"movie": "Barbie", "theaters": [{"name": "AMC Mountain View 16"}, ' \
         '{"name": "Regal Edwards 14"}]}'


def req(*messages: dict[str, Any], **kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=list(messages) or [{"role": "user", "content": "hi"}], **kw)


def state_of(mesh: ModelMesh, model: str) -> Any:
    return mesh.state.model(model)


async def test_plugin_is_discovered_with_its_catalogue(make_mesh, gemini_upstream) -> None:
    upstream = await gemini_upstream()
    config = gemini_config([("g", upstream)])
    del config["models"]  # the catalogue fills the pool
    mesh = await make_mesh(config)
    spec = mesh.registry.providers["google.gemini.v1"]
    assert spec.plugin == "gemini"
    assert spec.env_vars == ("GOOGLE_API_KEY", "GEMINI_API_KEY")
    assert spec.auth == "header:x-goog-api-key"
    models = {m.id: m for m in mesh.router.get_pool("chat").models}
    assert set(models) == {"g.gemini-2.5-pro", "g.gemini-2.5-flash", "g.gemini-2.5-flash-lite",
                           "g.gemini-2.0-flash", "g.gemini-2.0-flash-lite"}
    flash = models["g.gemini-2.5-flash"]
    assert flash.context_window == 1_048_576
    assert flash.max_output_tokens == 65_536
    assert {"tool_calling", "vision", "json_mode", "structured_output", "reasoning",
            "system_prompt"} <= flash.features
    assert "assistant_prefill" not in flash.features
    assert flash.pricing.cached_input is not None
    assert flash.pricing.cached_input < flash.pricing.input


async def test_cost_bills_cached_and_thinking_tokens(make_mesh, gemini_upstream) -> None:
    upstream = await gemini_upstream()
    upstream.script(Reply("ok", usage={"promptTokenCount": 1_000_000,
                                       "cachedContentTokenCount": 400_000,
                                       "candidatesTokenCount": 100_000,
                                       "thoughtsTokenCount": 100_000}))
    mesh = await make_mesh(gemini_config([("g", upstream)]))
    await mesh.router.complete("chat", req())
    # 600k fresh at $0.30 + 400k cached at $0.03 + 200k output (thinking included) at $2.50
    assert state_of(mesh, "g.gemini-2.5-flash").cost == pytest.approx(0.18 + 0.012 + 0.5)


async def test_auto_detected_from_gemini_api_key(make_mesh, monkeypatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    mesh = await make_mesh({}, env={"GEMINI_API_KEY": KEY})
    provider = mesh.providers["google"]
    assert provider.connector == "google.gemini.v1"
    assert provider.adapter._headers["x-goog-api-key"] == KEY
    assert KEY not in repr(provider.adapter)


async def test_unknown_config_key_is_reported_with_its_path(make_mesh, gemini_upstream) -> None:
    upstream = await gemini_upstream()
    config = gemini_config([("g", upstream)])
    config["providers"]["g"]["config"]["safety_setting"] = {}
    with pytest.raises(ConfigError) as info:
        await make_mesh(config)
    assert "providers.g.config" in str(info.value)
    assert "safety_setting" in str(info.value)


async def test_tool_calling_round_trip_through_the_router(make_mesh, gemini_upstream) -> None:
    upstream = await gemini_upstream()
    upstream.script(Canned(body=DOC_FUNCTION_CALL), Canned(body=DOC_GENERATE_CONTENT))
    mesh = await make_mesh(gemini_config([("g", upstream)]))
    first = await mesh.router.complete(
        "chat", req({"role": "user", "content": QUESTION}, tools=[THEATERS_TOOL]))
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    messages: list[Any] = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": RESULT},
    ]
    final = await mesh.router.complete("chat", req(*messages, tools=[THEATERS_TOOL]))
    assert final.content.startswith("OK. I found two theaters in Mountain View")
    assert final.finish_reason == "stop"
    sent = upstream.calls[-1].body
    assert sent["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {
            "name": "find_theaters",
            "args": {"movie": "Barbie", "location": "Mountain View, CA"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "find_theaters", "response": {
            "movie": "Barbie",
            "theaters": [{"name": "AMC Mountain View 16"}, {"name": "Regal Edwards 14"}]}}}]},
    ]
    assert sent["tools"][0]["functionDeclarations"][0]["name"] == "find_theaters"


@contextlib.asynccontextmanager
async def running_proxy(config: dict[str, Any]) -> AsyncIterator[str]:
    mesh = ModelMesh(config)
    runner = web.AppRunner(create_app(mesh))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True], ids=["sync", "stream"])
async def test_tool_calling_round_trip_through_the_proxy_with_openai_sdk(
    gemini_upstream, stream
) -> None:
    upstream = await gemini_upstream()
    upstream.script(
        Reply("", tool_calls=[tool_call("find_theaters", {"location": "Mountain View, CA",
                                                          "movie": "Barbie"}, id="fc_42")]),
        Reply("Barbie is showing at AMC Mountain View 16 and Regal Edwards 14."),
    )
    async with running_proxy(gemini_config([("g", upstream)])) as base_url:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
        messages: list[Any] = [{"role": "user", "content": QUESTION}]
        if stream:
            calls: dict[int, dict[str, str]] = {}
            finish = None
            chunks: Any = await client.chat.completions.create(
                model="chat", messages=messages, tools=[THEATERS_TOOL], stream=True)
            async for chunk in chunks:
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    for delta in choice.delta.tool_calls or ():
                        entry = calls.setdefault(delta.index, {"id": "", "name": "", "args": ""})
                        entry["id"] += delta.id or ""
                        entry["name"] += (delta.function.name or "") if delta.function else ""
                        entry["args"] += (delta.function.arguments or "") if delta.function else ""
            assert finish == "tool_calls"
            assert calls == {0: {"id": "fc_42", "name": "find_theaters",
                                 "args": '{"location":"Mountain View, CA","movie":"Barbie"}'}}
            call_id, name, args = calls[0]["id"], calls[0]["name"], calls[0]["args"]
        else:
            out: Any = await client.chat.completions.create(
                model="chat", messages=messages, tools=[THEATERS_TOOL])
            assert out.choices[0].finish_reason == "tool_calls"
            tc = out.choices[0].message.tool_calls[0]
            call_id, name, args = tc.id, tc.function.name, tc.function.arguments
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": args}}]},
            {"role": "tool", "tool_call_id": call_id, "content": RESULT},
        ]
        final = await client.chat.completions.create(
            model="chat", messages=messages, tools=[THEATERS_TOOL])
        await client.close()
    assert final.choices[0].message.content == (
        "Barbie is showing at AMC Mountain View 16 and Regal Edwards 14.")
    assert final.model == "g.gemini-2.5-flash"
    parts = upstream.calls[-1].body["contents"]
    assert parts[1] == {"role": "model", "parts": [{"functionCall": {
        "name": "find_theaters", "args": {"location": "Mountain View, CA", "movie": "Barbie"},
        "id": "fc_42"}}]}
    assert parts[2]["parts"][0]["functionResponse"]["id"] == "fc_42"
    assert parts[2]["parts"][0]["functionResponse"]["name"] == "find_theaters"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("block", [PromptBlocked("SAFETY"), CandidateBlocked("PROHIBITED_CONTENT")],
                         ids=["prompt", "candidate"])
async def test_safety_block_is_the_callers_error_not_a_rotation(
    make_mesh, gemini_upstream, stream, block
) -> None:
    a, b = await gemini_upstream(), await gemini_upstream()
    a.default = block
    mesh = await make_mesh(gemini_config([("a", a), ("b", b)], failure_threshold=1))
    for _ in range(3):
        with pytest.raises(ContentFilterError):
            if stream:
                async for _chunk in mesh.router.stream("chat", req()):
                    pass
            else:
                await mesh.router.complete("chat", req())
    assert b.calls == []  # never failed over
    st = state_of(mesh, "a.gemini-2.5-flash")
    assert st.status == "active"
    assert st.consecutive_failures == 0
    assert mesh.state.provider("a").available is True


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_failover_from_503_to_a_second_gemini_provider(
    make_mesh, gemini_upstream, stream
) -> None:
    a, b = await gemini_upstream(), await gemini_upstream()
    a.default = GeminiError.overloaded()
    b.script(Reply("Answered by the second provider."))
    mesh = await make_mesh(gemini_config([("a", a), ("b", b)]))
    if stream:
        chunks = [c async for c in mesh.router.stream("chat", req())]
        text = "".join(c.content for c in chunks)
        model = chunks[0].model
        assert chunks[-1].finish_reason == "stop"
    else:
        resp = await mesh.router.complete("chat", req())
        text, model = resp.content, resp.model
    assert text == "Answered by the second provider."
    assert model == "b.gemini-2.5-flash"
    assert len(a.calls) >= 1 and len(b.calls) == 1
    assert state_of(mesh, "a.gemini-2.5-flash").consecutive_failures >= 1


async def test_in_band_overload_before_content_fails_over(make_mesh, gemini_upstream) -> None:
    a, b = await gemini_upstream(), await gemini_upstream()
    a.default = StreamError(after_chunks=0)
    mesh = await make_mesh(gemini_config([("a", a), ("b", b)]))
    chunks = [c async for c in mesh.router.stream("chat", req())]
    assert "".join(c.content for c in chunks) == "Hello from the fake upstream!"
    assert chunks[0].model == "b.gemini-2.5-flash"


async def test_all_gemini_providers_failing_names_each(make_mesh, gemini_upstream) -> None:
    a, b = await gemini_upstream(), await gemini_upstream()
    a.default = GeminiError(500)
    b.default = Fail(504)
    mesh = await make_mesh(gemini_config([("a", a), ("b", b)]))
    with pytest.raises(AllProvidersExhaustedError) as info:
        await mesh.router.complete("chat", req())
    assert [m for m, _ in info.value.attempts][-2:] == ["a.gemini-2.5-flash",
                                                        "b.gemini-2.5-flash"]
    assert "DEADLINE_EXCEEDED" in str(info.value)
