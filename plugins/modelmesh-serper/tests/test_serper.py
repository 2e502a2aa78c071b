"""serper.search.v1: exact request, rank-derived scores, errors; Tavily → Serper failover."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from modelmesh_serper import SerperAdapter, SerperConfig
from modelmesh_serper.fake import FakeSerper

from modelmesh_core import ModelMesh
from modelmesh_core.errors import AuthenticationError, ProviderError
from modelmesh_core.operations import SearchRequest
from modelmesh_core.types import Model, ProviderContext, Timeouts
from modelmesh_core.vendor_fake import Fault

KEY = "serper-test-0123456789"
FAST = Timeouts(connect=2, first_byte=2, idle=2, total=5)
GOOGLE = Model(id="s.google", provider="s", upstream_id="google",
               capabilities=("retrieval.search.web-search",))
CORPUS = {"https://apple.com": ("Apple", "Discover the innovative world of Apple."),
          "https://en.wikipedia.org/wiki/Apple_Inc.": ("Apple Inc. - Wikipedia",
                                                      "Apple Inc. is an American company.")}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSerper]:
    async with FakeSerper.running(api_keys={KEY}, corpus=CORPUS) as upstream:
        yield upstream


@pytest.fixture
async def adapter(fake: FakeSerper) -> AsyncIterator[SerperAdapter]:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="s", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        yield SerperAdapter(context, SerperConfig(api_key=KEY, base_url=fake.url, gl="us"))


async def test_search_request_and_results(adapter: SerperAdapter, fake: FakeSerper) -> None:
    out = await adapter.search(GOOGLE, SearchRequest(query="apple inc", max_results=2), FAST)
    call = fake.calls[0]
    assert call.path == "/search" and call.headers["x-api-key"] == KEY
    assert "authorization" not in call.headers
    assert call.body == {"q": "apple inc", "num": 2, "gl": "us"}
    assert [r.url for r in out.results] == list(CORPUS)
    assert [r.score for r in out.results] == [1.0, 0.5]
    assert out.usage == {"requests": 1, "credits": 1}


async def test_errors(adapter: SerperAdapter, fake: FakeSerper) -> None:
    fake.script(Fault(status=400, message="Not enough credits"))
    with pytest.raises(ProviderError) as info:
        await adapter.search(GOOGLE, SearchRequest(query="x"), FAST)
    assert "Not enough credits" in str(info.value) and not info.value.retryable
    fake.script(Fault(html=True))
    with pytest.raises(ProviderError) as info:
        await adapter.search(GOOGLE, SearchRequest(query="x"), FAST)
    assert info.value.retryable


async def test_bad_key(fake: FakeSerper) -> None:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="s", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        wrong = SerperAdapter(context, SerperConfig(api_key="bad-serper-key-77",
                                                    base_url=fake.url))
        with pytest.raises(AuthenticationError):
            await wrong.search(GOOGLE, SearchRequest(query="x"), FAST)


async def test_search_fails_over_from_tavily_to_serper(fake: FakeSerper) -> None:
    from modelmesh_tavily.fake import FakeTavily

    async with FakeTavily.running(api_keys={"tvly-k-0123456789"}) as tavily:
        mesh = ModelMesh({
            "providers": {
                "tavily": {"connector": "tavily.search.v1",
                           "config": {"api_key": "tvly-k-0123456789", "base_url": tavily.url}},
                "serper": {"connector": "serper.search.v1",
                           "config": {"api_key": KEY, "base_url": fake.url}},
            },
            "models": {"tavily.search": {}, "serper.google": {}},
            "pools": {"web": {"capability": "web-search",
                              "models": ["tavily.search", "serper.google"],
                              "retry": {"initial_delay": "1ms", "same_model_retries": 0}}},
        })
        await mesh.initialize()
        try:
            tavily.script(Fault(status=502))
            out = await mesh.router.search("web-search", SearchRequest(query="apple"))
            assert out.model == "serper.google" and out.metadata["attempts"] == 2
            assert out.metadata["pool"] == "web"
            assert out.metadata["cost"] == pytest.approx(0.001)
        finally:
            await mesh.shutdown()
