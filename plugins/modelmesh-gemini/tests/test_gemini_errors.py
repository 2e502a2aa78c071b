"""Google error bodies, safety blocks, broken streams, garbage and timeouts → typed errors."""

from __future__ import annotations

import pytest
from aiohttp import web
from gemini_testlib import FAST, FLASH, KEY, SPEC, collect, req

from modelmesh_core.errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
    StreamInterruptedError,
)
from modelmesh_core.types import RateLimitInfo, Timeouts
from modelmesh_gemini import GeminiConfig
from modelmesh_gemini.fake import (
    DOC_PROMPT_BLOCKED,
    CandidateBlocked,
    Canned,
    CutStream,
    EndWithoutFinish,
    Fail,
    GeminiError,
    MalformedChunk,
    MalformedJSON,
    PromptBlocked,
    Reply,
    Silent,
    StallStream,
    StreamError,
    WrongContentType,
)


async def call(adapter, stream: bool):
    if stream:
        return await collect(adapter, req())
    return await adapter.complete(FLASH, req(), FAST)


BOTH = pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])


@BOTH
@pytest.mark.parametrize(
    ("behaviour", "kind", "status", "retryable"),
    [
        (GeminiError(400), ProviderError, 400, False),
        (GeminiError.invalid_key(), AuthenticationError, 400, False),
        (GeminiError(403), AuthenticationError, 403, False),
        (GeminiError(404, "models/gemini-9 is not found for API version v1beta"),
         ProviderError, 404, False),
        (GeminiError(500), ProviderError, 500, True),
        (GeminiError(503), ProviderError, 503, True),
        (GeminiError(504), ProviderError, 504, True),
        (GeminiError.context_length(), ContextLengthError, 400, False),
        (GeminiError(400, "User location is not supported for the API use.",
                     google_status="FAILED_PRECONDITION"), AuthenticationError, 400, False),
    ],
)
async def test_error_status_mapping(
    adapter, fake, stream, behaviour, kind, status, retryable
) -> None:
    fake.script(behaviour)
    with pytest.raises(ProviderError) as info:
        await call(adapter, stream)
    err = info.value
    assert type(err) is kind
    assert err.status == status
    assert err.retryable is retryable
    assert err.provider_id == "alpha" and err.model_id == "alpha.gemini-2.5-flash"
    assert behaviour.body()["error"]["status"] in str(err)
    assert behaviour.body()["error"]["message"][:30] in str(err)


@BOTH
async def test_rate_limit_reads_retry_info(adapter, fake, stream) -> None:
    fake.script(GeminiError.rate_limit(retry_delay=1.5))
    with pytest.raises(RateLimitError) as info:
        await call(adapter, stream)
    assert info.value.retry_after == 1.5
    assert info.value.quota is False
    assert info.value.rate_limit == RateLimitInfo(retry_after=1.5)
    assert info.value.status == 429


async def test_daily_quota_is_a_quota_rate_limit(adapter, fake) -> None:
    fake.script(GeminiError.quota(retry_delay=52))
    with pytest.raises(RateLimitError) as info:
        await adapter.complete(FLASH, req(), FAST)
    assert info.value.quota is True
    assert info.value.retry_after == 52.0


async def test_core_fail_records_speak_google_errors(adapter, fake) -> None:
    fake.script(Fail(429, message="slow down", retry_after=3))
    with pytest.raises(RateLimitError) as info:
        await adapter.complete(FLASH, req(), FAST)
    assert info.value.retry_after == 3.0
    assert "RESOURCE_EXHAUSTED" in str(info.value)


async def test_wrong_key_and_missing_key(make_adapter, fake) -> None:
    with pytest.raises(AuthenticationError) as info:
        await make_adapter(api_key="AIzaSyWRONG-0000000000000000000000000").complete(
            FLASH, req(), FAST)
    assert "API_KEY_INVALID" in str(info.value)
    assert "AIzaSyWRONG" not in str(info.value)
    with pytest.raises(AuthenticationError) as info:
        await make_adapter(api_key=None).complete(FLASH, req(), FAST)
    assert info.value.status == 403
    assert "x-goog-api-key" not in fake.calls[-1].headers


