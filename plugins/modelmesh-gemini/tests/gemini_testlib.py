"""Constants and helpers shared by the modelmesh-gemini tests (a module, not a conftest, so
test modules can import it)."""

from __future__ import annotations

from typing import Any

from modelmesh_core.types import CompletionRequest, Model, Timeouts
from modelmesh_gemini import GeminiAdapter, modelmesh_providers
from modelmesh_gemini.fake import FakeGemini

KEY = "AIzaSyTEST-0123456789abcdefghijklmnopq"
SPEC = modelmesh_providers()[0]
FLASH = Model(
    id="alpha.gemini-2.5-flash",
    provider="alpha",
    upstream_id="gemini-2.5-flash",
    capabilities=("generation.text-generation.chat-completion",),
)
EMBED = Model(
    id="alpha.gemini-embedding-001",
    provider="alpha",
    upstream_id="gemini-embedding-001",
    capabilities=("representation.embeddings.text-embeddings",),
)
FAST = Timeouts(connect=2.0, first_byte=5.0, idle=5.0, total=20.0)


def req(*messages: dict[str, Any], **kw: Any) -> CompletionRequest:
    """A completion request; ``hello`` from the user when no messages are given."""
    return CompletionRequest(
        messages=list(messages) or [{"role": "user", "content": "hello"}], **kw
    )


async def collect(adapter: GeminiAdapter, request: CompletionRequest) -> list[Any]:
    """Every chunk of one adapter stream."""
    return [chunk async for chunk in adapter.stream(FLASH, request, FAST)]


def gemini_config(
    upstreams: list[tuple[str, FakeGemini]],
    *,
    models: tuple[str, ...] = ("gemini-2.5-flash",),
    pool: str = "chat",
    **pool_options: Any,
) -> dict[str, Any]:
    """A mesh config with one ``google.gemini.v1`` provider per ``(name, fake)`` and one pool."""
    return {
        "providers": {
            name: {
                "connector": "google.gemini.v1",
                "config": {"base_url": upstream.base_url, "api_key": KEY},
            }
            for name, upstream in upstreams
        },
        "models": {f"{name}.{m}": {} for name, _ in upstreams for m in models},
        "pools": {pool: {"capability": "chat-completion", **pool_options}},
    }
