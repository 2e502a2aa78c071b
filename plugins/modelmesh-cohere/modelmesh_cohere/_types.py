"""Typed results of the operations the core has no value type for yet (rerank)."""

from __future__ import annotations

from attrs import Factory, frozen

__all__ = ["RerankResponse", "RerankResult"]


@frozen(kw_only=True)
class RerankResult:
    """One ranked document: its ``index`` in the request's ``documents`` and its score.

    ``document`` is the document text (the request's, looked up by index).
    """

    index: int
    relevance_score: float
    document: str


@frozen(kw_only=True)
class RerankResponse:
    """The answer of a rerank call: ``results`` by descending relevance.

    ``usage`` carries ``search_units`` (what Cohere bills rerank on); ``id`` is the upstream's.
    """

    results: tuple[RerankResult, ...]
    model: str
    provider: str
    usage: dict[str, int] = Factory(dict)
    latency_ms: float = 0.0
    id: str = ""