async def test_unknown_model_is_404(make_adapter, fake) -> None:
    from modelmesh_core.types import Model

    ghost = Model(id="alpha.gemini-9", provider="alpha", upstream_id="gemini-9",
                  capabilities=("generation.text-generation.chat-completion",))
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(ghost, req(), FAST)
    assert info.value.status == 404
    assert "NOT_FOUND" in str(info.value)


async def test_rejected_prefill_says_so(adapter, fake) -> None:
    fake.script(GeminiError(400, "Please ensure that multiturn requests end with a user role "
                                 "or a function response."))
    request = req({"role": "user", "content": "Count."}, {"role": "assistant", "content": "1, 2"})
    with pytest.raises(ProviderError) as info:
        await adapter.complete(FLASH, request, FAST)
    assert info.value.status == 400
    assert "prefill" in str(info.value)


@BOTH
async def test_prompt_block_is_a_content_filter_error(adapter, fake, stream) -> None:
    fake.script(PromptBlocked("PROHIBITED_CONTENT"))
    with pytest.raises(ContentFilterError) as info:
        await call(adapter, stream)
    assert info.value.retryable is False
    assert "blockReason PROHIBITED_CONTENT" in str(info.value)


async def test_documented_prompt_block(adapter, fake) -> None:
    fake.script(Canned(body=DOC_PROMPT_BLOCKED))
    with pytest.raises(ContentFilterError, match="blockReason SAFETY"):
        await adapter.complete(FLASH, req(), FAST)


@BOTH
@pytest.mark.parametrize("reason", ["SAFETY", "RECITATION", "BLOCKLIST", "SPII"])
async def test_candidate_blocked_before_any_text(adapter, fake, stream, reason) -> None:
    fake.script(CandidateBlocked(reason))
    with pytest.raises(ContentFilterError) as info:
        await call(adapter, stream)
    assert f"finishReason {reason}" in str(info.value)
    assert info.value.retryable is False


async def test_candidate_blocked_after_text_ends_with_content_filter(adapter, fake) -> None:
    fake.script(CandidateBlocked("SAFETY", after_chunks=3))
    chunks = await collect(adapter, req())
    assert "".join(c.content for c in chunks) == "This answer was"
    assert chunks[-1].finish_reason == "content_filter"


@BOTH
async def test_malformed_function_call_without_answer_is_retryable(adapter, fake, stream) -> None:
    fake.script(CandidateBlocked("MALFORMED_FUNCTION_CALL"))
    with pytest.raises(ProviderError) as info:
        await call(adapter, stream)
    assert type(info.value) is ProviderError
    assert info.value.retryable is True
    assert "MALFORMED_FUNCTION_CALL" in str(info.value)


async def test_in_band_stream_error_is_typed(adapter, fake) -> None:
    fake.script(StreamError(after_chunks=2, error=GeminiError.overloaded()))
    chunks = []
    with pytest.raises(ProviderError) as info:
        async for chunk in adapter.stream(FLASH, req(), FAST):
            chunks.append(chunk)
    assert len(chunks) == 2
    assert info.value.status == 503 and info.value.retryable is True
    assert "UNAVAILABLE" in str(info.value)
    fake.script(StreamError(after_chunks=0, error=GeminiError.rate_limit(4)))
    with pytest.raises(RateLimitError) as rate:
        await collect(adapter, req())
    assert rate.value.retry_after == 4.0


async def test_error_as_plain_json_lines_inside_the_stream(context) -> None:
    # Google's SDK notes that an error may arrive as plain JSON lines, not as a "data:" event.
    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        await resp.write(b'data: {"candidates": [{"content": {"parts": [{"text": "Hi"}], '
                         b'"role": "model"}}]}\r\n\r\n')
        await resp.write(b'{\r\n  "error": {\r\n    "code": 500,\r\n    "message": '
                         b'"Internal error",\r\n    "status": "INTERNAL"\r\n  }\r\n}\r\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1beta/{tail:.+}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        adapter = SPEC.factory(
            context, GeminiConfig(base_url=f"http://127.0.0.1:{port}/v1beta", api_key=KEY))
        chunks = []
        with pytest.raises(ProviderError) as info:
            async for chunk in adapter.stream(FLASH, req(), FAST):
                chunks.append(chunk)
        assert [c.content for c in chunks] == ["Hi"]
        assert info.value.status == 500 and info.value.retryable is True
        assert "Internal error [status=INTERNAL]" in str(info.value)
    finally:
        await runner.cleanup()


