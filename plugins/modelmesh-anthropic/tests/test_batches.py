"""Message Batches through the adapter: submit, poll, results in request order, cancel."""

from __future__ import annotations

import pytest
from conftest import FAST, KEY, claude

from modelmesh_anthropic.fake import DOC_BATCH, DOC_BATCH_RESULTS, Fail, Raw, Reply
from modelmesh_core.errors import ProviderError
from modelmesh_core.types import CompletionRequest, CompletionResponse


def ask(text: str) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": text}], max_tokens=50)


async def test_batch_round_trip_in_request_order(make_adapter, fake) -> None:
    adapter = make_adapter()
    model = claude("claude-haiku-4-5")
    fake.script(Reply("one"), Fail(400, message="messages: text content blocks must be "
                                               "non-empty"), Reply("three"))
    job = await adapter.create_batch(model, [ask("1"), ask("2"), ask("3")], FAST)
    assert job.job_id.startswith("msgbatch_")
    assert (job.status, job.request_count, job.provider) == ("in_progress", 3, "claude")

    submit = fake.calls[0]
    assert (submit.method, submit.path) == ("POST", "/v1/messages/batches")
    assert submit.body["requests"][1] == {"custom_id": "req-1", "params": {
        "model": "claude-haiku-4-5", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": "2"}]}}

    status = await adapter.get_batch(job.job_id, FAST)
    assert (status.status, status.completed, status.failed) == ("completed", 2, 1)

    results = await adapter.batch_results(job.job_id, FAST, model=model)
    assert fake.calls[-1].path == f"/v1/messages/batches/{job.job_id}/results"
    assert isinstance(results[0], CompletionResponse) and results[0].content == "one"
    assert isinstance(results[2], CompletionResponse) and results[2].content == "three"
    assert isinstance(results[1], ProviderError)
    assert results[1].status == 400 and "non-empty" in str(results[1])
    assert results[0].model == "claude.claude-haiku-4-5"
    assert results[0].usage["completion_tokens"] >= 1


async def test_cancel(make_adapter, fake) -> None:
    adapter = make_adapter()
    model = claude("claude-haiku-4-5")
    job = await adapter.create_batch(model, [ask("1"), ask("2")], FAST)
    cancelling = await adapter.cancel_batch(job.job_id, FAST)
    assert cancelling.status == "cancelling"
    assert fake.calls[-1].path == f"/v1/messages/batches/{job.job_id}/cancel"
    ended = await adapter.get_batch(job.job_id, FAST)
    assert (ended.status, ended.failed) == ("cancelled", 2)
    results = await adapter.batch_results(job.job_id, FAST, model=model)
    assert all(isinstance(r, ProviderError) and "canceled" in str(r) for r in results)


async def test_documentation_batch_and_results(make_adapter, fake) -> None:
    adapter = make_adapter()
    fake.script(Raw(DOC_BATCH))
    job = await adapter.get_batch("msgbatch_013Zva2CMHLNnXjNJJKqJ2EF", FAST)
    assert (job.status, job.request_count, job.completed) == ("in_progress", 2, 0)
    fake.script(Raw(DOC_BATCH_RESULTS.replace(b"my-first-request", b"req-0")
                    .replace(b"my-second-request", b"req-1"),
                    content_type="application/binary"))
    first, second = await adapter.batch_results("msgbatch_013Zva2CMHLNnXjNJJKqJ2EF", FAST,
                                                model=claude())
    assert isinstance(first, CompletionResponse) and first.content.startswith("Hello! How")
    assert isinstance(second, CompletionResponse) and second.usage["prompt_tokens"] == 11


async def test_results_before_the_end_are_an_error(make_adapter, fake) -> None:
    adapter = make_adapter()
    job = await adapter.create_batch(claude(), [ask("1")], FAST)
    with pytest.raises(ProviderError) as info:
        await adapter.batch_results(job.job_id, FAST, model=claude())
    assert info.value.status == 404


# --------------------------------------------------------------------------- through Router.batch


def mesh_config(fake, **batch: object) -> dict:
    return {
        "providers": {"claude": {"connector": "anthropic.claude.v1",
                                 "config": {"base_url": fake.base_url, "api_key": KEY}}},
        "models": {"claude.claude-haiku-4-5": {}},
        "pools": {"chat": {"capability": "chat-completion"}},
        "batch": {"poll_interval": "10ms", **batch},
    }


async def test_router_batch_of_100_with_one_failure(fake, make_mesh) -> None:
    fake.batch_polls = 3
    fake.script(*[Fail(400, message="messages: text content blocks must be non-empty")
                  if i == 41 else Reply(f"answer {i}") for i in range(100)])
    mesh = await make_mesh(mesh_config(fake))
    job = await mesh.router.batch("chat", [ask(str(i)) for i in range(100)])
    assert job.native_id is not None and job.native_id.startswith("msgbatch_")
    assert (job.provider, job.model, job.status) == ("claude", "claude.claude-haiku-4-5",
                                                     "in_progress")
    submit = fake.calls[0]
    assert (submit.method, submit.path) == ("POST", "/v1/messages/batches")
    assert [r["custom_id"] for r in submit.body["requests"]] == [f"req-{i}" for i in range(100)]

    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert (done.status, done.completed, done.failed) == ("completed", 99, 1)
    # the fake answers results in reverse order: the router puts them in request order
    assert [r.content for i, r in enumerate(done.results) if i != 41] == [
        f"answer {i}" for i in range(100) if i != 41]
    failed = done.results[41]
    assert isinstance(failed, ProviderError) and failed.status == 400
    assert "non-empty" in str(failed)
    polls = [c for c in fake.calls if c.method == "GET" and c.path.endswith(job.native_id)]
    assert len(polls) == 3
    assert fake.calls[-1].path == f"/v1/messages/batches/{job.native_id}/results"


async def test_router_cancels_an_anthropic_batch(fake, make_mesh) -> None:
    fake.batch_polls = 1000
    mesh = await make_mesh(mesh_config(fake))
    job = await mesh.router.batch("chat", [ask("1"), ask("2")])
    job = await mesh.router.cancel_batch(job.job_id)
    assert job.status == "cancelling"
    assert fake.calls[-1].path == f"/v1/messages/batches/{job.native_id}/cancel"
    fake.batch_polls = 0
    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert (done.status, done.completed, done.failed) == ("cancelled", 0, 2)
    assert all(isinstance(r, ProviderError) and "canceled" in str(r) for r in done.results)
