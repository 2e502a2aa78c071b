"""Operations as data: every public attrs class resolves its hints, every default alias maps
to an operation (or is documented as having none), a plugin adds an operation without
touching the router, and every operation end to end through the proxy with the official
``openai`` SDK (rerank and search with plain HTTP), with failover, headers and a 413."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import re
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import openai
import pytest
from aiohttp import web
from attrs import Factory, frozen

import modelmesh_core
from modelmesh_core import ModelMesh, OperationSpec, hookimpl
from modelmesh_core.capabilities import DEFAULT_ALIASES, CapabilityTree
from modelmesh_core.errors import OperationNotSupportedError
from modelmesh_core.fakes import Fail, FakeUpstream, Reply, fake_audio
from modelmesh_core.operations import BUILTIN_OPERATIONS
from modelmesh_core.server import create_app
from modelmesh_core.types import Model, Timeouts

DOCS = Path(__file__).resolve().parent.parent / "docs"
KEY = "sk-test-0123456789abcdef"


# --------------------------------------------------------------------------- typing


def _public_attrs_classes() -> list[tuple[str, type]]:
    found = []
    for info in pkgutil.walk_packages(modelmesh_core.__path__, "modelmesh_core."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None) or [n for n in vars(module)
                                                     if not n.startswith("_")]
        for name in names:
            obj = getattr(module, name, None)
            if isinstance(obj, type) and attrs.has(obj) and obj.__module__ == module.__name__:
                found.append((f"{info.name}.{name}", obj))
    return found


def test_get_type_hints_works_on_every_public_attrs_class() -> None:
    classes = _public_attrs_classes()
    assert len(classes) > 60
    names = {n for n, _ in classes}
    assert {"modelmesh_core.pipeline.PipelineContext", "modelmesh_core.pools.Services",
            "modelmesh_core.types.ProviderContext"} <= names
    for name, cls in classes:
        hints = typing.get_type_hints(cls)
        assert set(hints) >= {f.name for f in attrs.fields(cls)}, name


def test_pipeline_values_are_fully_typed() -> None:
    from modelmesh_core.pipeline import PipelineContext, PipelineResult
    from modelmesh_core.pools import CapabilityPool

    hints = typing.get_type_hints(PipelineContext)
    assert hints["pool"] == CapabilityPool | None
    assert typing.get_type_hints(PipelineResult)["pool"] is CapabilityPool
    # old import path still works
    from modelmesh_core.types import PipelineContext as Old

    assert Old is PipelineContext


# --------------------------------------------------------------------------- aliases


def _no_operation_yet() -> set[str]:
    """The aliases docs/architecture.md lists on its "Aliases with no operation yet:" line."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    match = re.search(r"^Aliases with no operation yet: (.*)$", text, flags=re.MULTILINE)
    assert match, "docs/architecture.md lost its 'Aliases with no operation yet:' line"
    return set(re.findall(r"`([a-z0-9-]+)`", match.group(1)))


def test_every_default_alias_maps_to_an_operation_or_is_documented() -> None:
    tree = CapabilityTree()
    documented = _no_operation_yet()

    def covers(node: str, path: str) -> bool:
        return tree.covers(node, path)

    unmapped = []
    for alias, path in DEFAULT_ALIASES.items():
        ops = [op.name for op in BUILTIN_OPERATIONS
               if any(covers(sub, path) or covers(path, sub) for sub in op.capabilities)]
        if not ops and alias not in documented:
            unmapped.append(alias)
        if ops:
            assert alias not in documented, f"{alias} is served by {ops}; update the docs"
    assert not unmapped, f"aliases with no operation and not documented: {unmapped}"
    # and every operation's subtrees are real nodes of the default tree
    for op in BUILTIN_OPERATIONS:
        for sub in op.capabilities:
            assert sub in tree, (op.name, sub)


# --------------------------------------------------------------------------- a plugin's own op


@frozen(kw_only=True)
class OcrRequest:
    image: bytes


@frozen(kw_only=True)
class OcrResponse:
    text: str
    model: str
    provider: str
    usage: dict[str, int] = Factory(dict)
    metadata: dict[str, Any] = Factory(dict)


