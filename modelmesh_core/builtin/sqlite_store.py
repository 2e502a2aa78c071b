"""``modelmesh.sqlite.v1``: state in a SQLite database, shared by the workers of one machine.

The admission ledger writes through: every admission is one ``BEGIN IMMEDIATE`` transaction
that checks and reserves every counter (SQLite serialises writers across processes, so the
check-and-add is atomic for all of them). The database runs in WAL mode with
``synchronous=NORMAL``: a committed transaction survives ``kill -9`` of the process (only a
power loss or an OS crash may lose the last transactions), so no counted usage is lost.
Health transitions, recovery-trial tokens and admin actions are shared the same way
(:mod:`modelmesh_core.shared`); other processes apply them within ``sync_interval``.

Counters and health live in the database; per-process statistics (latencies, request
counts shown by status APIs) stay in each process.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

from ..config import Duration
from ..ledger import Counter, calendar_retry, rolling_retry
from ..shared import Coordinator
from ..state import MemoryStateStore
from ..windows import MINUTE, ROLLING_SPAN, window_id

__all__ = ["SQLiteConfig", "SQLiteLedger", "SQLiteStateStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fixed(key TEXT PRIMARY KEY, wid INTEGER NOT NULL,
                                 value REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rolling(key TEXT NOT NULL, sec INTEGER NOT NULL,
                                   value REAL NOT NULL, PRIMARY KEY(key, sec)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trials(key TEXT PRIMARY KEY, until REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS health(kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
                                  origin TEXT NOT NULL, data TEXT NOT NULL,
                                  PRIMARY KEY(kind, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS health_version ON health(version);
CREATE TABLE IF NOT EXISTS admin(seq INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL,
                                 action TEXT NOT NULL, arg TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta(key, value) VALUES ('version', 0);
"""

_UPSERT_FIXED = (
    "INSERT INTO fixed(key, wid, value) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
    "value = CASE WHEN fixed.wid = excluded.wid THEN fixed.value + excluded.value "
    "ELSE excluded.value END, wid = excluded.wid WHERE fixed.wid <= excluded.wid"
)
_UPSERT_ROLLING = (
    "INSERT INTO rolling(key, sec, value) VALUES (?, ?, ?) ON CONFLICT(key, sec) DO UPDATE "
    "SET value = rolling.value + excluded.value"
)


@frozen(kw_only=True)
class SQLiteConfig:
    """``path`` of the database (created when missing); ``sync_interval`` seconds between
    two looks at what other processes published; ``busy_timeout`` seconds a writer waits for
    the database lock."""

    path: str = ".modelmesh/state.db"
    sync_interval: Duration = Duration(0.2)
    busy_timeout: Duration = Duration(5.0)


