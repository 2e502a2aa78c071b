"""``modelmesh.redis.v1``: state in Redis, shared by every replica on every machine.

The admission ledger runs as a server-side Lua script: one round trip checks and reserves
every counter of an admission atomically. Settlements and releases are sent in the
background (the reservation already counted the estimate, so a replica killed before its
settlement leaves the estimate counted, never less). Recovery-trial tokens are ``SET NX PX``
keys (exactly one trial across replicas); health transitions and admin actions are shared
through a hash, a version counter and a list (:mod:`modelmesh_core.shared`).

Connections come from the ``redis`` package's asyncio client pool. Every call is bounded by
``timeout``. When Redis cannot be reached the ``on_unavailable`` policy applies:

* ``open`` (default): requests go on under per-process limits (an in-memory ledger) and a
  warning is logged once per outage; Redis is tried again after ``retry_interval``.
* ``closed``: every admission is refused (``state store unavailable``), so the caller gets
  a 503 until Redis answers again.

Either way no request waits longer than ``timeout`` for Redis. (Redis Cluster is not
supported: the keys of one admission must live on one node.)
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from typing import Any

from attrs import frozen

from .._log import logger
from ..config import Duration
from ..ledger import UNAVAILABLE, Counter, MemoryLedger, calendar_retry
from ..shared import Coordinator
from ..state import MemoryStateStore
from ..windows import MINUTE, ROLLING_SPAN, window_end, window_id

__all__ = ["OnUnavailable", "RedisConfig", "RedisLedger", "RedisStateStore"]


class OnUnavailable(enum.StrEnum):
    """What admissions do while Redis cannot be reached."""

    OPEN = "open"
    CLOSED = "closed"


@frozen(kw_only=True)
class RedisConfig:
    """``url`` of the Redis server (``redis://host:6379/0``); ``prefix`` of every key;
    ``timeout`` seconds any call may take; ``on_unavailable`` (``open`` or ``closed``);
    ``retry_interval`` seconds before Redis is tried again after a failure;
    ``sync_interval`` seconds between two looks at what other replicas published;
    ``max_connections`` of the pool."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "modelmesh:"
    timeout: Duration = Duration(1.0)
    on_unavailable: OnUnavailable = OnUnavailable.OPEN
    retry_interval: Duration = Duration(1.0)
    sync_interval: Duration = Duration(0.2)
    max_connections: int = 16


# ARGV: now, n, then per counter: window (0 rolling, 1 fixed), limit, amount, enforce, ttl.
# Returns {0, used...} when admitted, else {index, used}.
_ADMIT = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local used = {}
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local rolling = ARGV[b + 1] == '0'
  local limit = tonumber(ARGV[b + 2])
  local amount = tonumber(ARGV[b + 3])
  local u = 0
  if rolling then
    local all = redis.call('HGETALL', KEYS[i])
    local dead = {}
    for j = 1, #all, 2 do
      if tonumber(all[j]) + 61 > now then
        u = u + tonumber(all[j + 1])
      else
        dead[#dead + 1] = all[j]
      end
    end
    if #dead > 0 then redis.call('HDEL', KEYS[i], unpack(dead)) end
  else
    u = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  used[i] = u
  if ARGV[b + 4] == '1' and u + amount > limit * (1 + 1e-9) + 1e-9 then
    return {i, tostring(u)}
  end
end
local sec = tostring(math.floor(now))
local out = {0}
for i = 1, n do
  local b = 2 + (i - 1) * 5
  local amount = tonumber(ARGV[b + 3])
  if ARGV[b + 1] == '0' then
    if amount ~= 0 then redis.call('HINCRBYFLOAT', KEYS[i], sec, ARGV[b + 3]) end
    redis.call('EXPIRE', KEYS[i], 130)
  elseif amount ~= 0 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[b + 3])
    redis.call('EXPIRE', KEYS[i], ARGV[b + 5])
  end
  out[i + 1] = tostring(used[i] + amount)
end
return out
"""

# KEYS: health hash, version key. ARGV: field, value.
_HEALTH = """
local v = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], v .. '|' .. ARGV[2])
return v
"""


def _key(prefix: str, c: Counter, now: float) -> str:
    if c.window == MINUTE:
        return f"{prefix}r:{c.key}"
    return f"{prefix}f:{c.key}:{window_id(c.window, now, c.reset_hour)}"


class RedisLedger:
    """The admission ledger's counts in Redis (see the module docstring)."""

    sync = False
    shared = True

    def __init__(self, store: RedisStateStore) -> None:
        self._store = store
        self._fallback = MemoryLedger()
        self._cache: dict[str, float] = {}
        self._prefix = store.config.prefix

    def usage(self, counter: Counter, now: float) -> float:
        """The count last seen for ``counter`` (this replica's view; admission is exact)."""
        if self._store.down():
            return self._fallback.usage(counter, now)
        return self._cache.get(_key(self._prefix, counter, now), 0.0)

    def retry_after(self, c: Counter, used: float, amount: float, now: float) -> float | None:
        """Seconds until ``amount`` more may fit (a rolling minute: at most its span)."""
        if c.window != MINUTE:
            return calendar_retry(c, now)
        return 1.0 if used + amount <= c.limit else float(ROLLING_SPAN)

    def admit(self, counters: Sequence[Counter], amounts: tuple[float, float, float],
              now: float) -> tuple[int, float | None]:
        """Not available: Redis admissions are asynchronous."""
        raise RuntimeError("the Redis ledger admits with admit_async")

    async def admit_async(self, counters: Sequence[Counter],
                          amounts: tuple[float, float, float],
                          now: float) -> tuple[int, float | None]:
        """One script call: check and reserve every counter."""
        store = self._store
        if store.down():
            return self._unavailable(counters, amounts, now)
        prefix = self._prefix
        keys = [_key(prefix, c, now) for c in counters]
        args: list[Any] = [repr(now), len(counters)]
        for c in counters:
            ttl = 0 if c.window == MINUTE else int(
                window_end(c.window, window_id(c.window, now, c.reset_hour), c.reset_hour)
                - now) + 86400
            args += [0 if c.window == MINUTE else 1, repr(c.limit), repr(amounts[c.metric]),
                     1 if c.enforce else 0, ttl]
        try:
            got = await store.call(store.admit_script(keys=keys, args=args))
        except Exception as exc:
            store.failed(exc)
            return self._unavailable(counters, amounts, now)
        cache = self._cache
        index = int(got[0])
        if index == 0:
            for i, key in enumerate(keys):
                cache[key] = float(got[i + 1])
            return -1, None
        c = counters[index - 1]
        used = float(got[1])
        cache[keys[index - 1]] = used
        if c.window != MINUTE:
            return index - 1, calendar_retry(c, now)
        return index - 1, await self._rolling_retry(keys[index - 1], c, used,
                                                    amounts[c.metric], now)

    async def _rolling_retry(self, key: str, c: Counter, used: float, amount: float,
                             now: float) -> float | None:
        from ..ledger import rolling_retry

        try:
            raw = await self._store.call(self._store.client.hgetall(key))
        except Exception:
            return float(ROLLING_SPAN)
        buckets = sorted((int(k), float(v)) for k, v in raw.items()
                         if int(k) + ROLLING_SPAN > now)
        return rolling_retry(buckets, used, amount, c.limit, now)

    def _unavailable(self, counters: Sequence[Counter], amounts: tuple[float, float, float],
                     now: float) -> tuple[int, float | None]:
        if self._store.config.on_unavailable == OnUnavailable.CLOSED:
            return UNAVAILABLE, self._store.config.retry_interval
        return self._fallback.admit(counters, amounts, now)

    def adjust(self, counters: Sequence[Counter], now: float,
               deltas: tuple[float, float, float]) -> None:
        """Send the adjustment in the background (and keep the local view in step)."""
        store = self._store
        if store.down():
            self._fallback.adjust(counters, now, deltas)
            return
        ops: list[tuple[str, str, float]] = []
        for c in counters:
            d = deltas[c.metric]
            if not d:
                continue
            key = _key(self._prefix, c, now)
            if key in self._cache:
                self._cache[key] += d
            ops.append((key, str(int(now)) if c.window == MINUTE else "", d))
        if ops:
            store.coordinator.spawn(self._send(ops))

    async def _send(self, ops: list[tuple[str, str, float]]) -> None:
        store = self._store
        pipe = store.client.pipeline(transaction=False)
        for key, field, d in ops:
            if field:
                pipe.hincrbyfloat(key, field, d)
            else:
                pipe.incrbyfloat(key, d)
        try:
            await store.call(pipe.execute())
        except Exception as exc:
            store.failed(exc)


