"""Testing helpers: a scriptable mock provider and client for applications, and pytest
fixtures for plugin authors (installed as the ``modelmesh`` pytest plugin via ``pytest11``).

For applications — no HTTP, scripted answers, error injection, latency, chaos, recording::

    from modelmesh_core.testing import mock_client

    client = mock_client("first answer", RateLimitError("slow down"), "third answer")
    assert client.chat.completions.create(messages=[...]).choices[0].message.content == ...
    assert len(client.mock.calls) == 1

For plugin authors — real local upstreams speaking the OpenAI protocol
(:mod:`modelmesh_core.fakes`) and meshes that shut down after the test::

    async def test_failover(fake_upstream, make_mesh):
        a, b = await fake_upstream(), await fake_upstream()
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from attrs import Factory, define, frozen

from .errors import ProviderError
from .fakes import FakeUpstream, ManualClock
from .hookspecs import hookimpl
from .types import (
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Model,
    ModelInfo,
    ProviderContext,
    ProviderSpec,
    Timeouts,
)

__all__ = [
    "FakeUpstream",
    "ManualClock",
    "MockAdapter",
    "MockCall",
    "MockConfig",
    "MockPlugin",
    "mock_client",
    "mock_config",
]

MOCK_CONNECTOR = "modelmesh.mock.v1"


@frozen(kw_only=True)
class MockConfig:
    """Configuration of a mock provider.

    ``responses`` are replied in turn (cycled) once the script is empty; ``latency`` seconds
    are waited per call; with probability ``chaos_rate`` a call fails with ``chaos_status``.
    """

    responses: tuple[str, ...] = ("This is a mock response.",)
    latency: float = 0.0
    chaos_rate: float = 0.0
    chaos_status: int = 503
    seed: int = 0


@frozen(kw_only=True)
class MockCall:
    """One recorded call to a mock provider."""

    provider: str
    model: str
    kind: str
    request: Any


@define
class MockAdapter:
    """An in-process provider adapter that answers from a script.

    ``script(*items)`` queues answers: a string is replied, an exception is raised, a
    ``CompletionResponse`` is returned as is. ``calls`` records every request.
    """

    name: str
    config: MockConfig
    calls: list[MockCall] = Factory(list)
    queue: list[Any] = Factory(list)
    _rng: random.Random = Factory(random.Random)
    _turn: int = 0

    def __attrs_post_init__(self) -> None:
        self._rng.seed(self.config.seed)

    def script(self, *items: str | BaseException | CompletionResponse) -> None:
        """Queue answers, consumed one per call."""
        self.queue.extend(items)

    async def _answer(self, model: Model, kind: str, request: Any) -> Any:
        self.calls.append(MockCall(provider=self.name, model=model.id, kind=kind,
                                   request=request))
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        if self.queue:
            item = self.queue.pop(0)
        elif self.config.chaos_rate and self._rng.random() < self.config.chaos_rate:
            item = ProviderError("chaos: injected failure", provider_id=self.name,
                                 model_id=model.id, status=self.config.chaos_status,
                                 retryable=True)
        else:
            item = self.config.responses[self._turn % len(self.config.responses)]
            self._turn += 1
        if isinstance(item, BaseException):
            if isinstance(item, ProviderError) and not item.provider_id:
                item.provider_id, item.model_id = self.name, model.id
            raise item
        return item

    def _response(self, model: Model, text: str, request: CompletionRequest) -> CompletionResponse:
        prompt = sum(len(str(m.get("content", "")).split()) for m in request.messages)
        completion = len(text.split())
        return CompletionResponse(
            content=text, model=model.id, provider=self.name, finish_reason="stop",
            upstream_model=model.upstream_id,
            usage={"prompt_tokens": prompt, "completion_tokens": completion,
                   "total_tokens": prompt + completion},
            metadata={},
        )

    async def complete(self, model: Model, request: CompletionRequest,
                       timeouts: Timeouts) -> CompletionResponse:
        """Answer from the script."""
        item = await self._answer(model, "complete", request)
        if isinstance(item, CompletionResponse):
            return item
        return self._response(model, str(item), request)

    async def stream(self, model: Model, request: CompletionRequest,
                     timeouts: Timeouts) -> AsyncIterator[CompletionResponse]:
        """Answer from the script, one word per chunk, usage last."""
        item = await self._answer(model, "stream", request)
        full = item if isinstance(item, CompletionResponse) else self._response(
            model, str(item), request)
        words = full.content.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            yield CompletionResponse(
                content=word if i == 0 else " " + word, model=model.id, provider=self.name,
                finish_reason="stop" if last else None, metadata={},
                role="assistant" if i == 0 else None)
        yield CompletionResponse(content="", model=model.id, provider=self.name,
                                 usage=full.usage, metadata={}, role=None)

    async def embed(self, model: Model, request: EmbeddingRequest,
                    timeouts: Timeouts) -> EmbeddingResponse:
        """Deterministic vectors from a hash of each input."""
        await self._answer(model, "embed", request)
        inputs = [request.input] if isinstance(request.input, str) else list(request.input)
        vectors = [[b / 255 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in inputs]
        tokens = sum(len(t.split()) for t in inputs)
        return EmbeddingResponse(data=vectors, model=model.id, provider=self.name,
                                 usage={"prompt_tokens": tokens, "total_tokens": tokens})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        """The mock catalogue."""
        return ["mock-chat", "mock-embed"]

    async def close(self) -> None:
        """Nothing to release."""


class MockPlugin:
    """Registers the ``modelmesh.mock.v1`` provider and remembers the adapters it built."""

    def __init__(self) -> None:
        self.adapters: dict[str, MockAdapter] = {}

    def _factory(self, context: ProviderContext, config: MockConfig) -> MockAdapter:
        adapter = MockAdapter(context.name, config)
        self.adapters[context.name] = adapter
        return adapter

    @hookimpl
    def modelmesh_providers(self) -> list[ProviderSpec]:
        """The mock provider connector."""
        return [ProviderSpec(
            name=MOCK_CONNECTOR, factory=self._factory, config_type=MockConfig, auth="none",
            local=True, description="scripted in-process provider for tests",
            catalogue=(
                ModelInfo(name="mock-chat",
                          features=frozenset({"tool_calling", "system_prompt", "json_mode"}),
                          context_window=128_000),
                ModelInfo(name="mock-embed", delivery_modes=frozenset({"sync"}),
                          capabilities=("representation.embeddings.text-embeddings",)),
            ),
        )]


def mock_config(providers: Sequence[str] = ("mock",), **mock: Any) -> dict[str, Any]:
    """A mesh config with one mock provider per name, each with its catalogue models."""
    cfg = {k: v for k, v in mock.items()}
    if "responses" in cfg:
        cfg["responses"] = list(cfg["responses"])
    return {
        "providers": {name: {"connector": MOCK_CONNECTOR, "config": cfg} for name in providers},
        "plugins": {"entry_points": False},
    }


def mock_client(
    *script: str | BaseException | CompletionResponse,
    providers: Sequence[str] = ("mock",),
    capability: str = "chat-completion",
    latency: float = 0.0,
    chaos_rate: float = 0.0,
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> Any:
    """A sync OpenAI-shaped client over mock providers.

    ``script`` items go to the first provider's queue. The returned client has ``.mock`` (the
    first adapter) and ``.mocks`` (all adapters by provider name) for scripting and for
    asserting on recorded calls.
    """
    from .client import create

    plugin = MockPlugin()
    cfg = config or mock_config(providers, latency=latency, chaos_rate=chaos_rate, seed=seed)
    client = create(capability, config=cfg, plugins=(plugin,))
    if not plugin.adapters:
        client.close()
        raise ValueError("the config defines no modelmesh.mock.v1 provider")
    client.mocks = plugin.adapters  # type: ignore[attr-defined]
    first = providers[0] if providers[0] in plugin.adapters else next(iter(plugin.adapters))
    client.mock = plugin.adapters[first]  # type: ignore[attr-defined]
    client.mock.script(*script)  # type: ignore[attr-defined]
    return client


# --------------------------------------------------------------------------- pytest fixtures

try:
    import pytest
    import pytest_asyncio
except ImportError:  # pragma: no cover - fixtures need pytest and pytest-asyncio
    pass
else:

    @pytest.fixture
    def manual_clock() -> ManualClock:
        """A clock tests advance by hand (``clock.advance(30)``) — no sleeps."""
        return ManualClock(start=1_700_000_000.0)

    @pytest_asyncio.fixture
    async def fake_upstream() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
        """Factory: ``await fake_upstream(**kwargs)`` starts a :class:`FakeUpstream` on
        127.0.0.1; every one started is stopped after the test."""
        started: list[FakeUpstream] = []

        async def make(**kwargs: Any) -> FakeUpstream:
            fake = FakeUpstream(**kwargs)
            await fake.start()
            started.append(fake)
            return fake

        yield make
        for fake in started:
            await fake.stop()

    @pytest_asyncio.fixture
    async def make_mesh() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        """Factory: ``await make_mesh(config, **options)`` returns an initialized
        :class:`~modelmesh_core.ModelMesh`; each is shut down after the test."""
        from .mesh import ModelMesh

        meshes: list[ModelMesh] = []

        async def make(config: Any = None, **options: Any) -> ModelMesh:
            mesh = ModelMesh(config, **options)
            await mesh.initialize()
            meshes.append(mesh)
            return mesh

        yield make
        for mesh in meshes:
            await mesh.shutdown()

    @pytest.fixture
    def mock_plugin() -> MockPlugin:
        """A fresh :class:`MockPlugin` to pass as ``ModelMesh(plugins=[mock_plugin])``."""
        return MockPlugin()


def openai_config(upstreams: Iterable[tuple[str, FakeUpstream]], *, models: Sequence[str] = (
        "gpt-4o-mini",), pool: str = "chat", **pool_options: Any) -> dict[str, Any]:
    """A config with one ``openai.llm.v1`` provider per ``(name, fake)`` and one pool.

    Each provider gets ``<name>.<model>`` for every name in ``models``.
    """
    providers: dict[str, Any] = {}
    model_cfg: dict[str, Any] = {}
    for name, fake in upstreams:
        providers[name] = {"connector": "openai.llm.v1",
                           "config": {"base_url": fake.base_url, "api_key": "sk-test-0000000000"}}
        for m in models:
            model_cfg[f"{name}.{m}"] = {"capabilities": ["chat-completion"]}
    return {
        "providers": providers,
        "models": model_cfg,
        "pools": {pool: {"capability": "chat-completion", **pool_options}},
    }
