"""The built-in operations (chat, embed, image, speech, transcription, rerank, search,
moderation, scrape), registered as a built-in plugin; see :mod:`modelmesh_core.operations`."""

from __future__ import annotations

from collections.abc import Sequence

from ..hookspecs import hookimpl
from ..operations import BUILTIN_OPERATIONS
from ..types import OperationSpec

__all__ = ["modelmesh_operations"]


@hookimpl
def modelmesh_operations() -> Sequence[OperationSpec]:
    """Every operation of :data:`~modelmesh_core.operations.BUILTIN_OPERATIONS`."""
    return list(BUILTIN_OPERATIONS)
