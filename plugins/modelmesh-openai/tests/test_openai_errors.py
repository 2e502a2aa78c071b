"""Error translation, Retry-After and rate-limit header parsing, key rotation, redaction."""

from __future__ import annotations

import email.utils
import time

import pytest

from modelmesh_core.errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    ProviderError,
    RateLimitError,
    StreamInterruptedError,
)
from modelmesh_core.fakes import (
    CutStream,
    Fail,
    FakeUpstream,
    MalformedChunk,
    MalformedJSON,
    Reply,
    WrongContentType,
)
from modelmesh_core.redaction import register_secret
from modelmesh_core.types import CompletionRequest, Model, Timeouts
from modelmesh_openai import OpenAIConfig
from modelmesh_openai._adapter import parse_duration, parse_rate_limit, parse_retry_after

KEY = "sk-test-0123456789abcdef"  # the key the ``fake`` fixture accepts
MODEL = Model(
    id="alpha.gpt-4o-mini",
    provider="alpha",
    upstream_id="gpt-4o-mini",
    capabilities=("generation.text-generation.chat-completion",),
)
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)
REQUEST = CompletionRequest(messages=[{"role": "user", "content": "hi"}])


def _no_secret(error: BaseException, *secrets: str) -> None:
    text = f"{error} {error!r} {getattr(error, 'detail', '')} {getattr(error, 'headers', '')}"
    for secret in secrets:
        assert secret not in text


# --------------------------------------------------------------------------- status mapping


@pytest.mark.parametrize(
    ("fail", "kind", "retryable"),
    [
        (Fail(401), AuthenticationError, False),
        (Fail(403), AuthenticationError, False),
        (Fail.quota(), RateLimitError, True),
        (Fail.rate_limit(retry_after=7), RateLimitError, True),
        (Fail.context_length(), ContextLengthError, False),
        (Fail.content_filter(), ContentFilterError, False),
        (Fail(400, code="content_filter", message="filtered by Azure"), ContentFilterError, False),
        (Fail(400), ProviderError, False),
        (Fail(404), ProviderError, False),
        (Fail(422), ProviderError, False),
        (Fail(408), ProviderError, True),
        (Fail(409), ProviderError, True),
        (Fail(500), ProviderError, True),
        (Fail(502), ProviderError, True),
        (Fail(503), ProviderError, True),
    ],
)
async def test_status_mapping(make_adapter, fake, fail, kind, retryable) -> None:
    fake.script(fail, fail)
    adapter = make_adapter()
    with pytest.raises(ProviderError) as caught:
        await adapter.complete(MODEL, REQUEST, FAST)
    error = caught.value
    assert type(error) is kind
    assert error.retryable is retryable
    assert error.status == fail.status
    assert error.provider_id == "alpha" and error.model_id == "alpha.gpt-4o-mini"
    assert fail.body()["error"]["message"] in str(error)
    assert error.headers["x-ratelimit-limit-requests"] == "10000"
    # the same mapping applies before a stream starts
    with pytest.raises(kind):
        async for _ in adapter.stream(MODEL, REQUEST, FAST):
            pass


async def test_rate_limit_retry_after_and_quota(make_adapter, fake) -> None:
    adapter = make_adapter()
    fake.script(Fail.rate_limit(retry_after=7), Fail.quota())
    with pytest.raises(RateLimitError) as transient:
        await adapter.complete(MODEL, REQUEST, FAST)
    assert transient.value.retry_after == 7.0 and transient.value.quota is False
    assert transient.value.headers["retry-after"] == "7"
    with pytest.raises(RateLimitError) as quota:
        await adapter.complete(MODEL, REQUEST, FAST)
    assert quota.value.quota is True and quota.value.retry_after is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ],
)
async def test_retry_after_headers_over_http(make_adapter, fake, headers, expected) -> None:
    fake.script(Fail(429, headers=headers))
    with pytest.raises(RateLimitError) as caught:
        await make_adapter().complete(MODEL, REQUEST, FAST)
    assert caught.value.retry_after == pytest.approx(expected)


