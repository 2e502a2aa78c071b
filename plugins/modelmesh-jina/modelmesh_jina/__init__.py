"""ModelMesh provider connector for Jina AI: ``jina.ai.v1``.

Embeddings (``POST /v1/embeddings``), reranking (``POST /v1/rerank``) and the Reader
(``POST https://r.jina.ai/`` with ``Accept: application/json``: a web page as Markdown) as
the core's ``embed``, ``rerank`` and ``scrape`` operations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from yarl import URL

from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.operations import (
    RerankRequest,
    RerankResponse,
    RerankResult,
    ScrapeRequest,
    ScrapeResponse,
)
from modelmesh_core.types import (
    EmbeddingRequest,
    EmbeddingResponse,
    Model,
    ModelInfo,
    Pricing,
    ProviderContext,
    ProviderSpec,
    Timeouts,
)
from modelmesh_core.vendor import Deadline, VendorHTTP

__all__ = ["CONNECTOR", "JinaAdapter", "JinaConfig", "modelmesh_providers"]

CONNECTOR = "jina.ai.v1"
DEFAULT_BASE_URL = "https://api.jina.ai"
DEFAULT_READER_URL = "https://r.jina.ai"
ENV_KEY = "JINA_API_KEY"


@frozen(kw_only=True)
class JinaConfig:
    """The ``config:`` of ``jina.ai.v1``.

    Attributes:
        api_key: the key (default ``JINA_API_KEY``).
        base_url: the API (default ``https://api.jina.ai``; ``/v1/embeddings`` and
            ``/v1/rerank`` are appended).
        reader_url: the Reader (default ``https://r.jina.ai``).
        embedding_task: ``task`` sent with embeddings when the request gives none (e.g.
            ``retrieval.passage``); None sends none.
    """

    api_key: str | None = None
    base_url: str | None = None
    reader_url: str | None = None
    embedding_task: str | None = None


class JinaAdapter(VendorHTTP):
    """``embed``, ``rerank`` and ``scrape`` against Jina's APIs."""

    def __init__(self, context: ProviderContext, config: JinaConfig | None) -> None:
        config = config or JinaConfig()
        key = config.api_key or os.environ.get(ENV_KEY) or ""
        super().__init__(context, base_url=config.base_url or DEFAULT_BASE_URL,
                         headers={"Authorization": f"Bearer {key}"} if key else {},
                         secrets=(key,), vendor="Jina")
        self.config = config
        self._embed_url = URL(f"{self.base_url}/v1/embeddings")
        self._rerank_url = URL(f"{self.base_url}/v1/rerank")
        self._reader_url = URL((config.reader_url or DEFAULT_READER_URL).rstrip("/") + "/")

    def error_message(self, payload: Any, raw: bytes) -> str:
        """Jina answers ``{"detail": "..."}`` (the Reader ``{"message", "readableMessage"}``)."""
        if isinstance(payload, dict):
            for key in ("detail", "readableMessage", "message"):
                value = payload.get(key)
                if isinstance(value, str) and value:
                    return value
        return super().error_message(payload, raw)

    async def embed(self, model: Model, request: EmbeddingRequest,
                    timeouts: Timeouts) -> EmbeddingResponse:
        """``POST /v1/embeddings`` (float vectors, input order)."""
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        body: dict[str, Any] = {"model": model.upstream_id, "input": texts,
                                "embedding_type": "float"}
        task = request.extra.get("task") or self.config.embedding_task
        if task:
            body["task"] = task
        for key in ("dimensions", "late_chunking", "normalized"):
            if key in request.extra:
                body[key] = request.extra[key]
        deadline = Deadline(timeouts)
        payload = await self.call_json("POST", self._embed_url, model_id=model.id,
                                       timeouts=timeouts, deadline=deadline, json=body)
        try:
            items = sorted(payload["data"], key=lambda item: item.get("index", 0))
            vectors = [[float(v) for v in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.bad_payload("the answer has no data[].embedding", model.id) from None
        if len(vectors) != len(texts):
            raise self.bad_payload(f"asked for {len(texts)} embeddings, got {len(vectors)}",
                                   model.id)
        usage = payload.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        return EmbeddingResponse(data=vectors, model=model.id, provider=self.name,
                                 usage={"prompt_tokens": tokens, "total_tokens": tokens},
                                 upstream_model=str(payload.get("model") or ""))

    async def rerank(self, model: Model, request: RerankRequest,
                     timeouts: Timeouts) -> RerankResponse:
        """``POST /v1/rerank`` (``return_documents: false``: the texts are the request's)."""
        body: dict[str, Any] = {"model": model.upstream_id, "query": request.query,
                                "documents": list(request.documents),
                                "return_documents": False}
        if request.top_n is not None:
            body["top_n"] = request.top_n
        payload = await self.call_json("POST", self._rerank_url, model_id=model.id,
                                       timeouts=timeouts, json=body)
        docs = request.documents
        try:
            results = tuple(
                RerankResult(index=int(item["index"]),
                             relevance_score=float(item["relevance_score"]),
                             document=docs[int(item["index"])])
                for item in payload["results"])
        except (KeyError, TypeError, ValueError, IndexError):
            raise self.bad_payload("the answer has no results[].index / relevance_score "
                                   "within the documents", model.id) from None
        usage = payload.get("usage") or {}
        tokens = int(usage.get("total_tokens") or 0)
        return RerankResponse(results=results, model=model.id, provider=self.name,
                              usage={"total_tokens": tokens, "prompt_tokens": tokens})

    async def scrape(self, model: Model, request: ScrapeRequest,
                     timeouts: Timeouts) -> ScrapeResponse:
        """The Reader: ``POST https://r.jina.ai/`` with ``{"url"}`` and ``Accept:
        application/json``; ``extra`` headers (``X-Return-Format``…) pass through."""
        headers = {k: str(v) for k, v in request.extra.items() if k.lower().startswith("x-")}
        payload = await self.call_json("POST", self._reader_url, model_id=model.id,
                                       timeouts=timeouts, json={"url": request.url},
                                       headers=headers or None)
        data = payload.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("content"), str):
            raise self.bad_payload("the Reader answer has no data.content", model.id)
        usage = data.get("usage") or {}
        tokens = int(usage.get("tokens") or 0) if isinstance(usage, dict) else 0
        page = {k: v for k, v in data.items() if k not in ("content", "title", "usage")}
        return ScrapeResponse(url=str(data.get("url") or request.url), content=data["content"],
                              title=data.get("title"), page=page, model=model.id,
                              provider=self.name,
                              usage={"prompt_tokens": tokens, "total_tokens": tokens})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """Jina has no model list endpoint: the catalogue's names."""
        return [m.name for m in CATALOGUE]


CATALOGUE = (
    ModelInfo(name="jina-embeddings-v3", capabilities=(
        "representation.embeddings.text-embeddings",), delivery_modes=frozenset({"sync"}),
        context_window=8192, pricing=Pricing(input=0.05)),
    ModelInfo(name="jina-reranker-v2-base-multilingual", capabilities=(
        "retrieval.reranking",), delivery_modes=frozenset({"sync"}), context_window=8192,
        pricing=Pricing(input=0.05)),
    ModelInfo(name="reader", capabilities=(
        "understanding.document-understanding.document-parsing",),
        delivery_modes=frozenset({"sync"}), context_window=1_000_000,
        pricing=Pricing(input=0.05)),
)
"""Prices: USD per 1M tokens as listed when this was written (override them)."""


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``jina.ai.v1`` connector."""
    return [ProviderSpec(name=CONNECTOR, factory=JinaAdapter, config_type=JinaConfig,
                         env_vars=(ENV_KEY,), default_base_url=DEFAULT_BASE_URL,
                         catalogue=CATALOGUE, auth="bearer",
                         description="Jina AI (embeddings, rerank, Reader)")]
