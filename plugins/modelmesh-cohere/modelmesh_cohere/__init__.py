"""ModelMesh provider connector for Cohere's native v2 API.

Registers ``cohere.nlp.v1``: chat (sync and streaming, tools), embeddings (``/v2/embed``) and
reranking (``/v2/rerank``, :meth:`CohereAdapter.rerank`). Configuration:
:class:`CohereConfig`; a local fake upstream for tests: :mod:`modelmesh_cohere.fake`.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelmesh_core.hookspecs import hookimpl
from modelmesh_core.types import ProviderSpec

from ._adapter import CohereAdapter
from ._catalogue import CATALOGUE
from ._config import DEFAULT_BASE_URL, ENV_KEYS, CohereConfig
from ._types import RerankRequest, RerankResponse, RerankResult

__all__ = [
    "CONNECTOR",
    "CohereAdapter",
    "CohereConfig",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "modelmesh_providers",
]

CONNECTOR = "cohere.nlp.v1"


@hookimpl
def modelmesh_providers() -> Sequence[ProviderSpec]:
    """The ``cohere.nlp.v1`` connector."""
    return [
        ProviderSpec(
            name=CONNECTOR,
            factory=CohereAdapter,
            config_type=CohereConfig,
            env_vars=ENV_KEYS,
            default_base_url=DEFAULT_BASE_URL,
            catalogue=CATALOGUE,
            auth="bearer",
            description="Cohere v2 API (chat, tools, streaming, embed, rerank)",
        )
    ]
