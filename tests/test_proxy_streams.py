"""The streaming rule through the proxy, with the official ``openai`` SDK as the client: every
break of the failure catalogue, seen from the caller's side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web

from modelmesh_core.fakes import (
    CutStream,
    FakeUpstream,
    MalformedChunk,
    NoDone,
    Prefill,
    Reply,
    StallStream,
    StreamError,
)
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import SERVER_STATE, create_app

ANSWER = "Streams that break mid-answer are continued on the next model without a seam."
WORDS = ANSWER.split()
MSG = [{"role": "user", "content": "tell me about streams"}]
PRICE = {"input": 1.0, "output": 2.0}


def config(fakes: dict[str, FakeUpstream], prefill: tuple[str, ...] = (),
           **pool: Any) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name in fakes:
        models[f"{name}.gpt-4o-mini"] = {
            "capabilities": ["chat-completion"], "pricing": PRICE,
            **({"features": ["assistant_prefill"]} if name in prefill else {})}
    return {
        "providers": {name: {"connector": "openai.llm.v1",
                             "config": {"base_url": f.base_url, "api_key": "sk-test-000000000"}}
                      for name, f in fakes.items()},
        "models": models,
        "pools": {"chat": {"models": list(models), "timeout": {"idle": "300ms"}, **pool}},
    }


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


async def read(client: openai.AsyncOpenAI) -> tuple[str, list[Any]]:
    stream = await client.chat.completions.create(
        model="chat", messages=MSG, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def chats(fake: FakeUpstream) -> list[Any]:
    return [c for c in fake.calls if c.path.endswith("/chat/completions")]


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, FakeUpstream]]:
    async with (FakeUpstream(default=Reply(ANSWER)) as a,
                FakeUpstream(default=Reply(ANSWER), prefill=Prefill.CONTINUE) as b,
                FakeUpstream(default=Reply(ANSWER), prefill=Prefill.CONTINUE) as c):
        yield {"a": a, "b": b, "c": c}


@pytest.mark.parametrize("fault", [
    CutStream(after_words=3),
    StallStream(after_words=3),
    MalformedChunk(after_words=3),
    StreamError(after_words=3),
    NoDone(finish_reason=False),
], ids=["cut", "stall", "malformed", "in-band-error", "no-finish"])
async def test_a_break_is_continued_and_the_client_sees_one_stream(fakes, fault):
    a, b = fakes["a"], fakes["b"]
    a.script(fault)
    async with proxy(config({"a": a, "b": b}, prefill=("b",))) as (client, mesh):
        text, chunks = await read(client)
        assert text == ANSWER
        delivered = ANSWER if isinstance(fault, NoDone) else " ".join(WORDS[:3])
        assert chats(b)[0].body["messages"][-1] == {"role": "assistant", "content": delivered}
        assert len({c.id for c in chunks}) == 1
        roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
        assert roles == ["assistant"]
        finishes = [c.choices[0].finish_reason for c in chunks
                    if c.choices and c.choices[0].finish_reason]
        assert finishes == ["stop"]
        usage = chunks[-1].usage
        b_completion = max(len(ANSWER[len(delivered):].split()), 1)  # the fake bills >= 1
        a_completion = (len(delivered) + 3) // 4
        assert usage.completion_tokens == a_completion + b_completion
        sa, sb = mesh.state.model("a.gpt-4o-mini"), mesh.state.model("b.gpt-4o-mini")
        assert (sa.failures, sb.successes, sb.failures) == (1, 1, 0)
        assert sa.cost > 0 and sb.cost > 0


async def test_a_complete_stream_without_done_is_a_success(fakes):
    a, b = fakes["a"], fakes["b"]
    a.script(NoDone(finish_reason=True))
    async with proxy(config({"a": a, "b": b})) as (client, mesh):
        text, chunks = await read(client)
        assert text == ANSWER and not chats(b)
        assert chunks[-1].usage.completion_tokens == len(WORDS)
        st = mesh.state.model("a.gpt-4o-mini")
        assert st.successes == 1 and st.failures == 0 and st.cost > 0


async def test_role_only_first_chunk_then_a_cut_is_invisible(fakes):
    a, b = fakes["a"], fakes["b"]
    a.script(CutStream(after_chunks=1))
    async with proxy(config({"a": a, "b": b})) as (client, _):
        stream = await client.chat.completions.with_raw_response.create(
            model="chat", messages=MSG, stream=True)  # type: ignore[arg-type]
        assert stream.headers["x-modelmesh-provider"] == "b"
        assert stream.headers["x-modelmesh-attempts"] == "2"
        text = "".join([c.choices[0].delta.content or "" async for c in stream.parse()
                        if c.choices])
        assert text == ANSWER
        assert chats(b)[0].body["messages"] == MSG


async def test_a_rejected_prefill_is_restarted_and_spliced(fakes):
    a, b = fakes["a"], fakes["b"]
    b.prefill = Prefill.REJECT
    a.script(CutStream(after_words=4))
    async with proxy(config({"a": a, "b": b}, prefill=("b",))) as (client, mesh):
        text, _ = await read(client)
        assert text == ANSWER
        assert [len(c.body["messages"]) for c in chats(b)] == [2, 1]
        assert mesh.state.model("b.gpt-4o-mini").failures == 0


async def test_a_restart_with_another_answer_ends_with_a_clean_error(fakes):
    a, b = fakes["a"], fakes["b"]
    b.prefill = Prefill.REJECT
    b.default = Reply("Something else entirely, said differently.")
    a.script(CutStream(after_words=4))
    async with proxy(config({"a": a, "b": b}, prefill=("b",))) as (client, _):
        stream = await client.chat.completions.create(model="chat", messages=MSG,
                                                      stream=True)  # type: ignore[arg-type]
        seen: list[str] = []
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                if chunk.choices:
                    seen.append(chunk.choices[0].delta.content or "")
        assert "".join(seen) == " ".join(WORDS[:4])
        message = info.value.message
        assert "a.gpt-4o-mini" in message and "could not continue it" in message


async def test_a_continuation_that_breaks_is_continued_again(fakes):
    a, b, c = fakes["a"], fakes["b"], fakes["c"]
    a.script(CutStream(after_words=2))
    b.script(CutStream(after_words=2))
    async with proxy(config(fakes, prefill=("b", "c"))) as (client, mesh):
        text, chunks = await read(client)
        assert text == ANSWER
        assert chats(c)[0].body["messages"][-1]["content"] == " ".join(WORDS[:4])
        assert mesh.state.model("b.gpt-4o-mini").failures == 1
        assert len({ch.id for ch in chunks}) == 1


async def test_who_served_a_continued_stream_is_in_its_closing_frames(fakes):
    import aiohttp

    a, b = fakes["a"], fakes["b"]
    cfg = config({"a": a, "b": b}, prefill=("b",), strategy={
        "connector": "modelmesh.priority-selection.v1",
        "config": {"provider_priority": ["a", "b"]}})
    async with proxy(cfg) as (client, _):
        a.script(CutStream(after_words=3))
        text, chunks = await read(client)  # include_usage: a field of the usage chunk
        assert text == ANSWER
        served = chunks[-1].model_extra["x_modelmesh"]
        assert served["continuations"] == 1
        assert [(s["model"], s["mode"]) for s in served["segments"]] == [
            ("a.gpt-4o-mini", "original"), ("b.gpt-4o-mini", "prefill")]
        assert served["segments"][0]["outcome"].startswith("broke")
        assert sum(s["cost"] for s in served["segments"]) > 0

        # without include_usage: an SSE comment before [DONE], which SSE clients ignore
        a.script(CutStream(after_words=3))
        url = str(client.base_url).rstrip("/") + "/chat/completions"
        async with aiohttp.ClientSession() as s, s.post(
                url, json={"model": "chat", "messages": MSG, "stream": True}) as r:
            body = await r.text()
        lines = [line for line in body.split("\n") if line]
        assert lines[-1] == "data: [DONE]"
        assert lines[-2].startswith(": x-modelmesh {")
        assert '"mode":"prefill"' in lines[-2]
        # an ordinary stream has neither
        text, chunks = await read(client)
        assert "x_modelmesh" not in (chunks[-1].model_extra or {})


async def test_virtual_keys_pay_for_broken_and_abandoned_streams(fakes):
    a = fakes["a"]
    a.default = Reply(ANSWER, chunk_delay=0.05)
    cfg = config({"a": a})
    cfg["proxy"] = {"auth": {"keys": [{"key": "mm-team-key-0001", "name": "team"}]}}
    mesh = ModelMesh(cfg)
    app = create_app(mesh)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = openai.AsyncOpenAI(base_url=f"http://{host}:{port}/v1",
                                api_key="mm-team-key-0001", max_retries=0)
    try:
        # a stream that breaks with nobody to continue it: the part delivered is billed
        a.script(CutStream(after_words=3))
        stream = await client.chat.completions.create(model="chat", messages=MSG,
                                                      stream=True)  # type: ignore[arg-type]
        with pytest.raises(openai.APIError):
            async for _chunk in stream:
                pass
        state = mesh.state.model("a.gpt-4o-mini")
        after_break = state.cost
        assert after_break > 0
        server = app[SERVER_STATE]
        key = server.auth.keys["mm-team-key-0001"]
        assert server.key_usage(key)["day_spend"] == pytest.approx(after_break)
        # a client that leaves mid-stream
        stream = await client.chat.completions.create(model="chat", messages=MSG,
                                                      stream=True)  # type: ignore[arg-type]
        await stream.__anext__()
        await stream.__anext__()
        await stream.close()
        for _ in range(100):
            if server.key_usage(key)["day_spend"] > after_break:
                break
            await asyncio.sleep(0.02)
        assert state.cost > after_break and state.failures == 1  # leaving is not a failure
        assert server.key_usage(key)["day_spend"] == pytest.approx(state.cost)
    finally:
        await client.close()
        await runner.cleanup()
