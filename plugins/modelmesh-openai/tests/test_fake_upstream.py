"""FakeUpstream itself: wire shapes (checked with the official SDK), scripting, thread mode."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import orjson
import pytest

from modelmesh_core.fakes import (
    Fail,
    FakeUpstream,
    Flaky,
    ManualClock,
    RateLimited,
    Reply,
    Silent,
    format_reset,
    tool_call,
)

KEY = "sk-test-0123456789abcdef"


def test_official_sdk_against_threaded_fake() -> None:
    with FakeUpstream.running_in_thread(api_keys={KEY}) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
        try:
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
            )
            assert reply.choices[0].message.content == "Hello from the fake upstream!"
            assert reply.usage is not None and reply.usage.prompt_tokens == 2

            fake.script(Reply("a b c", tool_calls=[tool_call("f", {"x": 1})]))
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert chunks[0].choices[0].delta.role == "assistant"
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
                "a b c"
            )
            assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
            args = "".join(
                tc.function.arguments or ""
                for c in chunks
                if c.choices
                for tc in (c.choices[0].delta.tool_calls or ())
            )
            assert orjson.loads(args) == {"x": 1}
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

            vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
            assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 16
            assert [m.id for m in client.models.list()] == list(fake.models)

            fake.script(Fail.quota())
            with pytest.raises(openai.RateLimitError) as quota:
                client.models.list()
            assert quota.value.code == "insufficient_quota"
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(
                    base_url=fake.base_url, api_key="sk-nope-123456789", max_retries=0
                ).models.list()
        finally:
            client.close()


async def test_sse_framing_and_headers(session: aiohttp.ClientSession) -> None:
    async with FakeUpstream() as fake:
        fake.script(Reply("x y"))
        async with session.post(
            f"{fake.base_url}/chat/completions",
            json={"model": "m", "messages": [], "stream": True},
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            raw = await resp.read()
            headers = resp.headers
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: ") for e in events[:-1])
    payloads = [orjson.loads(e[6:]) for e in events[:-2]]
    assert [p["object"] for p in payloads] == ["chat.completion.chunk"] * 4
    assert "usage" not in payloads[0]  # only present when include_usage was asked
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"
    for name in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{name}-requests" in headers
        assert f"x-ratelimit-{name}-tokens" in headers


async def test_rate_limited_uses_the_injected_clock(session: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    async with FakeUpstream(default=RateLimited(rpm=2), clock=clock) as fake:
        statuses = []
        for _ in range(3):
            async with session.get(f"{fake.base_url}/models") as resp:
                statuses.append(resp.status)
                last = resp
                body = await resp.json()
        assert statuses == [200, 200, 429]
        assert last.headers["retry-after"] == "60"
        assert last.headers["x-ratelimit-remaining-requests"] == "0"
        assert body["error"]["code"] == "rate_limit_exceeded"
        clock.advance(60)
        async with session.get(f"{fake.base_url}/models") as resp:
            assert resp.status == 200
        assert isinstance(fake.calls[2].behaviour, Fail)
        assert isinstance(fake.calls[3].behaviour, Reply)


async def test_remaining_counts_reset_with_the_window(session: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    async with FakeUpstream(clock=clock, rpm_limit=100) as fake:
        remaining = []
        for step in (0, 10, 60):
            clock.advance(step)
            async with session.get(f"{fake.base_url}/models") as resp:
                remaining.append(resp.headers["x-ratelimit-remaining-requests"])
                reset = resp.headers["x-ratelimit-reset-requests"]
        assert remaining == ["99", "98", "99"]
        assert reset == "1m0s"


async def test_flaky_is_reproducible_with_a_seed(session: aiohttp.ClientSession) -> None:
    async def statuses() -> list[int]:
        async with FakeUpstream(default=Flaky(0.5, seed=42)) as fake:
            out = []
            for _ in range(20):
                async with session.get(f"{fake.base_url}/models") as resp:
                    out.append(resp.status)
            return out

    first, second = await statuses(), await statuses()
    assert first == second
    assert set(first) == {200, 500}


async def test_script_reset_and_records(session: aiohttp.ClientSession) -> None:
    async with FakeUpstream(default=Reply("default")) as fake:
        fake.default = Fail(503)
        fake.script(Reply("scripted"))
        assert fake.pending == 1
        for _ in range(2):
            async with session.post(
                f"{fake.base_url}/chat/completions", json={"model": "m", "messages": []}
            ):
                pass
        assert [c.scripted for c in fake.calls] == [True, False]
        assert fake.calls[0].behaviour == Reply("scripted")
        assert fake.calls[1].behaviour == Fail(503)
        assert fake.calls[0].body == {"model": "m", "messages": []}
        assert fake.calls[0].time <= fake.calls[1].time <= time.monotonic()
        fake.script(Fail(500))
        fake.reset()
        assert fake.calls == [] and fake.pending == 0 and fake.default == Reply("default")
        async with session.get(f"{fake.url}/v1/nothing-here") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_silent_does_not_hang_shutdown(session: aiohttp.ClientSession) -> None:
    fake = await FakeUpstream(default=Silent()).start()
    request = asyncio.ensure_future(session.get(f"{fake.base_url}/models"))
    await asyncio.sleep(0.1)
    assert not request.done()
    start = time.monotonic()
    await fake.stop()
    assert time.monotonic() - start < 2.0
    try:
        resp = await asyncio.wait_for(request, 2.0)
    except aiohttp.ClientError:
        pass
    else:
        assert resp.status == 503
        resp.release()


def test_format_reset() -> None:
    assert [format_reset(s) for s in (0.02, 1, 1.5, 59.9994, 360, 3725)] == [
        "20ms",
        "1s",
        "1.5s",
        "59.999s",
        "6m0s",
        "1h2m5s",
    ]