class RedisCoordinator(Coordinator):
    """Trials, health and admin actions through Redis."""

    def __init__(self, store: RedisStateStore, interval: float) -> None:
        super().__init__(store, interval)
        self._redis = store
        p = store.config.prefix
        self._health_key = f"{p}health"
        self._version_key = f"{p}health:version"
        self._admin_key = f"{p}admin"
        self._version = -1
        self._admin_seen = 0

    async def claim_trial(self, key: str, ttl: float) -> bool:
        """``SET NX PX``: one replica wins."""
        store = self._redis
        if store.down():
            return store.config.on_unavailable == OnUnavailable.OPEN
        try:
            got = await store.call(store.client.set(f"{store.config.prefix}trial:{key}",
                                                    self.origin, nx=True,
                                                    px=int(ttl * 1000)))
        except Exception as exc:
            store.failed(exc)
            return store.config.on_unavailable == OnUnavailable.OPEN
        return bool(got)

    def release_trial(self, key: str) -> None:
        """Delete the token (in the background)."""
        store = self._redis
        if not store.down():
            self.spawn(self._quiet(store.client.delete(f"{store.config.prefix}trial:{key}")))

    async def _quiet(self, aw: Any) -> None:
        try:
            await self._redis.call(aw)
        except Exception as exc:
            self._redis.failed(exc)

    def _put_health(self, kind: str, ident: str, raw: str) -> None:
        store = self._redis
        if store.down():
            return
        script = store.health_script(keys=[self._health_key, self._version_key],
                                     args=[f"{kind}|{ident}", f"{self.origin}|{raw}"])
        self.spawn(self._quiet(script))

    def _put_admin(self, action: str, raw: str) -> None:
        import orjson

        store = self._redis
        if store.down():
            logger.warning("admin action {} reaches only this replica: Redis is unavailable",
                           action)
            return
        item = orjson.dumps([self.origin, action, raw]).decode()
        self.spawn(self._quiet(store.client.rpush(self._admin_key, item)))

    async def catch_up(self, *, replay: bool) -> None:
        """Apply health published since the last look (all of it the first time)."""
        import orjson

        store = self._redis
        client = store.client
        version = await store.call(client.get(self._version_key))
        version = int(version or 0)
        if version != self._version:
            rows = await store.call(client.hgetall(self._health_key))
            seen = self._version
            for field, value in rows.items():
                v, origin, raw = value.decode().split("|", 2)
                if int(v) > seen:
                    kind, ident = field.decode().split("|", 1)
                    self.apply_health(kind, ident, origin, raw)
            self._version = version
        length = int(await store.call(client.llen(self._admin_key)))
        if not replay:
            self._admin_seen = length
            return
        if length > self._admin_seen:
            items = await store.call(client.lrange(self._admin_key, self._admin_seen, length - 1))
            self._admin_seen = length
            for item in items:
                origin, action, raw = orjson.loads(item)
                await self.apply_admin(origin, action, raw)

    async def poll(self) -> None:
        """Apply what other replicas published (skipped while Redis is unavailable)."""
        store = self._redis
        if store.down():
            return
        try:
            await self.catch_up(replay=True)
        except Exception as exc:
            store.failed(exc)


