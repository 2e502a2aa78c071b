"""ModelMesh provider connector for Serper (Google results): ``serper.search.v1``.

``POST https://google.serper.dev/search`` with ``X-API-KEY`` as the core's ``search``
operation. Serper gives ranks, not scores: a result's ``score`` is ``1 / position``.
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

__all__ = ["CONNECTOR", "SerperAdapter", "SerperConfig", "modelmesh_providers"]

CONNECTOR = "serper.search.v1"
DEFAULT_BASE_URL = "https://google.serper.dev"
ENV_KEY = "SERPER_API_KEY"


@frozen(kw_only=True)
class SerperConfig:
    """The ``config:`` of ``serper.search.v1``.

    Attributes:
        api_key: the key (default ``SERPER_API_KEY``), sent as ``X-API-KEY``.
        base_url: default ``https://google.serper.dev``.
        gl / hl: country and language of the results (``us``, ``en``) unless the request's
            ``extra`` says.
    """

    api_key: str | None = None
    base_url: str | None = None
    gl: str | None = None
    hl: str | None = None


class SerperAdapter(VendorHTTP):
    """``search`` against Serper."""

    def __init__(self, context: ProviderContext, config: SerperConfig | None) -> None:
        config = config or SerperConfig()
        key = config.api_key or os.environ.get(ENV_KEY) or ""
        super().__init__(context, base_url=config.base_url or DEFAULT_BASE_URL,
                         headers={"X-API-KEY": key} if key else {}, secrets=(key,),
                         vendor="Serper")
        self.config = config
        self._url = URL(f"{self.base_url}/search")

    async def search(self, model: Model, request: SearchRequest,
                     timeouts: Timeouts) -> SearchResponse:
        """``POST /search`` with ``{"q", "num"}`` (+ ``gl`` / ``hl`` and ``extra``)."""
        body: dict[str, Any] = {"q": request.query}
        if request.max_results is not None:
            body["num"] = request.max_results
        for key in ("gl", "hl"):
            value = getattr(self.config, key)
            if value:
                body[key] = value
        body.update(request.extra)
        payload = await self.call_json("POST", self._url, model_id=model.id,
                                       timeouts=timeouts, json=body)
        organic = payload.get("organic")
        if not isinstance(organic, list):
            raise self.bad_payload("the answer has no organic[] results", model.id)
        try:
            results = tuple(
                SearchResult(title=str(r.get("title") or ""), url=str(r["link"]),
                             content=str(r.get("snippet") or ""),
                             score=round(1.0 / int(r.get("position") or i + 1), 6),
                             published_date=r.get("date"))
                for i, r in enumerate(organic))
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
            raise self.bad_payload("an organic result has no link", model.id) from None
        box = payload.get("answerBox")
        answer = None
        if isinstance(box, dict):
            answer = box.get("answer") or box.get("snippet")
        credits = payload.get("credits")
        return SearchResponse(query=request.query, results=results, model=model.id,
                              provider=self.name,
                              answer=answer if isinstance(answer, str) else None,
                              usage={"requests": 1,
                                     "credits": credits if isinstance(credits, int) else 1})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """The catalogue's name."""
        return ["google"]


CATALOGUE = (ModelInfo(name="google", capabilities=("retrieval.search.web-search",),
                       delivery_modes=frozenset({"sync"}), context_window=2048,
                       pricing=Pricing(per_request=0.001)),)
"""One model, ``google``; the price is per query (USD, list price when written)."""


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``serper.search.v1`` connector."""
    return [ProviderSpec(name=CONNECTOR, factory=SerperAdapter, config_type=SerperConfig,
                         env_vars=(ENV_KEY,), default_base_url=DEFAULT_BASE_URL,
                         catalogue=CATALOGUE, auth="header:X-API-KEY",
                         description="Serper Google search results")]