def connect(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode with WAL journaling."""
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(Path(path).expanduser()), isolation_level=None,
                           timeout=busy_timeout, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    return conn


class SQLiteLedger:
    """The admission ledger's counts in SQLite (write-through, atomic across processes)."""

    sync = True
    shared = True

    def __init__(self, store: SQLiteStateStore) -> None:
        self._store = store
        self._lock = store.lock

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = self._store.conn
        if conn is None:
            raise RuntimeError("the SQLite state store is not open (load() opens it)")
        return conn

    def usage(self, counter: Counter, now: float) -> float:
        """The current count of ``counter``."""
        with self._lock:
            return self._usage(counter, now)

    def _usage(self, c: Counter, now: float) -> float:
        if c.window == MINUTE:
            row = self._conn.execute(
                "SELECT TOTAL(value) FROM rolling WHERE key = ? AND sec > ?",
                (c.key, now - ROLLING_SPAN)).fetchone()
            return float(row[0])
        row = self._conn.execute("SELECT wid, value FROM fixed WHERE key = ?",
                                 (c.key,)).fetchone()
        if row is None or row[0] != window_id(c.window, now, c.reset_hour):
            return 0.0
        return float(row[1])

    def _add(self, c: Counter, now: float, amount: float) -> None:
        if c.window == MINUTE:
            self._conn.execute(_UPSERT_ROLLING, (c.key, int(now), amount))
        else:
            self._conn.execute(_UPSERT_FIXED, (c.key, window_id(c.window, now, c.reset_hour),
                                               amount))

    def retry_after(self, c: Counter, used: float, amount: float, now: float) -> float | None:
        """Seconds until ``amount`` more fits under ``c``."""
        if c.window != MINUTE:
            return calendar_retry(c, now)
        with self._lock:
            rows = self._conn.execute(
                "SELECT sec, value FROM rolling WHERE key = ? AND sec > ? ORDER BY sec",
                (c.key, now - ROLLING_SPAN)).fetchall()
        return rolling_retry(rows, used, amount, c.limit, now)

    def admit(self, counters: Sequence[Counter], amounts: tuple[float, float, float],
              now: float) -> tuple[int, float | None]:
        """Check and reserve every counter in one write transaction."""
        conn = self._conn
        refused: tuple[int, Counter, float, float] | None = None
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for i, c in enumerate(counters):
                    amount = amounts[c.metric]
                    used = self._usage(c, now)
                    if c.over(used, amount):
                        refused = (i, c, used, amount)
                        break
                if refused is None:
                    for c in counters:
                        self._add(c, now, amounts[c.metric])
                    conn.execute("COMMIT")
                    return -1, None
                conn.execute("ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        index, counter, used, amount = refused
        return index, self.retry_after(counter, used, amount, now)

    async def admit_async(self, counters: Sequence[Counter],
                          amounts: tuple[float, float, float],
                          now: float) -> tuple[int, float | None]:
        """:meth:`admit`."""
        return self.admit(counters, amounts, now)

    def adjust(self, counters: Sequence[Counter], now: float,
               deltas: tuple[float, float, float]) -> None:
        """Add ``deltas`` to the windows that held ``now`` (one transaction)."""
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for c in counters:
                    d = deltas[c.metric]
                    if not d:
                        continue
                    if c.window == MINUTE:
                        conn.execute(_UPSERT_ROLLING, (c.key, int(now), d))
                    else:
                        conn.execute("UPDATE fixed SET value = value + ? WHERE key = ? AND wid = ?",
                                     (d, c.key, window_id(c.window, now, c.reset_hour)))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def prune(self, now: float) -> None:
        """Forget rolling buckets and trial tokens that no longer count."""
        with self._lock:
            self._conn.execute("DELETE FROM rolling WHERE sec <= ?", (now - ROLLING_SPAN - 1,))
            self._conn.execute("DELETE FROM trials WHERE until <= ?", (now,))


class SQLiteCoordinator(Coordinator):
    """Trials, health and admin actions through the SQLite database."""

    def __init__(self, store: SQLiteStateStore, interval: float) -> None:
        super().__init__(store, interval)
        self._sqlite = store
        self._version = 0
        self._admin_seq = 0
        self._polls = 0

    def _conn(self) -> sqlite3.Connection:
        conn = self._sqlite.conn
        assert conn is not None
        return conn

    async def claim_trial(self, key: str, ttl: float) -> bool:
        """One process wins the token until it expires."""
        now = self._sqlite.clock()
        with self._sqlite.lock:
            cur = self._conn().execute(
                "INSERT INTO trials(key, until) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                "until = excluded.until WHERE trials.until <= ?", (key, now + ttl, now))
            return cur.rowcount == 1

    def release_trial(self, key: str) -> None:
        """Delete the token."""
        with self._sqlite.lock:
            self._conn().execute("DELETE FROM trials WHERE key = ?", (key,))

    def _put_health(self, kind: str, ident: str, raw: str) -> None:
        conn = self._conn()
        with self._sqlite.lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
                conn.execute(
                    "INSERT INTO health(kind, id, version, origin, data) VALUES (?, ?, "
                    "(SELECT value FROM meta WHERE key = 'version'), ?, ?) "
                    "ON CONFLICT(kind, id) DO UPDATE SET version = excluded.version, "
                    "origin = excluded.origin, data = excluded.data",
                    (kind, ident, self.origin, raw))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _put_admin(self, action: str, raw: str) -> None:
        with self._sqlite.lock:
            self._conn().execute("INSERT INTO admin(origin, action, arg) VALUES (?, ?, ?)",
                                 (self.origin, action, raw))

    def catch_up(self, *, replay: bool) -> list[tuple[str, str, str, str]]:
        """Health rows newer than the last seen (all of them the first time); moves the
        admin cursor to the end unless ``replay``."""
        conn = self._conn()
        with self._sqlite.lock:
            version = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
            rows: list[tuple[str, str, str, str]] = []
            if version != self._version:
                rows = conn.execute(
                    "SELECT kind, id, origin, data FROM health WHERE version > ? "
                    "ORDER BY version", (self._version,)).fetchall()
                self._version = version
            if not replay:
                last = conn.execute("SELECT MAX(seq) FROM admin").fetchone()[0]
                self._admin_seq = last or 0
        return rows

    async def poll(self) -> None:
        """Apply new health rows and admin actions; prune old counters now and then."""
        for kind, ident, origin, data in self.catch_up(replay=True):
            self.apply_health(kind, ident, origin, data)
        with self._sqlite.lock:
            actions = self._conn().execute(
                "SELECT seq, origin, action, arg FROM admin WHERE seq > ? ORDER BY seq",
                (self._admin_seq,)).fetchall()
        for seq, origin, action, arg in actions:
            self._admin_seq = seq
            await self.apply_admin(origin, action, arg)
        self._polls += 1
        if self._polls % 25 == 0:
            self._sqlite.ledger_backend.prune(self._sqlite.clock())


class SQLiteStateStore(MemoryStateStore):
    """Model and provider health, the admission ledger, recovery trials and admin actions in
    one SQLite database (``modelmesh.sqlite.v1``; see the module docstring)."""

    def __init__(self, config: SQLiteConfig, clock: Any = None) -> None:
        import time

        super().__init__()
        self.config = config
        self.clock = clock or time.time
        self.lock = threading.Lock()
        self.conn: sqlite3.Connection | None = None
        self.ledger_backend = SQLiteLedger(self)  # type: ignore[assignment]
        self.coordinator = SQLiteCoordinator(self, config.sync_interval)
        self.shared = True

    async def load(self) -> None:
        """Open the database, apply the health every process published, then follow it in
        the background."""
        if self.conn is None:
            self.conn = connect(self.config.path, self.config.busy_timeout)
        for kind, ident, _origin, data in self.coordinator.catch_up(replay=False):
            self.coordinator.apply_health(kind, ident, "", data)
        self.coordinator.start()

    async def flush(self) -> None:
        """Nothing to do: everything shared is written through."""

    async def close(self) -> None:
        """Stop following the database and close it."""
        await self.coordinator.stop()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
