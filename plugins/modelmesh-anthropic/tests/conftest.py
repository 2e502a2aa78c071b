"""Fixtures for the modelmesh-anthropic tests: a real fake upstream and one session per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from modelmesh_anthropic import AnthropicAdapter, AnthropicConfig
from modelmesh_anthropic.fake import FakeAnthropic
from modelmesh_core.types import Model, ProviderContext, Timeouts

KEY = "sk-ant-test-0123456789abcdef"
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)


def claude(name: str = "claude-sonnet-4-5", max_output: int | None = 64_000) -> Model:
    """A routable model the way the mesh builds it from the catalogue."""
    return Model(
        id=f"claude.{name}",
        provider="claude",
        upstream_id=name,
        capabilities=("generation.text-generation.chat-completion",),
        max_output_tokens=max_output,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    """A fake Anthropic API that accepts only ``KEY``."""
    async with FakeAnthropic(api_keys={KEY}, no_prefill_models=("claude-opus-4-6",)) as upstream:
        yield upstream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session per test, closed at the end."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def make_adapter(
    session: aiohttp.ClientSession, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., AnthropicAdapter]:
    """Build an adapter as the core would, pointed at the fake by default."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    context = ProviderContext(
        name="claude", session=lambda: session, json_dumps=orjson.dumps, json_loads=orjson.loads
    )

    def make(**config: object) -> AnthropicAdapter:
        config.setdefault("base_url", fake.base_url)
        config.setdefault("api_key", KEY)
        return AnthropicAdapter(context, AnthropicConfig(**config))  # type: ignore[arg-type]

    return make
