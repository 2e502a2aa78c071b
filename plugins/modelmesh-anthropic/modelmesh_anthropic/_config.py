"""Configuration of the ``anthropic.claude.v1`` connector and how it resolves against the env."""

from __future__ import annotations

import os

from attrs import Factory, field, frozen

__all__ = [
    "API_VERSION",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "KEY_ENV",
    "AnthropicConfig",
]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` sent when the caller gives none (the Messages API requires it)."""


def _betas(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]


def _positive(instance: object, attribute: object, value: int) -> None:
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")


@frozen(kw_only=True)
class AnthropicConfig:
    """The ``config:`` of an ``anthropic.claude.v1`` provider.

    Attributes:
        base_url: as the official SDK takes it (``https://api.anthropic.com``); the adapter
            appends ``/v1/messages``, ``/v1/models`` and ``/v1/messages/batches``. A trailing
            ``/v1`` is accepted. Default: ``ANTHROPIC_BASE_URL``, else the public API.
        api_key: sent as ``x-api-key``. Default: ``ANTHROPIC_API_KEY``.
        anthropic_version: the ``anthropic-version`` header (default ``2023-06-01``).
        beta: ``anthropic-beta`` feature names, sent comma-separated on every request.
        headers: extra headers sent with every request.
        default_max_tokens: ``max_tokens`` when the request gives none (the API requires
            it); capped by the model's ``max_output_tokens`` when that is known.
    """

    base_url: str | None = None
    api_key: str | None = None
    anthropic_version: str = API_VERSION
    beta: tuple[str, ...] = field(default=(), converter=_betas)
    headers: dict[str, str] = Factory(dict)
    default_max_tokens: int = field(default=DEFAULT_MAX_TOKENS, validator=_positive)

    def resolve_key(self) -> str | None:
        """``api_key``, else ``ANTHROPIC_API_KEY``, else None."""
        return self.api_key or os.environ.get(KEY_ENV) or None

    def resolve_base_url(self) -> str:
        """The base URL without a trailing slash or ``/v1``."""
        url = (self.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        if url.endswith("/v1"):
            url = url[:-3]
        return url
