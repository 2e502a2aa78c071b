"""A local fake of Tavily's ``POST /search`` (bearer key; errors ``{"detail": {"error"}}``).

Results come from ``corpus`` (URL → (title, text)), ranked by word overlap with the query.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from modelmesh_core.vendor_fake import VendorFake

__all__ = ["DOC_ANSWER", "FakeTavily"]

DOC_ANSWER: dict[str, Any] = {
    "query": "Who is Leo Messi?",
    "answer": None,
    "images": [],
    "results": [
        {"title": "Lionel Messi - Wikipedia", "url": "https://en.wikipedia.org/wiki/Lionel_Messi",
         "content": "Lionel Andrés Messi is an Argentine professional footballer who plays as a "
                    "forward for Inter Miami.", "score": 0.81025416, "raw_content": None},
    ],
    "response_time": "1.67",
}
"""A search answer in the shape of Tavily's documentation example."""

_WORD = re.compile(r"\w+")


class FakeTavily(VendorFake):
    """Tavily's search API over ``corpus``."""

    vendor = "Tavily"

    def __init__(self, *, api_keys: set[str] | None = None,
                 corpus: dict[str, tuple[str, str]] | None = None) -> None:
        super().__init__(api_keys=api_keys)
        self.corpus = dict(corpus or {})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/search", self._search)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"detail": {"error": message}}

    async def _search(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        query = body.get("query") if isinstance(body, dict) else None
        if not isinstance(query, str) or not query:
            return self.error(400, "Query is missing.")
        words = {w.lower() for w in _WORD.findall(query)}
        hits: list[dict[str, Any]] = []
        for url, (title, text) in self.corpus.items():
            found = {w.lower() for w in _WORD.findall(title + " " + text)}
            score = len(words & found) / len(words) if words else 0.0
            if score:
                hits.append({"title": title, "url": url, "content": text,
                             "score": round(score, 6), "raw_content": None})
        hits.sort(key=lambda h: -float(h["score"]))
        hits = hits[: int(body.get("max_results") or 5)]
        answer = hits[0]["content"] if body.get("include_answer") and hits else None
        return self.json({"query": query, "follow_up_questions": None, "answer": answer,
                          "images": [], "results": hits, "response_time": 0.42})
