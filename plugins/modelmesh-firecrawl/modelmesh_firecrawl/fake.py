"""A local fake of Firecrawl's ``POST /v1/scrape`` (bearer key; errors ``{"success": false,
"error"}``), answering the pages given in ``pages`` (URL → Markdown)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelmesh_core.vendor_fake import VendorFake

__all__ = ["FakeFirecrawl"]


class FakeFirecrawl(VendorFake):
    """Firecrawl's scrape API."""

    vendor = "Firecrawl"

    def __init__(self, *, api_keys: set[str] | None = None,
                 pages: dict[str, str] | None = None) -> None:
        super().__init__(api_keys=api_keys)
        self.pages = dict(pages or {})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/scrape", self._scrape)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"success": False, "error": message}

    async def _scrape(self, request: web.Request) -> web.StreamResponse:
        body, early = await self.accept(request)
        if early is not None:
            return early
        url = body.get("url") if isinstance(body, dict) else None
        content = self.pages.get(str(url))
        if content is None:
            return self.json({"success": False, "error": f"Failed to scrape {url}: 404"})
        title = content.splitlines()[0].lstrip("# ").strip() if content else ""
        return self.json({"success": True, "data": {
            "markdown": content,
            "metadata": {"title": title, "description": "", "language": "en",
                         "sourceURL": url, "statusCode": 200}}})
