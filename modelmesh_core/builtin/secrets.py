"""Built-in secret stores: environment, dotenv file, JSON file, in-memory."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from attrs import Factory, frozen

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..types import SecretStoreSpec

__all__ = ["DotenvStore", "EnvStore", "JsonSecretsStore", "MemorySecretsStore"]


@frozen(kw_only=True)
class EnvStoreConfig:
    """``prefix`` is prepended to every name looked up (``MM_`` + ``OPENAI_KEY``)."""

    prefix: str = ""


class EnvStore:
    """Secrets from environment variables (``modelmesh.env.v1``, the default)."""

    def __init__(self, config: EnvStoreConfig | None, env: Mapping[str, str] | None = None) -> None:
        self._prefix = config.prefix if config else ""
        self._env = os.environ if env is None else env

    def get(self, name: str) -> str | None:
        """The value of ``prefix + name`` or None."""
        return self._env.get(self._prefix + name)


@frozen(kw_only=True)
class FileStoreConfig:
    """Path of the file holding the secrets."""

    path: str


def _parse_dotenv(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


class DotenvStore:
    """Secrets from a ``.env`` file (``modelmesh.dotenv.v1``); read once at start-up."""

    def __init__(self, config: FileStoreConfig) -> None:
        path = Path(config.path).expanduser()
        if not path.exists():
            raise ConfigError([f"secrets.config.path: {path} does not exist"])
        self._values = _parse_dotenv(path.read_text(encoding="utf-8"))

    def get(self, name: str) -> str | None:
        """The value of ``name`` or None."""
        return self._values.get(name)

    def list(self) -> list[str]:
        """Secret names (never values)."""
        return sorted(self._values)


@frozen(kw_only=True)
class MemoryStoreConfig:
    """Initial secrets (useful in tests and embedded use)."""

    values: dict[str, str] = Factory(dict)


class MemorySecretsStore:
    """Secrets held in memory (``modelmesh.memory-secrets.v1``); writable."""

    def __init__(self, config: MemoryStoreConfig | None) -> None:
        self._values: dict[str, str] = dict(config.values) if config else {}

    def get(self, name: str) -> str | None:
        """The value of ``name`` or None."""
        return self._values.get(name)

    def list(self) -> list[str]:
        """Secret names (never values)."""
        return sorted(self._values)

    def set(self, name: str, value: str) -> None:
        """Store ``name``."""
        self._values[name] = value
        self._saved()

    def delete(self, name: str) -> None:
        """Remove ``name``; KeyError if absent."""
        del self._values[name]
        self._saved()

    def _saved(self) -> None:
        """Called after every change (file-backed stores persist here)."""


class JsonSecretsStore(MemorySecretsStore):
    """Secrets from a flat JSON object file (``modelmesh.json-secrets.v1``); writable."""

    def __init__(self, config: FileStoreConfig) -> None:
        super().__init__(None)
        self._path = Path(config.path).expanduser()
        if self._path.exists():
            data = json.loads(self._path.read_text(encoding="utf-8") or "{}")
            if not isinstance(data, dict):
                raise ConfigError([f"secrets.config.path: {self._path} must hold a JSON object"])
            self._values = {str(k): str(v) for k, v in data.items()}

    def _saved(self) -> None:
        """Write the file atomically with mode 0600."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self._values, fh, indent=2, sort_keys=True)
        tmp.replace(self._path)


@hookimpl
def modelmesh_secret_stores() -> list[SecretStoreSpec]:
    """The built-in secret stores."""
    return [
        SecretStoreSpec(name="modelmesh.env.v1", factory=EnvStore, config_type=EnvStoreConfig,
                        description="environment variables (default)"),
        SecretStoreSpec(name="modelmesh.dotenv.v1", factory=DotenvStore,
                        config_type=FileStoreConfig, description="a .env file"),
        SecretStoreSpec(name="modelmesh.json-secrets.v1", factory=JsonSecretsStore,
                        config_type=FileStoreConfig, writable=True,
                        description="a JSON object file (0600)"),
        SecretStoreSpec(name="modelmesh.memory-secrets.v1", factory=MemorySecretsStore,
                        config_type=MemoryStoreConfig, writable=True,
                        description="in memory"),
    ]
