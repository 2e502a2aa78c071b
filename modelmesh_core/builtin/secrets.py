"""Built-in secret stores: environment, dotenv file, JSON file, in-memory, an encrypted file
and the OS keyring.

The encrypted-file and keyring stores need the optional ``secrets`` extra
(``pip install 'modelmesh-core[secrets]'``: ``cryptography`` and ``keyring``); without it they
report a configuration error naming that command.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import secrets as _random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from attrs import Factory, frozen

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..redaction import register_secret
from ..types import SecretStoreSpec

__all__ = [
    "DotenvStore",
    "EncryptedFileStore",
    "EnvStore",
    "JsonSecretsStore",
    "KeyringStore",
    "MemorySecretsStore",
]

_EXTRA_HINT = "pip install 'modelmesh-core[secrets]'"


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


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


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
        _write_private(self._path, json.dumps(self._values, indent=2, sort_keys=True).encode())

# --------------------------------------------------------------------------- OS keyring


def _keyring_backend(name: str | None, path: str) -> Any:
    """The keyring backend named ``package.module.Class`` (or ``package.module:Class``), or
    the ``keyring`` package's own choice (``$PYTHON_KEYRING_BACKEND`` or the OS keyring)."""
    try:
        import keyring
    except ImportError:
        raise ConfigError([f"{path}: the OS keyring needs the keyring package: "
                           f"{_EXTRA_HINT}"]) from None
    if not name:
        return keyring.get_keyring()
    module, sep, attr = name.partition(":")
    if not sep:
        module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
        return cls()
    except Exception as exc:
        raise ConfigError([f"{path}: cannot load keyring backend {name!r} ({exc})"]) from None


def _keyring_call(fn: Any, *args: Any, path: str) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # keyring's errors (locked, no backend, D-Bus down…)
        raise ConfigError([f"{path}: the keyring refused the request: "
                           f"{type(exc).__name__}: {exc}"]) from None


@frozen(kw_only=True)
class KeyringStoreConfig:
    """``service``: the keyring service the secrets are filed under; ``backend``: a keyring
    backend class (``package.module.Class``) instead of the ``keyring`` package's choice."""

    service: str = "modelmesh"
    backend: str | None = None


_INDEX = "__modelmesh_names__"


class KeyringStore:
    """Secrets in the OS keyring (``modelmesh.keyring.v1``); writable.

    Each secret is one keyring entry (service ``config.service``, user name = secret name).
    Keyrings cannot list their entries, so the store keeps the list of names in one more
    entry (``__modelmesh_names__``). Lookups go to the keyring each time (start-up only).
    """

    def __init__(self, config: KeyringStoreConfig | None) -> None:
        config = config or KeyringStoreConfig()
        self._service = config.service
        self._ring = _keyring_backend(config.backend, "secrets.config.backend")

    def __repr__(self) -> str:
        return f"KeyringStore(service={self._service!r})"

    def get(self, name: str) -> str | None:
        """The value of ``name`` or None."""
        value: str | None = _keyring_call(self._ring.get_password, self._service, name,
                                          path="secrets")
        if value is not None:
            register_secret(value)
        return value

    def list(self) -> list[str]:
        """Secret names (never values)."""
        raw = _keyring_call(self._ring.get_password, self._service, _INDEX, path="secrets")
        try:
            names = json.loads(raw) if raw else []
        except ValueError:
            names = []
        return sorted(str(n) for n in names) if isinstance(names, list) else []

    def set(self, name: str, value: str) -> None:
        """Store ``name``."""
        if name == _INDEX:
            raise ValueError(f"{_INDEX!r} is reserved")
        _keyring_call(self._ring.set_password, self._service, name, value, path="secrets")
        self._index({*self.list(), name})

    def delete(self, name: str) -> None:
        """Remove ``name``; KeyError if absent."""
        names = set(self.list())
        if name not in names and self.get(name) is None:
            raise KeyError(name)
        try:
            self._ring.delete_password(self._service, name)
        except Exception as exc:
            if self.get(name) is not None:  # still there: a real failure, not "not found"
                raise ConfigError([f"secrets: the keyring refused to delete {name!r}: "
                                   f"{type(exc).__name__}: {exc}"]) from None
        self._index(names - {name})

    def _index(self, names: Iterable[str]) -> None:
        _keyring_call(self._ring.set_password, self._service, _INDEX,
                      json.dumps(sorted(names)), path="secrets")


# --------------------------------------------------------------------------- encrypted file

KEY_ENV = "MODELMESH_SECRETS_KEY"
KEYRING_KEY_USER = "secrets-key"
_FORMAT = "modelmesh-secrets"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


@frozen(kw_only=True)
class EncryptedFileConfig:
    """An encrypted secrets file.

    The key is a passphrase read from the environment variable ``key_env``; when that is not
    set, from the OS keyring (service ``keyring_service``, user ``secrets-key``; null: never
    ask the keyring), through ``keyring_backend`` when given.
    """

    path: str
    key_env: str = KEY_ENV
    keyring_service: str | None = "modelmesh"
    keyring_backend: str | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


