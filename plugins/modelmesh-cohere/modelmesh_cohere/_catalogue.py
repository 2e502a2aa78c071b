"""The default catalogue of ``cohere.nlp.v1``.

Prices are USD per 1M tokens (rerank: per search, as ``per_request``) from Cohere's public
price list when this was written; they are defaults meant to be overridden in configuration
(``models.<id>.pricing``), not a source of truth. Names are the API model ids.
"""

from __future__ import annotations

from modelmesh_core.types import ModelInfo, Pricing

__all__ = ["CATALOGUE", "CHAT", "EMBED", "RERANK"]

CHAT = "generation.text-generation.chat-completion"
GROUNDED = "retrieval.rag.grounded-generation"
EMBED = "representation.embeddings.text-embeddings"
MULTIMODAL_EMBED = "representation.embeddings.multimodal-embeddings"
RERANK = "retrieval.reranking"

_TOOLS = frozenset({"system_prompt", "json_mode", "structured_output", "tool_calling"})


def _chat(
    name: str,
    *,
    context: int,
    max_output: int,
    price: tuple[float, float],
    features: frozenset[str] = _TOOLS,
) -> ModelInfo:
    return ModelInfo(
        name=name,
        capabilities=(CHAT, GROUNDED),
        delivery_modes=frozenset({"sync", "streaming"}),
        features=features,
        context_window=context,
        max_output_tokens=max_output,
        pricing=Pricing(input=price[0], output=price[1]),
    )


def _embed(name: str, *, context: int, price: float, multimodal: bool = False) -> ModelInfo:
    caps = (EMBED, MULTIMODAL_EMBED) if multimodal else (EMBED,)
    return ModelInfo(
        name=name,
        capabilities=caps,
        delivery_modes=frozenset({"sync"}),
        context_window=context,
        pricing=Pricing(input=price),
    )


def _rerank(name: str, *, context: int, per_search: float) -> ModelInfo:
    return ModelInfo(
        name=name,
        capabilities=(RERANK,),
        delivery_modes=frozenset({"sync"}),
        context_window=context,
        pricing=Pricing(per_request=per_search),
    )


CATALOGUE: tuple[ModelInfo, ...] = (
    _chat("command-a-03-2025", context=256_000, max_output=8_000, price=(2.5, 10.0)),
    _chat("command-r-plus-08-2024", context=128_000, max_output=4_000, price=(2.5, 10.0)),
    _chat("command-r-08-2024", context=128_000, max_output=4_000, price=(0.15, 0.6)),
    _chat("command-r7b-12-2024", context=128_000, max_output=4_000, price=(0.0375, 0.15)),
    _chat(
        "command-a-vision-07-2025",
        context=128_000,
        max_output=8_000,
        price=(2.5, 10.0),
        features=frozenset({"system_prompt", "json_mode", "vision"}),
    ),
    _embed("embed-v4.0", context=128_000, price=0.12, multimodal=True),
    _embed("embed-english-v3.0", context=512, price=0.1),
    _embed("embed-multilingual-v3.0", context=512, price=0.1),
    _rerank("rerank-v3.5", context=4_096, per_search=0.002),
)
