"""What every assembly step shares: the configuration and registry being built from, the
problems collected so far (``path: message``), and the conversions of timeout and limit
sections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import MeshConfig, TimeoutConfig, structure_plugin_config
from ..plugins import PluginRegistry
from ..state import StateStore
from ..types import Limits, Timeouts

if TYPE_CHECKING:
    from .facade import ModelMesh

__all__ = ["BuilderBase", "limits_from", "timeouts_from"]


def timeouts_from(cfg: TimeoutConfig) -> Timeouts:
    """A ``timeout`` section as the runtime's :class:`Timeouts`."""
    return Timeouts(connect=cfg.connect, first_byte=cfg.first_byte, idle=cfg.idle,
                    total=cfg.total)


def limits_from(cfg: Any) -> Limits:
    """A ``limits`` section (or None) as the runtime's :class:`Limits`."""
    if cfg is None:
        return Limits()
    return Limits(rpm=cfg.rpm, tpm=cfg.tpm, rpd=cfg.rpd, tpd=cfg.tpd,
                  monthly_requests=cfg.monthly_requests, monthly_tokens=cfg.monthly_tokens,
                  reset_hour=cfg.reset_hour, free=cfg.free)


class BuilderBase:
    """The state an assembly step works on; every problem is collected, none raised early."""

    def __init__(self, mesh: ModelMesh, config: MeshConfig, registry: PluginRegistry,
                 secret_store: Any, state: StateStore | None) -> None:
        self.mesh = mesh
        self.config = config
        self.registry = registry
        self.secret_store = secret_store
        self.state = state
        self.errors: list[str] = []
        self.broken: dict[str, set[str]] = {}

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def plugin_config(self, data: Any, tp: type | None, path: str) -> Any:
        if tp is not None and isinstance(data, tp):
            return data
        value, errs = structure_plugin_config(data, tp, path)
        self.errors.extend(errs)
        return value