class EncryptedFileStore(MemorySecretsStore):
    """Secrets in one file encrypted with AES-256-GCM (``modelmesh.encrypted-file.v1``);
    writable.

    The file is JSON: the format tag, the scrypt parameters and salt that turn the passphrase
    into the AES key, a fresh 96-bit nonce per write, and the ciphertext of a JSON object of
    secrets. The header is authenticated with the data, so a wrong key or an altered file is
    detected and reported as a :class:`ConfigError` naming the fix; nothing secret is ever in
    the message. A missing file is an empty store (the first ``set`` creates it).
    """

    def __init__(self, config: EncryptedFileConfig,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(None)
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
        except ImportError:
            raise ConfigError([f"secrets.connector: modelmesh.encrypted-file.v1 needs the "
                               f"cryptography package: {_EXTRA_HINT}"]) from None
        self._aesgcm, self._scrypt, self._invalid_tag = AESGCM, Scrypt, InvalidTag
        self._config = config
        self._env = os.environ if env is None else env
        self._path = Path(config.path).expanduser()
        self._key: bytes | None = None
        self._header: dict[str, Any] | None = None
        if self._path.exists():
            self._load()

    def __repr__(self) -> str:
        return f"EncryptedFileStore(path={str(self._path)!r})"

    # -- the key

    def _passphrase(self) -> tuple[str, str]:
        """The passphrase and where it came from."""
        cfg = self._config
        value = self._env.get(cfg.key_env)
        if value:
            return value, f"${cfg.key_env}"
        if cfg.keyring_service:
            try:
                ring = _keyring_backend(cfg.keyring_backend, "secrets.config.keyring_backend")
                value = ring.get_password(cfg.keyring_service, KEYRING_KEY_USER)
            except ConfigError:
                if cfg.keyring_backend:
                    raise
                value = None  # no keyring package or no usable keyring: fall through
            except Exception:
                value = None
            if value:
                return value, f"the OS keyring ({cfg.keyring_service}/{KEYRING_KEY_USER})"
        ring_hint = (f" or store it in the OS keyring (`keyring set {cfg.keyring_service} "
                     f"{KEYRING_KEY_USER}`)" if cfg.keyring_service else "")
        raise ConfigError([f"secrets.config.key_env: {self._path} is an encrypted secrets file "
                           f"and no key was found: set ${cfg.key_env} to its passphrase"
                           f"{ring_hint}"])

    def _derive(self, passphrase: str, header: Mapping[str, Any]) -> bytes:
        kdf = header["kdf"]
        key: bytes = self._scrypt(salt=_unb64(kdf["salt"]), length=32, n=int(kdf["n"]),
                                  r=int(kdf["r"]), p=int(kdf["p"])).derive(passphrase.encode())
        return key

    @staticmethod
    def _aad(header: Mapping[str, Any]) -> bytes:
        return orjson.dumps({k: header[k] for k in ("format", "version", "cipher", "kdf")},
                            option=orjson.OPT_SORT_KEYS)

    # -- reading and writing

    def _load(self) -> None:
        where = f"secrets.config.path: {self._path}"
        try:
            doc = json.loads(self._path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError("not a ModelMesh encrypted secrets file")
            if doc.get("version") != 1 or doc.get("cipher") != "AES-256-GCM":
                raise ValueError(f"unsupported version {doc.get('version')!r} / cipher "
                                 f"{doc.get('cipher')!r}")
            if not isinstance(doc.get("kdf"), dict) or doc["kdf"].get("name") != "scrypt":
                raise ValueError("unsupported key derivation")
            nonce, data = _unb64(doc.get("nonce")), _unb64(doc.get("data"))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError([f"{where}: cannot read it ({exc})"]) from None
        passphrase, source = self._passphrase()
        try:
            key = self._derive(passphrase, doc)
            plain = self._aesgcm(key).decrypt(nonce, data, self._aad(doc))
        except self._invalid_tag:
            raise ConfigError([
                f"secrets.config.key_env: cannot decrypt {self._path}: the key from {source} "
                f"is not the one the file was written with (or the file was altered); set "
                f"${self._config.key_env} to the passphrase used when it was created"
            ]) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError([f"{where}: cannot read it ({exc})"]) from None
        try:
            values = json.loads(plain)
        except ValueError:
            values = None
        if not isinstance(values, dict):
            raise ConfigError([f"{where}: the decrypted content is not a JSON object"])
        self._values = {str(k): str(v) for k, v in values.items()}
        for value in self._values.values():
            register_secret(value)
        self._key, self._header = key, doc

    def _saved(self) -> None:
        """Encrypt and write the whole file (a fresh nonce each time), mode 0600."""
        if self._key is None or self._header is None:
            passphrase, _ = self._passphrase()
            kdf = {"name": "scrypt", **_SCRYPT, "salt": _b64(_random.token_bytes(16))}
            header: dict[str, Any] = {"format": _FORMAT, "version": 1,
                                      "cipher": "AES-256-GCM", "kdf": kdf}
            self._key, self._header = self._derive(passphrase, header), header
        nonce = _random.token_bytes(12)
        plain = json.dumps(self._values, sort_keys=True).encode()
        data = self._aesgcm(self._key).encrypt(nonce, plain, self._aad(self._header))
        doc = {**{k: self._header[k] for k in ("format", "version", "cipher", "kdf")},
               "nonce": _b64(nonce), "data": _b64(data)}
        _write_private(self._path, json.dumps(doc, indent=2).encode() + b"\n")


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
        SecretStoreSpec(name="modelmesh.encrypted-file.v1", factory=EncryptedFileStore,
                        config_type=EncryptedFileConfig, writable=True,
                        description="an AES-256-GCM encrypted file (key: env var or keyring)"),
        SecretStoreSpec(name="modelmesh.keyring.v1", factory=KeyringStore,
                        config_type=KeyringStoreConfig, writable=True,
                        description="the OS keyring"),
    ]
