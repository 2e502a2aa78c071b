"""A local fake of Serper's ``POST /search`` (``X-API-KEY``; errors ``{"message",
"statusCode"}``), answering from ``corpus`` (URL → (title, snippet)) in corpus order."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelmesh_core.vendor_fake import VendorFake

__all__ = ["FakeSerper"]


class FakeSerper(VendorFake):
    """Serper's search API."""

    vendor = "Serper"

    def __init__(self, *, api_keys: set[str] | None = None,
                 corpus: dict[str, tuple[str, str]] | None = None) -> None:
        super().__init__(api_keys=api_keys)
        self.corpus = dict(corpus or {})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/search", self._search)

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("X-API-KEY")

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"message": message, "statusCode": status}

    async def _search(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        q = body.get("q") if isinstance(body, dict) else None
        if not isinstance(q, str) or not q:
            return self.error(400, "Missing query parameter")
        num = int(body.get("num") or 10)
        organic = [{"title": t, "link": url, "snippet": s, "position": i + 1}
                   for i, (url, (t, s)) in enumerate(list(self.corpus.items())[:num])]
        return self.json({
            "searchParameters": {"q": q, "type": "search", "num": num, "engine": "google"},
            "organic": organic, "relatedSearches": [], "credits": 1})
