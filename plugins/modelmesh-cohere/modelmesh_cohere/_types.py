"""The rerank values: the core's (:mod:`modelmesh_core.operations`), re-exported under their
old names here for code that imported them from this package."""

from __future__ import annotations

from modelmesh_core.operations import RerankRequest, RerankResponse, RerankResult

__all__ = ["RerankRequest", "RerankResponse", "RerankResult"]
