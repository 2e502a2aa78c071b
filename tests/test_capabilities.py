"""The capability tree (SPEC §2): the default tree and aliases, the public API, and extension
from configuration and from plugins."""

from __future__ import annotations

from typing import Any

import pytest

from modelmesh_core import (
    CapabilityNotFoundError,
    CapabilitySpec,
    CapabilityTree,
    ConfigError,
    ModelMesh,
    PluginError,
    hookimpl,
)
from modelmesh_core.testing import MockPlugin, mock_config

# SPEC §2, verbatim: group -> node -> leaves (None: the node is a leaf).
SPEC_TREE: dict[str, dict[str, list[str] | None]] = {
    "generation": {
        "text-generation": ["chat-completion", "text-completion", "code-generation"],
        "structured-generation": ["json-generation", "schema-constrained-output",
                                  "function-call-generation"],
        "image-generation": ["text-to-image", "image-to-image", "inpainting"],
        "audio-generation": ["text-to-speech", "music-generation"],
        "video-generation": ["text-to-video", "image-to-video"],
    },
    "understanding": {
        "text-understanding": ["summarization", "classification", "sentiment-analysis",
                               "entity-extraction"],
        "vision-understanding": ["image-captioning", "object-detection", "ocr"],
        "audio-understanding": ["speech-to-text", "speaker-identification",
                                "audio-classification"],
        "document-understanding": ["document-parsing", "table-extraction", "form-extraction"],
    },
    "transformation": {
        "translation": None, "rewriting": None, "style-transfer": None,
        "image-editing": ["background-removal", "upscaling", "format-conversion"],
        "audio-processing": ["noise-reduction", "voice-cloning", "audio-separation"],
    },
    "representation": {
        "embeddings": ["text-embeddings", "image-embeddings", "multimodal-embeddings"],
        "tokenization": None, "feature-extraction": None,
    },
    "retrieval": {
        "search": ["semantic-search", "web-search", "image-search", "code-search"],
        "knowledge-graph": ["graph-query", "entity-linking", "relation-extraction"],
        "rag": ["retrieval-augmented-generation", "grounded-generation"],
        "reranking": None,
    },
    "interaction": {
        "tool-calling": None, "multi-turn-conversation": None,
        "agent-execution": ["single-step-agent", "multi-step-agent"],
    },
    "evaluation": {
        "content-moderation": None, "toxicity-detection": None, "factuality-checking": None,
        "quality-scoring": None,
    },
}