class OcrAdapter:
    def __init__(self, context: Any, config: Any) -> None:
        self.name = context.name
        self.fail = 0

    async def ocr(self, model: Model, request: OcrRequest, timeouts: Timeouts) -> OcrResponse:
        from modelmesh_core.errors import ProviderError

        if self.fail:
            self.fail -= 1
            raise ProviderError("busy", provider_id=self.name, status=503, retryable=True)
        return OcrResponse(text=request.image.decode()[::-1], model=model.id,
                           provider=self.name, usage={"prompt_tokens": 1})

    async def list_models(self, timeouts: Timeouts) -> list[str]:
        return ["ocr-1"]

    async def close(self) -> None:
        pass


class OcrPlugin:
    @hookimpl
    def modelmesh_operations(self) -> list[OperationSpec]:
        return [OperationSpec(name="acme.ocr",
                              capabilities=("understanding.vision-understanding.ocr",),
                              method="ocr", request_type=OcrRequest,
                              response_type=OcrResponse)]

    @hookimpl
    def modelmesh_providers(self) -> list[Any]:
        from modelmesh_core.types import ProviderSpec

        return [ProviderSpec(name="acme.ocr.v1", factory=OcrAdapter, auth="none", local=True)]


async def test_a_plugin_adds_an_operation_without_touching_the_router() -> None:
    mesh = ModelMesh({
        "providers": {"a": {"connector": "acme.ocr.v1"}, "b": {"connector": "acme.ocr.v1"}},
        "models": {"a.ocr-1": {"capabilities": ["understanding.vision-understanding.ocr"]},
                   "b.ocr-1": {"capabilities": ["understanding.vision-understanding.ocr"]}},
        "pools": {"ocr": {"capability": "understanding.vision-understanding.ocr",
                          "retry": {"initial_delay": "1ms", "same_model_retries": 0}}},
    }, plugins=[OcrPlugin()])
    await mesh.initialize()
    try:
        assert "acme.ocr" in mesh.router.operations
        assert mesh.router.serves("a.ocr-1") == frozenset({"acme.ocr"})
        mesh.providers["a"].adapter.fail = 1  # type: ignore[attr-defined]
        out = await mesh.router.run("acme.ocr", "ocr", OcrRequest(image=b"abc"))
        assert out.text == "cba" and out.model == "b.ocr-1"
        assert out.metadata["attempts"] == 2 and out.metadata["pool"] == "ocr"
        with pytest.raises(OperationNotSupportedError):
            await mesh.router.run("embed", "ocr", OcrRequest(image=b"x"))
        with pytest.raises(KeyError, match=re.escape("acme.ocr")):
            mesh.router.operation("nope")
    finally:
        await mesh.shutdown()


# --------------------------------------------------------------------------- the proxy


def _config(a: FakeUpstream, b: FakeUpstream, **extra: Any) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for p in ("alpha", "beta"):
        for name in ("gpt-4o-mini", "text-embedding-3-small", "dall-e-3", "tts-1",
                     "whisper-1", "omni-moderation-latest"):
            models[f"{p}.{name}"] = {}
    retry = {"initial_delay": "1ms", "max_delay": "5ms", "same_model_retries": 0}
    config: dict[str, Any] = {
        "providers": {
            "alpha": {"connector": "openai.llm.v1",
                      "config": {"base_url": a.base_url, "api_key": KEY}},
            "beta": {"connector": "openai.llm.v1",
                     "config": {"base_url": b.base_url, "api_key": KEY}},
        },
        "models": models,
        "pools": {
            "chat": {"capability": "chat-completion", "retry": retry},
            "images": {"capability": "text-to-image", "retry": retry},
            "voice": {"capability": "text-to-speech", "retry": retry},
            "ears": {"capability": "speech-to-text", "retry": retry},
            "guard": {"capability": "content-moderation", "retry": retry},
            "vectors": {"capability": "text-embeddings", "retry": retry},
        },
    }
    config.update(extra)
    return config


@contextlib.asynccontextmanager
async def _proxy(config: dict[str, Any]) -> AsyncIterator[tuple[str, ModelMesh]]:
    mesh = ModelMesh(config)
    app = create_app(mesh)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", mesh
    finally:
        await runner.cleanup()


