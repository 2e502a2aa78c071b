"""Who may call what: proxy keys (virtual keys with pools, rpm and budgets), admin keys, the
guard in front of the admin API, and who may read ``/metrics``.

The admin API can rewrite the configuration, so it is guarded beyond its key:

* with no admin key configured it is off, unless ``proxy.admin.open_on_loopback`` opens it to
  callers on this machine;
* it answers no cross-site browser request (``Sec-Fetch-Site`` other than same-origin / none,
  an ``Origin`` that is not the proxy itself), and a request body must be
  ``application/json`` (a ``text/plain`` POST needs no CORS preflight, so it is refused);
* while it is open without a key, the ``Host`` header must name the address the connection
  arrived on (or ``localhost``) or an entry of ``proxy.admin.allowed_hosts``: a page that
  rebinds its own DNS name to 127.0.0.1 sends its own name and is refused. With admin keys
  configured the Host check applies only when ``allowed_hosts`` is set.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..config import BudgetConfig, MetricsAuth, ProxyConfig
from ..wire import WireError

__all__ = ["Auth", "KeyState", "is_loopback", "token"]


class KeyState:
    """A virtual key: its settings and the requests this process admitted for it. Its rpm
    window and spend live in the admission ledger (:mod:`modelmesh_core.keys`), shared by
    every worker and replica of the configured store."""

    __slots__ = ("admin", "budget", "name", "pools", "requests", "rpm")

    def __init__(self, name: str, pools: frozenset[str] | None, rpm: int | None,
                 budget: BudgetConfig | None, admin: bool) -> None:
        self.name = name
        self.pools = pools
        self.rpm = rpm
        self.budget = budget
        self.admin = admin
        self.requests = 0

    def adopt(self, other: KeyState) -> None:
        """Take over this process's request count of the same key before a config reload
        (the ledger keeps the rest)."""
        self.requests = other.requests

    def snapshot(self, usage: Mapping[str, float]) -> dict[str, Any]:
        """JSON-able usage (never the key itself); ``usage`` from
        :func:`~modelmesh_core.keys.virtual_key_usage`."""
        return {"name": self.name, "requests": self.requests,
                "pools": sorted(self.pools) if self.pools is not None else None,
                "rpm": self.rpm, "minute_requests": usage.get("minute_requests", 0.0),
                "day_spend": usage.get("day_spend", 0.0),
                "month_spend": usage.get("month_spend", 0.0), "admin": self.admin}


class Auth:
    """The key tables of one configuration (rebuilt on reload, keeping key counters)."""

    def __init__(self, cfg: ProxyConfig, previous: Auth | None = None) -> None:
        old: dict[str, KeyState] = previous.keys if previous is not None else {}
        keys: dict[str, KeyState] = {}
        for i, vk in enumerate(cfg.auth.keys):
            state = KeyState(vk.name or f"key-{i}",
                             frozenset(vk.pools) if vk.pools is not None else None,
                             vk.rpm, vk.budget, vk.admin)
            before = old.get(str(vk.key))
            if before is not None:  # a reload keeps what the key already used
                state.adopt(before)
            keys[str(vk.key)] = state
        self.keys: dict[str, KeyState] = keys
        self.admin_tokens = frozenset(str(k) for k in cfg.auth.admin_keys) | frozenset(
            k for k, s in keys.items() if s.admin)
        self.required = bool(keys or self.admin_tokens)
        self.admin_open = not self.admin_tokens and cfg.admin.open_on_loopback
        self.allowed_hosts = frozenset(h.lower() for h in cfg.admin.allowed_hosts)
        self.metrics_auth = cfg.metrics.auth

    def authenticate(self, request: web.Request) -> KeyState | None:
        """The caller's virtual key (None when the proxy is open); 401 when missing/unknown.

        An open proxy (no keys) answers a loopback connection only when its ``Host`` names this
        proxy: a web page that rebinds its own domain to 127.0.0.1 (DNS rebinding) could
        otherwise spend the providers' keys and read the answers.
        """
        if not self.required:
            if is_loopback(request.remote) and not _host_allowed(request, self.allowed_hosts):
                raise WireError("The Host header does not name this proxy; add it to "
                                "proxy.admin.allowed_hosts if it should.", status=403,
                                code="host_not_allowed")
            return None
        tok = token(request)
        if tok is None:
            raise WireError(
                "Missing API key. Send an Authorization header with the Bearer scheme and a "
                "key configured in proxy.auth.", status=401, code="missing_api_key")
        key = self.keys.get(tok)
        if key is None:
            if tok in self.admin_tokens:
                raise WireError("Admin keys are for the /admin API; use a proxy key "
                                "(proxy.auth.keys) for /v1.", status=403,
                                code="admin_key_not_allowed")
            raise WireError("Incorrect API key provided.", status=401, code="invalid_api_key")
        return key

    def require_admin(self, request: web.Request) -> None:
        """Admit an admin API request or raise the 401 / 403 / 415 that refuses it."""
        open_mode = False
        if not self.admin_tokens:
            if not self.admin_open:
                raise WireError(
                    "The admin API is off: configure proxy.auth.admin_keys, or set "
                    "proxy.admin.open_on_loopback: true to open it to this machine.",
                    status=403, code="admin_disabled")
            if not is_loopback(request.remote):
                raise WireError("The admin API is only open to this machine while no admin "
                                "key is configured.", status=403, code="admin_requires_auth")
            open_mode = True
        _same_site(request)
        if (open_mode or self.allowed_hosts) and not _host_allowed(request, self.allowed_hosts):
            raise WireError("The Host header does not name this proxy; add it to "
                            "proxy.admin.allowed_hosts if it should.", status=403,
                            code="host_not_allowed")
        if request.method == "POST":
            _json_only(request)
        if open_mode:
            return
        tok = token(request)
        if tok is None:
            raise WireError("Missing admin API key.", status=401, code="missing_api_key")
        if tok in self.admin_tokens:
            return
        if tok in self.keys:
            raise WireError("This key may not use the admin API.", status=403,
                            code="admin_key_required")
        raise WireError("Incorrect API key provided.", status=401, code="invalid_api_key")

    def require_metrics(self, request: web.Request) -> None:
        """Apply ``proxy.metrics.auth`` (only when keys are configured at all)."""
        mode = self.metrics_auth
        if not self.required or mode is MetricsAuth.OPEN:
            return
        tok = token(request)
        if tok is None:
            raise WireError("Missing API key for /metrics (proxy.metrics.auth).", status=401,
                            code="missing_api_key")
        if tok in self.admin_tokens:
            return
        if tok in self.keys:
            if mode is MetricsAuth.KEY:
                return
            raise WireError("/metrics needs an admin key (proxy.metrics.auth: admin).",
                            status=403, code="admin_key_required")
        raise WireError("Incorrect API key provided.", status=401, code="invalid_api_key")


def token(request: web.Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer``, ``api-key`` or ``x-api-key``."""
    headers = request.headers
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return headers.get("api-key") or headers.get("x-api-key")


