"""The status page: ``GET /status`` (a page with no data in it), its script and style sheet,
and ``GET /admin/status`` (the JSON the page renders, behind the admin guard).

How the browser authenticates: the page itself needs no key and carries no data. Its script
asks for the admin key (or takes it from the address's fragment, ``/status#key=…``, which
browsers never send to a server, and removes it from the address bar at once), keeps it in
``sessionStorage`` (gone when the tab closes) and sends it as ``Authorization: Bearer`` on
each ``fetch`` of ``/admin/status``. With ``proxy.admin.open_on_loopback`` and no admin key
the page works without one from this machine. Every value is rendered with ``textContent``
(never as HTML); the page is served with a Content-Security-Policy that allows scripts, styles
and fetches from this origin only and forbids framing.

What ``/admin/status`` reports: pools and their models with a health word, per-model counts
over the last hour (:mod:`.activity`), cost today per model and provider against the
configured budgets (``budget``, ``providers.<name>.budget``, ``pools.<name>.budget``, and
virtual keys' budgets), and rate-limit headroom from configured limits (``limits`` of models
and providers against the minute and day counters) and from the upstream's last
``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..limits import clip
from ..state import ModelState, UsageWindows, utc_day
from ..types import Limits, RateLimitInfo
from ..wire import dumps
from .activity import MINUTES, Activity

if TYPE_CHECKING:
    from ..config import BudgetConfig
    from .routes import ProxyServer

__all__ = ["CSP", "STATUS_PAGE", "StatusPage"]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""The Content-Security-Policy of the page and its assets."""

