"""ModelMesh provider connector for Anthropic's Messages API: ``anthropic.claude.v1``.

One adapter, :class:`AnthropicAdapter`, translates both ways between the OpenAI chat shape
ModelMesh speaks and the Messages API (system prompt, tools and tool results, images,
streaming events, stop reasons, prompt-cache usage, assistant prefill, rate-limit headers,
error types) and drives Message Batches. :mod:`modelmesh_anthropic.fake` is a local fake
upstream speaking the same protocol, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.types import ProviderSpec

from ._adapter import AnthropicAdapter
from ._catalogue import CATALOGUE
from ._config import DEFAULT_BASE_URL, KEY_ENV, AnthropicConfig

__all__ = ["CONNECTOR", "AnthropicAdapter", "AnthropicConfig", "modelmesh_providers"]

CONNECTOR = "anthropic.claude.v1"


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``anthropic.claude.v1`` provider connector."""
    return [
        ProviderSpec(
            name=CONNECTOR,
            factory=AnthropicAdapter,
            config_type=AnthropicConfig,
            env_vars=(KEY_ENV,),
            default_base_url=DEFAULT_BASE_URL,
            catalogue=CATALOGUE,
            auth="header:x-api-key",
            description="Anthropic Claude (Messages API, native)",
        )
    ]
