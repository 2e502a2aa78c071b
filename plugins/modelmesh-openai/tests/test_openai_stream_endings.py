"""How the adapter tells a complete stream from a broken one, byte for byte on the wire, and
what it sends to continue a prefill."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from modelmesh_core.errors import ProviderError, StreamInterruptedError
from modelmesh_core.fakes import Fail, FakeUpstream, NoDone, Reply, StreamError
from modelmesh_core.types import CompletionRequest, Model, Timeouts
from modelmesh_openai import OpenAIAdapter

MODEL = Model(id="alpha.gpt-4o-mini", provider="alpha", upstream_id="gpt-4o-mini",
              capabilities=("generation.text-generation.chat-completion",))
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)
HELLO = [{"role": "user", "content": "say hello"}]


def event(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
    obj: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "created": 1,
                           "model": "m",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        obj = {**obj, "choices": [], "usage": usage}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def serve(lines: list[bytes]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        for line in lines:
            await resp.write(line)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def run(make_adapter: Callable[..., OpenAIAdapter], lines: list[bytes]) -> list[Any]:
    runner, base_url = await serve(lines)
    try:
        adapter = make_adapter(base_url=base_url)
        return [c async for c in adapter.stream(MODEL, CompletionRequest(messages=HELLO), FAST)]
    finally:
        await runner.cleanup()


ROLE = event({"role": "assistant", "content": ""})
WORD = event({"content": "hi"})
FINISH = event({}, "stop")
USAGE = event({}, usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})


async def test_done_then_eof_is_complete(make_adapter) -> None:
    chunks = await run(make_adapter, [ROLE, WORD, FINISH, USAGE, b"data: [DONE]\n\n"])
    assert [c.content for c in chunks] == ["", "hi", "", ""]
    assert chunks[-1].usage["total_tokens"] == 4


async def test_finish_reason_and_usage_without_done_is_complete(make_adapter) -> None:
    chunks = await run(make_adapter, [ROLE, WORD, FINISH, USAGE])
    assert chunks[2].finish_reason == "stop" and chunks[-1].usage["total_tokens"] == 4


async def test_eof_without_finish_reason_is_a_break(make_adapter) -> None:
    with pytest.raises(StreamInterruptedError) as info:
        await run(make_adapter, [ROLE, WORD])
    assert info.value.retryable


async def test_done_without_finish_reason_is_a_break(make_adapter) -> None:
    with pytest.raises(StreamInterruptedError, match="without a finish_reason"):
        await run(make_adapter, [ROLE, WORD, b"data: [DONE]\n\n"])


async def test_in_band_error_event_is_a_retryable_provider_error(make_adapter, fake) -> None:
    fake.script(StreamError(after_words=1, message="overloaded, try later"))
    adapter = make_adapter()
    got = []
    with pytest.raises(ProviderError) as info:
        async for c in adapter.stream(MODEL, CompletionRequest(messages=HELLO), FAST):
            got.append(c.content)
    assert got == ["", "Hello"]
    assert info.value.retryable and "overloaded, try later" in str(info.value)


async def test_fake_no_done_with_finish_is_complete(make_adapter, fake) -> None:
    fake.script(NoDone(finish_reason=True))
    adapter = make_adapter()
    request = CompletionRequest(messages=HELLO)
    chunks = [c async for c in adapter.stream(MODEL, request, FAST)]
    assert "".join(c.content for c in chunks) == Reply().content


async def test_a_503_carries_its_retry_after(make_adapter, fake) -> None:
    fake.script(Fail(503, retry_after=7))
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(MODEL, CompletionRequest(messages=HELLO), FAST)
    assert info.value.status == 503 and info.value.retry_after == 7.0


async def test_vllm_is_told_to_continue_a_trailing_assistant_message(
        make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter("vllm.local.v1")
    prefill = [*HELLO, {"role": "assistant", "content": "Hello from"}]
    await adapter.complete(MODEL, CompletionRequest(messages=prefill), FAST)
    await adapter.complete(MODEL, CompletionRequest(messages=HELLO), FAST)
    with_prefill, without = fake.calls[-2].body, fake.calls[-1].body
    assert with_prefill["messages"] == prefill
    assert with_prefill["continue_final_message"] is True
    assert with_prefill["add_generation_prompt"] is False
    assert "continue_final_message" not in without
    # OpenAI itself gets the messages as they are, with no vLLM-only parameter
    await make_adapter().complete(MODEL, CompletionRequest(messages=prefill), FAST)
    assert "continue_final_message" not in fake.calls[-1].body


@pytest.mark.parametrize("kind", ["chat", "embed"])
async def test_a_body_that_cannot_be_encoded_is_the_callers_error(make_adapter, fake, kind) -> None:
    from modelmesh_core.errors import InvalidRequestError
    from modelmesh_core.types import EmbeddingRequest

    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    adapter = make_adapter()
    with pytest.raises(InvalidRequestError) as info:
        if kind == "chat":
            await adapter.complete(MODEL, CompletionRequest(messages=HELLO,
                                                            extra={"junk": deep}), FAST)
        else:
            await adapter.embed(MODEL, EmbeddingRequest(input="hi", extra={"junk": deep}), FAST)
    assert info.value.status == 400
    assert not fake.calls, "nothing was sent upstream"
