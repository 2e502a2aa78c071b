"""The admin API: pool status, rotate, reactivate, reload, key usage.

Every handler first passes :meth:`~modelmesh_core.server.auth.Auth.require_admin` (keys,
loopback, cross-site and Host checks).

``POST /admin/reload`` takes an empty body (re-read the mesh's own config source),
``{"config": {...}}`` or ``{"path": "..."}``. A posted config or file may reference only the
``${env:…}`` / ``${secrets:…}`` names the running configuration already uses: a reload can
rearrange what the operator set up but cannot read new secrets out of the environment or the
secret store (add them to the config file and reload it with an empty body instead).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..config import MeshConfig, read_source, references
from ..errors import ConfigError
from ..limits import clip
from ..wire import WireError, dumps
from .errors import unknown_pool

if TYPE_CHECKING:
    from .routes import ProxyServer

__all__ = ["AdminAPI"]

_JSON = "application/json"


class AdminAPI:
    """The ``/admin`` handlers of one :class:`~modelmesh_core.server.routes.ProxyServer`."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    def _guard(self, request: web.Request) -> None:
        self.server.auth.require_admin(request)

    async def pools(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/pools``: ``mesh.pool_status()``."""
        self._guard(request)
        return web.Response(body=dumps(self.server.mesh.pool_status(), default=str),
                            content_type=_JSON)

    async def pool(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/pools/{pool}``."""
        self._guard(request)
        pool = request.match_info["pool"]
        status = self.server.mesh.pool_status()
        if pool not in status:
            raise unknown_pool(pool, self.server.pool_names)
        return web.Response(body=dumps(status[pool], default=str), content_type=_JSON)

    async def rotate(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/pools/{pool}/rotate``: force the pool onto its next model."""
        self._guard(request)
        pool = request.match_info["pool"]
        if pool not in self.server.pool_members:
            raise unknown_pool(pool, self.server.pool_names)
        result = self.server.mesh.rotate(pool)
        return web.Response(body=dumps({"pool": pool, "active_model": result}),
                            content_type=_JSON)

    async def reactivate(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/models/{model}/reactivate``."""
        self._guard(request)
        model = request.match_info["model"]
        if model not in self.server.model_entries or model in self.server.pool_members:
            raise WireError(f"Unknown model {clip(model)!r}.", status=404,
                            code="model_not_found", param="model")
        self.server.mesh.reactivate(model)
        return web.Response(body=dumps({"model": model, "status": "active"}),
                            content_type=_JSON)

    async def keys(self, request: web.Request) -> web.StreamResponse:
        """``GET /admin/keys``: usage per virtual key (never the key itself)."""
        self._guard(request)
        return web.Response(body=dumps([k.snapshot(self.server.key_usage(k))
                                         for k in self.server.keys.values()]),
                            content_type=_JSON)

    async def reload(self, request: web.Request) -> web.StreamResponse:
        """``POST /admin/reload``: keeps model state and key counters; 400 listing every
        problem (see the module docstring for what a posted config may reference)."""
        self._guard(request)
        server = self.server
        mesh = server.mesh
        source = await self._source(request)
        if source is None:
            source = mesh.config_source
            if source is None:
                raise WireError("No config given and the mesh has no config file to re-read;"
                                " send {\"config\": {...}} or {\"path\": \"...\"}.",
                                code="missing_required_parameter", param="config")
        else:
            await asyncio.to_thread(_check_references, source, mesh.config_source)
        try:
            await mesh.reload_config(source)
        except ConfigError as exc:
            raise WireError("Invalid configuration: " + "; ".join(exc.errors),
                            code="invalid_config", param="config") from None
        server.reloaded()
        return web.Response(body=dumps({"status": "reloaded", "pools": server.pool_names,
                                        "models": server.model_names}), content_type=_JSON)

    async def _source(self, request: web.Request) -> dict[str, Any] | str | None:
        if not request.body_exists:
            return None
        body = await self.server.read_json(request)
        if not isinstance(body, dict):
            raise WireError("The body must be a JSON object: {\"config\": {...}} or "
                            "{\"path\": \"...\"}.", code="invalid_body")
        if "config" in body:
            config = body["config"]
            if not isinstance(config, dict):
                raise WireError("'config' must be an object (the configuration itself).",
                                param="config", code="invalid_type")
            return config
        if "path" in body:
            path = body["path"]
            if not isinstance(path, str) or not path.strip():
                raise WireError("'path' must be the path of a config file, as a string.",
                                param="path", code="invalid_type")
            return path
        return body or None


def _check_references(source: dict[str, Any] | str, running: Any) -> None:
    """400 unless ``source`` references only what the running configuration does."""
    try:
        new = references(read_source(source))
    except ConfigError as exc:
        raise WireError("Invalid configuration: " + "; ".join(exc.errors),
                        code="invalid_config", param="config") from None
    except OSError as exc:
        raise WireError(f"The config file cannot be read ({type(exc).__name__}).",
                        code="invalid_config", param="path") from None
    if not new:
        return
    known: set[str] = set()
    if running is not None and not isinstance(running, MeshConfig):
        try:
            known = references(read_source(running))
        except (ConfigError, OSError):
            known = set()
    extra = sorted(new - known)
    if extra:
        raise WireError(
            "A reloaded configuration may reference only the ${env:…} / ${secrets:…} names "
            "the running configuration uses; new: " + ", ".join(clip(e, 60) for e in extra[:10])
            + ". Add them to the config file and reload it with an empty body.",
            code="new_secret_reference", param="config")