async def test_retry_after_http_date(make_adapter, fake) -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake.script(Fail(429, headers={"Retry-After": date}))
    with pytest.raises(RateLimitError) as caught:
        await make_adapter().complete(MODEL, REQUEST, FAST)
    assert 27 <= caught.value.retry_after <= 30


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0
    assert parse_retry_after({}, "Rate limit reached. Please try again in 1.898s. Visit") == (
        pytest.approx(1.898)
    )
    assert parse_retry_after({}, "Please try again in 6m0s.") == 360.0
    assert parse_retry_after({}, "no hint here") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("60", 60.0),
        ("1.5s", 1.5),
        ("1h2m5s", 3725.0),
        ("2m30.5s", 150.5),
        ("0s", 0.0),
        ("", None),
        ("abc", None),
        ("5x", None),
        ("1s junk", None),
    ],
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


def test_parse_rate_limit_headers() -> None:
    info = parse_rate_limit(
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-limit-tokens": "160000",
            "x-ratelimit-remaining-tokens": "159976",
            "x-ratelimit-reset-tokens": "6m0s",
            "retry-after": "2",
        }
    )
    assert info is not None
    assert (info.limit_requests, info.remaining_requests, info.reset_requests) == (
        5000,
        4999,
        0.012,
    )
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens) == (
        160000,
        159976,
        360.0,
    )
    assert info.retry_after == 2.0
    assert parse_rate_limit({"content-type": "application/json"}) is None
    partial = parse_rate_limit({"x-ratelimit-remaining-tokens": "-1"})
    assert partial is not None and partial.remaining_tokens == -1 and partial.limit_requests is None


# --------------------------------------------------------------------------- bad payloads


async def test_malformed_json_body(make_adapter, fake) -> None:
    fake.script(MalformedJSON())
    with pytest.raises(ProviderError) as caught:
        await make_adapter().complete(MODEL, REQUEST, FAST)
    assert caught.value.retryable is True and caught.value.status == 200
    assert "not valid JSON" in str(caught.value)


async def test_wrong_content_type(make_adapter, fake) -> None:
    adapter = make_adapter()
    fake.script(WrongContentType(), WrongContentType())
    with pytest.raises(ProviderError) as caught:
        await adapter.complete(MODEL, REQUEST, FAST)
    assert caught.value.retryable is True and "text/html" in str(caught.value)
    with pytest.raises(ProviderError) as streamed:
        async for _ in adapter.stream(MODEL, REQUEST, FAST):
            pass
    assert streamed.value.retryable is True and "text/html" in str(streamed.value)


async def test_malformed_stream_chunk(make_adapter, fake) -> None:
    fake.script(MalformedChunk(after_chunks=2))
    seen = []
    with pytest.raises(ProviderError) as caught:
        async for chunk in make_adapter().stream(MODEL, REQUEST, FAST):
            seen.append(chunk)
    assert len(seen) == 2
    assert caught.value.retryable is True
    assert "malformed stream chunk" in str(caught.value)
    assert "{not json" in str(caught.value)


async def test_cut_stream_raises_stream_interrupted(make_adapter, fake) -> None:
    fake.script(CutStream(after_chunks=3))
    seen = []
    with pytest.raises(StreamInterruptedError) as caught:
        async for chunk in make_adapter().stream(MODEL, REQUEST, FAST):
            seen.append(chunk)
    assert len(seen) == 3
    assert caught.value.retryable is True


async def test_cut_non_streaming_body(make_adapter, fake) -> None:
    fake.script(CutStream())
    with pytest.raises(ProviderError) as caught:
        await make_adapter().complete(MODEL, REQUEST, FAST)
    assert caught.value.retryable is True and caught.value.status is None


async def test_connection_refused(make_adapter) -> None:
    async with FakeUpstream() as upstream:
        base_url = upstream.base_url
    adapter = make_adapter(base_url=base_url)
    with pytest.raises(ProviderError) as caught:
        await adapter.complete(MODEL, REQUEST, FAST)
    assert caught.value.retryable is True and caught.value.status is None
    with pytest.raises(ProviderError):
        await adapter.list_models(FAST)


# --------------------------------------------------------------------------- keys


async def test_wrong_and_missing_key_are_authentication_errors(make_adapter, fake) -> None:
    wrong = "sk-wrong-abcdefghijklmnop"
    with pytest.raises(AuthenticationError) as caught:
        await make_adapter(api_key=wrong).complete(MODEL, REQUEST, FAST)
    assert caught.value.status == 401 and caught.value.retryable is False
    _no_secret(caught.value, wrong, KEY)
    with pytest.raises(AuthenticationError) as missing:
        await make_adapter(api_key=None).list_models(FAST)
    assert "authorization" not in fake.calls[-1].headers
    assert "didn't provide an API key" in str(missing.value)


