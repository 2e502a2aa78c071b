"""Anthropic error answers → the ModelMesh error tree; garbage → typed errors; no secrets."""

from __future__ import annotations

import pytest
from conftest import FAST, KEY, claude

from modelmesh_anthropic.fake import (
    DOC_ERROR,
    CutStream,
    Fail,
    MalformedJSON,
    Raw,
    Silent,
    WrongContentType,
)
from modelmesh_core.errors import (
    AuthenticationError,
    ContextLengthError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitError,
)
from modelmesh_core.types import CompletionRequest, Timeouts

HI = CompletionRequest(messages=[{"role": "user", "content": "Hello"}])


@pytest.mark.parametrize(
    ("status", "kind", "error_type", "retryable"),
    [
        (400, "invalid_request_error", ProviderError, False),
        (401, "authentication_error", AuthenticationError, False),
        (403, "permission_error", AuthenticationError, False),
        (404, "not_found_error", ProviderError, False),
        (413, "request_too_large", ProviderError, False),
        (429, "rate_limit_error", RateLimitError, True),
        (500, "api_error", ProviderError, True),
        (504, "timeout_error", ProviderError, True),
        (529, "overloaded_error", ProviderError, True),
    ],
)
async def test_error_types(make_adapter, fake, status, kind, error_type, retryable) -> None:
    fake.script(Fail(status))
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(claude(), HI, FAST)
    err = info.value
    assert type(err) is error_type
    assert err.status == status
    assert err.retryable is retryable
    assert f"type={kind}" in str(err)
    assert "request_id=req_fake" in str(err)
    assert err.provider_id == "claude" and err.model_id == "claude.claude-sonnet-4-5"


async def test_rate_limit_carries_retry_after_and_headers(make_adapter, fake) -> None:
    fake.script(Fail(429, retry_after=17, headers={
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-limit": "50"}))
    with pytest.raises(RateLimitError) as info:
        await make_adapter().complete(claude(), HI, FAST)
    err = info.value
    assert err.retry_after == 17.0
    assert not err.quota
    assert err.headers["retry-after"] == "17"
    assert err.rate_limit.remaining_requests == 0
    assert err.rate_limit.limit_requests == 50
    assert err.rate_limit.retry_after == 17.0


async def test_spend_limit_429_is_a_quota(make_adapter, fake) -> None:
    fake.script(Fail(429, message="You have reached your specified workspace API usage limits.",
                     details={"error_code": "enforced_spend_limit_reached"}))
    with pytest.raises(RateLimitError) as info:
        await make_adapter().complete(claude(), HI, FAST)
    assert info.value.quota and not info.value.retryable


async def test_billing_error_is_a_quota(make_adapter, fake) -> None:
    fake.script(Fail(402))
    with pytest.raises(RateLimitError) as info:
        await make_adapter().complete(claude(), HI, FAST)
    assert info.value.quota and info.value.status == 402


async def test_prompt_too_long_is_a_context_length_error(make_adapter, fake) -> None:
    fake.script(Fail(400, message="prompt is too long: 208310 tokens > 200000 maximum"))
    with pytest.raises(ContextLengthError):
        await make_adapter().complete(claude(), HI, FAST)


async def test_permission_error_about_a_model_spares_the_key(make_adapter, fake) -> None:
    fake.script(Fail(403, message="Your organization does not have access to this model."))
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(claude(), HI, FAST)
    assert type(info.value) is ProviderError and info.value.status == 403


async def test_documentation_error_example(make_adapter, fake) -> None:
    fake.script(Raw(DOC_ERROR, status=404))
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(claude(), HI, FAST)
    assert info.value.status == 404
    assert "The requested resource could not be found." in str(info.value)
    assert "request_id=req_011CSHoEeqs5C35K2UUqR7Fy" in str(info.value)


async def test_rejected_prefill_says_so(make_adapter, fake) -> None:
    prefilled = CompletionRequest(messages=[
        {"role": "user", "content": "Continue"}, {"role": "assistant", "content": "Once upon"}])
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(claude("claude-opus-4-6"), prefilled, FAST)
    assert info.value.status == 400 and not info.value.retryable
    assert "not supported for this model" in str(info.value)
    assert "assistant prefill" in str(info.value)
    with pytest.raises(ProviderError, match="assistant prefill"):
        async for _ in make_adapter().stream(claude("claude-opus-4-6"), prefilled, FAST):
            pass


async def test_wrong_key_is_an_authentication_error_without_the_key(make_adapter, fake) -> None:
    secret = "sk-ant-wrong-key-123456789"
    with pytest.raises(AuthenticationError) as info:
        await make_adapter(api_key=secret).complete(claude(), HI, FAST)
    assert secret not in str(info.value)
    assert "ANTHROPIC_API_KEY" in str(info.value)
    assert fake.calls[0].api_key == secret


async def test_missing_key_is_rejected_by_the_upstream(make_adapter, fake) -> None:
    with pytest.raises(AuthenticationError):
        await make_adapter(api_key=None).complete(claude(), HI, FAST)
    assert "x-api-key" not in fake.calls[0].headers


async def test_key_from_the_environment(make_adapter, fake, monkeypatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    response = await make_adapter(api_key=None).complete(claude(), HI, FAST)
    assert response.content
    assert fake.calls[0].api_key == KEY


@pytest.mark.parametrize(
    ("behaviour", "problem"),
    [
        (MalformedJSON(), "not valid JSON"),
        (WrongContentType(), "expected a JSON answer"),
        (Raw(b'{"type": "completion", "completion": "hi"}'), "not a message object"),
    ],
)
async def test_garbage_answers_are_retryable_typed_errors(make_adapter, fake, behaviour, problem):
    fake.script(behaviour)
    with pytest.raises(ProviderError, match=problem) as info:
        await make_adapter().complete(claude(), HI, FAST)
    assert info.value.retryable


async def test_html_error_page(make_adapter, fake) -> None:
    fake.script(Raw(b"<html><body>413 Request Entity Too Large</body></html>", status=413,
                    content_type="text/html"))
    with pytest.raises(ProviderError, match="413 Request Entity Too Large") as info:
        await make_adapter().complete(claude(), HI, FAST)
    assert info.value.status == 413 and not info.value.retryable


async def test_cut_body_is_a_transport_error(make_adapter, fake) -> None:
    fake.script(CutStream())
    with pytest.raises(ProviderError) as info:
        await make_adapter().complete(claude(), HI, FAST)
    assert info.value.retryable


async def test_silent_upstream_times_out(make_adapter, fake) -> None:
    fake.script(Silent())
    with pytest.raises(ProviderTimeoutError) as info:
        await make_adapter().complete(
            claude(), HI, Timeouts(connect=1.0, first_byte=0.3, idle=1.0, total=5.0))
    assert info.value.phase == "first_byte"


async def test_unreachable_upstream(make_adapter) -> None:
    adapter = make_adapter(base_url="http://127.0.0.1:9")
    with pytest.raises(ProviderError, match="check that the upstream is reachable") as info:
        await adapter.complete(claude(), HI, FAST)
    assert info.value.retryable and info.value.status is None
