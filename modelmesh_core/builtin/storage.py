"""Built-in state storage: in memory (one process), a local JSON file (one process, survives
a clean restart), SQLite (the workers of one machine) and Redis (replicas on many machines).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
from attrs import frozen

from ..hookspecs import hookimpl
from ..state import MemoryStateStore, ProviderState, UsageWindows, model_state_fields
from ..types import StorageSpec
from .redis_store import RedisConfig
from .sqlite_store import SQLiteConfig

__all__ = ["LocalFileStateStore"]


def _memory(config: Any) -> MemoryStateStore:
    return MemoryStateStore()


@frozen(kw_only=True)
class LocalFileConfig:
    """``path`` of the JSON state file."""

    path: str = ".modelmesh/state.json"


_PROVIDER_FIELDS = [a.name for a in attrs.fields(ProviderState)
                    if a.name not in ("rate_limit", "trial_in_flight")]
_WINDOW_FIELDS = {a.name for a in attrs.fields(UsageWindows)}


class LocalFileStateStore(MemoryStateStore):
    """State kept in memory and written to a JSON file on flush (``modelmesh.local-file.v1``).

    Cooldowns, counters, costs, deactivations and the admission ledger (limits, quotas,
    budget spend) survive a clean restart. It is for **one process**: state is written only
    at shutdown, so ``kill -9`` loses what was counted since start, and processes sharing the
    file do not see each other's counts (each writes through its own temporary file, so the
    file is never torn, but the last writer wins). For several workers, or to survive a
    crash, use ``modelmesh.sqlite.v1``; ``modelmesh serve --workers N`` refuses this store.
    """

    def __init__(self, config: LocalFileConfig) -> None:
        super().__init__()
        self._path = Path(config.path).expanduser()

    async def load(self) -> None:
        """Read the file if it exists (a corrupt file is ignored and replaced on next flush)."""
        if not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        fields = set(model_state_fields())
        for item in data.get("models", []):
            st = self.model(item["model_id"])
            for key, value in item.items():
                if key in fields:
                    setattr(st, key, value)
        for item in data.get("providers", []):
            ps = self.provider(item["name"])
            for key, value in item.items():
                if key in _PROVIDER_FIELDS:
                    setattr(ps, key, value)
        for scope, item in data.get("budgets", {}).items():
            self.globals[scope] = UsageWindows(
                **{k: v for k, v in item.items() if k in _WINDOW_FIELDS})
        ledger = data.get("ledger")
        if isinstance(ledger, dict):
            self.ledger_backend.restore(ledger)

    async def flush(self) -> None:
        """Write every state atomically."""
        fields = model_state_fields()
        data = {
            "models": [{f: getattr(st, f) for f in fields} for st in self.models()],
            "providers": [{f: getattr(ps, f) for f in _PROVIDER_FIELDS}
                          for ps in self.providers()],
            "budgets": {scope: attrs.asdict(w) for scope, w in self.globals.items()
                        if isinstance(w, UsageWindows)},
            "ledger": self.ledger_backend.dump(),
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self._path)

    async def close(self) -> None:
        """Flush on close."""
        await self.flush()


@hookimpl
def modelmesh_storage() -> list[StorageSpec]:
    """The built-in state stores."""
    return [
        StorageSpec(name="modelmesh.memory.v1", factory=_memory, description="in this process"),
        StorageSpec(name="modelmesh.local-file.v1", factory=LocalFileStateStore,
                    config_type=LocalFileConfig,
                    description="a JSON file, flushed on shutdown (one process; prefer "
                                "modelmesh.sqlite.v1)"),
        StorageSpec(name="modelmesh.sqlite.v1", factory=_sqlite, config_type=SQLiteConfig,
                    description="a SQLite database shared by the workers of one machine"),
        StorageSpec(name="modelmesh.redis.v1", factory=_redis, config_type=RedisConfig,
                    description="Redis, shared by replicas on many machines"),
    ]


def _sqlite(config: SQLiteConfig | None) -> Any:
    from .sqlite_store import SQLiteStateStore

    return SQLiteStateStore(config or SQLiteConfig())


def _redis(config: RedisConfig | None) -> Any:
    from .redis_store import RedisStateStore

    return RedisStateStore(config or RedisConfig())


