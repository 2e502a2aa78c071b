"""The proxy's /v1/files and /v1/batches with the official OpenAI SDK: native batches, the
router-executed fallback, cancellation, size caps, validation and per-key ownership."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web

from modelmesh_core.config import load_config
from modelmesh_core.fakes import BatchRun, Fail, FakeUpstream
from modelmesh_core.mesh import ModelMesh
from modelmesh_core.server import create_app, create_runner

KEY = "sk-alpha-test-0123456789"


def mesh_config(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "providers": {"alpha": {"connector": "openai.llm.v1",
                                "config": {"base_url": fake.base_url, "api_key": KEY}}},
        "models": {"alpha.gpt-4o-mini": {}},
        "pools": {"chat": {"models": ["alpha.gpt-4o-mini"]}},
        "batch": {"poll_interval": "10ms", "concurrency": 1},
    }
    config.update(extra)
    return config


@contextlib.asynccontextmanager
async def running(config: dict[str, Any]) -> AsyncIterator[openai.AsyncOpenAI]:
    mesh = ModelMesh(config)
    app = create_app(mesh)
    runner = create_runner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = openai.AsyncOpenAI(base_url=f"http://{host}:{port}/v1", api_key="sk-caller",
                                max_retries=0)
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(api_keys={KEY}) as upstream:
        yield upstream


def jsonl(n: int, model: str = "chat", **body: Any) -> bytes:
    return "\n".join(json.dumps({
        "custom_id": f"task-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}],
                 **body}}) for i in range(n)).encode() + b"\n"


async def submit(client: openai.AsyncOpenAI, data: bytes) -> Any:
    file = await client.files.create(file=("requests.jsonl", data), purpose="batch")
    return await client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                       completion_window="24h", metadata={"job": "nightly"})


async def until_ended(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    for _ in range(500):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.01)
    raise AssertionError(f"batch {batch_id} did not end")


async def lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


def chat_calls(fake: FakeUpstream) -> int:
    return sum(1 for c in fake.calls if c.path.endswith("/chat/completions"))


async def test_native_batch_of_100_through_the_sdk(fake: FakeUpstream) -> None:
    fake.script_batch(BatchRun(items={41: Fail.context_length()}))
    async with running(mesh_config(fake)) as client:
        created = await submit(client, jsonl(100))
        assert created.object == "batch" and created.endpoint == "/v1/chat/completions"
        assert created.metadata == {"job": "nightly"}
        batch = await until_ended(client, created.id)
        assert batch.status == "completed"
        assert (batch.request_counts.total, batch.request_counts.completed,
                batch.request_counts.failed) == (100, 99, 1)
        assert batch.completed_at is not None and batch.output_file_id and batch.error_file_id

        out = await lines(client, batch.output_file_id)
        assert [x["custom_id"] for x in out] == [f"task-{i}" for i in range(100) if i != 41]
        first = out[0]
        assert first["error"] is None and first["response"]["status_code"] == 200
        body = first["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "Hello from the fake upstream!"
        assert body["model"] == "alpha.gpt-4o-mini"
        (err,) = await lines(client, batch.error_file_id)
        assert err["custom_id"] == "task-41" and err["error"] is None
        assert err["response"]["status_code"] == 400
        assert err["response"]["body"]["error"]["code"] == "context_length_exceeded"

        listed = await client.batches.list()
        assert [b.id for b in listed.data] == [created.id]
        files = await client.files.list()
        assert {f.purpose for f in files.data} == {"batch", "batch_output"}
    # the upstream ran it as one native batch, in order; nothing went through chat
    assert chat_calls(fake) == 0 and len(fake.batches) == 1
    upload = next(c for c in fake.calls if c.path == "/v1/files")
    sent = [json.loads(x) for x in upload.body["file"]["data"].splitlines()]
    assert sent[41]["body"]["messages"] == [{"role": "user", "content": "question 41"}]
    assert sent[41]["body"]["model"] == "gpt-4o-mini"


async def test_router_executed_batch_of_100_through_the_sdk(fake: FakeUpstream) -> None:
    cfg = mesh_config(fake)
    cfg["models"]["alpha.gpt-4o-mini"] = {"delivery_modes": ["sync", "streaming"]}
    fake.script(*([Fail.context_length()]))  # the first request (concurrency 1: in order)
    async with running(cfg) as client:
        created = await submit(client, jsonl(100, max_tokens=10))
        batch = await until_ended(client, created.id)
        assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == (
            "completed", 99, 1)
        (err,) = await lines(client, batch.error_file_id)
        assert err["custom_id"] == "task-0" and err["response"]["status_code"] == 400
        out = await lines(client, batch.output_file_id)
        assert len(out) == 99 and out[0]["custom_id"] == "task-1"
    assert fake.batches == {} and chat_calls(fake) == 100


async def test_cancel_through_the_sdk(fake: FakeUpstream) -> None:
    fake.script_batch(BatchRun(item_delay=0.03))
    async with running(mesh_config(fake)) as client:
        created = await submit(client, jsonl(20))
        while (await client.batches.retrieve(created.id)).request_counts.completed < 1:
            await asyncio.sleep(0.01)
        cancelling = await client.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        batch = await until_ended(client, created.id)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        done, never = batch.request_counts.completed, batch.request_counts.failed
        assert done >= 1 and done + never == 20
        errors = await lines(client, batch.error_file_id)
        assert len(errors) == never
        assert all(e["response"] is None and e["error"]["code"] == "batch_cancelled"
                   for e in errors)
        other = await submit(client, jsonl(1))
        assert (await until_ended(client, other.id)).status == "completed"
        with pytest.raises(openai.BadRequestError) as info:
            await client.batches.cancel(other.id)  # a finished batch cannot be cancelled
        assert "Cannot cancel" in str(info.value)


async def test_cancel_a_router_executed_batch(fake: FakeUpstream) -> None:
    from modelmesh_core.fakes import Reply

    cfg = mesh_config(fake)
    cfg["models"]["alpha.gpt-4o-mini"] = {"delivery_modes": ["sync"]}
    fake.default = Reply(delay=0.05)
    async with running(cfg) as client:
        created = await submit(client, jsonl(10))
        while (await client.batches.retrieve(created.id)).request_counts.completed < 1:
            await asyncio.sleep(0.01)
        batch = await client.batches.cancel(created.id)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        done = batch.request_counts.completed
        assert 1 <= done < 10 and batch.request_counts.failed == 10 - done
        errors = await lines(client, batch.error_file_id)
        assert [e["error"]["code"] for e in errors] == ["batch_cancelled"] * (10 - done)
        assert len(await lines(client, batch.output_file_id)) == done


async def test_file_size_caps(fake: FakeUpstream) -> None:
    cfg = mesh_config(fake, proxy={"limits": {"max_file_size": "2KB", "max_files_size": "3KB"}})
    async with running(cfg) as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.files.create(file=("big.jsonl", b"x" * 2500), purpose="batch")
        assert info.value.status_code == 413
        assert "max_file_size" in str(info.value)
        first = await client.files.create(file=("a.jsonl", jsonl(12)), purpose="batch")
        assert first.bytes == len(jsonl(12)) < 2000
        with pytest.raises(openai.APIStatusError) as info:
            await client.files.create(file=("b.jsonl", jsonl(12)), purpose="batch")
        assert info.value.status_code == 413 and "max_files_size" in str(info.value)
        await client.files.delete(first.id)
        await client.files.create(file=("b.jsonl", jsonl(12)), purpose="batch")


async def test_bad_input_is_the_callers_error(fake: FakeUpstream) -> None:
    async with running(mesh_config(fake)) as client:
        bad = jsonl(2) + b"{not json\n"
        with pytest.raises(openai.BadRequestError) as info:
            await submit(client, bad)
        assert "Line 3" in str(info.value)
        mixed = jsonl(2) + jsonl(1, model="other").replace(b"task-0", b"task-9")
        with pytest.raises(openai.BadRequestError) as info:
            await submit(client, mixed)
        assert "same model" in str(info.value)
        with pytest.raises(openai.BadRequestError) as info:
            await submit(client, jsonl(2) + jsonl(1))
        assert "repeats the custom_id" in str(info.value)
        with pytest.raises(openai.BadRequestError):
            await client.files.create(file=("x.jsonl", jsonl(1)), purpose="fine-tune")
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(input_file_id="file-nope",
                                        endpoint="/v1/chat/completions",
                                        completion_window="24h")
        with pytest.raises(openai.NotFoundError):
            await submit(client, jsonl(2, model="no-such-pool"))
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(input_file_id="file-nope", endpoint="/v1/embeddings",
                                        completion_window="24h")
    assert fake.batches == {} and chat_calls(fake) == 0


async def test_files_and_batches_belong_to_their_key(fake: FakeUpstream) -> None:
    cfg = mesh_config(fake, proxy={"auth": {"keys": [{"key": "sk-one-0000000000", "name": "one"},
                                                     {"key": "sk-two-0000000000", "name": "two"}]}})
    async with running(cfg) as client:
        one = client.with_options(api_key="sk-one-0000000000")
        two = client.with_options(api_key="sk-two-0000000000")
        created = await submit(one, jsonl(3))
        assert (await until_ended(one, created.id)).status == "completed"
        with pytest.raises(openai.NotFoundError):
            await two.batches.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await two.files.content(created.input_file_id)
        assert (await two.files.list()).data == [] and (await two.batches.list()).data == []
        with pytest.raises(openai.AuthenticationError):
            await client.files.list()


def test_limits_are_validated() -> None:
    from modelmesh_core import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config({"proxy": {"limits": {"max_file_size": 0}}})
    assert "proxy.limits.max_file_size: must be at least 1" in str(info.value)
