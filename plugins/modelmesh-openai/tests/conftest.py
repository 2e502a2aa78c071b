"""Fixtures for the modelmesh-openai tests: a real fake upstream and one session per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from modelmesh_core.fakes import FakeUpstream
from modelmesh_core.types import ProviderContext
from modelmesh_openai import OpenAIAdapter, OpenAIConfig, modelmesh_providers

KEY = "sk-test-0123456789abcdef"
SPECS = {spec.name: spec for spec in modelmesh_providers()}


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake OpenAI upstream that accepts only ``KEY``."""
    async with FakeUpstream(api_keys={KEY}) as upstream:
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
        name="alpha", session=lambda: session, json_dumps=orjson.dumps, json_loads=orjson.loads
    )


@pytest.fixture
def make_adapter(
    context: ProviderContext, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., OpenAIAdapter]:
    """Build an adapter through the registered factory, pointed at the fake by default."""
    for spec in SPECS.values():
        for var in spec.env_vars:
            monkeypatch.delenv(var, raising=False)

    def make(connector: str = "openai.llm.v1", **config: object) -> OpenAIAdapter:
        config.setdefault("base_url", fake.base_url)
        if "keys" not in config:
            config.setdefault("api_key", KEY)
        return SPECS[connector].factory(context, OpenAIConfig(**config))  # type: ignore[arg-type]

    return make