@pytest.fixture
async def two() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    async with FakeUpstream(api_keys={KEY}) as a, FakeUpstream(api_keys={KEY}) as b:
        yield a, b


def _headers_of(raw: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in raw.headers.items()}


async def test_openai_sdk_every_operation_through_the_proxy_with_failover(
        two: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = two
    async with _proxy(_config(a, b)) as (url, _), openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        a.script(Fail(503), Fail(500), Fail(502), Fail(503))
        raw = await client.images.with_raw_response.generate(
            model="images", prompt="a lighthouse", response_format="url")
        image = raw.parse()
        assert image.data[0].url and image.data[0].revised_prompt
        h = _headers_of(raw)
        assert h["x-modelmesh-model"] == "beta.dall-e-3" and h["x-modelmesh-attempts"] == "2"
        assert h["x-modelmesh-pool"] == "images" and "x-modelmesh-overhead-ms" in h

        async with client.audio.speech.with_streaming_response.create(
                model="voice", input="Hello there", voice="alloy",
                response_format="opus") as speech:
            audio = await speech.read()
            assert speech.headers["content-type"] == "audio/opus"
            assert speech.headers["x-modelmesh-attempts"] == "2"
        assert audio == fake_audio("Hello there", "alloy", "opus")

        b.script(Reply("the quick brown fox"))
        transcript = await client.audio.transcriptions.create(
            model="ears", file=("fox.wav", b"RIFF" + bytes(4000), "audio/wav"))
        assert transcript.text == "the quick brown fox"
        upload = b.calls[-1].body["file"]
        assert upload["filename"] == "fox.wav" and upload["size"] == 4004

        # the installed SDK marks translations.create deprecated: plain multipart HTTP
        b.script(Reply("good morning"))
        form = aiohttp.FormData()
        form.add_field("model", "ears")
        form.add_field("response_format", "srt")
        form.add_field("file", b"ID3" + bytes(100), filename="a.mp3",
                       content_type="audio/mpeg")
        async with aiohttp.ClientSession() as s, s.post(
                url + "/v1/audio/translations", data=form) as r:
            assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
            # the pool sticks to beta's whisper-1 since alpha's failed (stick-until-failure)
            assert r.headers["x-modelmesh-attempts"] == "1"
            assert r.headers["x-modelmesh-model"] == "beta.whisper-1"
            assert "good morning" in await r.text()
        assert b.calls[-1].path == "/v1/audio/translations"
        assert "language" not in b.calls[-1].body

        mod = await client.moderations.with_raw_response.create(
            model="guard", input=["hello", "I will kill you"])
        assert [r.flagged for r in mod.parse().results] == [False, True]
        assert _headers_of(mod)["x-modelmesh-provider"] == "beta"
    assert [c.path for c in a.calls] == [
        "/v1/images/generations", "/v1/audio/speech", "/v1/audio/transcriptions",
        "/v1/moderations"]
    assert [c.path for c in b.calls] == [
        "/v1/images/generations", "/v1/audio/speech", "/v1/audio/transcriptions",
        "/v1/audio/translations", "/v1/moderations"]


async def test_embeddings_carry_the_modelmesh_headers(
        two: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = two
    async with _proxy(_config(a, b)) as (url, _), openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        raw = await client.embeddings.with_raw_response.create(model="vectors", input="hi")
        h = _headers_of(raw)
        assert h["x-modelmesh-attempts"] == "1" and h["x-modelmesh-pool"] == "vectors"
        assert float(h["x-modelmesh-overhead-ms"]) >= 0.0


async def test_wrong_operation_is_a_400_naming_what_the_pool_serves(
        two: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = two
    async with _proxy(_config(a, b)) as (url, _), openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.embeddings.create(model="chat", input="hello")
        err = info.value.body
        assert isinstance(err, dict) and err["code"] == "model_not_supported"
        assert "serve chat" in err["message"] or "serve 'embed'" in err["message"]
        assert "whose models serve chat" in err["message"]
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="text-embeddings", messages=[{"role": "user", "content": "hi"}])
        assert "whose models serve embed" in str(info.value)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="text-embeddings", messages=[{"role": "user", "content": "hi"}],
                stream=True)
        with pytest.raises(openai.BadRequestError):
            await client.images.generate(model="voice", prompt="x")
    assert not a.calls and not b.calls


async def test_upload_too_large_is_413_before_anything_goes_upstream(
        two: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = two
    config = _config(a, b, proxy={"limits": {"max_upload_size": "64KiB"}})
    async with _proxy(config) as (url, _), openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.audio.transcriptions.create(
                model="ears", file=("big.wav", bytes(200_000), "audio/wav"))
        assert info.value.status_code == 413
        # chunked (no Content-Length): cut off while reading, still before any upstream call
        form = aiohttp.FormData()
        form.add_field("model", "ears")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield bytes(32_000)

        form.add_field("file", chunks(), filename="big.wav", content_type="audio/wav")
        async with aiohttp.ClientSession() as s, s.post(
                url + "/v1/audio/transcriptions", data=form) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
    assert not a.calls and not b.calls


async def test_rerank_cohere_shape_and_search_over_plain_http() -> None:
    from modelmesh_cohere.fake import FakeCohere
    from modelmesh_jina.fake import FakeJina
    from modelmesh_tavily.fake import FakeTavily

    corpus = {"https://example.com/paris": ("Paris", "Paris is the capital of France.")}
    async with FakeJina.running(api_keys={"jina_k_0123456789"}) as jina, FakeCohere(
            api_keys={"co-k-0123456789"}) as cohere, FakeTavily.running(
            api_keys={"tvly-k-0123456789"}, corpus=corpus) as tavily:
        from modelmesh_core.vendor_fake import Fault

        config = {
            "providers": {
                "jina": {"connector": "jina.ai.v1",
                         "config": {"api_key": "jina_k_0123456789", "base_url": jina.url}},
                "co": {"connector": "cohere.nlp.v1",
                       "config": {"api_key": "co-k-0123456789", "base_url": cohere.url}},
                "tavily": {"connector": "tavily.search.v1",
                           "config": {"api_key": "tvly-k-0123456789", "base_url": tavily.url}},
            },
            "models": {"jina.jina-reranker-v2-base-multilingual": {}, "co.rerank-v3.5": {},
                       "tavily.search": {}},
            "pools": {"rank": {"capability": "reranking",
                               "models": ["jina.jina-reranker-v2-base-multilingual",
                                          "co.rerank-v3.5"],
                               "retry": {"initial_delay": "1ms", "same_model_retries": 0}}},
        }
        async with _proxy(config) as (url, _), aiohttp.ClientSession() as s:
            docs = ["Carson City is the capital of Nevada.",
                    "Washington, D.C. is the capital of the United States."]
            jina.script(Fault(status=503))
            async with s.post(url + "/v1/rerank", json={
                    "model": "rank", "query": "capital of the United States",
                    "documents": docs, "top_n": 2}) as r:
                assert r.status == 200
                assert r.headers["x-modelmesh-model"] == "co.rerank-v3.5"
                assert r.headers["x-modelmesh-attempts"] == "2"
                body = await r.json()
            assert body["results"][0]["index"] == 1
            assert body["results"][0]["document"] == {"text": docs[1]}
            assert set(body["results"][0]) == {"index", "relevance_score", "document"}
            assert "billed_units" in body["meta"]
            async with s.post(url + "/v1/rerank", json={
                    "query": "capital", "documents": [{"text": "a"}, {"text": "capital"}],
                    "return_documents": False}) as r:  # no model: the reranking alias
                out = await r.json()
                assert r.status == 200 and "document" not in out["results"][0]
            async with s.post(url + "/v1/search", json={"query": "capital of France",
                                                        "max_results": 3}) as r:
                assert r.status == 200 and r.headers["x-modelmesh-model"] == "tavily.search"
                found = await r.json()
            assert found["object"] == "search"
            assert found["results"][0]["url"] == "https://example.com/paris"
            assert tavily.calls[0].body["max_results"] == 3
            async with s.post(url + "/v1/rerank", json={"model": "rank", "query": "q"}) as r:
                assert r.status == 400
                assert (await r.json())["error"]["param"] == "documents"