class RedisStateStore(MemoryStateStore):
    """State shared through Redis (``modelmesh.redis.v1``; see the module docstring)."""

    def __init__(self, config: RedisConfig) -> None:
        super().__init__()
        self.config = config
        self.client: Any = None
        self.admit_script: Any = None
        self.health_script: Any = None
        self._down_until = 0.0
        self._outage = False
        self.ledger_backend = RedisLedger(self)  # type: ignore[assignment]
        self.coordinator = RedisCoordinator(self, config.sync_interval)
        self.shared = True

    def down(self) -> bool:
        """True while Redis is considered unreachable (after a failure, for
        ``retry_interval`` seconds)."""
        return self._down_until > 0 and time.monotonic() < self._down_until

    def failed(self, exc: BaseException) -> None:
        """Note that a call failed: stop trying for ``retry_interval``; warn once per
        outage."""
        self._down_until = time.monotonic() + self.config.retry_interval
        if not self._outage:
            self._outage = True
            policy = ("per-process limits apply (fail open)"
                      if self.config.on_unavailable == OnUnavailable.OPEN
                      else "requests are refused (fail closed)")
            logger.warning("Redis state store unavailable ({}): {} until it answers again",
                           type(exc).__name__, policy)

    async def call(self, aw: Any) -> Any:
        """Await a Redis call, bounded by ``timeout``."""
        result = await asyncio.wait_for(aw, self.config.timeout)
        if self._outage:
            self._outage = False
            self._down_until = 0.0
            logger.info("Redis state store answers again")
        return result

    async def load(self) -> None:
        """Connect (a pool), register the scripts, apply the shared health, then follow it."""
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        timeout = self.config.timeout
        # A blocking pool: a burst larger than the pool waits for a connection (bounded by
        # ``timeout``) instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            self.config.url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), max_connections=self.config.max_connections,
            timeout=timeout, health_check_interval=0)
        self.client = aioredis.Redis(connection_pool=pool)
        self.admit_script = self.client.register_script(_ADMIT)
        self.health_script = self.client.register_script(_HEALTH)
        try:
            # Loaded once here, so that an admission is one EVALSHA round trip.
            for script in (self.admit_script, self.health_script):
                await self.call(self.client.script_load(script.script))
            await self.coordinator.catch_up(replay=False)
        except Exception as exc:
            self.failed(exc)
        self.coordinator.start()

    async def flush(self) -> None:
        """Nothing to do: everything shared is written as it happens."""

    async def close(self) -> None:
        """Wait for background writes, stop following Redis, close the pool."""
        await self.coordinator.stop()
        if self.client is not None:
            await self.client.aclose(close_connection_pool=True)
            self.client = None
