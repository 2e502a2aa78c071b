"""Configuration of the ``google.gemini.v1`` connector and how it resolves the environment."""

from __future__ import annotations

import os

from attrs import Factory, frozen

__all__ = ["DEFAULT_BASE_URL", "KEY_ENV", "GeminiConfig", "resolve_key"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
"""The Gemini API (``generativelanguage``) at API version ``v1beta``."""

KEY_ENV: tuple[str, ...] = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
"""Key variables in the order Google's SDK reads them (``GOOGLE_API_KEY`` wins if both are set)."""


@frozen(kw_only=True)
class GeminiConfig:
    """The ``config:`` of the ``google.gemini.v1`` connector.

    Attributes:
        base_url: the API root including its version, as Google's REST reference writes it
            (``https://generativelanguage.googleapis.com/v1beta``); the adapter appends
            ``/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``,
            ``:embedContent``, ``:batchEmbedContents`` and ``/models``.
        api_key: the key, sent in the ``x-goog-api-key`` header (never in the URL).
            Default: ``GOOGLE_API_KEY``, else ``GEMINI_API_KEY``.
        headers: extra headers sent with every request.
        safety_settings: ``{category: threshold}`` sent as ``safetySettings`` with every chat
            request (e.g. ``{"HARM_CATEGORY_HARASSMENT": "BLOCK_ONLY_HIGH"}``); a request's own
            ``safetySettings`` (in its extra parameters) replaces them.
    """

    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = Factory(dict)
    safety_settings: dict[str, str] = Factory(dict)


def resolve_key(config: GeminiConfig) -> str | None:
    """The key to use: ``api_key``, else the first of :data:`KEY_ENV` that is set, else None."""
    if config.api_key:
        return config.api_key
    for var in KEY_ENV:
        value = os.environ.get(var)
        if value:
            return value
    return None
