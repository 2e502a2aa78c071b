"""Router.batch: provider-native OpenAI batches (files + /v1/batches) against FakeUpstream,
the router-executed fallback, the batch delivery mode, cancellation and poll failures."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from modelmesh_core import CompletionRequest, CompletionResponse, ProviderError
from modelmesh_core.errors import ContextLengthError
from modelmesh_core.fakes import BatchRun, Fail, FakeUpstream, Reply
from modelmesh_core.testing import openai_config

FAST = {"poll_interval": "10ms", "max_poll_errors": 2}


def ask(i: int) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": f"question {i}"}],
                             max_tokens=20)


def config(*upstreams: tuple[str, FakeUpstream], **extra: Any) -> dict[str, Any]:
    cfg = openai_config(list(upstreams), strategy="priority-selection")
    cfg["batch"] = dict(FAST)
    cfg.update(extra)
    return cfg


def chat_calls(fake: FakeUpstream) -> int:
    return sum(1 for c in fake.calls if c.path.endswith("/chat/completions"))


async def test_native_batch_of_100_with_one_failure(fake_upstream, make_mesh) -> None:
    a = await fake_upstream()
    a.script_batch(BatchRun(items={41: Fail.context_length(), 7: Reply("seven")}))
    mesh = await make_mesh(config(("a", a)))
    requests = [ask(i) for i in range(100)]
    job = await mesh.router.batch("chat", requests)
    assert job.native_id is not None and job.native_id in a.batches
    assert job.job_id != job.native_id and job.job_id.startswith("batch_")
    assert (job.model, job.provider, job.request_count) == ("a.gpt-4o-mini", "a", 100)
    assert not job.done

    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert (done.status, done.completed, done.failed) == ("completed", 99, 1)
    assert len(done.results) == 100
    failed = done.results[41]
    assert isinstance(failed, ContextLengthError) and failed.status == 400
    seven = done.results[7]
    assert isinstance(seven, CompletionResponse) and seven.content == "seven"
    assert seven.model == "a.gpt-4o-mini" and seven.metadata["batch_index"] == 7
    assert seven.metadata["pool"] == "chat" and seven.metadata["cost"] > 0
    assert all(isinstance(r, CompletionResponse) for i, r in enumerate(done.results)
               if i != 41)
    # one upload with the 100 requests in order, one batch; nothing went through chat
    assert chat_calls(a) == 0
    upload = next(c for c in a.calls if c.path == "/v1/files")
    lines = [orjson.loads(x) for x in upload.body["file"]["data"].splitlines()]
    assert [x["custom_id"] for x in lines] == [f"req-{i}" for i in range(100)]
    assert lines[41]["body"]["messages"] == [{"role": "user", "content": "question 41"}]
    assert mesh.router.get_batch(job.job_id) is done


async def test_model_without_batch_mode_runs_through_the_router(fake_upstream, make_mesh):
    a = await fake_upstream()
    cfg = config(("a", a))
    cfg["models"]["a.gpt-4o-mini"]["delivery_modes"] = ["sync", "streaming"]
    mesh = await make_mesh(cfg)
    job = await mesh.router.batch("chat", [ask(i) for i in range(5)])
    assert job.native_id is None
    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert (done.status, done.completed) == ("completed", 5)
    assert chat_calls(a) == 5 and a.batches == {}


async def test_batch_delivery_mode_picks_the_model_that_has_it(fake_upstream, make_mesh):
    a, b = await fake_upstream(), await fake_upstream()
    cfg = config(("a", a), ("b", b))
    cfg["models"]["a.gpt-4o-mini"]["delivery_modes"] = ["sync"]
    cfg["models"]["a.gpt-4o-mini"]["priority"] = 10
    mesh = await make_mesh(cfg)
    assert (await mesh.router.route("chat")).model_id == "a.gpt-4o-mini"
    job = await mesh.router.batch("chat", [ask(i) for i in range(3)])
    assert (job.provider, job.native_id is not None) == ("b", True)
    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert done.completed == 3 and a.calls == []


async def test_failed_native_submission_falls_back(fake_upstream, make_mesh) -> None:
    a = await fake_upstream()
    a.script(Fail(503))  # the upload
    mesh = await make_mesh(config(("a", a)))
    job = await mesh.router.batch("chat", [ask(i) for i in range(4)])
    assert job.native_id is None
    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert (done.status, done.completed) == ("completed", 4)
    assert chat_calls(a) == 4 and a.batches == {}


async def test_native_false_and_config_switch(fake_upstream, make_mesh) -> None:
    a = await fake_upstream()
    mesh = await make_mesh(config(("a", a), batch={**FAST, "native": False}))
    job = await mesh.router.batch("chat", [ask(1)])
    assert job.native_id is None
    await mesh.router.wait_batch(job.job_id, timeout=10)
    job = await mesh.router.batch("chat", [ask(1)], native=True)
    assert job.native_id is not None
    assert (await mesh.router.wait_batch(job.job_id, timeout=10)).completed == 1


async def test_cancel_native_batch(fake_upstream, make_mesh) -> None:
    a = await fake_upstream()
    a.script_batch(BatchRun(item_delay=0.03))
    mesh = await make_mesh(config(("a", a)))
    job = await mesh.router.batch("chat", [ask(i) for i in range(20)])
    while a.batches[job.native_id]["request_counts"]["completed"] < 2:
        await asyncio.sleep(0.01)
    job = await mesh.router.cancel_batch(job.job_id)
    assert job.status == "cancelling"
    assert a.calls[-1].path == f"/v1/batches/{job.native_id}/cancel"
    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert done.status == "cancelled"
    assert 2 <= done.completed < 20 and done.completed + done.failed == 20
    assert all(isinstance(r, CompletionResponse) for r in done.results[: done.completed])
    assert all(isinstance(r, ProviderError) and "cancelled" in str(r)
               for r in done.results[done.completed:])


async def test_expired_native_batch(fake_upstream, make_mesh) -> None:
    a = await fake_upstream()
    a.script_batch(BatchRun(expire_after=3))
    mesh = await make_mesh(config(("a", a)))
    job = await mesh.router.batch("chat", [ask(i) for i in range(5)])
    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert (done.status, done.completed, done.failed) == ("expired", 3, 2)
    assert isinstance(done.results[4], ProviderError) and done.results[4].retryable


async def test_polls_that_keep_failing_end_the_job(fake_upstream, make_mesh) -> None:
    a = await fake_upstream()
    a.script_batch(BatchRun(step=5.0))
    mesh = await make_mesh(config(("a", a)))
    job = await mesh.router.batch("chat", [ask(i) for i in range(3)])
    a.script(Fail(500), Fail(502))
    done = await mesh.router.wait_batch(job.job_id, timeout=10)
    assert (done.status, done.completed, done.failed) == ("failed", 0, 3)
    assert all(isinstance(r, ProviderError) and r.status == 502 for r in done.results)


async def test_batch_config_is_validated(make_mesh) -> None:
    from modelmesh_core import ConfigError

    with pytest.raises(ConfigError) as info:
        await make_mesh({"batch": {"poll_interval": 0, "concurency": 2}})
    assert "batch.poll_interval: must be positive" in str(info.value)
    assert "did you mean 'concurrency'" in str(info.value)
