"""The status page: the activity rings, the JSON endpoint behind the admin guard, the page's
headers, and the page itself rendered by a real headless Chromium (driven over the DevTools
protocol) against a running proxy in front of fake upstreams.

Chromium is required, not optional: without it these tests fail and say how to install it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelmesh_core.events import Event, EventType
from modelmesh_core.fakes import Fail, FakeUpstream
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import create_app, create_runner
from modelmesh_core.server.activity import MINUTES, Activity
from modelmesh_core.server.status import CSP, STATUS_PAGE

ALPHA_KEY = "sk-alpha-test-0123456789"
BETA_KEY = "sk-beta-test-0123456789"
PROXY_KEY = "sk-proxy-status-0001"
ADMIN_KEY = "mm-admin-status-0001"
XSS = "beta.<script>document.title='pwned';window.pwned=1</script><img src=x onerror=alert(1)>"
MSG = [{"role": "user", "content": "hi"}]


# --------------------------------------------------------------------------- activity rings


def _event(type: str, ts: float, model: str | None, **data: Any) -> Event:
    return Event(type=type, timestamp=ts, model=model, pool="chat", data=data)


def test_activity_counts_per_model_over_the_last_hour() -> None:
    act = Activity()
    t0 = 1_800_000_000.0  # a minute boundary (divisible by 60)
    act.on_event(_event(EventType.REQUEST_SUCCEEDED, t0, "b"))
    act.on_event(_event(EventType.REQUEST_SUCCEEDED, t0 + 30, "b"))
    act.on_event(_event(EventType.ATTEMPT_FAILED, t0 + 61, "a"))
    act.on_event(_event(EventType.STREAM_CONTINUED, t0 + 62, "a"))
    act.on_event(_event(EventType.REQUEST_ROUTED, t0 + 62, "a"))  # not counted
    assert act.totals("b", t0 + 90) == {"served": 2, "failed": 0, "failovers": 0,
                                        "continued": 0}
    assert act.totals("a", t0 + 90) == {"served": 0, "failed": 1, "failovers": 0,
                                        "continued": 1}
    series = act.series("b", t0 + 90)
    assert len(series) == MINUTES and series[-2:] == [2, 0] and sum(series) == 2
    # 59 minutes later the first minute is still in the window, at 60 it has left it.
    assert act.totals("b", t0 + 59 * 60)["served"] == 2
    assert act.totals("b", t0 + 60 * 60)["served"] == 0
    assert act.totals("never-seen", t0) == dict.fromkeys(("served", "failed", "failovers",
                                                          "continued"), 0)


def test_activity_slot_is_reset_when_its_minute_comes_round_again() -> None:
    act = Activity()
    t0 = 1_800_000_000.0
    for _ in range(5):
        act.on_event(_event(EventType.REQUEST_SUCCEEDED, t0, "m"))
    later = t0 + MINUTES * 60  # the same slot, an hour on
    act.on_event(_event(EventType.REQUEST_SUCCEEDED, later, "m"))
    assert act.totals("m", later)["served"] == 1
    assert act.series("m", later)[-1] == 1
    ring = act.models["m"]
    assert len(ring.counts) == MINUTES * 4 and len(ring.minutes) == MINUTES


def test_failovers_count_each_earlier_model_once_and_not_a_retry_in_place() -> None:
    act = Activity()
    t = 1_800_000_000.0
    act.on_event(_event(EventType.POOL_ROTATED, t, "c", previous=["a", "a", "b"]))
    act.on_event(_event(EventType.POOL_ROTATED, t, "a", previous=["a"]))  # retried in place
    assert act.totals("a", t)["failovers"] == 1
    assert act.totals("b", t)["failovers"] == 1
    assert act.totals("c", t)["failovers"] == 0


# --------------------------------------------------------------------------- a running proxy


class Proxy:
    """A proxy on 127.0.0.1: ``url``, ``app``, ``mesh``."""

    def __init__(self, app: web.Application, runner: web.AppRunner, mesh: ModelMesh) -> None:
        self.app, self.runner, self.mesh = app, runner, mesh
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def chat(self, model: str = "chat") -> str:
        async with aiohttp.ClientSession() as s, s.post(
                self.url + "/v1/chat/completions", json={"model": model, "messages": MSG},
                headers={"Authorization": f"Bearer {PROXY_KEY}"}) as r:
            assert r.status == 200, await r.text()
            return r.headers["x-modelmesh-model"]

    async def get(self, path: str, headers: dict[str, str] | None = None,
                  ) -> tuple[int, bytes, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + path,
                                                       headers=headers or {}) as r:
            return r.status, await r.read(), r.headers


@contextlib.asynccontextmanager
async def running_proxy(config: dict[str, Any]) -> AsyncIterator[Proxy]:
    mesh = ModelMesh(config)
    app = create_app(mesh)
    runner = create_runner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield Proxy(app, runner, mesh)
    finally:
        await runner.cleanup()


def status_config(a: FakeUpstream, b: FakeUpstream, *, proxy: dict[str, Any] | None = None,
                  extra_models: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pool ``chat`` tries alpha, then beta (which costs $0.25 a request, rpm 100)."""
    return {
        "providers": {
            "alpha": {"connector": "openai.llm.v1",
                      "config": {"base_url": a.base_url, "api_key": ALPHA_KEY}},
            "beta": {"connector": "openai.llm.v1",
                     "config": {"base_url": b.base_url, "api_key": BETA_KEY}},
        },
        "models": {"alpha.gpt-4o-mini": {},
                   "beta.gpt-4o-mini": {"pricing": {"per_request": 0.25},
                                        "limits": {"rpm": 100}},
                   **(extra_models or {})},
        "pools": {"chat": {"models": ["alpha.gpt-4o-mini", "beta.gpt-4o-mini"],
                           "retry": {"initial_delay": "1ms", "max_delay": "5ms"}}},
        "budget": {"daily": 10.0},
        "proxy": proxy if proxy is not None else {
            "auth": {"admin_keys": [ADMIN_KEY],
                     "keys": [{"key": PROXY_KEY, "name": "team", "budget": {"daily": 5.0}}]}},
    }


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with FakeUpstream(api_keys={ALPHA_KEY}) as a, FakeUpstream(api_keys={BETA_KEY}) as b:
        yield a, b


