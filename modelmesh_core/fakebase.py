"""The scaffolding every local fake upstream shares (real HTTP on 127.0.0.1).

A fake subclasses :class:`FakeServer`, registers its endpoints in :meth:`FakeServer._routes`
and answers unknown paths in :meth:`FakeServer._not_found` (in the vendor's error shape).
The base owns the rest: listening on a free port (:meth:`~FakeServer.start`,
:meth:`~FakeServer.stop`, ``async with``, or its own thread with
:meth:`~FakeServer.start_in_thread`), the script of behaviours each answering one request
before :attr:`~FakeServer.default` (:meth:`~FakeServer.script`, :meth:`~FakeServer._next`),
the recorded :attr:`~FakeServer.calls`, :meth:`~FakeServer.reset`, and waits that end when
the server stops (:meth:`~FakeServer._pause`, :meth:`~FakeServer._hang`).

Used by :class:`~modelmesh_core.fakes.FakeUpstream` (OpenAI) and the fakes of the
``modelmesh-anthropic`` and ``modelmesh-gemini`` plugins.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any, Generic, Self, TypeVar

from aiohttp import web

__all__ = ["FakeServer"]

B = TypeVar("B")
C = TypeVar("C")


class FakeServer(Generic[B, C]):
    """Base of the local fake upstreams (see the module docstring).

    ``B`` is the fake's behaviour type, ``C`` the type of its recorded calls.

    Args:
        default: the behaviour when the script queue is empty.
        host / port: where to listen; port 0 picks a free port.

    Attributes:
        calls: every request received, in order.
        default: the fallback behaviour; assign to change it.
    """

    server_name = "FakeServer"
    """The fake's name in messages."""

    max_body = 32 * 1024 * 1024
    """The largest request body accepted."""

    def __init__(self, *, default: B, host: str = "127.0.0.1", port: int = 0) -> None:
        self._initial_default: B = default
        self.default: B = default
        self.calls: list[C] = []
        self._host = host
        self._port = port
        self._queue: deque[B] = deque()
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ for subclasses

    def _routes(self, app: web.Application) -> None:
        """Register the vendor's endpoints (the catch-all :meth:`_not_found` comes last)."""
        raise NotImplementedError

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        """The answer to a path the vendor does not serve."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`; kept after :meth:`stop`, for refused calls)."""
        if not self._port:
            raise RuntimeError(f"{self.server_name} has no port yet; call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://{self._host}:{self.port}"

    def script(self, *behaviours: B) -> None:
        """Queue behaviours; each answers one request, in order, before :attr:`default`."""
        self._queue.extend(behaviours)

    @property
    def pending(self) -> int:
        """How many scripted behaviours have not been consumed yet."""
        return len(self._queue)

    def reset(self) -> None:
        """Forget calls and the script; restore the default (subclasses forget more)."""
        self.calls.clear()
        self._queue.clear()
        self.default = self._initial_default

    async def start(self) -> Self:
        """Start listening; returns ``self``."""
        if self._runner is not None:
            return self
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=self.max_body)
        self._routes(app)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or ():
            self._port = sock.getsockname()[1]
            break
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop listening; requests still waiting (silences, stalls) are released first."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 10.0) -> Self:
        """Run the server on its own event loop in a daemon thread; returns ``self``."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="modelmesh-fake-upstream", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"{self.server_name} did not start in time")
        if failure:
            thread.join(timeout)
            raise failure[0]
        self._thread, self._loop = thread, loop
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = self._loop = None
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    @classmethod
    @contextlib.contextmanager
    def running_in_thread(cls, **kwargs: Any) -> Iterator[Self]:
        """Context manager: a new fake (``kwargs`` as for the constructor) in its own thread."""
        fake = cls(**kwargs)
        fake.start_in_thread()
        try:
            yield fake
        finally:
            fake.stop_thread()

    # ------------------------------------------------------------------ for handlers

    def _next(self) -> tuple[B, bool]:
        """The behaviour for the next request, and whether it came from the script."""
        try:
            return self._queue.popleft(), True
        except IndexError:
            return self.default, False

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the server stops."""
        if seconds <= 0 or self._closing is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _hang(self) -> None:
        """Wait until the server stops."""
        if self._closing is not None:
            await self._closing.wait()
