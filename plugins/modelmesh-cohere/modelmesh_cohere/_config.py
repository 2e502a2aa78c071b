"""Configuration of the ``cohere.nlp.v1`` connector and how it resolves against the environment."""

from __future__ import annotations

import os

from attrs import Factory, frozen

__all__ = ["DEFAULT_BASE_URL", "ENV_KEYS", "CohereConfig"]

DEFAULT_BASE_URL = "https://api.cohere.com"
ENV_KEYS: tuple[str, ...] = ("CO_API_KEY", "COHERE_API_KEY")
"""Key variables, in the order they are read (``CO_API_KEY`` is what Cohere's SDK reads)."""

_INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")


def _input_type(value: str) -> str:
    if value not in _INPUT_TYPES:
        raise ValueError(f"embed_input_type must be one of {', '.join(_INPUT_TYPES)}")
    return value


@frozen(kw_only=True)
class CohereConfig:
    """The ``config:`` of a ``cohere.nlp.v1`` provider.

    Attributes:
        base_url: the API root, without a version (``https://api.cohere.com``); ``/v2/chat``,
            ``/v2/embed``, ``/v2/rerank`` and ``/v1/models`` are appended. Default: the public
            API, or ``CO_API_URL`` when set.
        api_key: the key, sent as ``Authorization: Bearer <key>``. Default: ``CO_API_KEY``,
            else ``COHERE_API_KEY``.
        client_name: sent as ``X-Client-Name`` (Cohere's per-project attribution header).
        headers: extra headers sent with every request.
        embed_input_type: ``input_type`` of embed calls that do not give one in
            ``extra["input_type"]`` (``search_document``, ``search_query``, ``classification``,
            ``clustering``, ``image``); v3+ embed models require one.
    """

    base_url: str | None = None
    api_key: str | None = None
    client_name: str | None = None
    headers: dict[str, str] = Factory(dict)
    embed_input_type: str = "search_document"

    def __attrs_post_init__(self) -> None:
        _input_type(self.embed_input_type)

    def resolve_key(self) -> str | None:
        """``api_key``, else the first key variable that is set, else None."""
        if self.api_key:
            return self.api_key
        for var in ENV_KEYS:
            value = os.environ.get(var)
            if value:
                return value
        return None

    def resolve_base_url(self) -> str:
        """The API root without a trailing slash (a trailing ``/v1`` or ``/v2`` is dropped)."""
        url = (self.base_url or os.environ.get("CO_API_URL") or DEFAULT_BASE_URL).rstrip("/")
        for suffix in ("/v1", "/v2"):
            if url.endswith(suffix):
                url = url[: -len(suffix)]
        return url
