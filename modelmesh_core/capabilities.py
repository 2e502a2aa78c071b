"""The capability tree, its aliases, and the public capabilities API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import CapabilityNotFoundError, did_you_mean

__all__ = ["DEFAULT_ALIASES", "DEFAULT_TREE", "CapabilityTree"]

DEFAULT_TREE: dict[str, Any] = {
    "generation": {
        "text-generation": ["chat-completion", "text-completion", "code-generation"],
        "structured-generation": [
            "json-generation", "schema-constrained-output", "function-call-generation",
        ],
        "image-generation": ["text-to-image", "image-to-image", "inpainting"],
        "audio-generation": ["text-to-speech", "music-generation"],
        "video-generation": ["text-to-video", "image-to-video"],
    },
    "understanding": {
        "text-understanding": [
            "summarization", "classification", "sentiment-analysis", "entity-extraction",
        ],
        "vision-understanding": ["image-captioning", "object-detection", "ocr"],
        "audio-understanding": ["speech-to-text", "speaker-identification", "audio-classification"],
        "document-understanding": ["document-parsing", "table-extraction", "form-extraction"],
    },
    "transformation": {
        "translation": None,
        "rewriting": None,
        "style-transfer": None,
        "image-editing": ["background-removal", "upscaling", "format-conversion"],
        "audio-processing": ["noise-reduction", "voice-cloning", "audio-separation"],
    },
    "representation": {
        "embeddings": ["text-embeddings", "image-embeddings", "multimodal-embeddings"],
        "tokenization": None,
        "feature-extraction": None,
    },
    "retrieval": {
        "search": ["semantic-search", "web-search", "image-search", "code-search"],
        "knowledge-graph": ["graph-query", "entity-linking", "relation-extraction"],
        "rag": ["retrieval-augmented-generation", "grounded-generation"],
        "reranking": None,
    },
    "interaction": {
        "tool-calling": None,
        "multi-turn-conversation": None,
        "agent-execution": ["single-step-agent", "multi-step-agent"],
    },
    "evaluation": {
        "content-moderation": None,
        "toxicity-detection": None,
        "factuality-checking": None,
        "quality-scoring": None,
    },
}

DEFAULT_ALIASES: dict[str, str] = {
    "chat-completion": "generation.text-generation.chat-completion",
    "text-completion": "generation.text-generation.text-completion",
    "code-generation": "generation.text-generation.code-generation",
    "text-generation": "generation.text-generation",
    "text-embeddings": "representation.embeddings.text-embeddings",
    "embeddings": "representation.embeddings",
    "text-to-speech": "generation.audio-generation.text-to-speech",
    "speech-to-text": "understanding.audio-understanding.speech-to-text",
    "text-to-image": "generation.image-generation.text-to-image",
    "image-generation": "generation.image-generation",
    "image-to-text": "understanding.vision-understanding.image-captioning",
    "web-search": "retrieval.search.web-search",
    "reranking": "retrieval.reranking",
    "content-moderation": "evaluation.content-moderation",
    "document-parsing": "understanding.document-understanding.document-parsing",
}


def _flatten(tree: Mapping[str, Any] | list[str] | None, prefix: str) -> Iterable[str]:
    if tree is None:
        return
    if isinstance(tree, list):
        for leaf in tree:
            yield f"{prefix}.{leaf}"
        return
    for name, sub in tree.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        yield from _flatten(sub, path)


class CapabilityTree:
    """A capability hierarchy with aliases.

    ``resolve(name)`` turns an alias or dotted path into a full path; ``covers(node, path)``
    says whether ``path`` lies at or below ``node``; ``leaves(node)`` lists the leaves below a
    node. The tree is immutable once the mesh is built; lookups are dict reads.
    """

    def __init__(
        self,
        nodes: Iterable[str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self._nodes: set[str] = set(_flatten(DEFAULT_TREE, "")) if nodes is None else set()
        for node in nodes or ():
            self.add(node)
        self._aliases: dict[str, str] = dict(DEFAULT_ALIASES)
        for alias, target in (aliases or {}).items():
            self.add_alias(alias, target)

    # -- building

    def add(self, path: str) -> None:
        """Add ``path`` and every intermediate node."""
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            self._nodes.add(".".join(parts[:i]))

    def add_alias(self, alias: str, target: str) -> None:
        """Map ``alias`` to ``target``; the target must be a node of the tree."""
        full = self._aliases.get(target, target)
        if full not in self._nodes:
            raise CapabilityNotFoundError(
                f"alias {alias!r} points to {target!r}, which is not in the capability tree"
            )
        self._aliases[alias] = full

    # -- queries

    def __contains__(self, path: object) -> bool:
        return path in self._nodes

    def resolve(self, name: str) -> str:
        """The full dotted path for an alias, a dotted path, or a unique leaf name.

        Raises :class:`CapabilityNotFoundError` (with close matches) when nothing matches.
        """
        if name in self._nodes:
            return name
        alias = self._aliases.get(name)
        if alias is not None:
            return alias
        matches = [n for n in self._nodes if n.rsplit(".", 1)[-1] == name]
        if len(matches) == 1:
            return matches[0]
        hint = did_you_mean(name, [*self._aliases, *self._nodes], n=3)
        raise CapabilityNotFoundError(f"unknown capability {name!r}{hint}")

    def try_resolve(self, name: str) -> str | None:
        """Like :meth:`resolve` but returns None instead of raising."""
        try:
            return self.resolve(name)
        except CapabilityNotFoundError:
            return None

    @staticmethod
    def covers(node: str, path: str) -> bool:
        """True when ``path`` is ``node`` or lies below it."""
        return path == node or path.startswith(node + ".")

    def is_leaf(self, path: str) -> bool:
        """True when no node lies below ``path``."""
        prefix = path + "."
        return not any(n.startswith(prefix) for n in self._nodes)

    def leaves(self, node: str | None = None) -> list[str]:
        """Leaves at or below ``node`` (the whole tree when None)."""
        return sorted(
            n for n in self._nodes if self.is_leaf(n) and (node is None or self.covers(node, n))
        )

    def list_all(self) -> list[str]:
        """Every node path, sorted."""
        return sorted(self._nodes)

    def aliases(self) -> dict[str, str]:
        """Alias → full path."""
        return dict(self._aliases)

    def search(self, keyword: str) -> list[str]:
        """Node paths and aliases' targets whose text contains ``keyword`` (case-insensitive)."""
        k = keyword.lower()
        found = {n for n in self._nodes if k in n.lower()}
        found |= {t for a, t in self._aliases.items() if k in a.lower()}
        return sorted(found)

    def tree(self) -> dict[str, Any]:
        """The hierarchy as nested dicts (leaves map to empty dicts)."""
        root: dict[str, Any] = {}
        for path in sorted(self._nodes):
            cur = root
            for part in path.split("."):
                cur = cur.setdefault(part, {})
        return root
