"""Provider-native batches for ``Router.batch``: submit, poll, collect, cancel.

``Router.batch`` first routes the batch in the ``batch`` delivery mode (the delivery filter
drops models that do not list it; the features and context needs of every request count).
It walks the chosen model and its fallback chain and submits to the first whose adapter is
:class:`~modelmesh_core.types.BatchCapable`; if none is, or every submission fails, the
router runs the batch itself (``complete`` per request, bounded concurrency).

A submitted batch is followed by one :class:`NativeBatch` task: it polls the provider every
``batch.poll_interval`` (keeping ``BatchJob.status`` / ``completed`` / ``failed`` current),
and when the batch has ended fetches the results, in request order — a
``CompletionResponse`` or a typed ``ProviderError`` per request — before the job reports
its final status. ``batch.max_poll_errors`` consecutive failed polls (or one non-retryable
error) end the job ``failed`` with that error for every request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from loguru import logger

from .errors import ModelMeshError, ProviderError
from .types import (
    BatchCapable,
    BatchJob,
    CompletionRequest,
    CompletionResponse,
    Model,
    PipelineRequest,
    Provider,
    Usage,
)

if TYPE_CHECKING:
    from .budget import BudgetTracker
    from .config import BatchConfig
    from .router import Router

__all__ = [
    "NativeBatch",
    "batch_pipeline_request",
    "native_job",
    "new_batch_id",
    "submit_native",
]


def new_batch_id() -> str:
    """A fresh router batch id (``batch_<16 hex>``)."""
    return "batch_" + os.urandom(8).hex()


def batch_pipeline_request(
    capability: str, requests: Sequence[CompletionRequest], base: PipelineRequest
) -> PipelineRequest:
    """``base`` in the ``batch`` delivery mode, needing what every request needs (the union
    of their features, the largest token estimate), since one model answers them all."""
    from .router import estimate_request

    tokens = 0
    features: set[str] = set()
    for request in requests:
        t, f = estimate_request(request)
        tokens = max(tokens, t)
        features.update(f)
    return PipelineRequest(
        capability=capability, delivery_mode="batch",
        preferred_provider=base.preferred_provider, session_id=base.session_id,
        metadata=base.metadata, request=requests[0] if requests else None,
        features=frozenset(features), estimated_tokens=tokens,
    )


async def submit_native(
    router: Router, preq: PipelineRequest, requests: Sequence[CompletionRequest],
    providers: Mapping[str, Provider],
) -> tuple[BatchJob, Model, Provider, str] | None:
    """Route ``preq`` and submit ``requests`` to the first candidate that can take them
    natively: ``(provider's job, model, provider, pool)``, or None when none could."""
    try:
        result = await router.pipeline.execute(preq)
    except ModelMeshError as exc:
        logger.debug("no model for a native batch: {}", exc)
        return None
    for model in (result.model, *result.fallback_chain):
        provider = providers.get(model.provider)
        if provider is None or "batch" not in model.delivery_modes:
            continue
        adapter = provider.adapter
        if not isinstance(adapter, BatchCapable):
            continue
        try:
            job = await adapter.create_batch(model, requests, provider.timeouts)
        except ProviderError as exc:
            logger.info("native batch submission to {} failed: {}", model.id, exc)
            continue
        return job, model, provider, result.pool.name
    return None


class NativeBatch:
    """One provider-native batch followed by the router (see the module docstring)."""

    def __init__(self, job: BatchJob, model: Model, provider: Provider, pool: str,
                 config: BatchConfig, budgets: BudgetTracker) -> None:
        self.job = job
        self.model = model
        self.provider = provider
        self.pool = pool
        self.config = config
        self.budgets = budgets
        adapter = provider.adapter
        assert isinstance(adapter, BatchCapable)
        self.adapter: BatchCapable = adapter

    @property
    def native_id(self) -> str:
        """The provider's batch id."""
        assert self.job.native_id is not None
        return self.job.native_id

    async def follow(self) -> None:
        """Poll until the provider's batch ends, then fill ``results`` and the final status."""
        job = self.job
        errors = 0
        status = job.status
        while status not in ("completed", "failed", "cancelled", "expired"):
            await asyncio.sleep(self.config.poll_interval)
            try:
                state = await self.adapter.get_batch(self.native_id, self.provider.timeouts)
            except ProviderError as exc:
                errors += 1
                if errors >= self.config.max_poll_errors or not exc.retryable:
                    self._fail_all(exc)
                    return
                continue
            errors = 0
            status = state.status
            job.completed, job.failed = state.completed, state.failed
            if status not in ("completed", "failed", "cancelled", "expired"):
                job.status = status
        await self._collect(status)

    async def _collect(self, status: str) -> None:
        job = self.job
        raw: list[CompletionResponse | ProviderError | None] | None = None
        error: ProviderError | None = None
        for attempt in range(self.config.max_poll_errors):
            try:
                raw = await self.adapter.batch_results(self.native_id, self.provider.timeouts,
                                                       model=self.model)
                break
            except ProviderError as exc:
                error = exc
                if not exc.retryable or attempt + 1 >= self.config.max_poll_errors:
                    break
                await asyncio.sleep(self.config.poll_interval)
        if raw is None:
            assert error is not None
            self._fail_all(error)
            return
        results: list[CompletionResponse | BaseException | None] = []
        completed = 0
        for index in range(job.request_count):
            item = raw[index] if index < len(raw) else None
            if isinstance(item, CompletionResponse):
                completed += 1
                self._bill(item, index)
                results.append(item)
            elif item is None:
                results.append(ProviderError(
                    f"the provider reported no result for request {index} of batch "
                    f"{self.native_id}",
                    provider_id=self.provider.name, model_id=self.model.id, retryable=True))
            else:
                results.append(item)
        job.results = results
        job.completed, job.failed = completed, job.request_count - completed
        if status == "completed" and job.failed and not completed:
            status = "failed"
        job.status = status

    def _bill(self, response: CompletionResponse, index: int) -> None:
        usage = response.usage
        cost = self.model.pricing.cost(Usage(
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            cached_tokens=usage.get("cached_tokens", 0))) if usage else 0.0
        self.budgets.record(self.model, self.pool, cost)
        md = response.metadata
        md["pool"] = self.pool
        md["cost"] = cost
        md["batch_id"] = self.job.job_id
        md["batch_index"] = index

    def _fail_all(self, error: ProviderError) -> None:
        job = self.job
        job.results = [error] * job.request_count
        job.completed, job.failed = 0, job.request_count
        job.status = "failed"

    async def cancel(self) -> None:
        """Ask the provider to cancel; the follow task picks up the end and the results."""
        if self.job.done:
            return
        state = await self.adapter.cancel_batch(self.native_id, self.provider.timeouts)
        if not self.job.done:
            self.job.status = "cancelling" if not state.done else self.job.status


def native_job(upstream: BatchJob, model: Model, provider: Provider, count: int) -> BatchJob:
    """The router's ``BatchJob`` for a batch the provider accepted as ``upstream``."""
    return BatchJob(job_id=new_batch_id(), status=upstream.status if not upstream.done
                    else "in_progress", model=model.id, provider=provider.name,
                    request_count=count, results=[None] * count, native_id=upstream.job_id)
