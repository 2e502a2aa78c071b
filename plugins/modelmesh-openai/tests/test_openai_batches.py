"""OpenAI native batches through the adapter against FakeUpstream's Files and Batch APIs."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from modelmesh_core.errors import (
    BatchRequestNotRunError,
    ContextLengthError,
    ProviderError,
    RateLimitError,
)
from modelmesh_core.fakes import BatchRun, Fail, FakeUpstream, MalformedJSON, Reply
from modelmesh_core.types import (
    BatchCapable,
    CompletionRequest,
    CompletionResponse,
    Model,
    Timeouts,
)

KEY = "sk-test-0123456789abcdef"
MODEL = Model(id="alpha.gpt-4o-mini", provider="alpha", upstream_id="gpt-4o-mini",
              capabilities=("generation.text-generation.chat-completion",))
FAST = Timeouts(connect=2.0, first_byte=2.0, idle=2.0, total=5.0)

# The documented examples (API reference "Retrieve batch" response, with the stray trailing
# comma after "batch_description" removed; Batch guide output line).
DOC_BATCH = b"""{
  "id": "batch_abc123",
  "object": "batch",
  "endpoint": "/v1/completions",
  "errors": null,
  "input_file_id": "file-abc123",
  "completion_window": "24h",
  "status": "completed",
  "output_file_id": "file-cvaTdG",
  "error_file_id": "file-HOWS94",
  "created_at": 1711471533,
  "in_progress_at": 1711471538,
  "expires_at": 1711557933,
  "finalizing_at": 1711493133,
  "completed_at": 1711493163,
  "failed_at": null,
  "expired_at": null,
  "cancelling_at": null,
  "cancelled_at": null,
  "request_counts": {
    "total": 100,
    "completed": 95,
    "failed": 5
  },
  "metadata": {
    "customer_id": "user_123456789",
    "batch_description": "Nightly eval job"
  }
}"""
DOC_OUTPUT_LINE = (
    b'{"id": "batch_req_123", "custom_id": "request-2", "response": {"status_code": 200, '
    b'"request_id": "req_123", "body": {"id": "chatcmpl-123", "object": "chat.completion", '
    b'"created": 1711652795, "model": "gpt-3.5-turbo-0125", "choices": [{"index": 0, '
    b'"message": {"role": "assistant", "content": "Hello."}, "logprobs": null, '
    b'"finish_reason": "stop"}], "usage": {"prompt_tokens": 22, "completion_tokens": 2, '
    b'"total_tokens": 24}, "system_fingerprint": "fp_123"}}, "error": null}'
)


def ask(text: str, **kw: Any) -> CompletionRequest:
    return CompletionRequest(messages=[{"role": "user", "content": text}], **kw)


async def until(adapter: Any, job_id: str, *statuses: str, limit: float = 3.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while True:
        job = await adapter.get_batch(job_id, FAST)
        if job.status in statuses or loop.time() > end:
            return job
        await asyncio.sleep(0.01)


async def test_round_trip_exact_wire_and_request_order(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    assert isinstance(adapter, BatchCapable)
    fake.script_batch(BatchRun(items={"req-1": Fail.context_length(), 2: Reply("three")}))
    job = await adapter.create_batch(
        MODEL, [ask("one", max_tokens=5), ask("two"), ask("three", temperature=0.5)], FAST)
    assert job.job_id.startswith("batch_") and job.native_id == job.job_id
    assert (job.status, job.request_count, job.provider, job.model) == (
        "validating", 3, "alpha", "alpha.gpt-4o-mini")

    upload, create = fake.calls[0], fake.calls[1]
    assert (upload.method, upload.path) == ("POST", "/v1/files")
    assert upload.headers["authorization"] == f"Bearer {KEY}"
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert upload.body["purpose"] == "batch"
    assert upload.body["file"]["filename"].endswith(".jsonl")
    lines = [orjson.loads(line) for line in upload.body["file"]["data"].splitlines()]
    assert lines == [
        {"custom_id": "req-0", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one"}],
                  "max_tokens": 5}},
        {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "two"}]}},
        {"custom_id": "req-2", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "three"}],
                  "temperature": 0.5}},
    ]
    assert (create.method, create.path) == ("POST", "/v1/batches")
    assert create.headers["content-type"] == "application/json"
    file_id = next(iter(fake.files))
    assert create.body == {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                           "completion_window": "24h"}

    done = await until(adapter, job.job_id, "completed")
    assert (done.status, done.request_count, done.completed, done.failed) == (
        "completed", 3, 2, 1)
    assert fake.calls[-1].path == f"/v1/batches/{job.job_id}"

    results = await adapter.batch_results(job.job_id, FAST, model=MODEL)
    paths = [c.path for c in fake.calls[-3:]]
    batch = fake.batches[job.job_id]
    assert paths == [f"/v1/batches/{job.job_id}", f"/v1/files/{batch['output_file_id']}/content",
                     f"/v1/files/{batch['error_file_id']}/content"]
    first, second, third = results
    assert isinstance(first, CompletionResponse)
    assert (first.content, first.model, first.provider) == (
        "Hello from the fake upstream!", "alpha.gpt-4o-mini", "alpha")
    assert first.usage["completion_tokens"] >= 1 and first.finish_reason == "stop"
    assert isinstance(third, CompletionResponse) and third.content == "three"
    assert isinstance(second, ContextLengthError)
    assert second.status == 400 and "maximum context length" in str(second)


async def test_status_progression(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    fake.script_batch(BatchRun(step=0.15, item_delay=0.1))
    job = await adapter.create_batch(MODEL, [ask("a"), ask("b")], FAST)
    seen = [job.status]
    while seen[-1] != "completed":
        status = (await adapter.get_batch(job.job_id, FAST)).status
        if status != seen[-1]:
            seen.append(status)
        await asyncio.sleep(0.01)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    # a completed batch cannot be cancelled
    with pytest.raises(ProviderError) as info:
        await adapter.cancel_batch(job.job_id, FAST)
    assert info.value.status == 400 and not info.value.retryable


async def test_cancel_keeps_partial_results(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    fake.script_batch(BatchRun(item_delay=0.1, step=0.05))
    job = await adapter.create_batch(MODEL, [ask(str(i)) for i in range(6)], FAST)
    running = await until(adapter, job.job_id, "in_progress")
    while (await adapter.get_batch(job.job_id, FAST)).completed < 1:
        await asyncio.sleep(0.01)
    cancelling = await adapter.cancel_batch(job.job_id, FAST)
    assert cancelling.status == "cancelling"
    assert fake.calls[-1].path == f"/v1/batches/{job.job_id}/cancel"
    assert running.request_count == 6
    ended = await until(adapter, job.job_id, "cancelled")
    assert ended.status == "cancelled"
    assert 1 <= ended.completed < 6 and ended.completed + ended.failed == 6
    results = await adapter.batch_results(job.job_id, FAST, model=MODEL)
    done = [r for r in results if isinstance(r, CompletionResponse)]
    never = [r for r in results if isinstance(r, ProviderError)]
    assert len(done) == ended.completed and len(never) == ended.failed
    assert all(isinstance(r, BatchRequestNotRunError) and r.code == "batch_cancelled"
               and not r.retryable for r in never)
    # the answered ones come first: requests run in order
    assert all(isinstance(r, CompletionResponse) for r in results[: len(done)])
    # cancelling again changes nothing
    assert (await adapter.cancel_batch(job.job_id, FAST)).status == "cancelled"


async def test_expired_batch(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    fake.script_batch(BatchRun(expire_after=2))
    job = await adapter.create_batch(MODEL, [ask(str(i)) for i in range(4)], FAST)
    ended = await until(adapter, job.job_id, "expired")
    assert (ended.status, ended.completed, ended.failed) == ("expired", 2, 2)
    results = await adapter.batch_results(job.job_id, FAST, model=MODEL)
    assert [type(r).__name__ for r in results] == [
        "CompletionResponse", "CompletionResponse", "BatchRequestNotRunError",
        "BatchRequestNotRunError"]
    assert isinstance(results[3], BatchRequestNotRunError)
    assert results[3].retryable and results[3].code == "batch_expired"


async def test_rate_limited_item_is_typed(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    fake.script_batch(BatchRun(items={0: Fail.rate_limit()}))
    job = await adapter.create_batch(MODEL, [ask("x")], FAST)
    ended = await until(adapter, job.job_id, "completed", "failed")
    assert ended.status == "failed"  # nothing succeeded
    (only,) = await adapter.batch_results(job.job_id, FAST, model=MODEL)
    assert isinstance(only, RateLimitError)


async def test_documented_examples(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    job = adapter._job(orjson.loads(DOC_BATCH))
    assert (job.job_id, job.status, job.request_count, job.completed, job.failed) == (
        "batch_abc123", "completed", 100, 95, 5)
    # the fake's batch object has the documented fields, in the documented order
    created = await adapter.create_batch(MODEL, [ask("x")], FAST)
    await until(adapter, created.job_id, "completed")
    assert list(fake.batches[created.job_id]) == list(orjson.loads(DOC_BATCH))
    # a documented output line, served from the fake's output file over HTTP
    out_id = fake.batches[created.job_id]["output_file_id"]
    fake.files[out_id] = fake.files[out_id].__class__(
        id=out_id, filename="out.jsonl", purpose="batch_output", created_at=0,
        data=DOC_OUTPUT_LINE.replace(b"request-2", b"req-0") + b"\n")
    (only,) = await adapter.batch_results(created.job_id, FAST, model=MODEL)
    assert isinstance(only, CompletionResponse)
    assert (only.content, only.upstream_model, only.id) == (
        "Hello.", "gpt-3.5-turbo-0125", "chatcmpl-123")
    assert only.usage["prompt_tokens"] == 22 and only.usage["total_tokens"] == 24


async def test_validation_failure_names_the_line(make_adapter, fake: FakeUpstream,
                                                  session: aiohttp.ClientSession) -> None:
    adapter = make_adapter()
    good = {"custom_id": "req-0", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": []}}
    bad = {**good, "custom_id": "req-1", "url": "/v1/embeddings"}
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", orjson.dumps(good) + b"\n" + orjson.dumps(bad) + b"\n",
                   filename="in.jsonl")
    auth = {"Authorization": f"Bearer {KEY}"}
    async with session.post(f"{fake.base_url}/files", data=form, headers=auth) as resp:
        file_id = (await resp.json())["id"]
    async with session.post(f"{fake.base_url}/batches", headers=auth, json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}) as resp:
        batch_id = (await resp.json())["id"]
    ended = await until(adapter, batch_id, "failed")
    assert ended.status == "failed"
    assert fake.batches[batch_id]["errors"]["data"][0]["line"] == 2
    first, second = await adapter.batch_results(batch_id, FAST, model=MODEL)
    assert first is None
    assert isinstance(second, ProviderError) and "mismatched_endpoint" in str(second)


async def test_results_before_the_end_are_an_error(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    fake.script_batch(BatchRun(step=5.0))
    job = await adapter.create_batch(MODEL, [ask("x")], FAST)
    with pytest.raises(ProviderError) as info:
        await adapter.batch_results(job.job_id, FAST, model=MODEL)
    assert info.value.status == 409 and "has not ended" in str(info.value)


async def test_connector_without_batch_api_sends_nothing(make_adapter, fake) -> None:
    adapter = make_adapter("groq.api.v1")
    with pytest.raises(ProviderError) as info:
        await adapter.create_batch(MODEL, [ask("x")], FAST)
    assert not info.value.retryable and "no native batch API" in str(info.value)
    assert fake.calls == []


async def test_failed_create_removes_the_upload(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    fake.script(Reply(), Fail(500))
    with pytest.raises(ProviderError) as info:
        await adapter.create_batch(MODEL, [ask("x")], FAST)
    assert info.value.status == 500 and info.value.retryable
    assert [(c.method, c.path.split("/")[2]) for c in fake.calls] == [
        ("POST", "files"), ("POST", "batches"), ("DELETE", "files")]
    assert fake.files == {}


async def test_garbage_answers_are_typed(make_adapter, fake: FakeUpstream) -> None:
    adapter = make_adapter()
    fake.script(MalformedJSON())
    with pytest.raises(ProviderError) as info:
        await adapter.create_batch(MODEL, [ask("x")], FAST)
    assert "not valid JSON" in str(info.value)
    job = await adapter.create_batch(MODEL, [ask("x")], FAST)
    await until(adapter, job.job_id, "completed")
    out_id = fake.batches[job.job_id]["output_file_id"]
    fake.files[out_id] = fake.files[out_id].__class__(
        id=out_id, filename="out.jsonl", purpose="batch_output", created_at=0,
        data=b'{"custom_id": "req-0", "respo\n')
    with pytest.raises(ProviderError) as info:
        await adapter.batch_results(job.job_id, FAST, model=MODEL)
    assert "not a request output object" in str(info.value)
