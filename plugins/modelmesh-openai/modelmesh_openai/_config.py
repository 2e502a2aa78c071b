"""Configuration of the OpenAI-compatible connectors and how it resolves against the environment."""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from attrs import Factory, field, frozen, validators

from modelmesh_core.config import Duration
from modelmesh_core.errors import ConfigError

__all__ = ["AZURE_API_VERSION", "AzureOpenAIConfig", "Connector", "OpenAIConfig"]

AZURE_API_VERSION = "2024-10-21"
"""The ``api-version`` sent to Azure deployments when neither the config nor
``OPENAI_API_VERSION`` gives one (the latest GA data-plane version when this was written)."""


def _keys(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    return (str(value),)


@frozen(kw_only=True)
class OpenAIConfig:
    """The ``config:`` of every OpenAI-compatible connector.

    Attributes:
        base_url: written the way the OpenAI SDK takes it (``https://api.openai.com/v1``,
            ``http://127.0.0.1:11434/v1``); the adapter appends ``/chat/completions``,
            ``/embeddings`` and ``/models``. For ``azure.openai.v1`` the resource endpoint
            (``https://<resource>.openai.azure.com``, ``/openai`` is appended when missing).
            Default: the connector's documented URL (or its host environment variable).
        api_key: one key. Default: the connector's environment variable.
        keys: several keys, rotated: a key answered with 401/403 or an ``insufficient_quota``
            429 is set aside (for ``retry-after``, else ``key_cooldown`` / ``auth_cooldown``
            seconds) and the next key is tried within the same call.
        organization / project: sent as ``OpenAI-Organization`` / ``OpenAI-Project``.
        headers: extra headers sent with every request (e.g. OpenRouter's ``HTTP-Referer``).
        api_version: Azure ``api-version`` query parameter (default ``OPENAI_API_VERSION`` or
            ``2024-10-21``).
        key_cooldown: seconds a quota-exhausted key is set aside when no Retry-After was given.
        auth_cooldown: seconds a rejected key is set aside.
    """

    base_url: str | None = None
    api_key: str | None = None
    keys: tuple[str, ...] = field(default=(), converter=_keys)
    organization: str | None = None
    project: str | None = None
    headers: dict[str, str] = Factory(dict)
    api_version: str | None = None
    key_cooldown: Duration = Duration(60.0)
    auth_cooldown: Duration = Duration(600.0)


@frozen(kw_only=True)
class AzureOpenAIConfig(OpenAIConfig):
    """The ``config:`` of ``azure.openai.v1``: :class:`OpenAIConfig` plus Azure's choices.

    Attributes:
        auth: ``"api-key"`` (the ``api-key`` header; keys from ``api_key`` / ``keys`` /
            ``AZURE_OPENAI_API_KEY``) or ``"entra"`` (``Authorization: Bearer <token>`` with a
            Microsoft Entra ID token from ``entra_token``, ``entra_token_provider`` or
            ``AZURE_OPENAI_AD_TOKEN``).
        entra_token: a static Entra ID access token (they expire after about an hour: prefer
            ``entra_token_provider`` for long-running processes).
        entra_token_provider: ``"package.module:function"`` returning a token (``str``, or an
            awaitable of one), e.g. a wrapper around ``azure.identity``'s
            ``get_bearer_token_provider``; called when the cached token is older than
            ``entra_token_ttl`` or was rejected.
        entra_token_ttl: seconds a token from ``entra_token_provider`` is reused.
        api_style: ``"deployments"`` (``/openai/deployments/{deployment}/…?api-version=…``)
            or ``"v1"`` (the GA ``/openai/v1/…`` paths, deployment name in the body's
            ``model``, no ``api-version``). A ``base_url`` ending in ``/openai/v1`` means v1.
    """

    auth: str = field(default="api-key", validator=validators.in_(("api-key", "entra")))
    entra_token: str | None = None
    entra_token_provider: str | None = None
    entra_token_ttl: Duration = Duration(300.0)
    api_style: str = field(default="deployments", validator=validators.in_(("deployments", "v1")))


@frozen(kw_only=True)
class Connector:
    """Static facts about one OpenAI-compatible connector (one ``ProviderSpec``)."""

    name: str
    description: str
    default_base_url: str | None
    key_env: tuple[str, ...] = ()
    base_url_env: tuple[str, ...] = ()
    host_env: str | None = None
    auth: str = "bearer"
    local: bool = False
    azure: bool = False
    batches: bool = False
    """The upstream has OpenAI's Files and Batch APIs (native batches)."""

    @property
    def env_vars(self) -> tuple[str, ...]:
        """What ``ProviderSpec.env_vars`` lists: key variables, or the host one for a server."""
        if self.key_env:
            return self.key_env
        return (self.host_env,) if self.host_env else ()

    def resolve_keys(self, config: OpenAIConfig) -> tuple[str, ...]:
        """The keys to use: ``keys``, else ``api_key``, else the environment, else none."""
        if config.keys:
            return config.keys
        if config.api_key:
            return (config.api_key,)
        for var in self.key_env:
            value = os.environ.get(var)
            if value:
                return (value,)
        return ()

    def resolve_base_url(self, config: OpenAIConfig) -> str:
        """The base URL without a trailing slash; raises ``ConfigError`` when none is known."""
        url = config.base_url
        if not url:
            for var in self.base_url_env:
                url = os.environ.get(var)
                if url:
                    break
        if not url and self.host_env and os.environ.get(self.host_env):
            url = _host_to_base(os.environ[self.host_env], self.default_base_url)
        url = url or self.default_base_url
        if not url:
            hint = " or ".join(("base_url", *self.base_url_env))
            raise ConfigError([f"config.base_url: {self.name} needs {hint} to be set"])
        url = url.rstrip("/")
        if self.azure and not url.endswith(("/openai", "/openai/v1")):
            url += "/openai"
        return url


def _host_to_base(host: str, default: str | None) -> str:
    """``OLLAMA_HOST``-style values (``0.0.0.0``, ``host:port``, a URL) to a ``/v1`` base URL."""
    host = host.strip()
    if "://" not in host:
        host = "http://" + host
    parts = urlsplit(host)
    hostname = parts.hostname or "127.0.0.1"
    if hostname in ("0.0.0.0", "::"):
        hostname = "127.0.0.1"
    port = parts.port
    if port is None and default:
        port = urlsplit(default).port
    netloc = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None:
        netloc += f":{port}"
    path = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme}://{netloc}{path}"
