"""jina.ai.v1 against the fake Jina: exact requests, answers, errors, and failover to Cohere
through the mesh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from modelmesh_jina import JinaAdapter, JinaConfig
from modelmesh_jina.fake import DOC_RERANK, FakeJina

from modelmesh_core import ModelMesh
from modelmesh_core.errors import AuthenticationError, ProviderError, RateLimitError
from modelmesh_core.operations import RerankRequest, ScrapeRequest
from modelmesh_core.types import EmbeddingRequest, Model, ProviderContext, Timeouts
from modelmesh_core.vendor_fake import Fault

KEY = "jina_test_0123456789abcdef"
FAST = Timeouts(connect=2, first_byte=2, idle=2, total=5)
EMBED = Model(id="j.jina-embeddings-v3", provider="j", upstream_id="jina-embeddings-v3",
              capabilities=("representation.embeddings.text-embeddings",))
RERANK = Model(id="j.jina-reranker-v2-base-multilingual", provider="j",
               upstream_id="jina-reranker-v2-base-multilingual",
               capabilities=("retrieval.reranking",))
READER = Model(id="j.reader", provider="j", upstream_id="reader",
               capabilities=("understanding.document-understanding.document-parsing",))
PAGE = "# Example Domain\n\nThis domain is for use in illustrative examples."


@pytest.fixture
async def fake() -> AsyncIterator[FakeJina]:
    async with FakeJina.running(api_keys={KEY},
                                pages={"https://example.com/": PAGE}) as upstream:
        yield upstream


@pytest.fixture
async def adapter(fake: FakeJina) -> AsyncIterator[JinaAdapter]:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="j", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        yield JinaAdapter(context, JinaConfig(api_key=KEY, base_url=fake.url,
                                              reader_url=fake.url))


async def test_embeddings_request_and_vectors(adapter: JinaAdapter, fake: FakeJina) -> None:
    out = await adapter.embed(EMBED, EmbeddingRequest(
        input=["a b", "c"], extra={"task": "retrieval.query", "dimensions": 4}), FAST)
    call = fake.calls[0]
    assert call.path == "/v1/embeddings"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.body == {"model": "jina-embeddings-v3", "input": ["a b", "c"],
                         "embedding_type": "float", "task": "retrieval.query",
                         "dimensions": 4}
    assert len(out.data) == 2 and len(out.data[0]) == 4
    assert out.usage == {"prompt_tokens": 3, "total_tokens": 3}


async def test_rerank_request_and_ranking(adapter: JinaAdapter, fake: FakeJina) -> None:
    docs = ["bananas are yellow", "the capital of France is Paris", "Paris"]
    out = await adapter.rerank(RERANK, RerankRequest(query="capital of France",
                                                     documents=docs, top_n=2), FAST)
    assert fake.calls[0].path == "/v1/rerank"
    assert fake.calls[0].body == {"model": "jina-reranker-v2-base-multilingual",
                                  "query": "capital of France", "documents": docs,
                                  "return_documents": False, "top_n": 2}
    assert [(r.index, r.document) for r in out.results] == [(1, docs[1]), (0, docs[0])]
    assert out.results[0].relevance_score == 1.0


def test_documented_rerank_example_shape() -> None:
    # the fake's answers follow the documented example: index, relevance_score, document
    assert set(DOC_RERANK["results"][0]) == {"index", "relevance_score", "document"}
    assert DOC_RERANK["usage"] == {"total_tokens": 815}


async def test_reader_json_answer(adapter: JinaAdapter, fake: FakeJina) -> None:
    out = await adapter.scrape(READER, ScrapeRequest(url="https://example.com/"), FAST)
    call = fake.calls[0]
    assert call.path == "/" and call.body == {"url": "https://example.com/"}
    assert call.headers["accept"] == "application/json"
    assert out.content == PAGE and out.title == "Example Domain"
    assert out.usage["prompt_tokens"] == 10


async def test_reader_failure_is_a_caller_error(adapter: JinaAdapter) -> None:
    with pytest.raises(ProviderError) as info:
        await adapter.scrape(READER, ScrapeRequest(url="https://nowhere.invalid/"), FAST)
    assert info.value.status == 422 and not info.value.retryable
    assert "Failed to goto" in str(info.value)


@pytest.mark.parametrize(("fault", "kind", "retryable"), [
    (Fault(status=429, retry_after=3), RateLimitError, True),
    (Fault(status=503), ProviderError, True),
    (Fault(status=400, message="documents must not be empty"), ProviderError, False),
    (Fault(malformed=True), ProviderError, True),
    (Fault(html=True), ProviderError, True),
    (Fault(cut=True), ProviderError, True),
])
async def test_errors_are_typed(adapter: JinaAdapter, fake: FakeJina, fault: Fault,
                                kind: type, retryable: bool) -> None:
    fake.script(fault)
    with pytest.raises(kind) as info:
        await adapter.rerank(RERANK, RerankRequest(query="q", documents=["d"]), FAST)
    assert info.value.retryable is retryable
    if isinstance(info.value, RateLimitError):
        assert info.value.retry_after == 3.0


async def test_bad_key_is_authentication_and_never_leaks(fake: FakeJina) -> None:
    async with aiohttp.ClientSession() as session:
        context = ProviderContext(name="j", session=lambda: session,
                                  json_dumps=orjson.dumps, json_loads=orjson.loads)
        wrong = JinaAdapter(context, JinaConfig(api_key="jina_wrong_key_123456",
                                                base_url=fake.url))
        with pytest.raises(AuthenticationError) as info:
            await wrong.embed(EMBED, EmbeddingRequest(input="x"), FAST)
    assert "jina_wrong_key_123456" not in str(info.value) + repr(wrong)


async def test_rerank_fails_over_from_jina_to_cohere(fake: FakeJina) -> None:
    from modelmesh_cohere.fake import FakeCohere

    async with FakeCohere(api_keys={"co-test-key-0123456789"}) as cohere:
        config: dict[str, Any] = {
            "providers": {
                "jina": {"connector": "jina.ai.v1",
                         "config": {"api_key": KEY, "base_url": fake.url}},
                "co": {"connector": "cohere.nlp.v1",
                       "config": {"api_key": "co-test-key-0123456789",
                                  "base_url": cohere.url}},
            },
            "models": {"jina.jina-reranker-v2-base-multilingual": {}, "co.rerank-v3.5": {}},
            "pools": {"rank": {"capability": "reranking",
                               "models": ["jina.jina-reranker-v2-base-multilingual",
                                          "co.rerank-v3.5"],
                               "retry": {"initial_delay": "1ms", "same_model_retries": 0}}},
        }
        mesh = ModelMesh(config)
        await mesh.initialize()
        try:
            fake.script(Fault(status=500))
            out = await mesh.router.rerank("rank", RerankRequest(
                query="capital of France", documents=["Paris is the capital of France", "x"]))
            assert out.model == "co.rerank-v3.5" and out.metadata["attempts"] == 2
            assert out.results[0].index == 0
            assert [c.path for c in fake.calls] == ["/v1/rerank"]
        finally:
            await mesh.shutdown()
