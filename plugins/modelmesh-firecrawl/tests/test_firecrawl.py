"""firecrawl.scrape.v1: exact request, the page, errors (also a 200 with success false)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from modelmesh_firecrawl import FirecrawlAdapter, FirecrawlConfig
from modelmesh_firecrawl.fake import FakeFirecrawl

from modelmesh_core.errors import ProviderError, RateLimitError
from modelmesh_core.operations import ScrapeRequest
from modelmesh_core.types import Model, ProviderContext, Timeouts
from modelmesh_core.vendor_fake import Fault

KEY = "fc-test-0123456789abcdef"
FAST = Timeouts(connect=2, first_byte=2, idle=2, total=5)
SCRAPE = Model(id="f.scrape", provider="f", upstream_id="scrape",
               capabilities=("understanding.document-understanding.document-parsing",))
PAGE = "# Firecrawl\n\nTurn websites into LLM-ready data."


@pytest.fixture
async def fake() -> AsyncIterator[FakeFirecrawl]:
    async with FakeFirecrawl.running(api_keys={KEY},
                                     pages={"https://firecrawl.dev": PAGE}) as upstream:
        yield upstream


@pytest.fixture
async def adapter(fake: FakeFirecrawl) -> AsyncIterator[FirecrawlAdapter]:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="f", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        yield FirecrawlAdapter(context, FirecrawlConfig(api_key=KEY, base_url=fake.url))


async def test_scrape_request_and_page(adapter: FirecrawlAdapter, fake: FakeFirecrawl) -> None:
    out = await adapter.scrape(SCRAPE, ScrapeRequest(url="https://firecrawl.dev",
                                                     extra={"waitFor": 500}), FAST)
    call = fake.calls[0]
    assert call.path == "/v1/scrape" and call.headers["authorization"] == f"Bearer {KEY}"
    assert call.body == {"url": "https://firecrawl.dev", "formats": ["markdown"],
                         "onlyMainContent": True, "waitFor": 500}
    assert out.content == PAGE and out.title == "Firecrawl"
    assert out.page["statusCode"] == 200 and out.url == "https://firecrawl.dev"


async def test_success_false_is_a_retryable_error(adapter: FirecrawlAdapter) -> None:
    with pytest.raises(ProviderError) as info:
        await adapter.scrape(SCRAPE, ScrapeRequest(url="https://nowhere.example"), FAST)
    assert info.value.retryable and "Failed to scrape" in str(info.value)


async def test_payment_required_is_a_quota_error(adapter: FirecrawlAdapter,
                                                 fake: FakeFirecrawl) -> None:
    fake.script(Fault(status=402, message="Payment required to access this resource."))
    with pytest.raises(RateLimitError) as info:
        await adapter.scrape(SCRAPE, ScrapeRequest(url="https://firecrawl.dev"), FAST)
    assert info.value.quota and "Payment required" in str(info.value)
