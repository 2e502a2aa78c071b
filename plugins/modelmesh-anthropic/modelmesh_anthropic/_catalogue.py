"""The default catalogue of the ``anthropic.claude.v1`` connector.

Prices are USD per 1M tokens from Anthropic's public price list when this was written
(``cached_input`` is the cache-hit price, 0.1x input). They are defaults meant to be overridden
in configuration (``models.<id>.pricing``), not a source of truth. Context windows are the
standard 200k (the 1M-token window of some models needs a beta header and costs more).

``assistant_prefill`` is declared only where Anthropic documents it as accepted: Claude Opus
4.6 answers a prefilled request with a 400, and the 4.6 generation is listed without it.

Only models whose prices could be checked are listed. Newer ids the API serves (the SDK knows
``claude-opus-4-7``, ``claude-opus-4-8``, ``claude-sonnet-5``, ``claude-opus-5``, …) work
when configured under ``models:`` with their pricing; ``claude-sonnet-4-5`` (end of life
2026-11-30) and ``claude-opus-4-5`` (2027-01-22) are deprecated upstream.
"""

from __future__ import annotations

from modelmesh_core.types import ModelInfo, Pricing

__all__ = ["CATALOGUE", "CHAT", "CODE", "FEATURES", "FEATURES_NO_PREFILL"]

CHAT = "generation.text-generation.chat-completion"
CODE = "generation.text-generation.code-generation"
VISION = "understanding.vision-understanding.image-captioning"
TOOLS = "interaction.tool-calling"

FEATURES_NO_PREFILL = frozenset({"tool_calling", "vision", "system_prompt", "reasoning"})
FEATURES = FEATURES_NO_PREFILL | {"assistant_prefill"}
_MODES = frozenset({"sync", "streaming", "batch"})
_CAPS = (CHAT, CODE, VISION, TOOLS)


def _claude(
    name: str,
    *,
    price: tuple[float, float],
    max_output: int,
    prefill: bool = True,
    context: int = 200_000,
) -> ModelInfo:
    return ModelInfo(
        name=name,
        capabilities=_CAPS,
        delivery_modes=_MODES,
        features=FEATURES if prefill else FEATURES_NO_PREFILL,
        context_window=context,
        max_output_tokens=max_output,
        pricing=Pricing(input=price[0], output=price[1], cached_input=round(price[0] / 10, 4)),
    )


CATALOGUE: tuple[ModelInfo, ...] = (
    _claude("claude-opus-4-6", price=(5.0, 25.0), max_output=128_000, prefill=False),
    _claude("claude-sonnet-4-6", price=(3.0, 15.0), max_output=64_000, prefill=False),
    _claude("claude-opus-4-5", price=(5.0, 25.0), max_output=64_000),
    _claude("claude-sonnet-4-5", price=(3.0, 15.0), max_output=64_000),
    _claude("claude-haiku-4-5", price=(1.0, 5.0), max_output=64_000),
)
