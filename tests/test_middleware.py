"""Request middleware registered by a plugin and enabled from config."""

from __future__ import annotations

from typing import Any

import pytest

from modelmesh_core import CompletionRequest, EmbeddingRequest, MiddlewareSpec, hookimpl
from modelmesh_core.errors import ProviderError
from modelmesh_core.testing import MockPlugin, mock_config

HI = [{"role": "user", "content": "hi"}]


class Recorder:
    """Two middleware ids sharing one log, to observe ordering."""

    log: list[str]

    def __init__(self) -> None:
        self.log = []
        outer = self

        class Tag:
            def __init__(self, config: Any, tag: str) -> None:
                self.tag = tag

            async def before_request(self, call: Any) -> None:
                outer.log.append(f"before:{self.tag}:{call.kind}")
                if self.tag == "rewrite" and call.kind == "complete":
                    call.request = CompletionRequest(messages=[{"role": "user",
                                                                "content": "rewritten"}])

            async def after_response(self, call: Any, response: Any) -> Any:
                outer.log.append(f"after:{self.tag}")
                return None

            async def on_error(self, call: Any, error: BaseException) -> Any:
                outer.log.append(f"error:{self.tag}")
                return "fallback answer" if self.tag == "rewrite" else None

        self.Tag = Tag

    @hookimpl
    def modelmesh_middleware(self) -> list[MiddlewareSpec]:
        return [
            MiddlewareSpec(name="t.rewrite", order=10,
                           factory=lambda config: self.Tag(config, "rewrite")),
            MiddlewareSpec(name="t.audit", order=20,
                           factory=lambda config: self.Tag(config, "audit")),
        ]


@pytest.fixture
async def setup(make_mesh: Any) -> tuple[Any, Recorder, MockPlugin]:
    rec, mock = Recorder(), MockPlugin()
    cfg = mock_config()
    # listed in the opposite order of their `order` keys: order wins
    cfg["plugins"]["middleware"] = [{"connector": "t.audit"}, {"connector": "t.rewrite"}]
    mesh = await make_mesh(cfg, plugins=[mock, rec])
    return mesh, rec, mock


async def test_middleware_order_rewrite_and_after(setup: Any) -> None:
    mesh, rec, mock = setup
    await mesh.router.complete("chat-completion", CompletionRequest(messages=HI))
    assert rec.log == ["before:rewrite:complete", "before:audit:complete", "after:audit",
                       "after:rewrite"]
    assert mock.adapters["mock"].calls[0].request.messages[0]["content"] == "rewritten"


async def test_on_error_first_answer_wins(setup: Any) -> None:
    mesh, rec, mock = setup
    mock.adapters["mock"].script(ProviderError("bad", status=400, retryable=False))
    out = await mesh.router.complete("chat-completion", CompletionRequest(messages=HI))
    assert out == "fallback answer"
    assert rec.log[-1] == "error:rewrite"


async def test_embed_and_stream_run_middleware(setup: Any) -> None:
    mesh, rec, _ = setup
    await mesh.router.embed("text-embeddings", EmbeddingRequest(input="x"))
    assert rec.log[:2] == ["before:rewrite:embed", "before:audit:embed"]
    rec.log.clear()
    async for _ in mesh.router.stream("chat-completion", CompletionRequest(messages=HI)):
        pass
    assert rec.log == ["before:rewrite:stream", "before:audit:stream"]


async def test_unknown_middleware_is_a_config_error(make_mesh: Any) -> None:
    from modelmesh_core import ConfigError

    cfg = mock_config()
    cfg["plugins"]["middleware"] = [{"connector": "t.nope"}]
    with pytest.raises(ConfigError) as info:
        await make_mesh(cfg, plugins=[MockPlugin(), Recorder()])
    assert any(e.startswith("plugins.middleware.0.connector: unknown connector 't.nope'")
               for e in info.value.errors)


async def test_middleware_with_only_after_response_runs(make_mesh: Any) -> None:
    seen: list[str] = []

    class After:
        async def after_response(self, call: Any, response: Any) -> Any:
            seen.append(call.kind)
            return None

    class Plugin:
        @hookimpl
        def modelmesh_middleware(self) -> list[MiddlewareSpec]:
            return [MiddlewareSpec(name="t.after", factory=lambda config: After())]

    cfg = mock_config()
    cfg["plugins"]["middleware"] = [{"connector": "t.after"}]
    mesh = await make_mesh(cfg, plugins=[MockPlugin(), Plugin()])
    await mesh.router.complete("chat-completion", CompletionRequest(messages=HI))
    assert seen == ["complete"]