@functools.lru_cache(maxsize=256)
def _loopback(remote: str) -> bool:
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return remote == "localhost"


def is_loopback(remote: str | None) -> bool:
    """Whether an address is this machine's (127.0.0.0/8, ::1). Cached, bounded: it runs on
    every request of a keyless proxy."""
    return bool(remote) and _loopback(remote)  # type: ignore[arg-type]


def _split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (with ``[v6]`` brackets) into the bare name and the port."""
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    if not port:
        return name, None
    return name, int(port) if port.isdigit() and len(port) <= 5 else -1


def _host_allowed(request: web.Request, extra: frozenset[str]) -> bool:
    host = request.headers.get("Host", "").strip().lower()
    if not host:
        return False
    if host in extra:
        return True
    name, port = _split_host(host)
    if name in extra and port is None:
        return True
    transport = request.transport
    sock = transport.get_extra_info("sockname") if transport is not None else None
    if not sock:
        return False
    local_ip, local_port = str(sock[0]).lower(), int(sock[1])
    if port is not None and port != local_port:
        return False
    if name in extra:
        return True
    return name == local_ip or (name == "localhost" and is_loopback(local_ip))


def _same_site(request: web.Request) -> None:
    headers = request.headers
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        raise WireError("Cross-site requests may not use the admin API.", status=403,
                        code="cross_site_request")
    origin = headers.get("Origin")
    if origin is None:
        return
    _, sep, rest = origin.partition("://")
    if not sep or rest.lower() != headers.get("Host", "").strip().lower():
        raise WireError("Cross-site requests may not use the admin API.", status=403,
                        code="cross_site_request")


def _json_only(request: web.Request) -> None:
    """A POST that carries a body must say it is JSON (an empty one may say anything)."""
    if not request.body_exists or request.content_length == 0:
        return
    if request.content_type != "application/json":
        raise WireError("The admin API accepts only application/json bodies.", status=415,
                        code="unsupported_media_type")
