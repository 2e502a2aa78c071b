"""OpenAI Files and Batch endpoints of :class:`~modelmesh_core.fakes.FakeUpstream`.

The fake speaks the documented wire shapes:

* ``POST /v1/files`` (``multipart/form-data``: ``purpose``, ``file``) → a ``file`` object;
  ``GET /v1/files`` (``?purpose=``), ``GET /v1/files/{id}``, ``DELETE /v1/files/{id}``,
  ``GET /v1/files/{id}/content`` (the raw bytes);
* ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``,
  ``metadata``) → a ``batch`` object in status ``validating``; ``GET /v1/batches``
  (``limit``, ``after``), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

Batches run asynchronously on the fake's loop: ``validating`` (the input file is checked
line by line: JSON, ``custom_id`` unique, ``method`` ``POST``, ``url`` equal to the batch's
endpoint, one ``body.model`` for the whole file; a bad file ends ``failed`` with
``errors.data``) → ``in_progress`` (each line answered, ``request_counts`` moving) →
``finalizing`` → ``completed`` with an output file (the ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}`` lines of successful requests) and an error
file (the same shape with ``status_code`` ≥ 400 and an OpenAI error body, or ``"response":
null`` and ``error.code`` ``batch_expired`` / ``batch_cancelled`` for requests that never
ran). ``cancel`` moves a running batch to ``cancelling`` then ``cancelled`` with partial
results; a batch whose completion window passes ends ``expired``.

How each batch runs is scripted with :class:`BatchRun` records (``FakeUpstream.script_batch``,
one per created batch, else ``FakeUpstream.batch_default``); the endpoints themselves take
one ordinary behaviour each from ``FakeUpstream.script`` (``Fail``, ``Silent``,
``MalformedJSON``, ``WrongContentType``; ``Reply.delay``), like every other endpoint.
Only ``/v1/chat/completions`` batches are supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from attrs import define, field, frozen

if TYPE_CHECKING:
    from .fakes import Behaviour, Fail, RecordedCall

__all__ = ["BATCH_ENDPOINT", "BatchRun", "FakeFile", "FilesBatchesMixin"]

BATCH_ENDPOINT = "/v1/chat/completions"
"""The one batch endpoint the fake answers."""

_WINDOW = 24 * 3600
_FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
_EXPIRED = {
    "code": "batch_expired",
    "message": "This request could not be executed before the completion window expired.",
}
_CANCELLED = {
    "code": "batch_cancelled",
    "message": "This request was not executed because the batch was cancelled.",
}


def _items(value: Mapping[str | int, Behaviour] | None) -> Mapping[str | int, Behaviour]:
    return dict(value or {})


@frozen
class BatchRun:
    """How the fake runs one batch.

    Attributes:
        items: per-request behaviours, keyed by ``custom_id`` or by 0-based line index: a
            ``Reply`` answers (its ``content``, ``usage``, ``tool_calls``, …), a ``Fail`` puts
            the request in the error file with its status and OpenAI error body; any other
            behaviour counts as a ``Fail(500)``. Unlisted requests get the fake's default
            ``Reply``.
        step: seconds spent in ``validating``, in ``finalizing`` and in ``cancelling``.
        item_delay: seconds spent on each request while ``in_progress``.
        expire_after: when set, the completion window passes after this many requests were
            answered: the batch ends ``expired`` and the rest are ``batch_expired`` errors.
    """

    items: Mapping[str | int, Behaviour] = field(factory=dict, converter=_items)
    step: float = 0.0
    item_delay: float = 0.0
    expire_after: int | None = None


@frozen(kw_only=True)
class FakeFile:
    """A file held by the fake: its ``file`` object fields and its bytes."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        """The ``file`` object (``FileObject`` in the OpenAI SDK)."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "expires_at": self.created_at + 30 * 86400 if self.purpose == "batch" else None,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@define
