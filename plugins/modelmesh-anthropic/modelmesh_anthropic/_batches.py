"""Anthropic Message Batches (``/v1/messages/batches``) as adapter methods.

The interface a router can call for provider-native batches (nothing in the core calls it
yet):

* ``await adapter.create_batch(model, requests, timeouts)`` → ``BatchJob`` (``job_id`` is the
  ``msgbatch_…`` id; each request gets the ``custom_id`` ``req-<index>``);
* ``await adapter.get_batch(job_id, timeouts)`` → ``BatchJob`` with status and counts;
* ``await adapter.batch_results(job_id, timeouts, model=model)`` → one
  ``CompletionResponse`` or ``ProviderError`` per request, **in request order**;
* ``await adapter.cancel_batch(job_id, timeouts)`` → ``BatchJob`` (status ``cancelling``).

Statuses use the router's words: Anthropic's ``in_progress`` → ``in_progress``,
``canceling`` → ``cancelling``, ``ended`` → ``completed`` (``cancelled`` when a cancel was
asked, ``failed`` when no request succeeded).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modelmesh_core.errors import BatchRequestNotRunError, ProviderError
from modelmesh_core.http import HTTPAdapter, call_window
from modelmesh_core.types import BatchJob, CompletionRequest, CompletionResponse, Model, Timeouts

from ._translate import parse_message, usage_from

if TYPE_CHECKING:
    import aiohttp
    from yarl import URL

    from ._translate import Prefill

__all__ = ["BatchesMixin", "custom_id"]


def custom_id(index: int) -> str:
    """The ``custom_id`` of the request at ``index`` (``^[a-zA-Z0-9_-]{1,64}$``)."""
    return f"req-{index}"


class BatchesMixin(HTTPAdapter):
    """Message Batches methods of :class:`~modelmesh_anthropic.AnthropicAdapter`."""

    if TYPE_CHECKING:
        _batches_url: URL

        def _body(
            self, model: Model, request: CompletionRequest, stream: bool
        ) -> tuple[dict[str, Any], Prefill | None]: ...

        async def _send(
            self,
            method: str,
            url: URL,
            data: bytes | None,
            timeouts: Timeouts,
            model_id: str | None,
            start: float,
            deadline: float | None,
            stream: bool = False,
            prefill: bool = False,
        ) -> aiohttp.ClientResponse: ...

        def error_from(
            self,
            status: int | None,
            raw: bytes | Mapping[str, Any],
            headers: Mapping[str, str],
            model_id: str | None,
            prefill: bool = False,
        ) -> ProviderError: ...

    def _job(self, payload: Any, model_id: str = "") -> BatchJob:
        try:
            counts = payload["request_counts"]
            status = payload["processing_status"]
            job_id = payload["id"]
            succeeded = int(counts.get("succeeded", 0))
            failed = sum(int(counts.get(k, 0)) for k in ("errored", "canceled", "expired"))
            total = succeeded + failed + int(counts.get("processing", 0))
        except (KeyError, TypeError, AttributeError, ValueError):
            raise self.bad_payload("the answer is not a message_batch object", None) from None
        if status == "ended":
            if payload.get("cancel_initiated_at"):
                status = "cancelled"
            elif not succeeded and failed:
                status = "failed"
            else:
                status = "completed"
        elif status == "canceling":
            status = "cancelling"
        return BatchJob(
            job_id=str(job_id),
            status=status,
            model=model_id,
            provider=self.name,
            request_count=total,
            completed=succeeded,
            failed=failed,
        )

    async def create_batch(
        self, model: Model, requests: Sequence[CompletionRequest], timeouts: Timeouts
    ) -> BatchJob:
        """Submit ``requests`` as one message batch (``POST /v1/messages/batches``)."""
        items = []
        for index, request in enumerate(requests):
            params, _ = self._body(model, request, stream=False)
            items.append({"custom_id": custom_id(index), "params": params})
        start, deadline = call_window(timeouts)
        resp = await self._send(
            "POST",
            self._batches_url,
            self._dumps({"requests": items}),
            timeouts,
            model.id,
            start,
            deadline,
        )
        job = self._job(await self.json_body(resp, timeouts, model.id, deadline), model.id)
        job.request_count = len(items)
        return job

    async def get_batch(self, job_id: str, timeouts: Timeouts) -> BatchJob:
        """Status and counts of a batch (``GET /v1/messages/batches/{id}``)."""
        start, deadline = call_window(timeouts)
        resp = await self._send(
            "GET", self._batches_url / job_id, None, timeouts, None, start, deadline
        )
        return self._job(await self.json_body(resp, timeouts, None, deadline))

    async def cancel_batch(self, job_id: str, timeouts: Timeouts) -> BatchJob:
        """Ask for a batch to be cancelled (``POST /v1/messages/batches/{id}/cancel``)."""
        start, deadline = call_window(timeouts)
        resp = await self._send(
            "POST", self._batches_url / job_id / "cancel", None, timeouts, None, start, deadline
        )
        return self._job(await self.json_body(resp, timeouts, None, deadline))

    async def batch_results(
        self, job_id: str, timeouts: Timeouts, *, model: Model
    ) -> list[CompletionResponse | ProviderError | None]:
        """The results of an ended batch, in request order (``GET …/{id}/results``, JSONL).

        Each item is a ``CompletionResponse``, or a ``ProviderError`` for an ``errored``
        (typed from its error body), ``canceled`` or ``expired`` request; None for an index
        the results did not mention.
        """
        start, deadline = call_window(timeouts)
        resp = await self._send(
            "GET", self._batches_url / job_id / "results", None, timeouts, model.id, start,
            deadline,
        )
        raw = await self.read_raw(resp, timeouts, model.id, deadline)
        results: dict[int, CompletionResponse | ProviderError] = {}
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                item = self._loads(line)
                cid = item["custom_id"]
                index = int(cid.rsplit("-", 1)[1])
                result = item["result"]
                kind = result["type"]
            except (ValueError, KeyError, TypeError, AttributeError, IndexError):
                raise self.bad_payload("a batch result line is not a result object", model.id) \
                    from None
            results[index] = self._result(kind, result, model)
        size = max(results, default=-1) + 1
        return [results.get(i) for i in range(size)]

    def _result(
        self, kind: str, result: Mapping[str, Any], model: Model
    ) -> CompletionResponse | ProviderError:
        if kind == "succeeded":
            message = result.get("message")
            try:
                text, calls, finish = parse_message(message, self._dumps)
            except (KeyError, TypeError, AttributeError):
                return self.bad_payload("a succeeded batch result holds no message", model.id)
            assert isinstance(message, Mapping)
            return CompletionResponse(
                content=text,
                model=model.id,
                provider=self.name,
                usage=usage_from(message.get("usage")),
                id=message.get("id") or "",
                created=int(time.time()),
                finish_reason=finish,
                tool_calls=calls,
                upstream_model=message.get("model") or "",
            )
        if kind == "errored":
            error = result.get("error")
            return self.error_from(None, error if isinstance(error, Mapping) else {}, {},
                                   model.id)
        return BatchRequestNotRunError(
            f"the batch request was {kind} before it ran",
            code="batch_expired" if kind == "expired" else "batch_cancelled",
            provider_id=self.name,
            model_id=model.id,
        )
