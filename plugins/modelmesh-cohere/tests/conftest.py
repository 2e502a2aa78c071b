"""Fixtures for the modelmesh-cohere tests: a real fake Cohere upstream and one session per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from modelmesh_cohere import CohereAdapter, CohereConfig, modelmesh_providers
from modelmesh_cohere.fake import FakeCohere
from modelmesh_core.types import ProviderContext

KEY = "co-test-0123456789abcdef"
SPEC = modelmesh_providers()[0]


@pytest.fixture
async def fake() -> AsyncIterator[FakeCohere]:
    """A fake Cohere upstream that accepts only ``KEY``."""
    async with FakeCohere(api_keys={KEY}) as upstream:
        yield upstream


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session per test, closed at the end."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def context(session: aiohttp.ClientSession) -> ProviderContext:
    """The provider context the core would hand the factory."""
    return ProviderContext(
        name="co", session=lambda: session, json_dumps=orjson.dumps, json_loads=orjson.loads
    )


@pytest.fixture
def make_adapter(
    context: ProviderContext, fake: FakeCohere, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., CohereAdapter]:
    """Build an adapter through the registered factory, pointed at the fake by default."""
    for var in (*SPEC.env_vars, "CO_API_URL"):
        monkeypatch.delenv(var, raising=False)

    def make(**config: object) -> CohereAdapter:
        config.setdefault("base_url", fake.url)
        config.setdefault("api_key", KEY)
        return SPEC.factory(context, CohereConfig(**config))  # type: ignore[arg-type]

    return make
