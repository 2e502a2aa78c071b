"""ModelMesh provider connector for Tavily web search: ``tavily.search.v1``.

``POST /search`` (``Authorization: Bearer tvly-…``) as the core's ``search`` operation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from yarl import URL

from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.operations import SearchRequest, SearchResponse, SearchResult
from modelmesh_core.types import Model, ModelInfo, Pricing, ProviderContext, ProviderSpec, Timeouts
from modelmesh_core.vendor import VendorHTTP

__all__ = ["CONNECTOR", "TavilyAdapter", "TavilyConfig", "modelmesh_providers"]

CONNECTOR = "tavily.search.v1"
DEFAULT_BASE_URL = "https://api.tavily.com"
ENV_KEY = "TAVILY_API_KEY"


@frozen(kw_only=True)
class TavilyConfig:
    """The ``config:`` of ``tavily.search.v1``.

    Attributes:
        api_key: the key (default ``TAVILY_API_KEY``).
        base_url: default ``https://api.tavily.com``.
        search_depth: ``basic`` (1 credit) or ``advanced`` (2 credits), unless the request's
            ``extra`` says.
        include_answer: ask Tavily for a short answer (the response's ``answer``).
    """

    api_key: str | None = None
    base_url: str | None = None
    search_depth: str = "basic"
    include_answer: bool = False


class TavilyAdapter(VendorHTTP):
    """``search`` against Tavily."""

    def __init__(self, context: ProviderContext, config: TavilyConfig | None) -> None:
        config = config or TavilyConfig()
        key = config.api_key or os.environ.get(ENV_KEY) or ""
        super().__init__(context, base_url=config.base_url or DEFAULT_BASE_URL,
                         headers={"Authorization": f"Bearer {key}"} if key else {},
                         secrets=(key,), vendor="Tavily")
        self.config = config
        self._url = URL(f"{self.base_url}/search")

    def error_message(self, payload: Any, raw: bytes) -> str:
        """Tavily answers ``{"detail": {"error": "..."}}``."""
        if isinstance(payload, dict) and isinstance(payload.get("detail"), dict):
            error = payload["detail"].get("error")
            if isinstance(error, str) and error:
                return error
        return super().error_message(payload, raw)

    async def search(self, model: Model, request: SearchRequest,
                     timeouts: Timeouts) -> SearchResponse:
        """``POST /search``; ``extra`` (``topic``, ``include_domains``, …) passes through."""
        body: dict[str, Any] = {"query": request.query,
                                "search_depth": self.config.search_depth,
                                "include_answer": self.config.include_answer}
        if request.max_results is not None:
            body["max_results"] = request.max_results
        body.update(request.extra)
        payload = await self.call_json("POST", self._url, model_id=model.id,
                                       timeouts=timeouts, json=body)
        try:
            results = tuple(
                SearchResult(title=str(r.get("title") or ""), url=str(r["url"]),
                             content=str(r.get("content") or ""),
                             score=float(r["score"]) if r.get("score") is not None else None,
                             published_date=r.get("published_date"))
                for r in payload["results"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.bad_payload("the answer has no results[].url", model.id) from None
        credits = 2 if body.get("search_depth") == "advanced" else 1
        answer = payload.get("answer")
        return SearchResponse(query=request.query, results=results, model=model.id,
                              provider=self.name,
                              answer=answer if isinstance(answer, str) else None,
                              usage={"requests": 1, "credits": credits})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """The catalogue's name (Tavily has no models)."""
        return ["search"]


CATALOGUE = (ModelInfo(name="search", capabilities=("retrieval.search.web-search",),
                       delivery_modes=frozenset({"sync"}), context_window=400,
                       pricing=Pricing(per_request=0.008)),)
"""One model, ``search``; the price is per basic search (USD, list price when written)."""


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``tavily.search.v1`` connector."""
    return [ProviderSpec(name=CONNECTOR, factory=TavilyAdapter, config_type=TavilyConfig,
                         env_vars=(ENV_KEY,), default_base_url=DEFAULT_BASE_URL,
                         catalogue=CATALOGUE, auth="bearer", description="Tavily web search")]