# --------------------------------------------------------------------------- the JSON endpoint


async def test_status_json_reports_pools_models_activity_cost_and_headroom(fakes: Any) -> None:
    a, b = fakes
    async with running_proxy(status_config(a, b)) as proxy:
        a.script(Fail(500))
        assert [await proxy.chat() for _ in range(3)] == ["beta.gpt-4o-mini"] * 3
        status, body, headers = await proxy.get("/admin/status",
                                                {"Authorization": f"Bearer {ADMIN_KEY}"})
        assert status == 200, body
        assert headers["Cache-Control"] == "no-store"
        data = json.loads(body)
        assert data["window_minutes"] == 60
        assert data["cost_today"] == pytest.approx(0.75)
        assert data["pools"] == [{
            "name": "chat", "capability": None, "mode": "explicit",
            "strategy": "modelmesh.stick-until-failure.v1",
            "models": ["alpha.gpt-4o-mini", "beta.gpt-4o-mini"], "healthy": 1}]
        models = {m["id"]: m for m in data["models"]}
        alpha, beta = models["alpha.gpt-4o-mini"], models["beta.gpt-4o-mini"]
        assert alpha["health"] == "degraded" and "HTTP 500" in alpha["reason"]
        assert alpha["last_hour"] == {"served": 0, "failed": 1, "failovers": 1, "continued": 0}
        assert beta["health"] == "healthy"
        assert beta["last_hour"] == {"served": 3, "failed": 0, "failovers": 0, "continued": 0}
        assert beta["per_minute"][-1] + beta["per_minute"][-2] == 3
        assert beta["cost_today"] == pytest.approx(0.75)
        assert beta["requests_today"] == 3
        # Headroom: the configured rpm against the minute counter, and the fake's
        # x-ratelimit-* headers (limit 10000 requests).
        limits = {(x["source"], x["name"]): x for x in beta["limits"]}
        rpm = limits[("config", "rpm")]
        assert rpm["limit"] == 100 and rpm["used"] in (0, 3)  # 0 if the minute turned over
        upstream = limits[("upstream", "requests")]
        assert upstream["limit"] == 10_000 and upstream["used"] >= 1
        assert beta["headroom"] == min(x["fraction"] for x in beta["limits"])
        budgets = {x["scope"]: x for x in data["budgets"]}
        assert budgets["global"]["daily"] == 10.0
        assert budgets["global"]["spent_today"] == pytest.approx(0.75)
        assert budgets["key:team"]["daily"] == 5.0
        assert budgets["key:team"]["spent_today"] == pytest.approx(0.75)
        providers = {p["name"]: p for p in data["providers"]}
        assert providers["beta"]["cost_today"] == pytest.approx(0.75)
        assert providers["alpha"]["available"] is True

        # Yesterday's spend is not today's: the windows are read by their day key.
        page = proxy.app[STATUS_PAGE]
        tomorrow = page.snapshot(data["generated_at"] + 86_400)
        assert tomorrow["cost_today"] == 0.0
        assert {x["scope"]: x["spent_today"] for x in tomorrow["budgets"]} == {
            "global": 0.0, "key:team": 0.0}
        assert all(m["last_hour"]["served"] == 0 for m in tomorrow["models"])


