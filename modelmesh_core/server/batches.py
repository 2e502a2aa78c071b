"""``/v1/files`` and ``/v1/batches``: OpenAI's Batch API in front of ``Router.batch``.

Clients that batch through an OpenAI SDK upload a JSONL file (``POST /v1/files``,
``purpose=batch``; one ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body"}`` line per request), create a batch over it (``POST /v1/batches``), poll it
(``GET /v1/batches/{id}``) and download its output and error files
(``GET /v1/files/{id}/content``). The proxy validates the whole file when the batch is
created (a bad line is a 400 naming the line), routes the batch's ``model`` (one for the
whole file, as OpenAI requires) through ``Router.batch`` — the provider's own batch API
where the chosen model has one, else executed by the router — and writes the output and
error files, in the documented line shapes, once the batch has ended.

Files live in this process's memory: one upload may be at most
``proxy.limits.max_file_size`` bytes and all stored files together at most
``proxy.limits.max_files_size`` (413 beyond either). Files and batches belong to the key that
created them (other keys get 404). What a batch cost is charged to that key when it ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from attrs import define, field

from ..errors import BatchRequestNotRunError
from ..limits import clip
from ..types import BatchJob, CompletionRequest, CompletionResponse
from ..wire import WireError, completion_to_dict, dumps, error_for_exception, loads
from ..wire import parse_chat_request as parse_chat
from .errors import REQUEST_ID

if TYPE_CHECKING:
    from .auth import KeyState
    from .routes import ProxyServer

__all__ = ["BATCH_ENDPOINT", "BatchesAPI", "StoredFile"]

BATCH_ENDPOINT = "/v1/chat/completions"
"""The one endpoint batches may target."""

MAX_REQUESTS = 50_000
"""Requests per batch (OpenAI's limit)."""

_JSON = "application/json"
_WINDOW = 24 * 3600
_CHUNK = 1 << 16


@define(kw_only=True)
class StoredFile:
    """A file held by the proxy."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    owner: str | None

    def object(self) -> dict[str, Any]:
        """The ``file`` object."""
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at,
                "expires_at": self.created_at + 30 * 86400 if self.purpose == "batch" else None,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "status_details": None}


@define(kw_only=True)
class _Batch:
    id: str
    job_id: str
    owner: str | None
    key: KeyState | None
    model: str
    input_file_id: str
    created_at: int
    metadata: Any
    custom_ids: list[str]
    times: dict[str, int | None] = field(factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    settled: bool = False


def _not_found(kind: str, ident: str) -> WireError:
    return WireError(f"No such {kind}: {clip(ident)}", status=404, code="not_found",
                     param="id")


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> WireError:
    return WireError(message, status=400, code=code, param=param)


class BatchesAPI:
    """The Files and Batch handlers of one :class:`~modelmesh_core.server.routes.ProxyServer`."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, _Batch] = {}
        self.stored = 0

    def add_routes(self, app: web.Application) -> None:
        """Register the ``/v1/files`` and ``/v1/batches`` routes on ``app``."""
        r = app.router
        r.add_post("/v1/files", self.upload)
        r.add_get("/v1/files", self.list_files, allow_head=False)
        r.add_get("/v1/files/{id}", self.get_file, allow_head=False)
        r.add_delete("/v1/files/{id}", self.delete_file)
        r.add_get("/v1/files/{id}/content", self.file_content, allow_head=False)
        r.add_post("/v1/batches", self.create)
        r.add_get("/v1/batches", self.list_batches, allow_head=False)
        r.add_get("/v1/batches/{id}", self.retrieve, allow_head=False)
        r.add_post("/v1/batches/{id}/cancel", self.cancel)

    # ----------------------------------------------------------------- helpers

    async def _key(self, request: web.Request) -> KeyState | None:
        key = self.server.auth.authenticate(request)
        if key is not None:
            await self.server.admit_key(key)
        return key

    @staticmethod
    def _owner(key: KeyState | None) -> str | None:
        return key.name if key is not None else None

    def _file(self, request: web.Request, key: KeyState | None) -> StoredFile:
        ident = request.match_info["id"]
        file = self.files.get(ident)
        if file is None or file.owner != self._owner(key):
            raise _not_found("File object", ident)
        return file

    def _store(self, file: StoredFile) -> None:
        self.files[file.id] = file
        self.stored += len(file.data)

    @staticmethod
    def _json(data: Any) -> web.Response:
        return web.Response(body=dumps(data), content_type=_JSON)

    @property
    def _limits(self) -> tuple[int, int]:
        limits = self.server.config.limits
        return int(limits.max_file_size), int(limits.max_files_size)

    def _too_large(self, size: int | None = None) -> WireError:
        per_file, total = self._limits
        if size is not None and size > per_file:
            return WireError(f"The file is larger than the limit of {per_file} bytes "
                             "(proxy.limits.max_file_size).", status=413,
                             code="file_too_large")
        return WireError(f"The proxy already stores {self.stored} bytes of files; the limit "
                         f"is {total} bytes (proxy.limits.max_files_size). Delete files "
                         "(DELETE /v1/files/{id}) and retry.", status=413,
                         code="file_storage_full")

    # ----------------------------------------------------------------- files

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/files`` (``multipart/form-data``: ``purpose``, ``file``)."""
        key = await self._key(request)
        per_file, total = self._limits
        length = request.content_length
        if length is not None and length > per_file + _CHUNK:
            raise self._too_large(length)
        if not request.headers.get("Content-Type", "").startswith("multipart/form-data"):
            raise _bad("Upload a file as multipart/form-data with the fields 'purpose' and "
                       "'file'.", "file", "invalid_body")
        try:
            async with asyncio.timeout(self.server.body_timeout):
                purpose, filename, data = await self._read_form(request, per_file)
        except TimeoutError:
            raise WireError(f"The upload did not arrive within {self.server.body_timeout:g}s "
                            "(proxy.limits.body_timeout).", status=408,
                            code="request_timeout") from None
        except (ValueError, AssertionError) as exc:
            raise _bad(f"The multipart body could not be read ({clip(str(exc))}).", "file",
                       "invalid_body") from None
        if data is None:
            raise _bad("Missing required parameter: 'file'.", "file", "missing_parameter")
        if purpose != "batch":
            raise _bad(f"Invalid value for 'purpose': {clip(str(purpose))!r}; this proxy "
                       "stores files for the Batch API only ('batch').", "purpose")
        if not filename.endswith(".jsonl"):
            raise _bad("Invalid file format for Batch API. Must be .jsonl", "file")
        if self.stored + len(data) > total:
            raise self._too_large()
        file = StoredFile(id="file-" + os.urandom(12).hex(), filename=filename[:256],
                          purpose="batch", data=data, created_at=int(time.time()),
                          owner=self._owner(key))
        self._store(file)
        return self._json(file.object())

    async def _read_form(self, request: web.Request, limit: int
                         ) -> tuple[str | None, str, bytes | None]:
        reader = await request.multipart()
        purpose: str | None = None
        filename = ""
        data: bytes | None = None
        while True:
            part: Any = await reader.next()
            if part is None:
                break
            if part.name == "file" and data is None:
                filename = part.filename or ""
                buf = bytearray()
                while chunk := await part.read_chunk(_CHUNK):
                    buf += chunk
                    if len(buf) > limit:
                        raise self._too_large(len(buf))
                data = bytes(buf)
            elif part.name == "purpose":
                raw = await part.read_chunk(256)
                purpose = bytes(raw).decode("utf-8", "replace").strip()
                await part.release()
            else:
                await part.release()
        return purpose, filename, data

    async def list_files(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/files`` (``?purpose=``), newest first."""
        owner = self._owner(await self._key(request))
        purpose = request.query.get("purpose")
        data = [f.object() for f in reversed(self.files.values())
                if f.owner == owner and (purpose is None or f.purpose == purpose)]
        return self._json({"object": "list", "data": data,
                           "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None, "has_more": False})

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/files/{id}``."""
        return self._json(self._file(request, await self._key(request)).object())

    async def delete_file(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/files/{id}``."""
        file = self._file(request, await self._key(request))
        del self.files[file.id]
        self.stored -= len(file.data)
        return self._json({"id": file.id, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/files/{id}/content``: the bytes."""
        file = self._file(request, await self._key(request))
        return web.Response(body=file.data, content_type="application/octet-stream")

    # ----------------------------------------------------------------- batches

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/batches``: validate the input file, route its model, submit."""
        key = await self._key(request)
        body = await self.server.read_json(request)
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.", None, "invalid_body")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                raise _bad(f"Missing required parameter: '{name}'.", name, "missing_parameter")
        if body["endpoint"] != BATCH_ENDPOINT:
            raise _bad(f"Invalid value for 'endpoint': {clip(body['endpoint'])!r}; this proxy "
                       f"batches {BATCH_ENDPOINT} only.", "endpoint")
        if body["completion_window"] != "24h":
            raise _bad("Invalid value for 'completion_window': only '24h' is supported.",
                       "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not (
                isinstance(metadata, dict) and len(metadata) <= 16
                and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                        and len(v) <= 512 for k, v in metadata.items())):
            raise _bad("'metadata' must map at most 16 keys (≤ 64 characters) to strings "
                       "(≤ 512 characters).", "metadata")
        owner = self._owner(key)
        file = self.files.get(body["input_file_id"])
        if file is None or file.owner != owner:
            raise _not_found("File object", body["input_file_id"])
        if file.purpose != "batch":
            raise _bad("The input file must be uploaded with purpose 'batch'.",
                       "input_file_id")
        model, custom_ids, requests = _parse_input(file.data)
        options = self.server.options(request, key)
        if key is not None and key.pools is not None:
            await self.server.authorize_pool(key, model, options)
        job = await self.server._router().batch(model, requests, options)
        now = int(time.time())
        batch = _Batch(id="batch_" + os.urandom(12).hex(), job_id=job.job_id, owner=owner,
                       key=key, model=model, input_file_id=file.id, created_at=now,
                       metadata=metadata, custom_ids=custom_ids,
                       times={"in_progress_at": None if job.status == "validating" else now})
        self.batches[batch.id] = batch
        return self._json(self._object(batch, request))

    def _batch(self, request: web.Request, key: KeyState | None) -> _Batch:
        ident = request.match_info["id"]
        batch = self.batches.get(ident)
        if batch is None or batch.owner != self._owner(key):
            raise _not_found("batch", ident)
        return batch

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/batches/{id}``."""
        return self._json(self._object(self._batch(request, await self._key(request)), request))

    async def list_batches(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/batches`` (``limit`` 1 to 100, default 20; ``after``), newest first."""
        owner = self._owner(await self._key(request))
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            raise _bad("'limit' must be an integer.", "limit") from None
        if not 1 <= limit <= 100:
            raise _bad("'limit' must be between 1 and 100.", "limit")
        mine = [b for b in reversed(self.batches.values()) if b.owner == owner]
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in mine]
            mine = mine[ids.index(after) + 1:] if after in ids else []
        page = mine[:limit]
        data = [self._object(b, request) for b in page]
        return self._json({"object": "list", "data": data,
                           "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None,
                           "has_more": len(mine) > limit})

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/batches/{id}/cancel``."""
        batch = self._batch(request, await self._key(request))
        router = self.server._router()
        job = router.get_batch(batch.job_id)
        if job.done:
            if job.status != "cancelled":
                raise _bad(f"Cannot cancel a batch with status '{self._status(job)}'.",
                           None, "invalid_state")
        else:
            batch.times.setdefault("cancelling_at", int(time.time()))
            await router.cancel_batch(batch.job_id)
        return self._json(self._object(batch, request))

    # ----------------------------------------------------------------- the batch object

    @staticmethod
    def _status(job: BatchJob) -> str:
        # Requests that failed one by one are a completed batch with an error file.
        return "completed" if job.status == "failed" else job.status

    def _object(self, batch: _Batch, request: web.Request) -> dict[str, Any]:
        job = self.server._router().get_batch(batch.job_id)
        status = self._status(job)
        times = batch.times
        if status not in ("validating",) and times.get("in_progress_at") is None:
            times["in_progress_at"] = int(time.time())
        if job.done and not batch.settled:
            self._settle(batch, job, request)
        # Once ended, every request that did not succeed counts as failed (cancelled and
        # expired ones included: they are in the error file).
        failed = job.request_count - job.completed if job.done else job.failed
        counts = ({"total": 0, "completed": 0, "failed": 0} if status == "validating" else
                  {"total": job.request_count, "completed": job.completed, "failed": failed})
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": BATCH_ENDPOINT,
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "in_progress_at": times.get("in_progress_at"),
            "expires_at": batch.created_at + _WINDOW,
            "finalizing_at": times.get("finalizing_at"),
            "completed_at": times.get("completed_at"),
            "failed_at": None,
            "expired_at": times.get("expired_at"),
            "cancelling_at": times.get("cancelling_at"),
            "cancelled_at": times.get("cancelled_at"),
            "request_counts": counts,
            "metadata": batch.metadata,
            "model": batch.model,
        }

    def _settle(self, batch: _Batch, job: BatchJob, request: web.Request) -> None:
        """Write the output and error files of an ended batch, once; charge the key."""
        output: list[bytes] = []
        errors: list[bytes] = []
        cost = 0.0
        rid = request.get(REQUEST_ID, "")
        for custom_id, result in zip(batch.custom_ids, job.results, strict=False):
            line_id = "batch_req_" + os.urandom(12).hex()
            if isinstance(result, CompletionResponse):
                spent = result.metadata.get("cost")
                if isinstance(spent, int | float):
                    cost += float(spent)
                output.append(dumps({"id": line_id, "custom_id": custom_id, "response": {
                    "status_code": 200,
                    "request_id": str(result.metadata.get("request_id") or rid),
                    "body": completion_to_dict(result)}, "error": None}))
            elif result is None or isinstance(result, BatchRequestNotRunError):
                code = result.code if result is not None else "batch_cancelled"
                message = ("This request could not be executed before the completion window "
                           "expired." if code == "batch_expired" else
                           "This request was not executed because the batch was cancelled.")
                errors.append(dumps({"id": line_id, "custom_id": custom_id, "response": None,
                                     "error": {"code": code, "message": message}}))
            else:
                status, body, _ = error_for_exception(result)
                errors.append(dumps({"id": line_id, "custom_id": custom_id, "response": {
                    "status_code": status, "request_id": rid, "body": body}, "error": None}))
        now = int(time.time())
        for lines, name, attr in ((output, "output", "output_file_id"),
                                  (errors, "error", "error_file_id")):
            if lines:
                file = StoredFile(id="file-" + os.urandom(12).hex(),
                                  filename=f"{batch.id}_{name}.jsonl", purpose="batch_output",
                                  data=b"\n".join(lines) + b"\n", created_at=now,
                                  owner=batch.owner)
                self._store(file)
                setattr(batch, attr, file.id)
        stamp = {"cancelled": "cancelled_at", "expired": "expired_at"}.get(job.status,
                                                                          "completed_at")
        batch.times.setdefault("finalizing_at", now)
        batch.times[stamp] = now
        self.server._charge(batch.key, cost)
        batch.settled = True


def _parse_input(data: bytes) -> tuple[str, list[str], list[CompletionRequest]]:
    """``(model, custom ids, requests)`` of a batch input file; 400 naming the first bad
    line."""
    model: str | None = None
    custom_ids: list[str] = []
    requests: list[CompletionRequest] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"Line {number} of the input file"
        try:
            item = loads(raw)
        except ValueError:
            raise _bad(f"{where} is not valid JSON.", "input_file_id",
                       "invalid_json_line") from None
        if not isinstance(item, Mapping):
            raise _bad(f"{where} is not a JSON object.", "input_file_id")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
            raise _bad(f"{where} needs a 'custom_id' string.", "input_file_id")
        if custom_id in seen:
            raise _bad(f"{where} repeats the custom_id {clip(custom_id)!r}; each must be "
                       "unique.", "input_file_id", "duplicate_custom_id")
        seen.add(custom_id)
        if item.get("method") != "POST" or item.get("url") != BATCH_ENDPOINT:
            raise _bad(f"{where} must have \"method\": \"POST\" and \"url\": "
                       f"\"{BATCH_ENDPOINT}\" (the batch's endpoint).", "input_file_id",
                       "mismatched_endpoint")
        try:
            name, creq = parse_chat(item.get("body"))
        except WireError as exc:
            raise _bad(f"{where}: {exc.message}", "input_file_id") from None
        if creq.stream:
            raise _bad(f"{where} asks for a stream; batch requests cannot stream.",
                       "input_file_id")
        if model is None:
            model = name
        elif name != model:
            raise _bad(f"{where} uses model {clip(name)!r} but the batch uses {clip(model)!r}; "
                       "all requests of a batch must use the same model.", "input_file_id",
                       "mismatched_model")
        custom_ids.append(custom_id)
        requests.append(creq)
        if len(requests) > MAX_REQUESTS:
            raise _bad(f"A batch holds at most {MAX_REQUESTS} requests.", "input_file_id")
    if model is None:
        raise _bad("The input file holds no requests.", "input_file_id", "empty_file")
    return model, custom_ids, requests