_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_JSON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
_HEADER_TTL = 60.0  # how long rate-limit headers without a reset time are trusted


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class StatusPage:
    """The status routes of one application and the activity counters they show."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.activity = Activity()
        self._assets = {name: _asset(name) for name in ("status.html", "status.js",
                                                         "status.css", "favicon.svg")}

    def add_routes(self, app: web.Application) -> None:
        """Register the routes and subscribe the counters for the application's lifetime."""
        app[STATUS_PAGE] = self
        app.cleanup_ctx.append(self._subscribe)
        r = app.router
        r.add_get("/status", self.page, allow_head=False)
        r.add_get("/status/status.js", self.script, allow_head=False)
        r.add_get("/status/status.css", self.style, allow_head=False)
        r.add_get("/status/favicon.svg", self.icon, allow_head=False)
        r.add_get("/admin/status", self.data, allow_head=False)

    async def _subscribe(self, app: web.Application) -> AsyncIterator[None]:
        unsubscribe = self.server.mesh.events.subscribe(self.activity.on_event)
        try:
            yield
        finally:
            unsubscribe()

    # ----------------------------------------------------------------- handlers

    def _static(self, name: str, content_type: str) -> web.Response:
        return web.Response(body=self._assets[name], content_type=content_type,
                            charset="utf-8", headers=_PAGE_HEADERS)

    async def page(self, request: web.Request) -> web.StreamResponse:
        """``GET /status``: the page (no data, no key; it fetches ``/admin/status``)."""
        return self._static("status.html", "text/html")

    async def script(self, request: web.Request) -> web.StreamResponse:
        """``GET /status/status.js``."""
        return self._static("status.js", "text/javascript")

    async def style(self, request: web.Request) -> web.StreamResponse:
        """``GET /status/status.css``."""
        return self._static("status.css", "text/css")

    async def icon(self, request: web.Request) -> web.StreamResponse:
        """``GET /status/favicon.svg``."""
        return web.Response(body=self._assets["favicon.svg"], content_type="image/svg+xml",
                            headers=_PAGE_HEADERS)

    async def data(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/status``: what the page shows, as JSON (admin guard first)."""
        self.server.auth.require_admin(request)
        return web.Response(body=dumps(self.snapshot(time.time())), content_type="application/json",
                            headers=_JSON_HEADERS)

    # ----------------------------------------------------------------- the snapshot

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything the page shows, JSON-able."""
        mesh = self.server.mesh
        state = mesh.state
        cfg = mesh.config
        day, minute = utc_day(now), int(now // 60)
        pools_of: dict[str, list[str]] = {}
        pools: list[dict[str, Any]] = []
        for name, pool in mesh.pools.items():
            for mid in pool.model_ids:
                pools_of.setdefault(mid, []).append(name)
            pools.append({"name": name, "capability": pool.capability, "mode": pool.mode,
                          "strategy": pool.strategy_name, "models": list(pool.model_ids)})
        models: list[dict[str, Any]] = []
        health: dict[str, str] = {}
        for mid, model in mesh.models.items():
            st = state.model(mid)
            ps = state.provider(model.provider)
            word, why = _health(st, ps.available, ps.deactivation_reason, now)
            health[mid] = word
            limits = _limits(model.limits, st, minute, day)
            _header_limits(limits, st.rate_limit, st.rate_limit_at, now)
            if st.retry_after_until > now:
                limits.append({"name": "retry-after", "source": "upstream", "used": None,
                               "limit": None, "fraction": 0.0,
                               "resets_in_s": round(st.retry_after_until - now, 1)})
            models.append({
                "id": mid, "provider": model.provider, "pools": pools_of.get(mid, []),
                "health": word, "reason": why,
                "cooldown_remaining_s": (round(st.cooldown_until - now, 1)
                                         if st.cooldown_until > now else None),
                "consecutive_failures": st.consecutive_failures,
                "last_error": clip(st.last_error, 300) if st.last_error else None,
                "last_hour": self.activity.totals(mid, now),
                "per_minute": self.activity.series(mid, now),
                "requests_today": st.day_requests if st.day_key == day else 0,
                "cost_today": _today(st, day),
                "headroom": _headroom(limits),
                "limits": limits,
            })
        for p in pools:
            p["healthy"] = sum(1 for m in p["models"] if health.get(m) == "healthy")
        providers: list[dict[str, Any]] = []
        for name, provider in mesh.providers.items():
            ps = state.provider(name)
            limits = _limits(provider.limits, ps, minute, day)
            providers.append({
                "name": name, "connector": provider.connector, "available": ps.available,
                "reason": ps.deactivation_reason,
                "cooldown_remaining_s": (round(ps.cooldown_until - now, 1)
                                         if ps.cooldown_until > now else None),
                "cost_today": _today(ps, day), "headroom": _headroom(limits), "limits": limits,
            })
        spent = mesh.ledger.spent(now)  # the admission ledger keeps budget spend
        budgets: list[dict[str, Any]] = []
        configured: list[tuple[str, BudgetConfig | None]] = [("global", cfg.budget)]
        configured += [(f"provider:{n}", p.budget) for n, p in cfg.providers.items()]
        configured += [(f"pool:{n}", p.budget) for n, p in cfg.pools.items()]
        for scope, budget in configured:
            if budget is None:
                continue
            got = spent.get(scope, {})
            budgets.append({
                "scope": scope, "enforce": budget.enforce, "daily": budget.daily,
                "monthly": budget.monthly, "spent_today": got.get("day", 0.0),
                "spent_month": got.get("month", 0.0)})
        for key in self.server.keys.values():
            if key.budget is not None:
                usage = self.server.key_usage(key, now)
                budgets.append({
                    "scope": f"key:{key.name}", "enforce": key.budget.enforce,
                    "daily": key.budget.daily, "monthly": key.budget.monthly,
                    "spent_today": usage["day_spend"], "spent_month": usage["month_spend"],
                })
        return {
            "generated_at": now,
            "window_minutes": MINUTES,
            "cost_today": round(sum(m["cost_today"] for m in models), 8),
            "pools": pools,
            "models": models,
            "providers": providers,
            "budgets": budgets,
        }


def _health(st: ModelState, provider_up: bool, provider_reason: str | None,
            now: float) -> tuple[str, str | None]:
    """A word for the model's state (``healthy``, ``degraded``, ``cooling down``, ``standby``,
    ``provider down``) and why."""
    if not provider_up:
        return "provider down", provider_reason
    if not st.is_active:
        if st.cooldown_until > now:
            return "cooling down", st.deactivation_reason
        return "standby", st.deactivation_reason
    if st.consecutive_failures:
        return "degraded", clip(st.last_error, 200) if st.last_error else None
    return "healthy", None


def _today(w: UsageWindows, day: int) -> float:
    return round(w.day_cost, 8) if w.day_key == day else 0.0


def _limit(name: str, used: int, limit: int) -> dict[str, Any]:
    return {"name": name, "source": "config", "used": used, "limit": limit,
            "fraction": round(max(limit - used, 0) / limit, 4) if limit > 0 else 0.0,
            "resets_in_s": None}


def _limits(lim: Limits, w: UsageWindows, minute: int, day: int) -> list[dict[str, Any]]:
    """Configured limits against the minute and day counters (read, never rolled)."""
    out: list[dict[str, Any]] = []
    this_minute, today = w.minute_key == minute, w.day_key == day
    if lim.rpm is not None:
        out.append(_limit("rpm", w.minute_requests if this_minute else 0, lim.rpm))
    if lim.tpm is not None:
        out.append(_limit("tpm", w.minute_tokens if this_minute else 0, lim.tpm))
    if lim.rpd is not None:
        out.append(_limit("rpd", w.day_requests if today else 0, lim.rpd))
    if lim.tpd is not None:
        out.append(_limit("tpd", w.day_tokens if today else 0, lim.tpd))
    return out


def _header_limits(out: list[dict[str, Any]], info: RateLimitInfo | None, at: float,
                   now: float) -> None:
    """The upstream's last ``x-ratelimit-*`` numbers, while they still hold."""
    if info is None:
        return
    age = now - at
    for name, remaining, limit, reset in (
        ("requests", info.remaining_requests, info.limit_requests, info.reset_requests),
        ("tokens", info.remaining_tokens, info.limit_tokens, info.reset_tokens),
    ):
        if remaining is None or not limit:
            continue
        window = _HEADER_TTL if reset is None else reset
        if age > window:
            continue
        out.append({"name": name, "source": "upstream", "used": max(limit - remaining, 0),
                    "limit": limit, "fraction": round(min(max(remaining / limit, 0.0), 1.0), 4),
                    "resets_in_s": round(at + reset - now, 1) if reset is not None else None})


def _headroom(limits: list[dict[str, Any]]) -> float | None:
    """The tightest remaining fraction, None when no limit is known."""
    return min((entry["fraction"] for entry in limits), default=None)


STATUS_PAGE: web.AppKey[StatusPage] = web.AppKey("modelmesh_status_page", StatusPage)
"""Where an application's :class:`StatusPage` lives (``app[STATUS_PAGE]``)."""