class _Running:
    """A batch being processed: its ``batch`` object and the state behind it."""

    obj: dict[str, Any]
    run: BatchRun
    output: list[bytes] = field(factory=list)
    errors: list[bytes] = field(factory=list)
    cancel: asyncio.Event = field(factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def _error_body(message: str, *, type: str = "invalid_request_error",
                param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class FilesBatchesMixin:
    """The Files and Batch endpoints (mixed into :class:`~modelmesh_core.fakes.FakeUpstream`).

    Attributes:
        files: id → :class:`FakeFile` (uploads and batch output / error files).
        batches: id → the ``batch`` object as last reported (a live dict).
        batch_default: the :class:`BatchRun` of a batch when none is scripted.
    """

    if TYPE_CHECKING:
        calls: list[RecordedCall]
        default: Behaviour
        _closing: asyncio.Event | None

        def _next(self) -> tuple[Behaviour, bool]: ...
        def _resolve(self, behaviour: Behaviour) -> Behaviour: ...
        def _auth_failure(self, request: web.Request) -> Fail | None: ...
        def _rate_headers(self, tokens: int) -> dict[str, str]: ...
        def _error(self, fail: Fail, headers: dict[str, str]) -> web.Response: ...
        async def _pause(self, seconds: float) -> None: ...
        async def _common(
            self, request: web.Request, behaviour: Behaviour, headers: dict[str, str]
        ) -> web.StreamResponse | None: ...

    def _init_batches(self) -> None:
        self.files: dict[str, FakeFile] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_default = BatchRun()
        self._batch_queue: deque[BatchRun] = deque()
        self._running: dict[str, _Running] = {}
        self._file_ids = itertools.count(1)

    def script_batch(self, *runs: BatchRun) -> None:
        """Queue :class:`BatchRun` records; each created batch takes one, in order."""
        self._batch_queue.extend(runs)

    def _reset_batches(self) -> None:
        for running in self._running.values():
            if running.task is not None:
                running.task.cancel()
        self.files.clear()
        self.batches.clear()
        self._running.clear()
        self._batch_queue.clear()
        self.batch_default = BatchRun()

    def _add_batch_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self._file_upload)
        app.router.add_get("/v1/files", self._file_list)
        app.router.add_get("/v1/files/{id}", self._file_get)
        app.router.add_delete("/v1/files/{id}", self._file_delete)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._batch_create)
        app.router.add_get("/v1/batches", self._batch_list)
        app.router.add_get("/v1/batches/{id}", self._batch_get)
        app.router.add_post("/v1/batches/{id}/cancel", self._batch_cancel)
        app.on_shutdown.append(self._stop_batches)

    async def _stop_batches(self, app: web.Application) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ dispatch

    async def _admit(
        self, request: web.Request, body: Any
    ) -> tuple[Behaviour, dict[str, str]] | web.StreamResponse:
        """Authenticate, take a behaviour, record the call; a response when that answers."""
        from .fakes import Fail, RecordedCall, Reply

        failure = self._auth_failure(request)
        if failure is not None:
            behaviour: Behaviour = failure
            scripted = False
        else:
            picked, scripted = self._next()
            behaviour = self._resolve(picked)
        self.calls.append(
            RecordedCall(
                path=request.path,
                method=request.method,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
                time=time.monotonic(),
                behaviour=behaviour,
                scripted=scripted,
            )
        )
        headers = self._rate_headers(0)
        headers["x-request-id"] = f"req_fake{next(self._file_ids):012d}"
        early = await self._common(request, behaviour, headers)
        if early is not None:
            return early
        if not isinstance(behaviour, Reply | Fail):
            # Stream faults mean nothing to these endpoints: a server error.
            return self._error(Fail(500), headers)
        if isinstance(behaviour, Reply):
            await self._pause(behaviour.delay)
        return behaviour, headers

    def _json(self, data: Any, headers: dict[str, str], status: int = 200) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(data),
                            content_type="application/json", headers=headers)

    def _bad(self, status: int, message: str, headers: dict[str, str], *,
             param: str | None = None, code: str | None = None) -> web.Response:
        return self._json(_error_body(message, param=param, code=code), headers, status)

    # ------------------------------------------------------------------ files

    async def _file_upload(self, request: web.Request) -> web.StreamResponse:
        fields: dict[str, Any] = {}
        data: bytes | None = None
        filename = ""
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            reader = await request.multipart()
            while True:
                part: Any = await reader.next()
                if part is None:
                    break
                if part.name == "file":
                    filename = part.filename or "upload"
                    data = bytes(await part.read())
                elif part.name:
                    fields[part.name] = await part.text()
        else:
            await request.read()
        recorded: dict[str, Any] = dict(fields)
        if data is not None:
            recorded["file"] = {"filename": filename, "data": data.decode("utf-8", "replace")}
        admitted = await self._admit(request, recorded)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        purpose = fields.get("purpose")
        if not ctype.startswith("multipart/form-data"):
            return self._bad(400, "The request must be multipart/form-data.", headers)
        if data is None:
            return self._bad(400, "Missing required parameter: 'file'.", headers, param="file")
        if purpose not in _FILE_PURPOSES:
            return self._bad(400, f"Invalid value for 'purpose': {purpose!r}.", headers,
                             param="purpose")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            return self._bad(400, "Invalid file format for Batch API. Must be .jsonl", headers,
                             param="file")
        file = FakeFile(id=f"file-fake{next(self._file_ids):012d}", filename=filename,
                        purpose=purpose, data=data, created_at=int(time.time()))
        self.files[file.id] = file
        return self._json(file.object(), headers)

    def _store(self, filename: str, purpose: str, lines: list[bytes]) -> str:
        file = FakeFile(id=f"file-fake{next(self._file_ids):012d}", filename=filename,
                        purpose=purpose, data=b"".join(line + b"\n" for line in lines),
                        created_at=int(time.time()))
        self.files[file.id] = file
        return file.id

    async def _file_list(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admit(request, None)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        purpose = request.query.get("purpose")
        data = [f.object() for f in reversed(self.files.values())
                if purpose is None or f.purpose == purpose]
        return self._json({"object": "list", "data": data,
                           "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None,
                           "has_more": False}, headers)

    def _no_file(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        return self._bad(404, f"No such File object: {request.match_info['id']}", headers,
                         param="id")

    async def _file_get(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admit(request, None)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        file = self.files.get(request.match_info["id"])
        if file is None:
            return self._no_file(request, headers)
        return self._json(file.object(), headers)

    async def _file_delete(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admit(request, None)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        file = self.files.pop(request.match_info["id"], None)
        if file is None:
            return self._no_file(request, headers)
        return self._json({"id": file.id, "object": "file", "deleted": True}, headers)

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admit(request, None)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        file = self.files.get(request.match_info["id"])
        if file is None:
            return self._no_file(request, headers)
        return web.Response(body=file.data, content_type="application/octet-stream",
                            headers=headers)

    # ------------------------------------------------------------------ batches

    async def _batch_create(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        admitted = await self._admit(request, body)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        if not isinstance(body, dict):
            return self._bad(400, "We could not parse the JSON body of your request.", headers)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return self._bad(400, f"Missing required parameter: '{name}'.", headers,
                                 param=name)
        if body["endpoint"] != BATCH_ENDPOINT:
            return self._bad(400, f"Invalid value for 'endpoint': {body['endpoint']!r}; this "
                             f"fake supports {BATCH_ENDPOINT}.", headers, param="endpoint")
        if body["completion_window"] != "24h":
            return self._bad(400, "Invalid value for 'completion_window': only '24h' is "
                             "supported.", headers, param="completion_window")
        file = self.files.get(body["input_file_id"])
        if file is None:
            return self._bad(404, f"No such File object: {body['input_file_id']}", headers,
                             param="input_file_id")
        if file.purpose != "batch":
            return self._bad(400, "The input file must be uploaded with purpose 'batch'.",
                             headers, param="input_file_id")
        batch_id = f"batch_fake{next(self._file_ids):012d}"
        obj: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": file.id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "in_progress_at": None,
            "expires_at": None,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        run = self._batch_queue.popleft() if self._batch_queue else self.batch_default
        running = _Running(obj=obj, run=run)
        self.batches[batch_id] = obj
        self._running[batch_id] = running
        answer = self._json(obj, headers)
        running.task = asyncio.get_running_loop().create_task(self._process(running, file.data))
        return answer

    async def _batch_list(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admit(request, None)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        try:
            limit = max(1, min(int(request.query.get("limit", "20")), 100))
        except ValueError:
            return self._bad(400, "Invalid value for 'limit'.", headers, param="limit")
        ordered = list(reversed(self.batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [b["id"] for b in ordered]
            ordered = ordered[ids.index(after) + 1:] if after in ids else []
        page = ordered[:limit]
        return self._json({"object": "list", "data": page,
                           "first_id": page[0]["id"] if page else None,
                           "last_id": page[-1]["id"] if page else None,
                           "has_more": len(ordered) > limit}, headers)

    def _no_batch(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        return self._bad(404, f"No batch found with id '{request.match_info['id']}'.", headers,
                         param="batch_id")

    async def _batch_get(self, request: web.Request) -> web.StreamResponse:
        admitted = await self._admit(request, None)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        obj = self.batches.get(request.match_info["id"])
        if obj is None:
            return self._no_batch(request, headers)
        return self._json(obj, headers)

    async def _batch_cancel(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        admitted = await self._admit(request, None)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        _, headers = admitted
        running = self._running.get(request.match_info["id"])
        if running is None:
            return self._no_batch(request, headers)
        obj = running.obj
        if obj["status"] in ("validating", "in_progress"):
            obj["status"] = "cancelling"
            obj["cancelling_at"] = int(time.time())
            running.cancel.set()
        elif obj["status"] not in ("cancelling", "cancelled"):
            return self._bad(400, f"Cannot cancel a batch with status '{obj['status']}'.",
                             headers)
        return self._json(obj, headers)

    # ------------------------------------------------------------------ processing

    async def _wait(self, running: _Running, seconds: float) -> bool:
        """Sleep ``seconds`` unless the batch is cancelled first; True when cancelled."""
        if running.cancel.is_set():
            return True
        if seconds <= 0:
            await asyncio.sleep(0)
            return running.cancel.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await running.cancel.wait()
        return running.cancel.is_set()

    async def _process(self, running: _Running, data: bytes) -> None:
        obj, run = running.obj, running.run
        lines, problems = _parse_input(data, obj["endpoint"])
        counts = obj["request_counts"]
        if await self._wait(running, run.step):
            counts["total"] = len(lines)
            await self._end_cancelled(running, [line["custom_id"] for line in lines])
            return
        now = int(time.time())
        if problems:
            obj.update(status="failed", failed_at=now,
                       errors={"object": "list", "data": problems})
            return
        obj.update(status="in_progress", in_progress_at=now,
                   expires_at=obj["created_at"] + _WINDOW)
        counts["total"] = len(lines)
        for index, line in enumerate(lines):
            if run.expire_after is not None and index >= run.expire_after:
                for rest in lines[index:]:
                    running.errors.append(self._never_ran(rest["custom_id"], _EXPIRED))
                    counts["failed"] += 1
                self._write_files(running)
                obj.update(status="expired", expired_at=int(time.time()))
                return
            if await self._wait(running, run.item_delay):
                await self._end_cancelled(running, [rest["custom_id"] for rest in lines[index:]])
                return
            ok, out = self._answer(run, index, line)
            (running.output if ok else running.errors).append(out)
            counts["completed" if ok else "failed"] += 1
        obj.update(status="finalizing", finalizing_at=int(time.time()))
        await asyncio.sleep(run.step)
        self._write_files(running)
        obj.update(status="completed", completed_at=int(time.time()))

    async def _end_cancelled(self, running: _Running, rest: list[str]) -> None:
        for custom_id in rest:
            running.errors.append(self._never_ran(custom_id, _CANCELLED))
            running.obj["request_counts"]["failed"] += 1
        await asyncio.sleep(running.run.step)
        self._write_files(running)
        running.obj.update(status="cancelled", cancelled_at=int(time.time()))

    def _write_files(self, running: _Running) -> None:
        obj = running.obj
        if running.output:
            obj["output_file_id"] = self._store(f"{obj['id']}_output.jsonl", "batch_output",
                                                running.output)
        if running.errors:
            obj["error_file_id"] = self._store(f"{obj['id']}_error.jsonl", "batch_output",
                                               running.errors)

    def _never_ran(self, custom_id: str, error: Mapping[str, str]) -> bytes:
        return orjson.dumps({"id": f"batch_req_fake{next(self._file_ids):012d}",
                             "custom_id": custom_id, "response": None, "error": dict(error)})

    def _answer(self, run: BatchRun, index: int, line: Mapping[str, Any]) -> tuple[bool, bytes]:
        from .fakes import Fail, Reply, _Completion

        custom_id = line["custom_id"]
        behaviour = run.items.get(custom_id, run.items.get(index))
        if behaviour is None:
            behaviour = self.default if isinstance(self.default, Reply) else Reply()
        else:
            behaviour = self._resolve(behaviour)
        number = next(self._file_ids)
        if isinstance(behaviour, Reply):
            status = 200
            body = _Completion(self, line["body"], behaviour, number).object()  # type: ignore[arg-type]
        else:
            fail = behaviour if isinstance(behaviour, Fail) else Fail(500)
            status, body = fail.status, fail.body()
        out = {
            "id": f"batch_req_fake{number:012d}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": f"req_fake{number:012d}",
                         "body": body},
            "error": None,
        }
        return status == 200, orjson.dumps(out)


def _parse_input(data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The request lines of a batch input file and the validation problems found."""
    lines: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def problem(number: int, code: str, message: str, param: str | None = None) -> None:
        problems.append({"code": code, "message": message, "param": param, "line": number})

    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            problem(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(item, dict):
            problem(number, "invalid_request", "Each line must be a JSON object.")
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            problem(number, "missing_required_parameter", "Missing 'custom_id'.", "custom_id")
            continue
        if custom_id in seen:
            problem(number, "duplicate_custom_id",
                    f"The custom_id {custom_id!r} is used more than once.", "custom_id")
            continue
        seen.add(custom_id)
        if item.get("method") != "POST":
            problem(number, "invalid_method", "Only the POST method is supported.", "method")
            continue
        if item.get("url") != endpoint:
            problem(number, "mismatched_endpoint",
                    f"The url {item.get('url')!r} does not match the batch endpoint "
                    f"{endpoint!r}.", "url")
            continue
        body = item.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            problem(number, "missing_required_parameter", "Missing 'body.model'.", "body.model")
            continue
        models.add(body["model"])
        if len(models) > 1:
            problem(number, "mismatched_model",
                    "All requests in a batch must use the same model.", "body.model")
            continue
        lines.append(item)
    if not lines and not problems:
        problems.append({"code": "empty_file", "message": "The input file is empty.",
                         "param": None, "line": None})
    return lines, problems

