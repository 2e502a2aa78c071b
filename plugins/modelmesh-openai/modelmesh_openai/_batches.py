"""OpenAI Batch API (``/files`` + ``/batches``) as adapter methods (``BatchCapable``).

* ``await adapter.create_batch(model, requests, timeouts)`` uploads the requests as a JSONL
  file (``POST /files``, ``multipart/form-data``, ``purpose=batch``; one line
  ``{"custom_id": "req-<index>", "method": "POST", "url": "/v1/chat/completions", "body":
  <the chat completion body complete() would send>}`` per request) and creates the batch
  (``POST /batches`` with ``input_file_id``, ``endpoint``, ``completion_window: "24h"``) →
  ``BatchJob`` whose ``job_id`` is the ``batch_…`` id;
* ``await adapter.get_batch(job_id, timeouts)`` (``GET /batches/{id}``) → status and counts;
* ``await adapter.batch_results(job_id, timeouts, model=model)`` reads the batch's output
  and error files (``GET /files/{id}/content``) → one ``CompletionResponse`` or typed
  ``ProviderError`` per request, **in request order**;
* ``await adapter.cancel_batch(job_id, timeouts)`` (``POST /batches/{id}/cancel``).

OpenAI's statuses are the router's words already; ``completed`` with no successful request
is reported ``failed``. Only connectors whose upstream has the Batch API
(``Connector.batches``: ``openai.llm.v1``) submit; the others raise a non-retryable
``ProviderError`` from ``create_batch`` before sending anything.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from modelmesh_core.errors import BatchRequestNotRunError, ProviderError
from modelmesh_core.http import HTTPAdapter, call_window
from modelmesh_core.types import BatchJob, CompletionRequest, CompletionResponse, Model, Timeouts

if TYPE_CHECKING:
    from ._config import Connector

__all__ = ["BATCH_ENDPOINT", "BatchesMixin", "custom_id"]

BATCH_ENDPOINT = "/v1/chat/completions"
"""The ``endpoint`` (and each line's ``url``) of the batches this adapter creates."""

_PREFIX = "req-"


def custom_id(index: int) -> str:
    """The ``custom_id`` of the request at ``index``."""
    return f"{_PREFIX}{index}"


def _index(cid: Any) -> int | None:
    if isinstance(cid, str) and cid.startswith(_PREFIX):
        with contextlib.suppress(ValueError):
            return int(cid[len(_PREFIX):])
    return None


class BatchesMixin(HTTPAdapter):
    """Batch API methods of :class:`~modelmesh_openai.OpenAIAdapter`."""

    if TYPE_CHECKING:
        connector: Connector

        def _body(self, model: Model, request: CompletionRequest, stream: bool) -> bytes: ...

        async def _send(
            self,
            method: str,
            url: URL,
            data: bytes | None,
            timeouts: Timeouts,
            model_id: str | None,
            start: float,
            deadline: float | None,
            stream: bool,
            content_type: str | None = None,
        ) -> aiohttp.ClientResponse: ...

        def error_from(
            self,
            status: int | None,
            raw: bytes,
            headers: Mapping[str, str],
            model_id: str | None,
        ) -> ProviderError: ...

    # ------------------------------------------------------------------ helpers

    def _api(self, *parts: str) -> URL:
        return URL(f"{self.base_url}/{'/'.join(parts)}")

    async def _call(
        self, method: str, url: URL, data: bytes | None, timeouts: Timeouts,
        model_id: str | None, content_type: str | None = None,
    ) -> Any:
        start, deadline = call_window(timeouts)
        resp = await self._send(method, url, data, timeouts, model_id, start, deadline, False,
                                content_type)
        return await self.json_body(resp, timeouts, model_id, deadline)

    async def _download(self, file_id: str, timeouts: Timeouts, model_id: str) -> bytes:
        """The bytes of a file (``GET /files/{id}/content``), bounded like a body read."""
        start, deadline = call_window(timeouts)
        resp = await self._send("GET", self._api("files", file_id, "content"), None, timeouts,
                                model_id, start, deadline, False)
        return await self.read_raw(resp, timeouts, model_id, deadline)

    def _job(self, payload: Any, model_id: str = "") -> BatchJob:
        try:
            status = payload["status"]
            job_id = payload["id"]
            counts = payload.get("request_counts") or {}
            completed = int(counts.get("completed") or 0)
            failed = int(counts.get("failed") or 0)
            total = int(counts.get("total") or 0)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise self.bad_payload("the answer is not a batch object", model_id or None) \
                from None
        if not isinstance(status, str) or not isinstance(job_id, str):
            raise self.bad_payload("the answer is not a batch object", model_id or None)
        if status == "completed" and failed and not completed:
            status = "failed"
        return BatchJob(job_id=job_id, status=status, model=model_id, provider=self.name,
                        request_count=total, completed=completed, failed=failed,
                        native_id=job_id)

    # ------------------------------------------------------------------ BatchCapable

    async def create_batch(
        self, model: Model, requests: Sequence[CompletionRequest], timeouts: Timeouts
    ) -> BatchJob:
        """Upload ``requests`` as a JSONL file and create a batch over it."""
        if not self.connector.batches:
            raise ProviderError(
                f"connector {self.connector.name} has no native batch API; the router runs "
                "this batch itself",
                provider_id=self.name, model_id=model.id, retryable=False,
            )
        lines = []
        for index, request in enumerate(requests):
            lines.append(b'{"custom_id":"' + custom_id(index).encode()
                         + b'","method":"POST","url":"' + BATCH_ENDPOINT.encode()
                         + b'","body":' + self._body(model, request, stream=False) + b"}\n")
        boundary = "modelmesh-" + os.urandom(12).hex()
        filename = f"modelmesh-batch-{os.urandom(4).hex()}.jsonl"
        form = b"".join((
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
            f"batch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f'filename="{filename}"\r\nContent-Type: application/jsonl\r\n\r\n'.encode(),
            *lines,
            f"\r\n--{boundary}--\r\n".encode(),
        ))
        uploaded = await self._call("POST", self._api("files"), form, timeouts, model.id,
                                    f"multipart/form-data; boundary={boundary}")
        file_id = uploaded.get("id") if isinstance(uploaded, dict) else None
        if not isinstance(file_id, str):
            raise self.bad_payload("the upload answer is not a file object", model.id)
        body = {"input_file_id": file_id, "endpoint": BATCH_ENDPOINT, "completion_window": "24h"}
        try:
            created = await self._call("POST", self._api("batches"), self._dumps(body),
                                       timeouts, model.id)
        except ProviderError:
            # Nothing will read the uploaded file: remove it (best effort).
            with contextlib.suppress(ProviderError):
                await self._call("DELETE", self._api("files", file_id), None, timeouts,
                                 model.id)
            raise
        job = self._job(created, model.id)
        job.request_count = len(lines)
        return job

    async def get_batch(self, job_id: str, timeouts: Timeouts) -> BatchJob:
        """Status and counts of a batch (``GET /batches/{id}``)."""
        return self._job(await self._call("GET", self._api("batches", job_id), None, timeouts,
                                          None))

    async def cancel_batch(self, job_id: str, timeouts: Timeouts) -> BatchJob:
        """Ask for a batch to be cancelled (``POST /batches/{id}/cancel``)."""
        return self._job(await self._call("POST", self._api("batches", job_id, "cancel"), None,
                                          timeouts, None))

    async def batch_results(
        self, job_id: str, timeouts: Timeouts, *, model: Model
    ) -> list[CompletionResponse | ProviderError | None]:
        """The results of an ended batch, in request order.

        Successful lines become ``CompletionResponse``; a line answered with an HTTP error
        becomes the typed error that status and body map to (as for ``complete``); a request
        that never ran (``batch_expired``, ``batch_cancelled``) or a line the validation
        rejected (a ``failed`` batch's ``errors``) becomes a ``ProviderError``; None for an
        index nothing was said about.
        """
        payload = await self._call("GET", self._api("batches", job_id), None, timeouts,
                                   model.id)
        job = self._job(payload, model.id)
        if not job.done:
            raise ProviderError(
                f"batch {job_id} has not ended (status {job.status}); its results are not "
                "available yet",
                provider_id=self.name, model_id=model.id, status=409, retryable=True,
            )
        results: dict[int, CompletionResponse | ProviderError] = {}
        for key in ("output_file_id", "error_file_id"):
            file_id = payload.get(key)
            if isinstance(file_id, str) and file_id:
                raw = await self._download(file_id, timeouts, model.id)
                self._read_lines(raw, model, results)
        errors = payload.get("errors")
        data = errors.get("data") if isinstance(errors, dict) else None
        for item in data if isinstance(data, list) else ():
            line = item.get("line") if isinstance(item, dict) else None
            if isinstance(line, int) and line >= 1 and line - 1 not in results:
                results[line - 1] = ProviderError(
                    f"the batch rejected this request: {item.get('message') or 'invalid'} "
                    f"[code={item.get('code')}]",
                    provider_id=self.name, model_id=model.id, status=400, retryable=False,
                )
        size = max(job.request_count, max(results, default=-1) + 1)
        return [results.get(i) for i in range(size)]

    def _read_lines(
        self, raw: bytes, model: Model, results: dict[int, CompletionResponse | ProviderError]
    ) -> None:
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                item = self._loads(line)
                index = _index(item["custom_id"])
                response = item.get("response")
                error = item.get("error")
            except (ValueError, KeyError, TypeError, AttributeError):
                raise self.bad_payload("a batch output line is not a request output object",
                                        model.id) from None
            if index is None:
                continue  # not a line of a batch this adapter created
            results[index] = self._result(response, error, model)

    def _result(
        self, response: Any, error: Any, model: Model
    ) -> CompletionResponse | ProviderError:
        if isinstance(response, dict):
            status = response.get("status_code")
            body = response.get("body")
            if status == 200 and isinstance(body, dict):
                return self._completion(body, model)
            if isinstance(status, int):
                return self.error_from(status, self._dumps(body) if body is not None else b"",
                                       {}, model.id)
        if isinstance(error, dict):
            code = error.get("code")
            text = f"{error.get('message') or 'the request did not run'} [code={code}]"
            if code in ("batch_cancelled", "batch_expired"):
                return BatchRequestNotRunError(text, code=code, provider_id=self.name,
                                               model_id=model.id)
            return ProviderError(text, provider_id=self.name, model_id=model.id,
                                 retryable=False)
        return self.bad_payload("a batch output line has neither a response nor an error",
                                 model.id)

    def _completion(
        self, payload: dict[str, Any], model: Model
    ) -> CompletionResponse | ProviderError:
        from ._adapter import _tool_calls, _usage

        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            return self.bad_payload("a batch response has no choices[0].message", model.id)
        return CompletionResponse(
            content=message.get("content") or "",
            model=model.id,
            provider=self.name,
            usage=_usage(payload.get("usage")),
            id=payload.get("id") or "",
            created=payload.get("created") or int(time.time()),
            finish_reason=choice.get("finish_reason"),
            tool_calls=_tool_calls(message.get("tool_calls"), False),
            role=message.get("role") or "assistant",
            upstream_model=payload.get("model") or "",
            refusal=message.get("refusal"),
        )