async def test_cut_stream_is_interrupted_never_a_success(adapter, fake) -> None:
    fake.script(CutStream(after_chunks=2))
    chunks = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in adapter.stream(FLASH, req(), FAST):
            chunks.append(chunk)
    assert len(chunks) == 2
    assert all(c.finish_reason is None for c in chunks)
    assert info.value.retryable is True


async def test_clean_end_without_finish_reason_is_interrupted(adapter, fake) -> None:
    fake.script(EndWithoutFinish(after_chunks=2))
    chunks = []
    with pytest.raises(StreamInterruptedError, match="without a finishReason"):
        async for chunk in adapter.stream(FLASH, req(), FAST):
            chunks.append(chunk)
    assert len(chunks) == 2


async def test_malformed_event_is_a_retryable_error(adapter, fake) -> None:
    fake.script(MalformedChunk(after_chunks=1))
    with pytest.raises(ProviderError, match="malformed stream event") as info:
        await collect(adapter, req())
    assert info.value.retryable is True


@BOTH
async def test_wrong_content_type_is_typed(adapter, fake, stream) -> None:
    fake.script(WrongContentType())
    with pytest.raises(ProviderError, match="does not look like the Gemini API") as info:
        await call(adapter, stream)
    assert info.value.retryable is True


async def test_malformed_json_body(adapter, fake) -> None:
    fake.script(MalformedJSON())
    with pytest.raises(ProviderError, match="not valid JSON"):
        await adapter.complete(FLASH, req(), FAST)


async def test_cut_body_of_a_plain_answer(adapter, fake) -> None:
    fake.script(CutStream())
    with pytest.raises(ProviderError) as info:
        await adapter.complete(FLASH, req(), FAST)
    assert info.value.retryable is True


async def test_answer_without_candidates_or_block_is_typed(adapter, fake) -> None:
    fake.script(Canned(body={"usageMetadata": {"promptTokenCount": 3}}))
    with pytest.raises(ProviderError, match="no candidates"):
        await adapter.complete(FLASH, req(), FAST)


async def test_silent_upstream_times_out_at_first_byte(adapter, fake) -> None:
    fake.script(Silent())
    quick = Timeouts(connect=1.0, first_byte=0.2, idle=0.2, total=5.0)
    with pytest.raises(ProviderTimeoutError) as info:
        await adapter.complete(FLASH, req(), quick)
    assert info.value.phase == "first_byte"


async def test_stalled_stream_times_out_idle(adapter, fake) -> None:
    fake.script(StallStream(after_chunks=1))
    quick = Timeouts(connect=1.0, first_byte=1.0, idle=0.2, total=5.0)
    chunks = []
    with pytest.raises(ProviderTimeoutError) as info:
        async for chunk in adapter.stream(FLASH, req(), quick):
            chunks.append(chunk)
    assert info.value.phase == "idle"
    assert len(chunks) == 1


async def test_refused_connection_is_retryable(context) -> None:
    adapter = SPEC.factory(context, GeminiConfig(base_url="http://127.0.0.1:9/v1beta",
                                                 api_key=KEY))
    with pytest.raises(ProviderError) as info:
        await adapter.complete(FLASH, req(), FAST)
    assert info.value.retryable is True
    assert KEY not in str(info.value)


async def test_key_never_in_errors_even_if_echoed(adapter, fake) -> None:
    fake.script(GeminiError(400, f"API key {KEY} is malformed"))
    with pytest.raises(ProviderError) as info:
        await adapter.complete(FLASH, req(), FAST)
    assert KEY not in str(info.value)
    assert "***" in str(info.value)


async def test_reply_after_errors_still_works(adapter, fake) -> None:
    fake.script(GeminiError(503), Reply("fine"))
    with pytest.raises(ProviderError):
        await adapter.complete(FLASH, req(), FAST)
    assert (await adapter.complete(FLASH, req(), FAST)).content == "fine"
