"""Fixtures for the modelmesh-gemini tests: a real fake Gemini upstream and one session per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from gemini_testlib import KEY, SPEC

from modelmesh_core.types import ProviderContext
from modelmesh_gemini import GeminiAdapter, GeminiConfig
from modelmesh_gemini._config import KEY_ENV
from modelmesh_gemini.fake import FakeGemini


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own Gemini keys never leak into a test."""
    for var in KEY_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    """A fake Gemini upstream that accepts only ``KEY``."""
    async with FakeGemini(api_keys={KEY}) as upstream:
        yield upstream


@pytest.fixture
async def gemini_upstream() -> AsyncIterator[Callable[..., Awaitable[FakeGemini]]]:
    """Factory: ``await gemini_upstream(**kwargs)`` starts another fake, stopped afterwards."""
    started: list[FakeGemini] = []

    async def make(**kwargs: Any) -> FakeGemini:
        kwargs.setdefault("api_keys", {KEY})
        upstream = await FakeGemini(**kwargs).start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session per test, closed at the end."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def context(session: aiohttp.ClientSession) -> ProviderContext:
    """The provider context the core would hand the factory."""
    return ProviderContext(
        name="alpha", session=lambda: session, json_dumps=orjson.dumps, json_loads=orjson.loads
    )


@pytest.fixture
def make_adapter(context: ProviderContext, fake: FakeGemini) -> Callable[..., GeminiAdapter]:
    """Build an adapter through the registered factory, pointed at the fake by default."""

    def make(**config: Any) -> GeminiAdapter:
        config.setdefault("base_url", fake.base_url)
        config.setdefault("api_key", KEY)
        adapter = SPEC.factory(context, GeminiConfig(**config))
        assert isinstance(adapter, GeminiAdapter)
        return adapter

    return make


@pytest.fixture
def adapter(make_adapter: Callable[..., GeminiAdapter]) -> GeminiAdapter:
    """The default adapter: the fake, the right key."""
    return make_adapter()
