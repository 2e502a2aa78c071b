"""The streaming rule through the library: free failover until the first content, exact stream
endings, continuation after a mid-stream break (prefill and restart-and-splice), disconnect
accounting, half-open providers and waiting for the first choice.

Every test runs real HTTP against :class:`FakeUpstream` servers and asserts the exact text the
caller received, the upstream request bodies, usage, cost and model health afterwards.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from modelmesh_core import CompletionRequest, StreamInterruptedError
from modelmesh_core.events import Event, EventType
from modelmesh_core.fakes import (
    CutStream,
    Fail,
    FakeUpstream,
    MalformedChunk,
    NoDone,
    Prefill,
    Reply,
    StallStream,
    StreamError,
    tool_call,
)
from modelmesh_core.testing import openai_config

ANSWER = "The quick brown fox jumps over the lazy dog and runs far away."
WORDS = ANSWER.split()
HI = [{"role": "user", "content": "tell me about the fox"}]
PRICE = {"input": 1.0, "output": 2.0}  # USD per 1M tokens
PRIORITY = {"connector": "modelmesh.priority-selection.v1",
            "config": {"provider_priority": ["a", "b"]}}


def req(**kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=kw.pop("messages", HI), stream=True,
                             extra={"stream_options": {"include_usage": True}}, **kw)


def chats(fake: FakeUpstream) -> list[Any]:
    return [c for c in fake.calls if c.path.endswith("/chat/completions")]


def config(*fakes: tuple[str, FakeUpstream], prefill: tuple[str, ...] = (),
           **pool: Any) -> dict[str, Any]:
    cfg = openai_config(fakes, **pool)
    for name, _ in fakes:
        model = cfg["models"][f"{name}.gpt-4o-mini"]
        model["pricing"] = PRICE
        if name in prefill:
            model["features"] = ["assistant_prefill"]
    return cfg


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]


async def collect(mesh: Any, request: CompletionRequest | None = None,
                  name: str = "chat") -> tuple[str, list[Any]]:
    chunks = [c async for c in mesh.router.stream(name, request or req())]
    return "".join(c.content for c in chunks), chunks


async def pair(fake_upstream: Any, **b_kw: Any) -> tuple[FakeUpstream, FakeUpstream]:
    a = await fake_upstream(default=Reply(ANSWER))
    b = await fake_upstream(default=Reply(ANSWER), **b_kw)
    return a, b


def cost(usage: dict[str, int]) -> float:
    return (usage["prompt_tokens"] * PRICE["input"]
            + usage["completion_tokens"] * PRICE["output"]) / 1e6


# --------------------------------------------------------------------------- exact endings


async def test_missing_done_after_finish_reason_is_a_billed_healthy_success(
        fake_upstream, make_mesh):
    a, b = await pair(fake_upstream)
    a.script(NoDone(finish_reason=True))
    mesh = await make_mesh(config(("a", a), ("b", b)))
    text, chunks = await collect(mesh)
    assert text == ANSWER
    assert len(chats(a)) == 1 and not chats(b)
    usage = chunks[-1].usage
    assert usage["completion_tokens"] == len(WORDS)
    assert chunks[-1].metadata["cost"] == pytest.approx(cost(usage))
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.failures == 0 and st.successes == 1
    assert st.cost == pytest.approx(cost(usage))


async def test_done_without_a_finish_reason_is_never_a_success(fake_upstream, make_mesh):
    a = await fake_upstream(default=Reply(ANSWER))
    a.script(NoDone(finish_reason=False))
    mesh = await make_mesh(config(("a", a)))
    seen: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in mesh.router.stream("chat", req()):
            seen.append(chunk.content)
    assert "".join(seen) == ANSWER  # every word arrived, but the end did not
    assert "finish_reason" in str(info.value)
    assert mesh.state.model("a.gpt-4o-mini").failures == 1


# --------------------------------------------------------------------------- free failover


async def test_role_only_first_chunk_then_failure_fails_over_invisibly(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream)
    a.script(CutStream(after_chunks=1))  # the role chunk only, then the connection drops
    mesh = await make_mesh(config(("a", a), ("b", b)))
    text, chunks = await collect(mesh)
    assert text == ANSWER
    assert {c.provider for c in chunks} == {"b"}
    assert chunks[0].metadata["attempts"] == 2
    assert "segments" not in chunks[-1].metadata  # nothing was continued: a plain failover
    assert chats(b)[0].body["messages"] == HI


async def test_stall_after_role_chunk_fails_over_within_the_idle_timeout(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream)
    a.script(StallStream(after_chunks=1))
    mesh = await make_mesh(config(("a", a), ("b", b), timeout={"idle": "300ms"}))
    t0 = time.monotonic()
    text, _ = await collect(mesh)
    assert text == ANSWER
    assert time.monotonic() - t0 < 2.0


# --------------------------------------------------------------------------- continuation


@pytest.mark.parametrize("fault", [
    CutStream(after_words=4),
    StallStream(after_words=4),
    MalformedChunk(after_words=4),
    StreamError(after_words=4),
    NoDone(finish_reason=False),
], ids=["cut", "stall", "malformed", "in-band-error", "no-finish"])
async def test_break_mid_answer_is_continued_by_prefill(fake_upstream, make_mesh, fault):
    a, b = await pair(fake_upstream, prefill=Prefill.CONTINUE)
    a.script(fault)
    mesh = await make_mesh(config(("a", a), ("b", b), prefill=("b",),
                                  timeout={"idle": "300ms"}))
    events = Recorder()
    mesh.events.subscribe(events)
    text, chunks = await collect(mesh)
    assert text == ANSWER, "every word once, none missing"
    delivered = ANSWER if isinstance(fault, NoDone) else " ".join(WORDS[:4])
    sent = chats(b)[0].body["messages"]
    assert sent[:-1] == HI
    assert sent[-1] == {"role": "assistant", "content": delivered}
    # one id, one role, one finish reason
    assert len({c.id for c in chunks}) == 1
    assert [c.role for c in chunks if c.role] == ["assistant"]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    md = chunks[-1].metadata
    assert md["continuations"] == 1
    assert [(s["model"], s["mode"]) for s in md["segments"]] == [
        ("a.gpt-4o-mini", "original"), ("b.gpt-4o-mini", "prefill")]
    # usage covers both upstream calls: a's estimated from what it sent, b's as reported
    a_usage, b_usage = md["segments"][0]["usage"], md["segments"][1]["usage"]
    assert md["segments"][0]["estimated_usage"] is True
    assert a_usage["completion_tokens"] == (len(delivered) + 3) // 4
    assert chunks[-1].usage["total_tokens"] == a_usage["total_tokens"] + b_usage["total_tokens"]
    assert md["cost"] == pytest.approx(cost(a_usage) + cost(b_usage))
    # health: a broke (a failure), b served (a success); both are billed
    sa, sb = mesh.state.model("a.gpt-4o-mini"), mesh.state.model("b.gpt-4o-mini")
    assert (sa.failures, sa.successes, sb.failures, sb.successes) == (1, 0, 0, 1)
    assert sa.cost == pytest.approx(cost(a_usage)) and sb.cost == pytest.approx(cost(b_usage))
    assert len(events.of(EventType.STREAM_CONTINUED)) == 1


async def test_restart_is_spliced_when_it_begins_with_the_delivered_text(fake_upstream,
                                                                         make_mesh):
    a, b = await pair(fake_upstream)  # b has no assistant_prefill: it restarts
    a.script(CutStream(after_words=5))
    mesh = await make_mesh(config(("a", a), ("b", b)))
    text, chunks = await collect(mesh)
    assert text == ANSWER
    assert chats(b)[0].body["messages"] == HI  # no prefill sent
    md = chunks[-1].metadata
    assert [s["mode"] for s in md["segments"]] == ["original", "restart"]
    # b generated the whole answer and is billed for all of it
    assert md["segments"][1]["usage"]["completion_tokens"] == len(WORDS)


async def test_rejected_prefill_restarts_and_splices_the_same_answer(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream, prefill=Prefill.REJECT)
    a.script(CutStream(after_words=3))
    mesh = await make_mesh(config(("a", a), ("b", b), prefill=("b",)))
    text, chunks = await collect(mesh)
    assert text == ANSWER
    first, second = chats(b)
    assert first.body["messages"][-1] == {"role": "assistant", "content": " ".join(WORDS[:3])}
    assert second.body["messages"] == HI
    sb = mesh.state.model("b.gpt-4o-mini")
    assert sb.failures == 0 and sb.successes == 1  # the 400 was not held against b
    assert [s["mode"] for s in chunks[-1].metadata["segments"]] == ["original", "restart"]


async def test_rejected_prefill_with_another_answer_ends_cleanly_naming_the_break(
        fake_upstream, make_mesh):
    a = await fake_upstream(default=Reply(ANSWER))
    b = await fake_upstream(default=Reply("A completely different answer about cats."),
                            prefill=Prefill.REJECT)
    a.script(CutStream(after_words=3))
    mesh = await make_mesh(config(("a", a), ("b", b), prefill=("b",)))
    seen: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in mesh.router.stream("chat", req()):
            seen.append(chunk.content)
    assert "".join(seen) == " ".join(WORDS[:3])  # nothing of b's answer leaked through
    err = info.value
    assert err.model_id == "a.gpt-4o-mini"  # the original break is named
    assert "b.gpt-4o-mini could not continue it" in str(err)
    assert err.retryable is False
    assert len(chats(b)) == 2
    sb = mesh.state.model("b.gpt-4o-mini")
    assert sb.failures == 0  # b answered; it is not its fault
    assert sb.cost > 0  # but what it generated is billed


async def test_a_continuation_that_breaks_is_continued_again(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream, prefill=Prefill.CONTINUE)
    c = await fake_upstream(default=Reply(ANSWER), prefill=Prefill.CONTINUE)
    a.script(CutStream(after_words=2))
    b.script(CutStream(after_words=3))
    mesh = await make_mesh(config(("a", a), ("b", b), ("c", c), prefill=("b", "c")))
    text, chunks = await collect(mesh)
    assert text == ANSWER
    assert chats(b)[0].body["messages"][-1]["content"] == " ".join(WORDS[:2])
    assert chats(c)[0].body["messages"][-1]["content"] == " ".join(WORDS[:5])
    md = chunks[-1].metadata
    assert md["continuations"] == 2
    assert [s["model"] for s in md["segments"]] == ["a.gpt-4o-mini", "b.gpt-4o-mini",
                                                    "c.gpt-4o-mini"]
    assert chunks[-1].usage["total_tokens"] == sum(
        s["usage"]["total_tokens"] for s in md["segments"])
    assert mesh.state.model("b.gpt-4o-mini").failures == 1


async def test_on_break_error_keeps_the_old_rule(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream, prefill=Prefill.CONTINUE)
    a.script(CutStream(after_words=2))
    mesh = await make_mesh(config(("a", a), ("b", b), prefill=("b",),
                                  streaming={"on_break": "error"}))
    seen: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in mesh.router.stream("chat", req()):
            seen.append(chunk.content)
    assert "".join(seen) == " ".join(WORDS[:2])
    assert "after 9 characters were delivered" in str(info.value)
    assert not chats(b)
    # the broken part was billed even though the request failed
    assert mesh.state.model("a.gpt-4o-mini").cost > 0


async def test_max_continuations_bounds_the_chain(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream, prefill=Prefill.CONTINUE)
    c = await fake_upstream(default=Reply(ANSWER), prefill=Prefill.CONTINUE)
    a.script(CutStream(after_words=2))
    b.script(CutStream(after_words=2))
    mesh = await make_mesh(config(("a", a), ("b", b), ("c", c), prefill=("b", "c"),
                                  streaming={"max_continuations": 1}))
    with pytest.raises(StreamInterruptedError):
        await collect(mesh)
    assert len(chats(b)) == 1 and not chats(c)


async def test_a_break_during_a_tool_call_is_an_error(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream, prefill=Prefill.CONTINUE)
    a.script(CutStream(after_chunks=3),
             )
    a.default = Reply("", tool_calls=[tool_call("lookup", {"q": "fox" * 20})])
    mesh = await make_mesh(config(("a", a), ("b", b), prefill=("b",)))
    with pytest.raises(StreamInterruptedError) as info:
        await collect(mesh)
    assert "a tool call was in progress" in str(info.value)
    assert not chats(b)


async def test_continuation_on_a_model_that_cannot_prefill_or_match_ends_cleanly(
        fake_upstream, make_mesh):
    """With only one candidate there is nobody to continue: a clean error, billed."""
    a = await fake_upstream(default=Reply(ANSWER))
    a.script(CutStream(after_words=4))
    mesh = await make_mesh(config(("a", a)))
    seen: list[str] = []
    with pytest.raises(StreamInterruptedError) as info:
        async for chunk in mesh.router.stream("chat", req()):
            seen.append(chunk.content)
    assert "".join(seen) == " ".join(WORDS[:4])
    assert "no candidate could continue it" in str(info.value)


# --------------------------------------------------------------------------- disconnect


async def test_a_caller_leaving_mid_stream_is_billed_and_reported(fake_upstream, make_mesh):
    a = await fake_upstream(default=Reply(ANSWER, chunk_delay=0.02))
    mesh = await make_mesh(config(("a", a)))
    events = Recorder()
    mesh.events.subscribe(events)
    agen = mesh.router.stream("chat", req())
    got = [await agen.__anext__() for _ in range(3)]
    await agen.aclose()
    delivered = "".join(c.content for c in got)
    assert delivered == " ".join(WORDS[:3])
    (ev,) = events.of(EventType.REQUEST_CANCELLED)
    assert ev.data["delivered_chars"] == len(delivered)
    assert ev.data["estimated_usage"] is True
    assert ev.data["usage"]["completion_tokens"] == (len(delivered) + 3) // 4
    st = mesh.state.model("a.gpt-4o-mini")
    assert st.failures == 0 and st.successes == 0 and not st.trial_in_flight
    assert st.cost == pytest.approx(ev.data["cost"]) and st.cost > 0
    assert st.completion_tokens == ev.data["usage"]["completion_tokens"]
    assert got[-1].metadata["cancelled"] is True
    assert got[-1].metadata["cost"] == pytest.approx(st.cost)


# --------------------------------------------------------------------------- half-open providers


async def test_after_a_provider_cooldown_exactly_one_trial_goes_through(fake_upstream,
                                                                        make_mesh):
    a = await fake_upstream(default=Reply(ANSWER, delay=0.2))
    b = await fake_upstream(default=Reply(ANSWER))
    mesh = await make_mesh(config(("a", a), ("b", b), strategy=PRIORITY))
    a.script(Fail(401))  # rejected credentials take the whole provider down
    assert (await mesh.router.complete("chat", CompletionRequest(messages=HI))).provider == "b"
    ps = mesh.state.provider("a")
    assert not ps.available and ps.deactivation_reason == "authentication_rejected"
    ps.cooldown_until = time.time() - 0.01  # the cooldown has expired
    calls = len(chats(a))
    results = await asyncio.gather(*(mesh.router.complete(
        "chat", CompletionRequest(messages=HI)) for _ in range(5)))
    assert len(chats(a)) - calls == 1, "one trial request, however many were waiting"
    assert sorted(r.provider for r in results) == ["a", "b", "b", "b", "b"]
    ps = mesh.state.provider("a")
    assert ps.available and not ps.trial_in_flight


async def test_a_failed_provider_trial_puts_it_down_again(fake_upstream, make_mesh):
    a = await fake_upstream(default=Fail(500))
    b = await fake_upstream(default=Reply(ANSWER))
    mesh = await make_mesh(config(("a", a), ("b", b), strategy=PRIORITY))
    a.script(Fail(401))
    await mesh.router.complete("chat", CompletionRequest(messages=HI))
    ps = mesh.state.provider("a")
    ps.cooldown_until = time.time() - 0.01
    resp = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert resp.provider == "b" and len(chats(a)) == 2
    assert not ps.available and not ps.trial_in_flight
    assert ps.cooldown_until - time.time() == pytest.approx(300, abs=5)  # as long as before


# --------------------------------------------------------------------------- Retry-After


async def test_pool_waits_for_its_first_choice_when_retry_after_is_short(fake_upstream,
                                                                        make_mesh):
    a, b = await pair(fake_upstream)
    a.script(Fail.rate_limit(retry_after=0.3))
    mesh = await make_mesh(config(("a", a), ("b", b), retry={"max_same_model_wait": "1s"}))
    t0 = time.monotonic()
    resp = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert resp.provider == "a" and len(chats(a)) == 2 and not chats(b)
    assert time.monotonic() - t0 >= 0.3
    assert resp.metadata["attempts"] == 2


async def test_a_long_retry_after_rotates_at_once(fake_upstream, make_mesh):
    a, b = await pair(fake_upstream)
    a.script(Fail(503, retry_after=5))
    mesh = await make_mesh(config(("a", a), ("b", b), retry={"max_same_model_wait": "1s"}))
    t0 = time.monotonic()
    resp = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert resp.provider == "b" and time.monotonic() - t0 < 1.0


async def test_a_503_retry_after_is_honoured_by_the_retry_after_backoff(fake_upstream,
                                                                        make_mesh):
    a, b = await pair(fake_upstream)
    a.script(Fail(503, retry_after=0.4))
    mesh = await make_mesh(config(("a", a), ("b", b), retry={
        "backoff": "retry_after", "same_model_retries": 1, "initial_delay": "10ms"}))
    t0 = time.monotonic()
    resp = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert resp.provider == "a" and not chats(b)
    assert time.monotonic() - t0 >= 0.4  # the upstream's wait, not the 10 ms initial delay


async def test_a_429_retried_on_the_same_model_with_the_retry_after_backoff(fake_upstream,
                                                                           make_mesh):
    a, b = await pair(fake_upstream)
    a.script(Fail.rate_limit(retry_after=0.3))
    mesh = await make_mesh(config(("a", a), ("b", b), retry={
        "backoff": "retry_after", "same_model_retries": 1}))
    t0 = time.monotonic()
    resp = await mesh.router.complete("chat", CompletionRequest(messages=HI))
    assert resp.provider == "a" and time.monotonic() - t0 >= 0.3
