"""ModelMesh provider connector for Google's Gemini API, in its native protocol.

Registers ``google.gemini.v1``: ``generateContent`` and ``streamGenerateContent?alt=sse``
(system instruction, function calling both ways, images, JSON mode and response schemas,
safety blocks, usage with cached and thinking tokens), ``embedContent`` /
``batchEmbedContents`` and the model list, with the key in ``x-goog-api-key``. Configuration:
:class:`GeminiConfig`. A fake upstream for tests lives in :mod:`modelmesh_gemini.fake`.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.types import ProviderSpec

from ._adapter import GeminiAdapter
from ._catalogue import CATALOGUE
from ._config import DEFAULT_BASE_URL, KEY_ENV, GeminiConfig

__all__ = ["CONNECTOR", "GeminiAdapter", "GeminiConfig", "modelmesh_providers"]

CONNECTOR = "google.gemini.v1"
"""The connector id this plugin registers."""


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``google.gemini.v1`` connector."""
    return [
        ProviderSpec(
            name=CONNECTOR,
            factory=GeminiAdapter,
            config_type=GeminiConfig,
            env_vars=KEY_ENV,
            default_base_url=DEFAULT_BASE_URL,
            catalogue=CATALOGUE,
            auth="header:x-goog-api-key",
            description="Google Gemini API (generateContent / streamGenerateContent, "
            "embedContent), native protocol",
        )
    ]
