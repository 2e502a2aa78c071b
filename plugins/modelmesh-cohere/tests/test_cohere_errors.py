"""Cohere error answers, broken streams and garbage become typed errors, never a hang."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web

from modelmesh_cohere.fake import (
    DOC_EXAMPLES,
    CutStream,
    Fail,
    FakeCohere,
    MalformedChunk,
    MalformedJSON,
    RateLimited,
    Reply,
    Silent,
    StallStream,
    WrongContentType,
)
from modelmesh_core.errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    StreamInterruptedError,
)
from modelmesh_core.types import CompletionRequest, EmbeddingRequest, Model, Timeouts

KEY = "co-test-0123456789abcdef"
CHAT = Model(id="co.command-r-08-2024", provider="co", upstream_id="command-r-08-2024",
             capabilities=("generation.text-generation.chat-completion",))
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)
HI = CompletionRequest(messages=[{"role": "user", "content": "hi"}])


async def drain(adapter, request: CompletionRequest = HI, timeouts: Timeouts = FAST) -> list:
    return [chunk async for chunk in adapter.stream(CHAT, request, timeouts)]


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (400, ProviderError, False),
        (401, AuthenticationError, False),
        (402, RateLimitError, True),
        (404, ProviderError, False),
        (422, ProviderError, False),
        (429, RateLimitError, True),
        (498, ContentFilterError, False),
        (499, ProviderError, True),
        (500, ProviderError, True),
        (503, ProviderError, True),
    ],
)
async def test_statuses_map_to_typed_errors(make_adapter, fake, status, kind, retryable) -> None:
    fake.script(Fail(status), Fail(status))
    adapter = make_adapter()
    for call in (adapter.complete(CHAT, HI, FAST), drain(adapter)):
        with pytest.raises(ProviderError) as info:
            await call
        error = info.value
        assert type(error) is kind
        assert error.status == status
        assert error.retryable is retryable
        assert error.provider_id == "co" and error.model_id == "co.command-r-08-2024"
    assert fake.calls[0].behaviour == Fail(status)


async def test_error_message_is_cohere_s_and_402_is_an_exhausted_quota(make_adapter, fake):
    fake.script(Fail(402))
    with pytest.raises(RateLimitError) as info:
        await make_adapter().complete(CHAT, HI, FAST)
    assert info.value.quota is True
    assert "payment method" in str(info.value)


async def test_429_carries_retry_after_and_the_trial_message(context, monkeypatch) -> None:
    from modelmesh_cohere import CohereAdapter, CohereConfig

    async with FakeCohere(api_keys={KEY}, trial_limit=10) as fake:
        fake.script(Fail(429, retry_after=7))
        adapter = CohereAdapter(context, CohereConfig(base_url=fake.url, api_key=KEY))
        with pytest.raises(RateLimitError) as info:
            await adapter.complete(CHAT, HI, FAST)
    error = info.value
    assert error.retry_after == 7.0
    assert error.quota is False
    assert "Trial key" in str(error)
    assert error.headers["retry-after"] == "7"
    assert error.headers["x-trial-endpoint-call-limit"] == "10"
    assert error.rate_limit.retry_after == 7.0


async def test_rate_limited_behaviour_speaks_cohere(make_adapter, fake, manual_clock) -> None:
    fake.clock = manual_clock
    limited = RateLimited(rpm=1)
    fake.script(limited, limited)
    adapter = make_adapter()
    await adapter.complete(CHAT, HI, FAST)
    with pytest.raises(RateLimitError) as info:
        await adapter.complete(CHAT, HI, FAST)
    assert "limited to 1 API calls / minute" in str(info.value)
    assert info.value.retry_after is not None and info.value.retry_after > 0
    assert not any(k.startswith("x-ratelimit") for k in info.value.headers)


async def test_monthly_trial_limit_is_a_quota(make_adapter, fake) -> None:
    fake.script(Fail(429, message="You are past the per month request limit for a Trial key"))
    with pytest.raises(RateLimitError) as info:
        await make_adapter().complete(CHAT, HI, FAST)
    assert info.value.quota is True


async def test_too_many_tokens_is_a_context_length_error(make_adapter, fake) -> None:
    fake.script(Fail(400, message="invalid request: too many tokens: total number of tokens in "
                                  "the prompt cannot exceed 128000 - received 130000."))
    with pytest.raises(ContextLengthError) as info:
        await make_adapter().complete(CHAT, HI, FAST)
    assert info.value.status == 400 and not info.value.retryable


async def test_bad_key_is_an_authentication_error_that_never_shows_the_key(make_adapter, fake):
    with pytest.raises(AuthenticationError) as info:
        await make_adapter(api_key="co-wrong-key-0000000000").complete(CHAT, HI, FAST)
    assert "invalid api token" in str(info.value)
    assert "co-wrong-key-0000000000" not in str(info.value)
    assert fake.calls[0].behaviour == Fail(401, message="invalid api token")


async def test_upstream_text_is_redacted(make_adapter, fake) -> None:
    fake.script(Fail(400, message=f"invalid request: key {KEY} is not allowed here"))
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(CHAT, HI, FAST)
    assert KEY not in str(info.value)


async def test_rejected_prefill_names_the_prefill(context, monkeypatch) -> None:
    from modelmesh_cohere import CohereAdapter, CohereConfig

    request = CompletionRequest(messages=[{"role": "user", "content": "Count to five."},
                                          {"role": "assistant", "content": "One, two,"}])
    async with FakeCohere(api_keys={KEY}, reject_prefill=True) as fake:
        adapter = CohereAdapter(context, CohereConfig(base_url=fake.url, api_key=KEY))
        for call in (adapter.complete(CHAT, request, FAST), drain(adapter, request)):
            with pytest.raises(ProviderError, match="prefill") as info:
                await call
            assert info.value.status == 400
        assert fake.calls[0].body["messages"][-1] == {"role": "assistant",
                                                      "content": "One, two,"}


@pytest.mark.parametrize("after", [0, 1, 3])
async def test_cut_stream_is_interrupted_never_a_success(make_adapter, fake, after) -> None:
    fake.script(CutStream(after_chunks=after))
    with pytest.raises(StreamInterruptedError) as info:
        await drain(make_adapter())
    assert info.value.retryable is True


async def test_stream_that_ends_cleanly_before_message_end_is_interrupted(make_adapter):
    events = DOC_EXAMPLES["chat_stream"][:-1]  # every documented event but message-end

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:
            await resp.write(f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event)
                             + b"\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v2/chat", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    chunks = []
    try:
        with pytest.raises(StreamInterruptedError, match="without its message-end") as info:
            async for chunk in make_adapter(base_url=f"http://127.0.0.1:{port}").stream(
                CHAT, HI, FAST
            ):
                chunks.append(chunk)
    finally:
        await runner.cleanup()
    assert info.value.retryable is True
    assert "".join(c.content for c in chunks).startswith("LLMs stand for")
    assert all(c.finish_reason is None for c in chunks)


async def test_generation_error_in_message_end_raises(make_adapter, fake) -> None:
    fake.script(Reply("partial answer", finish_reason="ERROR"),
                Reply("x", finish_reason="ERROR"))
    adapter = make_adapter()
    with pytest.raises(StreamInterruptedError, match="ERROR") as info:
        await drain(adapter)
    assert "the generation failed" in str(info.value)
    assert info.value.retryable is True
    with pytest.raises(ProviderError, match="finish_reason ERROR"):
        await adapter.complete(CHAT, HI, FAST)


async def test_malformed_stream_event_is_a_retryable_error(make_adapter, fake) -> None:
    fake.script(MalformedChunk(after_chunks=2))
    with pytest.raises(ProviderError, match="malformed stream event") as info:
        await drain(make_adapter())
    assert info.value.retryable is True


@pytest.mark.parametrize("garbage", [MalformedJSON(), WrongContentType(),
                                     CutStream(after_chunks=1)])
async def test_garbage_answers_are_retryable_errors(make_adapter, fake, garbage) -> None:
    fake.script(garbage, garbage)
    adapter = make_adapter()
    with pytest.raises(ProviderError) as info:
        await adapter.complete(CHAT, HI, FAST)
    assert info.value.retryable is True
    with pytest.raises(ProviderError) as info:
        await adapter.embed(CHAT, EmbeddingRequest(input="x"), FAST)
    assert info.value.retryable is True


async def test_wrong_content_type_on_a_stream(make_adapter, fake) -> None:
    fake.script(WrongContentType())
    with pytest.raises(ProviderError, match="content type") as info:
        await drain(make_adapter())
    assert info.value.retryable is True


async def test_stalled_stream_hits_the_idle_timeout(make_adapter, fake) -> None:
    fake.script(StallStream(after_chunks=2))
    quick = Timeouts(connect=1.0, first_byte=1.0, idle=0.2, total=5.0)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ProviderTimeoutError) as info:
        await drain(make_adapter(), timeouts=quick)
    assert info.value.phase == "idle"
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_silent_upstream_hits_first_byte(make_adapter, fake) -> None:
    fake.script(Silent())
    quick = Timeouts(connect=1.0, first_byte=0.2, idle=1.0, total=5.0)
    with pytest.raises(ProviderTimeoutError) as info:
        await make_adapter().complete(CHAT, HI, quick)
    assert info.value.phase == "first_byte"


async def test_connection_refused_is_retryable(make_adapter) -> None:
    adapter = make_adapter(base_url="http://127.0.0.1:9")
    with pytest.raises(ProviderError) as info:
        await adapter.complete(CHAT, HI, FAST)
    assert info.value.retryable is True and info.value.status is None