async def test_no_api_key_in_any_error_message(make_adapter, fake) -> None:
    plain = "plainsecretvalue123"  # not key-shaped: masked because the adapter registers it
    register_secret("unrelated-registered-secret")
    adapter = make_adapter(keys=(plain, KEY))
    fake.script(
        Fail(500, message=f"upstream echoed Authorization: Bearer {KEY} and {KEY}"),
        Fail(400, message=f"bad key {plain} unrelated-registered-secret"),
    )
    errors = []
    for _ in range(2):
        with pytest.raises(ProviderError) as caught:
            await adapter.complete(MODEL, REQUEST, FAST)
        errors.append(caught.value)
    assert fake.calls[0].api_key == plain  # the 500 was answered to the first key
    for error in errors:
        _no_secret(error, KEY, plain, "unrelated-registered-secret")
        assert "***" in str(error)


async def test_key_rotation_on_401(make_adapter, fake) -> None:
    bad = "sk-revoked-0000000000000"
    adapter = make_adapter(keys=(bad, KEY))
    response = await adapter.complete(MODEL, REQUEST, FAST)
    assert response.content
    assert [c.api_key for c in fake.calls] == [bad, KEY]
    await adapter.complete(MODEL, REQUEST, FAST)
    assert [c.api_key for c in fake.calls] == [bad, KEY, KEY]  # the bad key stays aside


async def test_key_rotation_on_quota_then_recovery(make_adapter) -> None:
    keys = ("sk-first-000000000000", "sk-second-00000000000")
    async with FakeUpstream() as upstream:
        adapter = make_adapter(base_url=upstream.base_url, keys=keys, key_cooldown=30.0)
        now = [100.0]
        adapter.clock = lambda: now[0]
        upstream.script(Fail.quota(), Reply("from the second key"))
        response = await adapter.complete(MODEL, REQUEST, FAST)
        assert response.content == "from the second key"
        assert [c.api_key for c in upstream.calls] == list(keys)

        # transient 429s do not rotate: the key is fine, the caller should back off
        upstream.script(Fail.rate_limit(retry_after=1))
        with pytest.raises(RateLimitError) as transient:
            await adapter.complete(MODEL, REQUEST, FAST)
        assert transient.value.quota is False
        assert len(upstream.calls) == 3

        # both keys out of quota: tried once each, the last error is raised
        now[0] += 30.0  # the first key's cooldown is over
        upstream.script(Fail.quota(retry_after=5), Fail.quota())
        with pytest.raises(RateLimitError) as both:
            await adapter.complete(MODEL, REQUEST, FAST)
        assert both.value.quota is True
        assert [c.api_key for c in upstream.calls[3:]] == [keys[1], keys[0]]

        # every key set aside: fail fast without a request, saying when to come back
        with pytest.raises(RateLimitError) as aside:
            await adapter.complete(MODEL, REQUEST, FAST)
        assert len(upstream.calls) == 5
        assert aside.value.quota is True and aside.value.retry_after == pytest.approx(5.0)

        now[0] += 5.0  # the key with retry-after 5 s comes back first
        await adapter.complete(MODEL, REQUEST, FAST)
        assert upstream.calls[-1].api_key == keys[1]


async def test_all_keys_rejected(make_adapter, fake) -> None:
    adapter = make_adapter(keys=("sk-bad-1111111111111", "sk-bad-2222222222222"))
    with pytest.raises(AuthenticationError) as first:
        await adapter.complete(MODEL, REQUEST, FAST)
    assert len(fake.calls) == 2
    with pytest.raises(AuthenticationError) as second:
        await adapter.complete(MODEL, REQUEST, FAST)
    assert len(fake.calls) == 2
    assert "all 2 API keys" in str(second.value)
    _no_secret(first.value, "sk-bad-1111111111111", "sk-bad-2222222222222")


def test_config_accepts_a_single_string_key() -> None:
    assert OpenAIConfig(keys="sk-one").keys == ("sk-one",)  # type: ignore[arg-type]
