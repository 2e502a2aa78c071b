"""tavily.search.v1 and serper-style failover: exact request, answer, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from modelmesh_tavily import TavilyAdapter, TavilyConfig
from modelmesh_tavily.fake import DOC_ANSWER, FakeTavily

from modelmesh_core.errors import AuthenticationError, ProviderError, RateLimitError
from modelmesh_core.operations import SearchRequest
from modelmesh_core.types import Model, ProviderContext, Timeouts
from modelmesh_core.vendor_fake import Fault

KEY = "tvly-test-0123456789abcdef"
FAST = Timeouts(connect=2, first_byte=2, idle=2, total=5)
SEARCH = Model(id="t.search", provider="t", upstream_id="search",
               capabilities=("retrieval.search.web-search",))
CORPUS = {"https://en.wikipedia.org/wiki/Lionel_Messi": (
    "Lionel Messi - Wikipedia", "Lionel Messi is an Argentine professional footballer."),
    "https://example.com/cats": ("Cats", "Cats are small furry animals.")}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTavily]:
    async with FakeTavily.running(api_keys={KEY}, corpus=CORPUS) as upstream:
        yield upstream


@pytest.fixture
async def adapter(fake: FakeTavily) -> AsyncIterator[TavilyAdapter]:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="t", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        yield TavilyAdapter(context, TavilyConfig(api_key=KEY, base_url=fake.url,
                                                  include_answer=True))


async def test_search_request_and_results(adapter: TavilyAdapter, fake: FakeTavily) -> None:
    out = await adapter.search(SEARCH, SearchRequest(query="Who is Leo Messi?", max_results=3,
                                                     extra={"topic": "general"}), FAST)
    call = fake.calls[0]
    assert call.path == "/search" and call.headers["authorization"] == f"Bearer {KEY}"
    assert call.body == {"query": "Who is Leo Messi?", "search_depth": "basic",
                         "include_answer": True, "max_results": 3, "topic": "general"}
    assert [r.url for r in out.results] == ["https://en.wikipedia.org/wiki/Lionel_Messi"]
    assert out.results[0].score == pytest.approx(0.5)
    assert out.answer and out.answer.startswith("Lionel Messi")
    assert out.usage == {"requests": 1, "credits": 1}


def test_documented_answer_shape() -> None:
    assert set(DOC_ANSWER["results"][0]) >= {"title", "url", "content", "score"}


@pytest.mark.parametrize(("fault", "kind", "retryable"), [
    (Fault(status=429, retry_after=2), RateLimitError, True),
    (Fault(status=432, message="This request exceeds your plan's set usage limit."),
     ProviderError, False),
    (Fault(status=500), ProviderError, True),
    (Fault(malformed=True), ProviderError, True),
    (Fault(cut=True), ProviderError, True),
])
async def test_errors_are_typed(adapter: TavilyAdapter, fake: FakeTavily, fault: Fault,
                                kind: type, retryable: bool) -> None:
    fake.script(fault)
    with pytest.raises(kind) as info:
        await adapter.search(SEARCH, SearchRequest(query="cats"), FAST)
    assert info.value.retryable is retryable
    if fault.status == 432:
        assert "usage limit" in str(info.value)  # read from {"detail": {"error": …}}


async def test_bad_key(fake: FakeTavily) -> None:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="t", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        wrong = TavilyAdapter(context, TavilyConfig(api_key="tvly-wrong-999999",
                                                    base_url=fake.url))
        with pytest.raises(AuthenticationError) as info:
            await wrong.search(SEARCH, SearchRequest(query="x"), FAST)
    assert "tvly-wrong-999999" not in str(info.value)
