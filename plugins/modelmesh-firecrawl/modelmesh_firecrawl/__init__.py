"""ModelMesh provider connector for Firecrawl: ``firecrawl.scrape.v1``.

``POST /v1/scrape`` (``formats: ["markdown"]``) as the core's ``scrape`` operation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from yarl import URL

from modelmesh_core.errors import ProviderError
from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.operations import ScrapeRequest, ScrapeResponse
from modelmesh_core.types import Model, ModelInfo, Pricing, ProviderContext, ProviderSpec, Timeouts
from modelmesh_core.vendor import VendorHTTP

__all__ = ["CONNECTOR", "FirecrawlAdapter", "FirecrawlConfig", "modelmesh_providers"]

CONNECTOR = "firecrawl.scrape.v1"
DEFAULT_BASE_URL = "https://api.firecrawl.dev"
ENV_KEY = "FIRECRAWL_API_KEY"


@frozen(kw_only=True)
class FirecrawlConfig:
    """The ``config:`` of ``firecrawl.scrape.v1``.

    Attributes:
        api_key: the key (default ``FIRECRAWL_API_KEY``).
        base_url: default ``https://api.firecrawl.dev`` (``/v1/scrape`` is appended; a
            self-hosted Firecrawl works too).
        only_main_content: Firecrawl's ``onlyMainContent`` (default true).
    """

    api_key: str | None = None
    base_url: str | None = None
    only_main_content: bool = True


class FirecrawlAdapter(VendorHTTP):
    """``scrape`` against Firecrawl."""

    def __init__(self, context: ProviderContext, config: FirecrawlConfig | None) -> None:
        config = config or FirecrawlConfig()
        key = config.api_key or os.environ.get(ENV_KEY) or ""
        super().__init__(context, base_url=config.base_url or DEFAULT_BASE_URL,
                         headers={"Authorization": f"Bearer {key}"} if key else {},
                         secrets=(key,), vendor="Firecrawl")
        self.config = config
        self._url = URL(f"{self.base_url}/v1/scrape")

    async def scrape(self, model: Model, request: ScrapeRequest,
                     timeouts: Timeouts) -> ScrapeResponse:
        """``POST /v1/scrape`` ``{"url", "formats": ["markdown"], "onlyMainContent"}``."""
        body: dict[str, Any] = {"url": request.url, "formats": ["markdown"],
                                "onlyMainContent": self.config.only_main_content}
        body.update(request.extra)
        payload = await self.call_json("POST", self._url, model_id=model.id,
                                       timeouts=timeouts, json=body)
        if payload.get("success") is not True:
            # a 200 that says it failed (the page could not be scraped): another provider may
            raise ProviderError(str(payload.get("error") or "scrape failed"),
                                provider_id=self.name, model_id=model.id, status=200,
                                retryable=True)
        data = payload.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("markdown"), str):
            raise self.bad_payload("the answer has no data.markdown", model.id)
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        assert isinstance(meta, dict)
        return ScrapeResponse(url=str(meta.get("sourceURL") or request.url),
                              content=data["markdown"], title=meta.get("title"),
                              page=dict(meta), model=model.id, provider=self.name,
                              usage={"requests": 1, "credits": 1})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """The catalogue's name."""
        return ["scrape"]


CATALOGUE = (ModelInfo(name="scrape", capabilities=(
    "understanding.document-understanding.document-parsing",),
    delivery_modes=frozenset({"sync"}), context_window=1_000_000,
    pricing=Pricing(per_request=0.00083)),)
"""One model, ``scrape``; the price is per page (one credit, USD, when written)."""


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``firecrawl.scrape.v1`` connector."""
    return [ProviderSpec(name=CONNECTOR, factory=FirecrawlAdapter, config_type=FirecrawlConfig,
                         env_vars=(ENV_KEY,), default_base_url=DEFAULT_BASE_URL,
                         catalogue=CATALOGUE, auth="bearer",
                         description="Firecrawl (a web page as Markdown)")]
