"""Routing, failover, rotation, retry and streaming through real HTTP fake upstreams."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from modelmesh_core import (
    AllProvidersExhaustedError,
    CapabilityNotFoundError,
    CompletionRequest,
    ContentFilterError,
    EmbeddingRequest,
    NoActiveModelError,
    ProviderError,
    RoutingOptions,
    StreamInterruptedError,
)
from modelmesh_core.events import Event, EventType
from modelmesh_core.fakes import (
    CutStream,
    Fail,
    FakeUpstream,
    MalformedJSON,
    Reply,
    Silent,
    StallStream,
    WrongContentType,
)
from modelmesh_core.testing import openai_config

HI = [{"role": "user", "content": "hello"}]


def req(**kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=kw.pop("messages", HI), **kw)


def chat_calls(fake: FakeUpstream) -> int:
    return sum(1 for c in fake.calls if c.path.endswith("/chat/completions"))


async def three(fake_upstream: Any) -> tuple[FakeUpstream, FakeUpstream, FakeUpstream]:
    return await fake_upstream(), await fake_upstream(), await fake_upstream()


def cfg3(a: FakeUpstream, b: FakeUpstream, c: FakeUpstream, **pool: Any) -> dict[str, Any]:
    return openai_config([("a", a), ("b", b), ("c", c)], **pool)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]


async def test_a_fails_b_fails_c_answers_in_one_request(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.default, b.default = Fail(500), Fail(503)
    mesh = await make_mesh(cfg3(a, b, c))
    events = Recorder()
    mesh.events.subscribe(events)
    resp = await mesh.router.complete("chat", req())
    assert resp.model == "c.gpt-4o-mini"
    assert resp.provider == "c"
    assert resp.content == "Hello from the fake upstream!"
    assert resp.metadata["attempts"] == 3
    assert (chat_calls(a), chat_calls(b), chat_calls(c)) == (1, 1, 1)
    assert events.types().count(EventType.ATTEMPT_FAILED) == 2
    assert EventType.REQUEST_ROUTED in events.types()
    assert EventType.REQUEST_SUCCEEDED in events.types()
    assert EventType.POOL_ROTATED in events.types()


async def test_all_fail_raises_exhausted_with_every_attempt(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    for f in (a, b, c):
        f.default = Fail(502)
    mesh = await make_mesh(cfg3(a, b, c))
    events = Recorder()
    mesh.events.subscribe(events)
    with pytest.raises(AllProvidersExhaustedError) as info:
        await mesh.router.complete("chat", req())
    err = info.value
    assert [m for m, _ in err.attempts] == ["a.gpt-4o-mini", "b.gpt-4o-mini", "c.gpt-4o-mini"]
    assert all(isinstance(e, ProviderError) and e.status == 502 for _, e in err.attempts)
    assert "a.gpt-4o-mini" in str(err) and "HTTP 502" in str(err)
    assert events.of(EventType.POOL_EXHAUSTED) and events.of(EventType.REQUEST_FAILED)


async def test_max_attempts_bounds_the_walk(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.default = b.default = Fail(500)
    mesh = await make_mesh(cfg3(a, b, c, retry={"max_attempts": 2}))
    with pytest.raises(AllProvidersExhaustedError):
        await mesh.router.complete("chat", req())
    assert chat_calls(c) == 0


async def test_client_error_is_not_failed_over(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.script(Fail(400, message="bad 'temperature'"))
    mesh = await make_mesh(cfg3(a, b, c))
    with pytest.raises(ProviderError) as info:
        await mesh.router.complete("chat", req())
    assert info.value.status == 400
    assert chat_calls(b) == 0
    # and the model is not blamed for the caller's mistake
    assert mesh.state.model("a.gpt-4o-mini").consecutive_failures == 0


async def test_content_filter_is_raised_not_rotated(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.script(Fail.content_filter())
    mesh = await make_mesh(cfg3(a, b, c))
    with pytest.raises(ContentFilterError):
        await mesh.router.complete("chat", req())
    assert chat_calls(b) == 0


async def test_context_length_rotates_to_another_model(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.script(Fail.context_length())
    mesh = await make_mesh(cfg3(a, b, c))
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "b"


async def test_threshold_deactivation_and_cooldown_recovery(fake_upstream, make_mesh, manual_clock):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, failure_threshold=2, cooldown="30s",
                                strategy="modelmesh.priority-selection.v1"),
                           clock=manual_clock)
    events = Recorder()
    mesh.events.subscribe(events)
    a.script(Fail(500), Fail(500))
    assert (await mesh.router.complete("chat", req())).provider == "b"
    assert mesh.state.model("a.gpt-4o-mini").status == "active"
    assert (await mesh.router.complete("chat", req())).provider == "b"
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.status == "standby" and st.deactivation_reason == "error_threshold"
    assert events.of(EventType.MODEL_DEACTIVATED)[0].model == "a.gpt-4o-mini"
    # while cooling down, a is not even tried
    before = chat_calls(a)
    decision = await mesh.router.route("chat")
    assert decision.model_id == "b.gpt-4o-mini"
    assert "standby (error_threshold)" in decision.reasons["a.gpt-4o-mini"]
    await mesh.router.complete("chat", req())
    assert chat_calls(a) == before
    # cooldown expires: one half-open trial; success reactivates
    manual_clock.advance(31)
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "a"
    assert mesh.state.model("a.gpt-4o-mini").status == "active"
    assert events.of(EventType.MODEL_RECOVERED)[0].model == "a.gpt-4o-mini"


async def test_failed_half_open_trial_restarts_cooldown(fake_upstream, make_mesh, manual_clock):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, failure_threshold=1, cooldown="10s",
                                strategy="priority-selection"), clock=manual_clock)
    a.script(Fail(500))
    await mesh.router.complete("chat", req())
    assert mesh.state.model("a.gpt-4o-mini").status == "standby"
    manual_clock.advance(11)
    a.script(Fail(500))
    assert (await mesh.router.complete("chat", req())).provider == "b"
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.status == "standby"
    assert st.cooldown_until == pytest.approx(manual_clock() + 10)
    assert chat_calls(a) == 2


async def test_stick_until_failure_keeps_then_moves(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c))
    for _ in range(3):
        assert (await mesh.router.complete("chat", req())).provider == "a"
    a.script(Fail(503))
    assert (await mesh.router.complete("chat", req())).provider == "b"
    # a is healthy again but the pool sticks with b until b fails
    for _ in range(3):
        assert (await mesh.router.complete("chat", req())).provider == "b"


async def test_round_robin_through_the_mesh(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, strategy="round-robin"))
    seen = [(await mesh.router.complete("chat", req())).provider for _ in range(6)]
    assert seen == ["a", "b", "c", "a", "b", "c"]


async def test_error_rate_and_status_code_triggers(fake_upstream, make_mesh, manual_clock):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, strategy="priority-selection", failure_threshold=100,
                                error_rate_threshold=0.5, error_rate_min_requests=4,
                                deactivate_on=[418]), clock=manual_clock)
    a.script(Reply(), Fail(500), Reply(), Fail(500))
    for _ in range(4):
        await mesh.router.complete("chat", req())
    assert mesh.state.model("a.gpt-4o-mini").deactivation_reason == "error_rate"
    b.script(Fail(418))
    mesh.reactivate("a.gpt-4o-mini")
    mesh.deactivate("a.gpt-4o-mini")
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "c"
    assert mesh.state.model("b.gpt-4o-mini").deactivation_reason == "status_418"


async def test_request_limit_deactivates(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, max_requests=2, strategy="priority-selection"))
    providers = [(await mesh.router.complete("chat", req())).provider for _ in range(3)]
    assert providers == ["a", "a", "b"]
    assert mesh.state.model("a.gpt-4o-mini").deactivation_reason == "request_limit"


async def test_429_retry_after_is_honoured(fake_upstream, make_mesh, manual_clock):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, strategy="priority-selection"), clock=manual_clock)
    a.script(Fail.rate_limit(retry_after=20))
    assert (await mesh.router.complete("chat", req())).provider == "b"
    # priority prefers a, but a asked for 20 s: it is not called before then
    for _ in range(3):
        assert (await mesh.router.complete("chat", req())).provider == "b"
    assert chat_calls(a) == 1
    decision = await mesh.router.route("chat")
    assert "retry after" in decision.reasons["a.gpt-4o-mini"]
    manual_clock.advance(21)
    assert (await mesh.router.complete("chat", req())).provider == "a"


async def test_429_on_the_only_model_waits_retry_after_then_succeeds(fake_upstream, make_mesh):
    a = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a)]))
    a.script(Fail.rate_limit(retry_after=0.3))
    t0 = time.monotonic()
    resp = await mesh.router.complete("chat", req())
    waited = time.monotonic() - t0
    assert resp.provider == "a" and resp.metadata["attempts"] == 2
    assert waited >= 0.3
    gap = a.calls[1].time - a.calls[0].time
    assert gap >= 0.29


async def test_quota_429_deactivates_until_reset(fake_upstream, make_mesh, manual_clock):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, strategy="priority-selection"), clock=manual_clock)
    a.script(Fail.quota())
    assert (await mesh.router.complete("chat", req())).provider == "b"
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.deactivation_reason == "quota_exhausted"
    next_day = (int(manual_clock() // 86400) + 1) * 86400
    assert st.cooldown_until == next_day


async def test_auth_failure_takes_the_whole_provider_down(fake_upstream, make_mesh, manual_clock):
    a, b = await fake_upstream(api_keys={"sk-right-000000"}), await fake_upstream()
    cfg = openai_config([("a", a), ("b", b)], models=("gpt-4o-mini", "gpt-4o"),
                        strategy="priority-selection")
    mesh = await make_mesh(cfg, clock=manual_clock)
    events = Recorder()
    mesh.events.subscribe(events)
    assert (await mesh.router.complete("chat", req())).provider == "b"
    assert mesh.state.provider("a").auth_valid is False
    decision = await mesh.router.route("chat")
    assert "provider 'a' down" in decision.reasons["a.gpt-4o"]
    assert events.of(EventType.PROVIDER_DOWN)[0].provider == "a"
    # both of a's models were skipped after the first 401
    assert sum(1 for call in a.calls if call.path.endswith("/chat/completions")) == 1


async def test_silent_upstream_is_abandoned_after_one_timeout(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.default = Silent()
    cfg = cfg3(a, b, c, timeout={"first_byte": "300ms", "total": "5s"})
    mesh = await make_mesh(cfg)
    t0 = time.monotonic()
    resp = await mesh.router.complete("chat", req())
    elapsed = time.monotonic() - t0
    assert resp.provider == "b"
    assert chat_calls(a) == 1
    assert 0.3 <= elapsed < 1.5


async def test_connection_refused_fails_over(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    cfg = cfg3(a, b, c)
    await a.stop()
    mesh = await make_mesh(cfg)
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "b"
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.failures == 1 and st.last_error


@pytest.mark.parametrize("garbage", [MalformedJSON(), WrongContentType(), CutStream(1)])
async def test_upstream_garbage_fails_over(fake_upstream, make_mesh, garbage):
    a, b, c = await three(fake_upstream)
    a.script(garbage)
    mesh = await make_mesh(cfg3(a, b, c))
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "b"
    assert resp.content == "Hello from the fake upstream!"


async def test_stream_fails_over_invisibly_before_first_chunk(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.script(Fail(500))
    b.script(CutStream(after_chunks=0))
    mesh = await make_mesh(cfg3(a, b, c))
    chunks = [ch async for ch in mesh.router.stream(
        "chat", req(stream=True, extra={"stream_options": {"include_usage": True}}))]
    assert {ch.provider for ch in chunks} == {"c"}
    assert "".join(ch.content for ch in chunks) == "Hello from the fake upstream!"
    assert chunks[0].metadata["attempts"] == 3
    assert chunks[-1].usage["total_tokens"] > 0


async def test_stream_cut_after_first_chunk_is_continued_elsewhere(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.script(CutStream(after_chunks=2))
    mesh = await make_mesh(cfg3(a, b, c))
    chunks = [ch async for ch in mesh.router.stream("chat", req(stream=True))]
    assert "".join(ch.content for ch in chunks) == "Hello from the fake upstream!"
    assert chunks[0].provider == "a" and chunks[-1].provider == "b"
    assert chat_calls(b) == 1 and chat_calls(c) == 0
    assert mesh.state.model("a.gpt-4o-mini").failures == 1
    assert chunks[-1].metadata["continuations"] == 1


async def test_stream_cut_after_first_chunk_is_an_error_when_the_pool_says_so(
        fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.script(CutStream(after_chunks=2))
    mesh = await make_mesh(cfg3(a, b, c, streaming={"on_break": "error"}))
    seen: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for ch in mesh.router.stream("chat", req(stream=True)):
            seen.append(ch.content)
    assert seen, "chunks were delivered before the cut"
    assert info.value.model_id == "a.gpt-4o-mini"
    assert chat_calls(b) == 0, "on_break: error never continues a stream elsewhere"
    assert mesh.state.model("a.gpt-4o-mini").failures == 1


async def test_stalled_stream_hits_idle_timeout(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    a.script(StallStream(after_chunks=2))
    mesh = await make_mesh(cfg3(a, b, c, timeout={"idle": "300ms"},
                                streaming={"on_break": "error"}))
    t0 = time.monotonic()
    with pytest.raises(StreamInterruptedError):
        async for _ in mesh.router.stream("chat", req(stream=True)):
            pass
    assert time.monotonic() - t0 < 2.0


async def test_closing_a_stream_early_releases_the_upstream(fake_upstream, make_mesh):
    a = await fake_upstream()
    a.default = Reply(content="one two three four five six seven", chunk_delay=0.05)
    mesh = await make_mesh(openai_config([("a", a)]))
    agen = mesh.router.stream("chat", req(stream=True))
    first = await agen.__anext__()
    assert first.content is not None
    await agen.aclose()
    # the model is not marked as failed, and no recovery trial is left dangling
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.failures == 0 and not st.trial_in_flight
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "a"


async def test_preferred_provider_and_session_stickiness(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, strategy="session-stickiness"))
    resp = await mesh.router.complete("chat", req(), RoutingOptions(preferred_provider="c"))
    assert resp.provider == "c"
    s1 = [(await mesh.router.complete("chat", req(), RoutingOptions(session_id="s1"))).provider
          for _ in range(3)]
    assert len(set(s1)) == 1


async def test_unknown_name_and_no_active_model(fake_upstream, make_mesh):
    a = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a)]))
    with pytest.raises(CapabilityNotFoundError,
                       match=r"unknown model, pool or capability 'chta' \(did you mean 'chat'"):
        await mesh.router.complete("chta", req())
    mesh.deactivate("a.gpt-4o-mini")
    with pytest.raises(NoActiveModelError) as info:
        await mesh.router.complete("chat", req())
    assert info.value.reasons == {"a.gpt-4o-mini": "standby (manual)"}


async def test_concrete_model_id_and_capability_alias(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c))
    assert (await mesh.router.complete("c.gpt-4o-mini", req())).provider == "c"
    assert (await mesh.router.complete("chat-completion", req())).provider == "a"
    assert (await mesh.router.complete("generation.text-generation.chat-completion",
                                       req())).provider == "a"


async def test_embeddings_route_and_fail_over(fake_upstream, make_mesh):
    a, b = await fake_upstream(), await fake_upstream()
    cfg = {
        "providers": {n: {"connector": "openai.llm.v1",
                          "config": {"base_url": f.base_url, "api_key": "sk-test-000000"}}
                      for n, f in (("a", a), ("b", b))},
        "models": {"a.text-embedding-3-small": {}, "b.text-embedding-3-small": {}},
        "pools": {"embed": {"capability": "text-embeddings"}},
    }
    mesh = await make_mesh(cfg)
    a.script(Fail(500))
    resp = await mesh.router.embed("embed", EmbeddingRequest(input=["one", "two"]))
    assert resp.provider == "b" and len(resp.data) == 2 and len(resp.data[0]) == 16


async def test_rotate_and_reactivate(fake_upstream, make_mesh):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c))
    assert mesh.rotate("chat") == "b.gpt-4o-mini"
    assert (await mesh.router.complete("chat", req())).provider == "b"
    mesh.deactivate("b.gpt-4o-mini")
    assert (await mesh.router.complete("chat", req())).provider == "c"
    mesh.reactivate("b.gpt-4o-mini")
    assert mesh.pool_status()["chat"]["active_models"] == 3
    with pytest.raises(KeyError):
        mesh.rotate("nope")
    with pytest.raises(KeyError):
        mesh.router.get_pool("nope")
    assert [p.name for p in mesh.router.list_pools()] == ["chat"]


async def test_reload_keeps_state(fake_upstream, make_mesh, manual_clock):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, failure_threshold=1), clock=manual_clock)
    a.script(Fail(500))
    await mesh.router.complete("chat", req())
    await mesh.reload_config(cfg3(a, b, c, failure_threshold=1, strategy="round-robin"))
    assert mesh.pools["chat"].strategy_name == "modelmesh.round-robin.v1"
    assert mesh.state.model("a.gpt-4o-mini").status == "standby"
    got = {(await mesh.router.complete("chat", req())).provider for _ in range(4)}
    assert got == {"b", "c"}


async def test_batch_runs_with_bounded_concurrency(fake_upstream, make_mesh):
    a = await fake_upstream()
    a.default = Reply(delay=0.05)
    mesh = await make_mesh(openai_config([("a", a)]))
    job = await mesh.router.batch("chat", [req() for _ in range(8)], concurrency=2,
                                  native=False)
    assert job.status == "in_progress" and job.request_count == 8
    done = await mesh.router.wait_batch(job.job_id)
    assert done.status == "completed" and done.completed == 8
    assert all(r is not None and r.content for r in done.results)
    # never more than 2 requests in flight at the upstream
    times = sorted(call.time for call in a.calls)
    assert times[-1] - times[0] >= 0.05 * 3


async def test_batch_cancel(fake_upstream, make_mesh):
    a = await fake_upstream()
    a.default = Reply(delay=0.2)
    mesh = await make_mesh(openai_config([("a", a)]))
    job = await mesh.router.batch("chat", [req() for _ in range(6)], concurrency=1,
                                  native=False)
    await asyncio.sleep(0.3)
    job = await mesh.router.cancel_batch(job.job_id)
    assert job.status == "cancelled"
    assert 1 <= job.completed < 6


async def test_overhead_is_reported(fake_upstream, make_mesh):
    a = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a)]))
    resp = await mesh.router.complete("chat", req())
    assert 0 < resp.metadata["overhead_ms"] < resp.latency_ms + 50
    assert resp.metadata["pool"] == "chat" and resp.metadata["request_id"]


async def test_no_active_model_says_when_one_returns(fake_upstream, make_mesh, manual_clock):
    a = await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a)], failure_threshold=1, cooldown="40s"),
                           clock=manual_clock)
    a.script(Fail(500))
    with pytest.raises(AllProvidersExhaustedError):
        await mesh.router.complete("chat", req())
    manual_clock.advance(10)
    with pytest.raises(NoActiveModelError) as info:
        await mesh.router.complete("chat", req())
    assert info.value.retry_after == pytest.approx(30)
    mesh.deactivate("a.gpt-4o-mini")  # manual standby never ends by itself
    with pytest.raises(NoActiveModelError) as info:
        await mesh.router.complete("chat", req())
    assert info.value.retry_after is None


async def test_probe_on_start_marks_a_bad_provider_down(fake_upstream, make_mesh, manual_clock):
    a, b = await fake_upstream(api_keys={"sk-other-0000000"}), await fake_upstream()
    cfg = openai_config([("a", a), ("b", b)], strategy="priority-selection")
    cfg["discovery"] = {"probe_on_start": True}
    mesh = await make_mesh(cfg, clock=manual_clock)
    assert mesh.state.provider("a").available is False
    assert mesh.state.provider("b").available is True
    assert mesh.state.provider("b").last_probe == manual_clock()
    assert (await mesh.router.complete("chat", req())).provider == "b"
    assert chat_calls(a) == 0


async def test_rate_limit_headers_of_a_429_reach_the_state(fake_upstream, make_mesh, manual_clock):
    a, b, c = await three(fake_upstream)
    mesh = await make_mesh(cfg3(a, b, c, strategy="priority-selection"), clock=manual_clock)
    a.script(Fail(429, headers={"x-ratelimit-limit-requests": "60",
                                "x-ratelimit-remaining-requests": "0",
                                "x-ratelimit-reset-requests": "20s"}))
    assert (await mesh.router.complete("chat", req())).provider == "b"
    info = mesh.state.model("a.gpt-4o-mini").rate_limit
    assert info is not None and info.remaining_requests == 0 and info.reset_requests == 20
    # predicted, not rediscovered: a is avoided until the reported reset (20 s), well past
    # the short default back-off a bare 429 earns
    manual_clock.advance(10)
    decision = await mesh.router.route("chat")
    assert decision.model_id == "b.gpt-4o-mini"
    assert "no requests left" in decision.reasons["a.gpt-4o-mini"]
    manual_clock.advance(11)
    assert (await mesh.router.complete("chat", req())).provider == "a"


async def test_half_open_lets_exactly_one_trial_through(fake_upstream, make_mesh, manual_clock):
    a, b = await fake_upstream(), await fake_upstream()
    cfg = openai_config([("b", b), ("a", a)], strategy="priority-selection",
                        failure_threshold=1, cooldown="10s")
    mesh = await make_mesh(cfg, clock=manual_clock)
    a.script(Fail(500))
    mesh.rotate("chat")  # make a's failure happen: route a first once
    mesh.deactivate("b.gpt-4o-mini")
    with pytest.raises(AllProvidersExhaustedError):
        await mesh.router.complete("chat", req())
    mesh.reactivate("b.gpt-4o-mini")
    assert mesh.state.model("a.gpt-4o-mini").status == "standby"
    manual_clock.advance(11)  # a's cooldown is over: one trial may go to it
    b.default = Reply(delay=0.2)
    b.script(*[Fail(503, delay=0.2)] * 10)
    a.default = Fail(500, delay=0.1)
    before = chat_calls(a)
    results = await asyncio.gather(
        *(mesh.router.complete("chat", req()) for _ in range(10)), return_exceptions=True)
    assert chat_calls(a) - before == 1, "a recovering model gets one trial, not one per request"
    assert all(isinstance(r, Exception) for r in results)


async def test_reload_during_a_request_lets_it_finish(fake_upstream, make_mesh):
    a, b = await fake_upstream(), await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a), ("b", b)]))
    a.script(Fail(500, delay=0.3))
    task = asyncio.ensure_future(mesh.router.complete("chat", req()))
    await asyncio.sleep(0.1)
    await mesh.reload_config(openai_config([("a", a)]))  # b disappears mid-request
    resp = await task
    assert resp.provider == "b"


async def test_a_bad_request_does_not_move_the_pool(fake_upstream, make_mesh):
    a, b = await fake_upstream(), await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a), ("b", b)]))
    a.script(Fail(400, message="Invalid schema"))
    with pytest.raises(ProviderError):
        await mesh.router.complete("chat", req())
    for _ in range(3):
        assert (await mesh.router.complete("chat", req())).provider == "a"


async def test_request_limit_counts_from_reactivation(fake_upstream, make_mesh):
    a, b = await fake_upstream(), await fake_upstream()
    mesh = await make_mesh(openai_config([("a", a), ("b", b)], max_requests=2,
                                         strategy="priority-selection"))
    for _ in range(2):
        await mesh.router.complete("chat", req())
    assert mesh.state.model("a.gpt-4o-mini").deactivation_reason == "request_limit"
    mesh.reactivate("a.gpt-4o-mini")
    providers = [(await mesh.router.complete("chat", req())).provider for _ in range(3)]
    assert providers == ["a", "a", "b"]


async def test_all_rate_limited_is_reported_as_such(fake_upstream, make_mesh, manual_clock):
    a, b = await fake_upstream(), await fake_upstream()
    # waits longer than max_retry_after are not slept through: the request fails at once
    mesh = await make_mesh(openai_config([("a", a), ("b", b)], retry={"max_retry_after": "1s"}),
                           clock=manual_clock)
    events = Recorder()
    mesh.events.subscribe(events)
    a.script(Fail.rate_limit(retry_after=60))
    b.script(Fail.rate_limit(retry_after=30))
    with pytest.raises(AllProvidersExhaustedError) as first:
        await mesh.router.complete("chat", req())
    assert first.value.retry_after == 30
    with pytest.raises(NoActiveModelError) as info:
        await mesh.router.complete("chat", req())
    assert info.value.rate_limited and info.value.retry_after == pytest.approx(30)
    assert events.of(EventType.REQUEST_FAILED)[-1].data["error"] == "NoActiveModelError"
    mesh.deactivate("a.gpt-4o-mini")  # one of them now held back by something else
    with pytest.raises(NoActiveModelError) as info:
        await mesh.router.complete("chat", req())
    assert not info.value.rate_limited


async def test_403_for_one_model_leaves_the_provider_up(fake_upstream, make_mesh):
    a, b = await fake_upstream(), await fake_upstream()
    cfg = openai_config([("a", a), ("b", b)], models=("gpt-4o", "gpt-4o-mini"),
                        strategy="priority-selection")
    mesh = await make_mesh(cfg)
    a.script(Fail(403, code="model_not_found",
                  message="Project proj_x does not have access to model gpt-4o"))
    resp = await mesh.router.complete("chat", req())
    assert resp.model == "a.gpt-4o-mini"  # same provider, other model
    assert mesh.state.provider("a").available
    a.script(Fail(403, code="unsupported_country_region_territory"))
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "b"
    assert not mesh.state.provider("a").available


async def test_provider_retry_settings_override_the_pools(fake_upstream, make_mesh):
    a, b = await fake_upstream(), await fake_upstream()
    cfg = openai_config([("a", a), ("b", b)])
    cfg["providers"]["a"]["retry"] = {"same_model_retries": 2, "backoff": "fixed",
                                      "initial_delay": "10ms", "max_delay": "10ms"}
    mesh = await make_mesh(cfg)
    a.script(Fail(503), Fail(502))
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "a" and resp.metadata["attempts"] == 3  # retried twice on a
    assert chat_calls(b) == 0
    b.script(Fail(503))
    mesh.rotate("chat")  # now b first: the pool's default (no same-model retry) applies
    resp = await mesh.router.complete("chat", req())
    assert resp.provider == "a" and chat_calls(b) == 1