SPEC_ALIASES = {
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


def spec_nodes() -> tuple[set[str], set[str]]:
    """(every node path, every leaf path) of the SPEC tree."""
    nodes: set[str] = set()
    leaves: set[str] = set()
    for group, children in SPEC_TREE.items():
        nodes.add(group)
        for child, grandchildren in children.items():
            path = f"{group}.{child}"
            nodes.add(path)
            if grandchildren is None:
                leaves.add(path)
            for leaf in grandchildren or ():
                nodes.add(f"{path}.{leaf}")
                leaves.add(f"{path}.{leaf}")
    return nodes, leaves


def test_default_tree_is_exactly_the_spec_tree() -> None:
    tree = CapabilityTree()
    nodes, leaves = spec_nodes()
    assert set(tree.list_all()) == nodes
    assert tree.list_all() == sorted(nodes)
    assert set(tree.leaves()) == leaves
    for leaf in leaves:
        assert leaf in tree
        assert tree.is_leaf(leaf)
        assert tree.resolve(leaf) == leaf  # dotted paths pass through


@pytest.mark.parametrize(("alias", "target"), sorted(SPEC_ALIASES.items()))
def test_every_spec_alias_resolves_into_the_tree(alias: str, target: str) -> None:
    tree = CapabilityTree()
    assert tree.resolve(alias) == target
    assert target in tree
    assert tree.aliases()[alias] == target


def test_every_alias_points_into_the_tree() -> None:
    tree = CapabilityTree()
    assert set(SPEC_ALIASES) <= set(tree.aliases())
    for alias, target in tree.aliases().items():
        assert target in tree, alias
    assert tree.resolve("image-to-text") == "understanding.vision-understanding.image-captioning"


def test_resolve_unique_leaf_names_and_unknown_names() -> None:
    tree = CapabilityTree()
    assert tree.resolve("ocr") == "understanding.vision-understanding.ocr"
    assert tree.resolve("inpainting") == "generation.image-generation.inpainting"
    assert tree.resolve("generation") == "generation"
    with pytest.raises(CapabilityNotFoundError) as exc:
        tree.resolve("chat-complete")
    assert "did you mean" in str(exc.value) and "chat-completion" in str(exc.value)
    assert tree.try_resolve("nonsense") is None


def test_covers_and_leaves_below_a_node() -> None:
    tree = CapabilityTree()
    assert tree.covers("generation", "generation.text-generation.chat-completion")
    assert tree.covers("generation.text-generation", "generation.text-generation")
    assert not tree.covers("generation.text", "generation.text-generation")
    assert tree.leaves("generation.text-generation") == [
        "generation.text-generation.chat-completion",
        "generation.text-generation.code-generation",
        "generation.text-generation.text-completion",
    ]
    assert not tree.is_leaf("representation.embeddings")


def test_search_and_tree() -> None:
    tree = CapabilityTree()
    found = tree.search("EMBED")
    assert "representation.embeddings" in found
    assert "representation.embeddings.multimodal-embeddings" in found
    assert all("embed" in f for f in found)
    # An alias's text finds its target even when the path does not contain it.
    assert "understanding.vision-understanding.image-captioning" in tree.search("image-to-text")
    nested = tree.tree()
    assert set(nested) == set(SPEC_TREE)
    assert nested["transformation"]["translation"] == {}
    assert set(nested["understanding"]["vision-understanding"]) == {
        "image-captioning", "object-detection", "ocr"}


def test_extending_a_tree_directly() -> None:
    tree = CapabilityTree(nodes=["generation.text-generation.poetry"],
                          aliases={"poetry": "generation.text-generation.poetry"})
    assert tree.resolve("poetry") == "generation.text-generation.poetry"
    tree.add("audit.pii.detection")
    assert {"audit", "audit.pii", "audit.pii.detection"} <= set(tree.list_all())
    tree.add_alias("pii", "audit.pii.detection")
    tree.add_alias("rhyme", "poetry")  # an alias may name another alias
    assert tree.resolve("rhyme") == "generation.text-generation.poetry"
    with pytest.raises(CapabilityNotFoundError, match="not in the capability tree"):
        tree.add_alias("ghost", "generation.text-generation.ghostwriting")


# --------------------------------------------------------------------------- through a mesh


async def test_mesh_exposes_the_capabilities_api(make_mesh: Any) -> None:
    mesh = await make_mesh(mock_config(), plugins=[MockPlugin()])
    caps = mesh.capabilities
    nodes, _ = spec_nodes()
    assert set(caps.list_all()) == nodes
    assert caps.resolve("chat-completion") == "generation.text-generation.chat-completion"
    assert "retrieval.search.web-search" in caps.search("web")
    assert "evaluation" in caps.tree()


async def test_extension_from_config(make_mesh: Any) -> None:
    cfg = mock_config()
    cfg["capabilities"] = {
        "nodes": ["generation.text-generation.poetry", "audit.pii-detection"],
        "aliases": {"poetry": "generation.text-generation.poetry", "pii": "audit.pii-detection",
                    "captions": "image-to-text"},
    }
    cfg["models"] = {"mock.bard": {"capabilities": ["poetry"]},
                     "mock.mock-chat": {"capabilities": ["chat-completion"]}}
    cfg["pools"] = {"verse": {"capability": "poetry"}}
    mesh = await make_mesh(cfg, plugins=[MockPlugin()])
    caps = mesh.capabilities
    assert caps.resolve("poetry") == "generation.text-generation.poetry"
    assert caps.resolve("pii") == "audit.pii-detection"
    assert caps.resolve("captions") == "understanding.vision-understanding.image-captioning"
    assert "audit" in caps.list_all()
    assert mesh.models["mock.bard"].capabilities == ("generation.text-generation.poetry",)
    assert (await mesh.router.route("poetry")).model_id == "mock.bard"
    assert (await mesh.router.route("verse")).model_id == "mock.bard"
    # The dotted path resolves to the pool on the new node.
    decision = await mesh.router.route("generation.text-generation.poetry")
    assert decision.pool_id == "verse"


async def test_alias_to_an_unknown_node_is_a_config_error() -> None:
    cfg = mock_config()
    cfg["capabilities"] = {"nodes": ["bad..path"],
                           "aliases": {"ghost": "generation.text-generation.ghostwriting"}}
    with pytest.raises(ConfigError) as exc:
        await ModelMesh(cfg, plugins=[MockPlugin()]).initialize()
    errors = exc.value.errors
    assert any(e.startswith("capabilities.aliases.ghost: ") and "ghostwriting" in e
               for e in errors), errors
    assert any(e.startswith("capabilities.nodes.0: ") for e in errors), errors


class PoetryPlugin:
    """Extends the tree from a plugin."""

    @hookimpl
    def modelmesh_capabilities(self) -> list[CapabilitySpec]:
        return [CapabilitySpec(path="generation.text-generation.poetry",
                               aliases=("poetry", "verse"))]


async def test_extension_from_a_plugin(make_mesh: Any) -> None:
    cfg = mock_config()
    cfg["models"] = {"mock.bard": {"capabilities": ["verse"]}}
    cfg["capabilities"] = {"aliases": {"haiku": "poetry"}}
    mesh = await make_mesh(cfg, plugins=[MockPlugin(), PoetryPlugin()])
    caps = mesh.capabilities
    assert caps.resolve("poetry") == "generation.text-generation.poetry"
    assert caps.resolve("haiku") == "generation.text-generation.poetry"
    assert mesh.registry.capabilities["generation.text-generation.poetry"].plugin.startswith(
        "PoetryPlugin")
    assert (await mesh.router.route("haiku")).model_id == "mock.bard"


async def test_two_plugins_registering_one_capability_path_conflict() -> None:
    class Other:
        @hookimpl
        def modelmesh_capabilities(self) -> list[CapabilitySpec]:
            return [CapabilitySpec(path="generation.text-generation.poetry")]

    with pytest.raises(PluginError, match=r"generation\.text-generation\.poetry"):
        await ModelMesh(mock_config(),
                        plugins=[MockPlugin(), PoetryPlugin(), Other()]).initialize()