async def test_status_json_is_behind_the_admin_guard(fakes: Any) -> None:
    a, b = fakes
    async with running_proxy(status_config(a, b)) as proxy:
        status, body, _ = await proxy.get("/admin/status")
        assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
        status, body, _ = await proxy.get("/admin/status",
                                          {"Authorization": f"Bearer {PROXY_KEY}"})
        assert status == 403 and json.loads(body)["error"]["code"] == "admin_key_required"
        status, body, _ = await proxy.get("/admin/status", {
            "Authorization": f"Bearer {ADMIN_KEY}", "Sec-Fetch-Site": "cross-site"})
        assert status == 403 and json.loads(body)["error"]["code"] == "cross_site_request"
        status, body, _ = await proxy.get("/admin/status", {
            "Authorization": f"Bearer {ADMIN_KEY}", "Origin": "http://evil.example"})
        assert status == 403 and json.loads(body)["error"]["code"] == "cross_site_request"
    # No admin key: off, unless open_on_loopback (then the Host must name this proxy).
    async with running_proxy(status_config(a, b, proxy={})) as proxy:
        status, body, _ = await proxy.get("/admin/status")
        assert status == 403 and json.loads(body)["error"]["code"] == "admin_disabled"
    async with running_proxy(status_config(
            a, b, proxy={"admin": {"open_on_loopback": True}})) as proxy:
        status, body, _ = await proxy.get("/admin/status")
        assert status == 200 and json.loads(body)["pools"][0]["name"] == "chat"
        status, body, _ = await proxy.get("/admin/status", {"Host": "rebound.example:80"})
        assert status == 403 and json.loads(body)["error"]["code"] == "host_not_allowed"


async def test_page_and_assets_carry_no_data_and_strict_headers(fakes: Any) -> None:
    a, b = fakes
    async with running_proxy(status_config(a, b, extra_models={XSS: {
            "upstream_id": "gpt-4o-mini"}})) as proxy:
        for path, kind in (("/status", "text/html"), ("/status/status.js", "text/javascript"),
                           ("/status/status.css", "text/css")):
            status, body, headers = await proxy.get(path)  # no key needed
            assert status == 200, (path, body)
            assert headers["Content-Type"] == f"{kind}; charset=utf-8"
            assert headers["Content-Security-Policy"] == CSP
            assert "script-src 'self';" in CSP and "frame-ancestors 'none'" in CSP
            assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Referrer-Policy"] == "no-referrer"
            for secret in (ADMIN_KEY, PROXY_KEY, ALPHA_KEY, "gpt-4o-mini", "alpha", "<script>"):
                assert secret.encode() not in body, (path, secret)
            if kind == "text/html":
                # No inline script, style or handler: the CSP would block them anyway.
                text = body.decode()
                assert text.count("<script") == 1 and 'src="status/status.js"' in text
                assert "<style" not in text and " style=" not in text
                assert re.search(r"\son\w+\s*=", text) is None
            if kind == "text/javascript":
                assert b"innerHTML" not in body and b"eval(" not in body


