"""Each timeout phase raises ProviderTimeoutError naming it, promptly, and never hangs."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from modelmesh_core.errors import ProviderTimeoutError
from modelmesh_core.fakes import Reply, Silent, StallStream
from modelmesh_core.types import CompletionRequest, EmbeddingRequest, Model, Timeouts

MODEL = Model(
    id="alpha.gpt-4o-mini",
    provider="alpha",
    upstream_id="gpt-4o-mini",
    capabilities=("generation.text-generation.chat-completion",),
)
REQUEST = CompletionRequest(messages=[{"role": "user", "content": "hi"}])
LONG = " ".join(f"word{i}" for i in range(40))


@pytest.fixture
def unaccepting() -> Iterator[str]:
    """A base URL whose listening socket never accepts and whose backlog is full."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    address = server.getsockname()
    fillers = []
    for _ in range(8):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    time.sleep(0.05)
    try:
        yield f"http://{address[0]}:{address[1]}/v1"
    finally:
        for filler in fillers:
            filler.close()
        server.close()


async def _phase(call) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as caught:
        await call()
    assert caught.value.retryable is True
    return caught.value.phase, time.monotonic() - start


async def _drain(adapter, timeouts) -> list:
    return [c async for c in adapter.stream(MODEL, REQUEST, timeouts)]


async def test_connect_timeout(make_adapter, unaccepting) -> None:
    adapter = make_adapter(base_url=unaccepting)
    timeouts = Timeouts(connect=0.3, first_byte=5.0, idle=5.0, total=10.0)
    phase, took = await _phase(lambda: adapter.complete(MODEL, REQUEST, timeouts))
    assert phase == "connect" and took < 2.0


async def test_first_byte_timeout_silent_upstream(make_adapter, fake) -> None:
    fake.script(Silent(), Silent(), Silent())
    adapter = make_adapter()
    timeouts = Timeouts(connect=2.0, first_byte=0.2, idle=5.0, total=10.0)
    phase, took = await _phase(lambda: adapter.complete(MODEL, REQUEST, timeouts))
    assert phase == "first_byte" and 0.15 < took < 1.5
    phase, _ = await _phase(lambda: _drain(adapter, timeouts))
    assert phase == "first_byte"
    phase, _ = await _phase(lambda: adapter.embed(MODEL, EmbeddingRequest(input="x"), timeouts))
    assert phase == "first_byte"


async def test_first_byte_bounds_the_first_stream_event(make_adapter, fake) -> None:
    fake.script(StallStream(after_chunks=0))
    timeouts = Timeouts(connect=2.0, first_byte=0.2, idle=5.0, total=10.0)
    phase, took = await _phase(lambda: _drain(make_adapter(), timeouts))
    assert phase == "first_byte" and took < 1.5


async def test_idle_timeout_between_stream_chunks(make_adapter, fake) -> None:
    fake.script(StallStream(after_chunks=2))
    timeouts = Timeouts(connect=2.0, first_byte=5.0, idle=0.2, total=10.0)
    seen = []

    async def consume() -> None:
        async for chunk in make_adapter().stream(MODEL, REQUEST, timeouts):
            seen.append(chunk)

    phase, took = await _phase(consume)
    assert phase == "idle" and took < 1.5
    assert len(seen) == 2


async def test_idle_timeout_on_a_stalled_body(make_adapter, fake) -> None:
    fake.script(StallStream())
    timeouts = Timeouts(connect=2.0, first_byte=5.0, idle=0.2, total=10.0)
    phase, took = await _phase(lambda: make_adapter().complete(MODEL, REQUEST, timeouts))
    assert phase == "idle" and took < 1.5


async def test_total_timeout_on_a_slow_stream(make_adapter, fake) -> None:
    fake.script(Reply(LONG, chunk_delay=0.05))
    timeouts = Timeouts(connect=2.0, first_byte=5.0, idle=1.0, total=0.4)
    phase, took = await _phase(lambda: _drain(make_adapter(), timeouts))
    assert phase == "total" and 0.35 < took < 1.5


async def test_total_timeout_before_headers(make_adapter, fake) -> None:
    fake.script(Reply(delay=2.0))
    timeouts = Timeouts(connect=2.0, first_byte=5.0, idle=5.0, total=0.3)
    phase, took = await _phase(lambda: make_adapter().complete(MODEL, REQUEST, timeouts))
    assert phase == "total" and took < 1.5


async def test_timeouts_can_be_disabled(make_adapter, fake) -> None:
    fake.script(Reply("slow but fine", delay=0.1, chunk_delay=0.02))
    timeouts = Timeouts(connect=None, first_byte=None, idle=None, total=None)
    chunks = await _drain(make_adapter(), timeouts)
    assert "".join(c.content for c in chunks) == "slow but fine"


async def test_timeout_message_names_phase_and_fix(make_adapter, fake) -> None:
    fake.script(Silent())
    timeouts = Timeouts(connect=2.0, first_byte=0.1, idle=5.0, total=10.0)
    with pytest.raises(ProviderTimeoutError) as caught:
        await make_adapter().complete(MODEL, REQUEST, timeouts)
    assert "first_byte timeout of 0.1s" in str(caught.value)
    assert "alpha" in str(caught.value)


async def test_a_slow_consumer_is_not_an_idle_upstream(make_adapter, fake) -> None:
    """Back-pressure: a caller that reads slower than the idle timeout does not make the
    upstream look stalled (the idle deadline only runs while the adapter waits on it)."""
    fake.script(Reply("one two three four", chunk_delay=0.01))
    timeouts = Timeouts(connect=2.0, first_byte=2.0, idle=0.2, total=10.0)
    text = []
    async for chunk in make_adapter().stream(MODEL, REQUEST, timeouts):
        text.append(chunk.content)
        await asyncio.sleep(0.5)
    assert "".join(text) == "one two three four"


async def test_idle_deadline_follows_each_line(make_adapter, fake) -> None:
    """Chunks 0.15 s apart with a 0.25 s idle timeout stream to the end (the deadline moves
    with every line), and a stall after them is caught within about one idle period."""
    fake.script(Reply("a b c d e f", chunk_delay=0.15))
    timeouts = Timeouts(connect=2.0, first_byte=2.0, idle=0.25, total=10.0)
    chunks = [c async for c in make_adapter().stream(MODEL, REQUEST, timeouts)]
    assert "".join(c.content for c in chunks) == "a b c d e f"
    fake.script(StallStream(after_chunks=3))
    t0 = time.monotonic()
    with pytest.raises(ProviderTimeoutError) as info:
        async for _ in make_adapter().stream(MODEL, REQUEST, timeouts):
            pass
    assert info.value.phase == "idle" and time.monotonic() - t0 < 1.0
