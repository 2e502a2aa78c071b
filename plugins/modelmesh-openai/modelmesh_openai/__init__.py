"""ModelMesh provider connectors for OpenAI and the OpenAI-compatible family.

Registers ``openai.llm.v1``, ``azure.openai.v1``, the hosted compatible APIs (Groq, DeepSeek,
Mistral, Together, OpenRouter, xAI, Perplexity, Fireworks) and the local servers (Ollama,
LM Studio, vLLM, LocalAI, llama.cpp). Every connector shares one adapter and one config type,
:class:`OpenAIConfig`, except ``azure.openai.v1``: :class:`AzureOpenAIAdapter` (a subclass
with Azure's URLs, auth and errors) and :class:`AzureOpenAIConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.types import ProviderSpec

from ._adapter import OpenAIAdapter
from ._azure import AzureOpenAIAdapter
from ._catalogue import CATALOGUES, CONNECTORS
from ._config import AzureOpenAIConfig, OpenAIConfig

__all__ = [
    "AzureOpenAIAdapter",
    "AzureOpenAIConfig",
    "OpenAIAdapter",
    "OpenAIConfig",
    "modelmesh_providers",
]


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """One ``ProviderSpec`` per OpenAI-compatible connector."""
    return [
        ProviderSpec(
            name=connector.name,
            factory=partial(
                AzureOpenAIAdapter if connector.azure else OpenAIAdapter, connector=connector
            ),
            config_type=AzureOpenAIConfig if connector.azure else OpenAIConfig,
            env_vars=connector.env_vars,
            default_base_url=connector.default_base_url,
            catalogue=CATALOGUES[connector.name],
            auth=connector.auth,
            local=connector.local,
            description=connector.description,
        )
        for connector in CONNECTORS
    ]
