"""``modelmesh batch run``: OpenAI batch JSONL in, batch output JSONL out, against fake
upstreams on 127.0.0.1; a real run interrupted with SIGINT and resumed by running the same
command again; input validation; a half-written last line."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from modelmesh_core import ModelMesh
from modelmesh_core.batchfile import BatchFileError, done_ids, read_requests, run_batch_file
from modelmesh_core.cli import main
from modelmesh_core.fakes import Fail, FakeUpstream, Reply
from modelmesh_core.testing import openai_config


def chat_line(cid: str, text: str, model: str = "chat", **body: Any) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body}}


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in items))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def config_file(tmp_path: Path, fake: FakeUpstream) -> Path:
    cfg = openai_config([("a", fake)])
    cfg["models"]["a.text-embedding-3-small"] = {"capabilities": ["text-embeddings"]}
    cfg["pools"]["vectors"] = {"capability": "text-embeddings"}
    cfg["discovery"] = {"auto_detect": False}
    cfg["plugins"] = {"entry_points": True}
    path = tmp_path / "modelmesh.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_output_shape_for_each_endpoint_and_errors(fake_upstream: Any,
                                                         tmp_path: Path) -> None:
    a = await fake_upstream(default=Reply("the answer"))
    mesh = ModelMesh(yaml.safe_load(config_file(tmp_path, a).read_text()))
    await mesh.initialize()
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [
        chat_line("chat-1", "hi", max_tokens=5),
        {"custom_id": "emb-1", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "vectors", "input": ["one", "two"]}},
        {"custom_id": "legacy-1", "method": "POST", "url": "/v1/completions",
         "body": {"model": "chat", "prompt": "Say hi"}},
        chat_line("unknown-1", "hi", model="no-such-pool"),
        chat_line("stream-1", "hi", stream=True),
    ])
    out = tmp_path / "out.jsonl"
    try:
        summary = await run_batch_file(mesh, read_requests(src), out, concurrency=2)
    finally:
        await mesh.shutdown()
    assert (summary.total, summary.succeeded, summary.failed) == (5, 3, 2)
    lines = {line["custom_id"]: line for line in read_jsonl(out)}
    assert set(lines) == {"chat-1", "emb-1", "legacy-1", "unknown-1", "stream-1"}
    for line in lines.values():
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert set(line["response"]) == {"status_code", "request_id", "body"}
    chat = lines["chat-1"]["response"]
    assert chat["status_code"] == 200
    assert chat["body"]["object"] == "chat.completion"
    assert chat["body"]["choices"][0]["message"]["content"] == "the answer"
    # the request id is the router's, so it matches logs and events
    assert chat["request_id"].startswith("batch_")
    emb = lines["emb-1"]["response"]["body"]
    assert emb["object"] == "list" and len(emb["data"]) == 2
    assert lines["legacy-1"]["response"]["body"]["object"] == "text_completion"
    unknown = lines["unknown-1"]["response"]
    assert unknown["status_code"] == 404
    assert unknown["body"]["error"]["code"] == "model_not_found"
    stream = lines["stream-1"]["response"]
    assert stream["status_code"] == 400 and stream["body"]["error"]["param"] == "stream"
    # what the upstream received for the chat line
    [sent] = [c for c in a.calls if c.path == "/v1/chat/completions"
              and c.body["messages"][0]["content"] == "hi"]
    assert sent.body["max_tokens"] == 5 and sent.body["model"] == "gpt-4o-mini"


def test_input_is_checked_line_by_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"\n".join([
        orjson.dumps(chat_line("a", "x")),
        orjson.dumps(chat_line("a", "y")),
        b"{not json",
        orjson.dumps({**chat_line("b", "x"), "url": "/v1/images"}),
        orjson.dumps({"custom_id": "c", "url": "/v1/embeddings", "body": [1]}),
    ]) + b"\n")
    with pytest.raises(BatchFileError) as err:
        read_requests(src)
    assert err.value.errors[0] == "line 2: custom_id 'a' is also on line 1"
    assert err.value.errors[1].startswith("line 3: not JSON")
    assert err.value.errors[2].startswith("line 4: url must be one of /v1/chat/completions")
    assert err.value.errors[3] == "line 5: body must be a JSON object"
    stderr = io.StringIO()
    out = io.StringIO()
    old, sys.stderr = sys.stderr, stderr
    try:
        assert main(["batch", "run", str(src), "--no-progress"], out=out) == 1
    finally:
        sys.stderr = old
    assert "line 2: custom_id 'a' is also on line 1" in stderr.getvalue()


def test_a_half_written_last_line_is_dropped(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    good = orjson.dumps({"id": "batch_req_1", "custom_id": "r1", "response": None,
                         "error": None}) + b"\n"
    out.write_bytes(good + b'{"id": "batch_req_2", "custom_id": "r2", "resp')
    assert done_ids(out) == {"r1"}
    assert out.read_bytes() == good


async def _run_cli(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modelmesh_core.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)


async def test_interrupted_run_resumes(fake_upstream: Any, tmp_path: Path) -> None:
    a = await fake_upstream(default=Reply("ok", delay=0.15))
    a.script(Fail(400))  # one request the upstream rejects: a result line, not a retry
    cfg = config_file(tmp_path, a)
    src = tmp_path / "requests.jsonl"
    items = [chat_line(f"req-{i:02d}", f"question {i}") for i in range(24)]
    write_jsonl(src, items)
    out = tmp_path / "requests.results.jsonl"
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = ("batch", "run", str(src), "-c", str(cfg), "--concurrency", "3")

    proc = await _run_cli(*cmd, env=env)
    try:
        for _ in range(1000):  # wait until some results are on disk
            await asyncio.sleep(0.02)
            if out.exists() and len(out.read_bytes().splitlines()) >= 6:
                break
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 130, stderr.decode()
    assert b"run the same command again to resume" in stderr
    first = read_jsonl(out)  # only complete lines
    done_first = [line["custom_id"] for line in first]
    assert 6 <= len(done_first) < 24
    assert len(set(done_first)) == len(done_first)
    calls_first = len(a.calls)

    proc = await _run_cli(*cmd, env=env)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert b"24 of 24 requests done" in stdout
    assert f"{len(done_first)} from an earlier run".encode() in stdout
    final = read_jsonl(out)
    assert final[:len(first)] == first  # the first run's lines are kept as they were
    ids = [line["custom_id"] for line in final]
    assert sorted(ids) == [i["custom_id"] for i in items]  # each exactly once
    # the second run sent only what was missing
    assert len(a.calls) - calls_first == 24 - len(done_first)
    statuses = sorted(line["response"]["status_code"] for line in final)
    assert statuses == [200] * 23 + [400]
    # a third run has nothing left to do
    proc = await _run_cli(*cmd, env=env)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and b"0 succeeded and 0 failed in this run" in stdout
    assert len(read_jsonl(out)) == 24