# --------------------------------------------------------------------------- headless Chromium


def chromium_path() -> str:
    """Debian's chromium; a clear failure (never a skip) when it is missing."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is required for the status page tests and was not found on PATH. "
                "Install Debian's package: apt-get update && apt-get install -y chromium")


class Browser:
    """A headless Chromium and one page, driven over the DevTools protocol (websocket)."""

    def __init__(self, proc: asyncio.subprocess.Process, session: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.proc, self.session, self.ws = proc, session, ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.problems: list[str] = []  # console errors, exceptions, CSP reports
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                self.problems.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                # The page's deliberate 401 (no key yet) is logged as a failed resource load.
                if "401" not in entry.get("text", ""):
                    self.problems.append(
                        f"{entry.get('source')}: {entry.get('text')} {entry.get('url')}"[:500])

    async def send(self, method: str, **params: Any) -> Any:
        ident = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = fut
        await self.ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        return await asyncio.wait_for(fut, 20)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        while True:  # (a page still loading has no body yet: the guard says "not yet")
            value = await self.evaluate(guarded)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                state = await self.evaluate("document.body && document.body.outerHTML")
                raise AssertionError(f"timed out waiting for {expression!r}; page: {state}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png",
                               captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close")
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.session.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    exe = chromium_path()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = (tmp_path / "chromium.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--no-proxy-server", "--window-size=1400,1000",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    session: aiohttp.ClientSession | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("Chromium did not open its DevTools port within 30 s; its log: "
                        + (tmp_path / "chromium.log").read_text(errors="replace")[-2000:])
        if proc.returncode is not None:
            pytest.fail("Chromium exited at start; its log: "
                        + (tmp_path / "chromium.log").read_text(errors="replace")[-2000:])
        port = int(port_file.read_text().split()[0])
        session = aiohttp.ClientSession()
        async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        browser = Browser(proc, session, ws)
        session = None
        for domain in ("Page", "Runtime", "Log"):
            await browser.send(f"{domain}.enable")
        try:
            yield browser
        finally:
            await browser.close()
    finally:
        if session is not None:
            await session.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


ROWS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll(%r)].map(tr =>
  [tr.getAttribute(%r), Object.fromEntries([...tr.cells].map(td =>
     [td.classList[0], td.textContent]))])))"""


async def rows(browser: Browser, table: str, attr: str) -> dict[str, dict[str, str]]:
    """A rendered table: ``{row key: {cell class: cell text}}``."""
    return json.loads(await browser.evaluate(ROWS % (f"#{table} tbody tr", attr)))


