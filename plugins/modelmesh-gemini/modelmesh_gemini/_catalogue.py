"""The default catalogue of ``google.gemini.v1``: current Gemini chat and embedding models.

Prices are USD per 1M tokens on the paid tier of the Gemini Developer API as published when
this was written, for prompts up to 200k tokens (2.5 Pro charges more above that); cached
input is the context-caching rate (implicit and explicit caching). They are defaults meant to
be overridden in configuration (``models.<id>.pricing``), not a source of truth. Thinking
tokens are billed as output; the adapter counts them in ``completion_tokens``.

No entry lists ``assistant_prefill``: see ``docs/providers/gemini.md`` for why.
"""

from __future__ import annotations

from modelmesh_core.types import ModelInfo, Pricing

__all__ = ["CATALOGUE"]

CHAT = "generation.text-generation.chat-completion"
CODE = "generation.text-generation.code-generation"
EMBED = "representation.embeddings.text-embeddings"

_CHAT_FEATURES = frozenset(
    {"system_prompt", "json_mode", "structured_output", "tool_calling", "vision"}
)
_THINKING = _CHAT_FEATURES | {"reasoning"}
_MILLION = 1_048_576


def _chat(
    name: str,
    *,
    price: tuple[float, float],
    cached: float | None,
    max_output: int,
    features: frozenset[str] = _THINKING,
    capabilities: tuple[str, ...] = (CHAT,),
) -> ModelInfo:
    return ModelInfo(
        name=name,
        capabilities=capabilities,
        delivery_modes=frozenset({"sync", "streaming"}),
        features=features,
        context_window=_MILLION,
        max_output_tokens=max_output,
        pricing=Pricing(input=price[0], output=price[1], cached_input=cached),
    )


def _embed(name: str, *, context: int, price: float) -> ModelInfo:
    return ModelInfo(
        name=name,
        capabilities=(EMBED,),
        delivery_modes=frozenset({"sync"}),
        context_window=context,
        pricing=Pricing(input=price),
    )


CATALOGUE: tuple[ModelInfo, ...] = (
    _chat(
        "gemini-2.5-pro",
        price=(1.25, 10.0),
        cached=0.125,
        max_output=65_536,
        capabilities=(CHAT, CODE),
    ),
    _chat("gemini-2.5-flash", price=(0.30, 2.50), cached=0.03, max_output=65_536),
    _chat("gemini-2.5-flash-lite", price=(0.10, 0.40), cached=0.01, max_output=65_536),
    _chat(
        "gemini-2.0-flash",
        price=(0.10, 0.40),
        cached=0.025,
        max_output=8_192,
        features=_CHAT_FEATURES,
    ),
    _chat(
        "gemini-2.0-flash-lite",
        price=(0.075, 0.30),
        cached=None,
        max_output=8_192,
        features=_CHAT_FEATURES,
    ),
    _embed("gemini-embedding-001", context=2_048, price=0.15),
    _embed("text-embedding-004", context=2_048, price=0.0),
)
