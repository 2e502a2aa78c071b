"""A base for local fake upstreams of non-OpenAI vendors (real HTTP on 127.0.0.1).

A vendor fake subclasses :class:`VendorFake`, registers its routes in :meth:`routes` and
writes each handler with :meth:`VendorFake.accept` (which authenticates, records the call and
applies a scripted :class:`Fault`) and :meth:`VendorFake.json`. The vendor's own error body
comes from :meth:`VendorFake.error_body`; its auth check from :meth:`VendorFake.key_of`.

Faults are consumed one per request (:meth:`VendorFake.script`):

* ``Fault(status=503)`` — an error answer in the vendor's shape (``retry_after`` adds a
  header);
* ``Fault(cut=True)`` — headers and part of the body, then the connection drops;
* ``Fault(malformed=True)`` — ``200`` with a truncated JSON body;
* ``Fault(html=True)`` — ``200`` with an HTML page (a captive portal).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web
from attrs import frozen

__all__ = ["Fault", "VendorCall", "VendorFake"]


@frozen(kw_only=True)
class Fault:
    """One scripted failure (see the module docstring)."""

    status: int | None = None
    message: str = "The server had an error."
    retry_after: float | None = None
    cut: bool = False
    malformed: bool = False
    html: bool = False


@frozen(kw_only=True)
class VendorCall:
    """One request the fake received: ``body`` is the parsed JSON, else the raw bytes."""

    path: str
    method: str
    headers: dict[str, str]
    query: dict[str, str]
    body: Any
    time: float


class VendorFake:
    """Base of the vendor fakes (see the module docstring).

    Args:
        api_keys: accepted keys (None: any request is accepted).
    """

    vendor = "vendor"

    def __init__(self, *, api_keys: set[str] | None = None) -> None:
        self.api_keys = api_keys
        self.calls: list[VendorCall] = []
        self._faults: deque[Fault] = deque()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ------------------------------------------------------------------ for subclasses

    def routes(self, app: web.Application) -> None:
        """Register the vendor's endpoints."""
        raise NotImplementedError

    def key_of(self, request: web.Request) -> str | None:
        """The API key the request carries (the vendor's auth scheme)."""
        auth = request.headers.get("Authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else None

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """The vendor's error body."""
        return {"error": message}

    # ------------------------------------------------------------------ lifetime

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if not self._port:
            raise RuntimeError(f"the fake {self.vendor} upstream has not started")
        return f"http://127.0.0.1:{self._port}"

    def script(self, *faults: Fault) -> None:
        """Queue faults; each answers one request, in order."""
        self._faults.extend(faults)

    async def start(self) -> VendorFake:
        """Listen on a free port."""
        app = web.Application(client_max_size=64 * 2**20)
        self.routes(app)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            self._port = sock.getsockname()[1]
            break
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop listening."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> VendorFake:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, **kwargs: Any) -> AsyncIterator[Any]:
        """``async with FakeX.running(api_keys={...}) as fake:``."""
        fake = cls(**kwargs)
        await fake.start()
        try:
            yield fake
        finally:
            await fake.stop()

    # ------------------------------------------------------------------ handler helpers

    def json(self, data: Any, status: int = 200,
             headers: dict[str, str] | None = None) -> web.Response:
        """A JSON answer."""
        return web.Response(status=status, body=orjson.dumps(data),
                            content_type="application/json", headers=headers)

    def error(self, status: int, message: str,
              headers: dict[str, str] | None = None) -> web.Response:
        """An error answer in the vendor's shape."""
        return self.json(self.error_body(status, message), status, headers)

    async def accept(self, request: web.Request) -> tuple[Any, web.StreamResponse | None]:
        """Record the call, authenticate it and apply the next fault: ``(body, None)`` to go
        on, or ``(body, response)`` to answer with ``response``."""
        raw = await request.read()
        body: Any = raw
        if raw and "json" in request.content_type:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw
        self.calls.append(VendorCall(
            path=request.path, method=request.method,
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query), body=body, time=time.monotonic()))
        if self.api_keys is not None:
            key = self.key_of(request)
            if key not in self.api_keys:
                return body, self.error(401, "Invalid API key" if key else "Missing API key")
        if not self._faults:
            return body, None
        fault = self._faults.popleft()
        if fault.status is not None:
            headers = ({"Retry-After": f"{fault.retry_after:g}"}
                       if fault.retry_after is not None else None)
            return body, self.error(fault.status, fault.message, headers)
        if fault.html:
            return body, web.Response(text="<html><body>Please sign in</body></html>",
                                      content_type="text/html")
        if fault.malformed:
            return body, web.Response(body=b'{"results": [{"ind', content_type="application/json")
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.content_length = 4096
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(b'{"partial": ')
            await asyncio.sleep(0)
        if request.transport is not None:
            request.transport.close()
        return body, resp