async def test_status_page_in_headless_chromium(fakes: Any, tmp_path: Path) -> None:
    a, b = fakes
    async with running_proxy(status_config(a, b)) as proxy, chromium(tmp_path) as browser:
        a.script(Fail(500))  # the first request fails over from alpha to beta
        assert [await proxy.chat() for _ in range(3)] == ["beta.gpt-4o-mini"] * 3

        await browser.goto(f"{proxy.url}/status?refresh=1#key={ADMIN_KEY}")
        await browser.wait_for("document.body.dataset.state === 'ready'")
        # The key moved from the fragment into sessionStorage; the address bar has none.
        assert await browser.evaluate("location.hash") == ""
        assert await browser.evaluate("location.href") == f"{proxy.url}/status?refresh=1"
        assert await browser.evaluate(
            "sessionStorage.getItem('modelmesh.adminKey')") == ADMIN_KEY

        pools = await rows(browser, "pools", "data-pool")
        assert pools == {"chat": {
            "name": "chat", "capability": "", "strategy": "modelmesh.stick-until-failure.v1",
            "healthy": "1 of 2", "members": "alpha.gpt-4o-mini, beta.gpt-4o-mini"}}
        models = await rows(browser, "models", "data-model")
        alpha, beta = models["alpha.gpt-4o-mini"], models["beta.gpt-4o-mini"]
        assert alpha["health"].startswith("degraded") and "HTTP 500" in alpha["health"]
        assert (alpha["served"], alpha["failed"], alpha["failovers"]) == ("0", "1", "1")
        assert beta["health"] == "healthy"
        assert (beta["served"], beta["failed"], beta["failovers"]) == ("3", "0", "0")
        assert beta["cost"] == "$0.75" and alpha["cost"] == "$0.00"
        assert "rpm" in beta["headroom"] and "/100" in beta["headroom"]
        assert "requests (upstream)" in beta["headroom"]
        budgets = await rows(browser, "budgets", "data-scope")
        assert budgets["global"]["spent-today"] == "$0.75"
        assert budgets["global"]["daily"] == "$10.00"
        assert budgets["global"]["used"] == "8%"
        assert budgets["key:team"]["daily"] == "$5.00"
        assert await browser.evaluate("document.getElementById('cost-total').textContent") \
            == "$0.75"
        providers = await rows(browser, "providers", "data-provider")
        assert providers["beta"]["cost"] == "$0.75" and providers["alpha"]["available"] == "yes"
        # The per-minute chart drew bars for the minute(s) that had requests.
        assert await browser.evaluate(
            "document.querySelector('[data-model=\"beta.gpt-4o-mini\"] svg.spark')"
            ".querySelectorAll('rect').length") in (1, 2)

        # It refreshes itself: two more requests show up without a reload.
        assert [await proxy.chat() for _ in range(2)] == ["beta.gpt-4o-mini"] * 2
        await browser.wait_for("document.querySelector('[data-model=\"beta.gpt-4o-mini\"] "
                               "td.served').textContent === '5'")
        assert (await rows(browser, "budgets", "data-scope"))["global"]["spent-today"] \
            == "$1.25"
        if os.environ.get("MODELMESH_STATUS_SCREENSHOT"):
            await browser.screenshot(Path(os.environ["MODELMESH_STATUS_SCREENSHOT"]))
        assert browser.problems == []


async def test_status_page_renders_a_script_model_name_as_text(fakes: Any,
                                                               tmp_path: Path) -> None:
    a, b = fakes
    config = status_config(a, b, extra_models={XSS: {"upstream_id": "gpt-4o-mini"}})
    async with running_proxy(config) as proxy, chromium(tmp_path) as browser:
        assert await proxy.chat(XSS) == XSS
        await browser.goto(f"{proxy.url}/status#key={ADMIN_KEY}")
        await browser.wait_for("document.body.dataset.state === 'ready'")
        models = await rows(browser, "models", "data-model")
        assert models[XSS]["name"] == XSS and models[XSS]["served"] == "1"
        # Text, not markup: escaped in the DOM, no new element, nothing ran.
        html = await browser.evaluate("document.documentElement.outerHTML")
        assert "&lt;script&gt;document.title='pwned'" in html
        assert "<script>document.title" not in html
        assert await browser.evaluate("document.scripts.length") == 1
        assert await browser.evaluate("document.images.length") == 0
        assert await browser.evaluate("document.title") == "ModelMesh status"
        assert await browser.evaluate("typeof window.pwned") == "undefined"
        assert browser.problems == []


async def test_status_page_asks_for_the_key_and_forgets_it(fakes: Any,
                                                           tmp_path: Path) -> None:
    a, b = fakes
    async with running_proxy(status_config(a, b)) as proxy, chromium(tmp_path) as browser:
        await browser.goto(f"{proxy.url}/status")
        await browser.wait_for("document.body.dataset.state === 'login'")
        assert await browser.evaluate("document.getElementById('content').hidden") is True
        submit = ("document.getElementById('key-input').value = %s;"
                  "document.getElementById('key-form').requestSubmit();")
        await browser.evaluate(submit % json.dumps("mm-wrong-key-000"))
        await browser.wait_for("document.getElementById('login-message').textContent"
                               " === 'Incorrect API key provided.'")
        assert await browser.evaluate("sessionStorage.length") == 0
        await browser.evaluate(submit % json.dumps(ADMIN_KEY))
        await browser.wait_for("document.body.dataset.state === 'ready'")
        assert await browser.evaluate("document.getElementById('key-input').value") == ""
        assert "chat" in await rows(browser, "pools", "data-pool")
        await browser.evaluate("document.getElementById('forget').click()")
        await browser.wait_for("document.body.dataset.state === 'login'")
        assert await browser.evaluate("sessionStorage.length") == 0
