"""A local fake of Jina's APIs: ``POST /v1/embeddings``, ``POST /v1/rerank`` and the
Reader (``POST /`` with ``{"url"}``, JSON answer), with Jina's error body ``{"detail"}``.

Rerank scores are word overlap between query and document (deterministic); embeddings are
hash-based unit vectors; the Reader answers the pages given in ``pages`` (URL → Markdown).
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from aiohttp import web

from modelmesh_core.vendor_fake import VendorFake

__all__ = ["DOC_RERANK", "FakeJina", "overlap_score"]

DOC_RERANK: dict[str, Any] = {
    "model": "jina-reranker-v2-base-multilingual",
    "usage": {"total_tokens": 815},
    "results": [
        {"index": 0, "relevance_score": 0.8783142566680908,
         "document": {"text": "Organic skincare for sensitive skin with aloe vera and "
                              "chamomile..."}},
        {"index": 2, "relevance_score": 0.7624675869941711,
         "document": {"text": "Bio-Hautpflege für empfindliche Haut mit Aloe Vera und "
                              "Kamille..."}},
    ],
}
"""A rerank answer in the shape of Jina's documentation example."""

_WORD = re.compile(r"\w+")


def overlap_score(query: str, document: str) -> float:
    """The fake's relevance: the share of the query's words found in the document."""
    q = {w.lower() for w in _WORD.findall(query)}
    d = {w.lower() for w in _WORD.findall(document)}
    return round(len(q & d) / len(q), 6) if q else 0.0


def _vector(text: str, dim: int) -> list[float]:
    raw = hashlib.sha256(text.encode()).digest() * (dim // 32 + 1)
    values = [b / 255.0 - 0.5 for b in raw[:dim]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class FakeJina(VendorFake):
    """Jina's embeddings, rerank and Reader APIs (see the module docstring)."""

    vendor = "Jina"

    def __init__(self, *, api_keys: set[str] | None = None,
                 pages: dict[str, str] | None = None) -> None:
        super().__init__(api_keys=api_keys)
        self.pages = dict(pages or {})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/rerank", self._rerank)
        app.router.add_post("/", self._reader)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"detail": message}

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        texts = body.get("input") or []
        dim = int(body.get("dimensions") or 8)
        tokens = sum(len(_WORD.findall(t)) for t in texts)
        return self.json({
            "model": body.get("model"), "object": "list",
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            "data": [{"object": "embedding", "index": i, "embedding": _vector(t, dim)}
                     for i, t in enumerate(texts)]})

    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        query, docs = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(docs, list) or not docs:
            return self.error(422, "query and documents are required")
        ranked = sorted(((overlap_score(query, d), i) for i, d in enumerate(docs)),
                        key=lambda t: (-t[0], t[1]))
        top_n = body.get("top_n")
        if isinstance(top_n, int):
            ranked = ranked[:top_n]
        results = []
        for score, i in ranked:
            item: dict[str, Any] = {"index": i, "relevance_score": score}
            if body.get("return_documents", True):
                item["document"] = {"text": docs[i]}
            results.append(item)
        tokens = len(_WORD.findall(query)) * len(docs) + sum(len(_WORD.findall(d))
                                                             for d in docs)
        return self.json({"model": body.get("model"), "usage": {"total_tokens": tokens},
                          "results": results})

    async def _reader(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        url = body.get("url") if isinstance(body, dict) else None
        if request.headers.get("Accept") != "application/json":
            return web.Response(text=f"Title: page\n\nURL Source: {url}\n\nMarkdown Content:\n")
        content = self.pages.get(str(url))
        if content is None:
            return self.json({"data": None, "code": 422, "name": "AssertionFailureError",
                              "status": 42206, "message": f"Failed to goto {url}",
                              "readableMessage": f"AssertionFailureError: Failed to goto {url}"},
                             status=422)
        title = content.splitlines()[0].lstrip("# ").strip() if content else ""
        return self.json({"code": 200, "status": 20000, "data": {
            "title": title, "description": "", "url": url, "content": content,
            "usage": {"tokens": len(_WORD.findall(content))}}})
