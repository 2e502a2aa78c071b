"""State shared by several processes: what the SQLite and Redis stores have in common.

A store shared by several workers or replicas has a *coordinator* (``store.coordinator``)
that the rotation manager and the mesh use:

* **Recovery trials** — :meth:`Coordinator.claim_trial` takes a token named after the
  model (or provider) and the cooldown it recovers from; exactly one process gets it, so
  exactly one half-open trial reaches the upstream across all replicas.
* **Health** — every transition (deactivated, recovered, provider down / up, Retry-After)
  is published; each process applies the others' within one poll interval
  (``sync_interval``), so all of them skip a model in cooldown.
* **Admin actions** — rotate and reload are appended to a log in the store and replayed by
  every other process (reactivate and deactivate travel as health transitions).

The admission ledger's counts live in the store itself (the store's ``ledger_backend``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ._log import logger
from .state import ACTIVE

if TYPE_CHECKING:
    from .state import MemoryStateStore, ModelState, ProviderState

__all__ = ["MODEL_FIELDS", "PROVIDER_FIELDS", "Coordinator"]

MODEL_FIELDS = ("status", "deactivation_reason", "cooldown_until", "retry_after_until",
                "deactivated_at")
PROVIDER_FIELDS = ("available", "auth_valid", "deactivation_reason", "cooldown_until",
                   "down_for")

AdminHandler = Callable[[str, Any], Awaitable[None]]


class Coordinator:
    """The shared part of a store's state (see the module docstring). Subclasses implement
    the transport: :meth:`claim_trial`, :meth:`release_trial`, :meth:`_put_health`,
    :meth:`_put_admin` and :meth:`poll`."""

    def __init__(self, store: MemoryStateStore, interval: float) -> None:
        self.store = store
        self.origin = os.urandom(8).hex()
        self.interval = interval
        self._handlers: list[AdminHandler] = []
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    # -- publishing (sync: called from the rotation manager)

    def publish_model(self, st: ModelState) -> None:
        """Share a model's health transition with the other processes."""
        data = {f: getattr(st, f) for f in MODEL_FIELDS}
        self._put_health("m", st.model_id, orjson.dumps(data).decode())

    def publish_provider(self, ps: ProviderState) -> None:
        """Share a provider's health transition with the other processes."""
        data = {f: getattr(ps, f) for f in PROVIDER_FIELDS}
        self._put_health("p", ps.name, orjson.dumps(data).decode())

    def publish_admin(self, action: str, arg: Any) -> None:
        """Ask every other process to perform an admin action (``rotate``, ``reload``)."""
        self._put_admin(action, orjson.dumps(arg).decode())

    def on_admin(self, handler: AdminHandler) -> None:
        """Call ``handler(action, arg)`` for each admin action another process published."""
        self._handlers.append(handler)

    # -- applying what others published

    def apply_health(self, kind: str, ident: str, origin: str, raw: str) -> None:
        """Apply one published transition (ours are skipped)."""
        if origin == self.origin:
            return
        data = orjson.loads(raw)
        if kind == "m":
            st = self.store.model(ident)
            was_active = st.status == ACTIVE
            for f in MODEL_FIELDS:
                setattr(st, f, data[f])
            if st.status == ACTIVE and not was_active:
                st.consecutive_failures = 0
                st.base_requests, st.base_tokens = st.requests, st.tokens
            if st.status != ACTIVE and not st.trial_keys:
                st.trial_in_flight = False
        else:
            ps = self.store.provider(ident)
            for f in PROVIDER_FIELDS:
                setattr(ps, f, data[f])

    async def apply_admin(self, origin: str, action: str, raw: str) -> None:
        """Run one published admin action (ours are skipped)."""
        if origin == self.origin:
            return
        arg = orjson.loads(raw)
        for handler in self._handlers:
            try:
                await handler(action, arg)
            except Exception as exc:  # one bad action must not stop the poller
                logger.warning("admin action {} from another process failed: {}", action, exc)

    # -- the poller

    def start(self) -> None:
        """Start polling the store (call from the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("state store poll failed: {}", exc)
            await asyncio.sleep(self.interval)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` in the background, kept until it finishes."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def stop(self) -> None:
        """Stop polling and wait for background writes."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # -- transport

    async def claim_trial(self, key: str, ttl: float) -> bool:
        """Take the recovery-trial token ``key`` for ``ttl`` seconds; False if held."""
        raise NotImplementedError

    def release_trial(self, key: str) -> None:
        """Give a trial token back (the trial ended without an outcome)."""
        raise NotImplementedError

    def _put_health(self, kind: str, ident: str, raw: str) -> None:
        raise NotImplementedError

    def _put_admin(self, action: str, raw: str) -> None:
        raise NotImplementedError

    async def poll(self) -> None:
        """Apply what other processes published since the last poll."""
        raise NotImplementedError
