"""Durable state in one SQLite database (WAL) in the state directory.

Snapshots of agent and protection state (a locked-out breaker stays locked out across
restarts), the sequence-of-events log, the MQTT spool, and the nonces of remote commands
recently accepted (a replay stays refused across restarts). Every write is
committed before it is acknowledged to the caller, so nothing acknowledged is lost on kill -9.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS command_nonces (
    nonce TEXT PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS command_nonces_expires ON command_nonces(expires);
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    point_id TEXT NOT NULL,
    bucket_start REAL NOT NULL,
    interval_s REAL NOT NULL,
    min REAL,
    max REAL,
    mean REAL,
    last REAL,
    n INTEGER NOT NULL,
    good_fraction REAL NOT NULL,
    PRIMARY KEY (point_id, bucket_start)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_start ON history(bucket_start);
"""

# A bucket written twice (a partial one flushed at a clean stop, then completed after the restart)
# is merged: extremes combined, mean and good fraction weighted by their sample counts.
_HISTORY_UPSERT = """
INSERT INTO history(point_id, bucket_start, interval_s, min, max, mean, last, n, good_fraction)
VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(point_id, bucket_start) DO UPDATE SET
    min = min(coalesce(history.min, excluded.min), coalesce(excluded.min, history.min)),
    max = max(coalesce(history.max, excluded.max), coalesce(excluded.max, history.max)),
    mean = CASE
        WHEN history.mean IS NULL THEN excluded.mean
        WHEN excluded.mean IS NULL THEN history.mean
        ELSE (history.mean * history.n * history.good_fraction + excluded.mean * excluded.n * excluded.good_fraction)
             / (history.n * history.good_fraction + excluded.n * excluded.good_fraction) END,
    last = coalesce(excluded.last, history.last),
    good_fraction = (history.n * history.good_fraction + excluded.n * excluded.good_fraction)
                    / (history.n + excluded.n),
    n = history.n + excluded.n
"""
_HISTORY_COLUMNS = ("point_id", "bucket_start", "interval_s", "min", "max", "mean", "last", "n", "good_fraction")


class Store:
    """Thread-safe handle on the state database; one per daemon."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN") -> Iterator[None]:
        """One transaction, committed or rolled back; the caller holds the lock.

        When the disk is full SQLite may already have rolled the transaction back itself, and a
        COMMIT can fail too: the rollback is only asked for while one is open, so the original
        error (e.g. "database or disk is full") is the one raised and the connection is left
        with no transaction, usable again once there is room."""
        self._db.execute(begin)
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ snapshots

    def save_snapshot(self, key: str, value: Any, now: float) -> None:
        blob = msgpack.packb(value, use_bin_type=True)
        with self._lock:
            self._db.execute(
                "INSERT INTO snapshots(key, value, updated) VALUES(?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated=excluded.updated",
                (key, blob, now),
            )

    def load_snapshot(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM snapshots WHERE key=?", (key,)).fetchone()
        return None if row is None else msgpack.unpackb(row[0], raw=False, strict_map_key=False)

    def snapshots(self, prefix: str = "") -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM snapshots WHERE key >= ? AND key < ?",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        return {k: msgpack.unpackb(v, raw=False, strict_map_key=False) for k, v in rows}

    # ------------------------------------------------------------------ command nonces

    def remember_nonce(self, nonce: str, expires: float, now: float) -> bool:
        """Record a remote command's nonce until `expires` (wall s); False if it is already known.

        Kept in the database so a replay is refused across a daemon restart too; nonces whose
        time has passed are forgotten here.
        """
        with self._lock:
            self._db.execute("DELETE FROM command_nonces WHERE expires < ?", (now,))
            cur = self._db.execute(
                "INSERT OR IGNORE INTO command_nonces(nonce, expires) VALUES(?, ?)", (nonce, expires)
            )
        return cur.rowcount == 1

    # ------------------------------------------------------------------ events

    def append_event(self, time: float, source: str, kind: str, payload: dict[str, Any]) -> int:
        blob = msgpack.packb(payload, use_bin_type=True)
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO events(time, source, kind, payload) VALUES(?, ?, ?, ?)",
                (time, source, kind, blob),
            )
        return int(cur.lastrowid or 0)

    def append_events(self, rows: list[tuple[float, str, str, dict[str, Any]]]) -> None:
        """Several events in one transaction: (time, source, kind, payload) each."""
        if not rows:
            return
        packed = [(t, src, kind, msgpack.packb(payload, use_bin_type=True)) for t, src, kind, payload in rows]
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO events(time, source, kind, payload) VALUES(?, ?, ?, ?)", packed)

    def events(
        self,
        since: float = 0.0,
        until: float = float("inf"),
        source: str | None = None,
        limit: int = 1000,
        kinds: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Events in [since, until] (wall s), the newest `limit`, oldest first; `kinds` keeps those
        whose kind starts with one of the prefixes given."""
        query = "SELECT seq, time, source, kind, payload FROM events WHERE time >= ? AND time <= ?"
        args: list[Any] = [since, until if until != float("inf") else 1e18]
        if source is not None:
            query += " AND source = ?"
            args.append(source)
        if kinds:
            query += " AND (" + " OR ".join("substr(kind, 1, ?) = ?" for _ in kinds) + ")"
            for prefix in kinds:
                args += [len(prefix), prefix]
        query += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [
            {"seq": s, "time": t, "source": src, "kind": k, **msgpack.unpackb(p, raw=False)}
            for s, t, src, k, p in reversed(rows)
        ]

    def events_page(self, since: float, until: float, after_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Events logged in [since, until], oldest first, after sequence number `after_seq`: pages
        through a period of any length (the sequence-of-events export)."""
        query = (
            "SELECT seq, time, source, kind, payload FROM events WHERE time >= ? AND time <= ? AND seq > ? "
            "ORDER BY seq ASC LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(query, (since, min(until, 1e18), after_seq, limit)).fetchall()
        return [
            {"seq": s, "time": t, "source": src, "kind": k, **msgpack.unpackb(p, raw=False)} for s, t, src, k, p in rows
        ]

    def events_after(self, seq: int, limit: int = 500) -> list[dict[str, Any]]:
        """Events appended after `seq` (oldest first, at most `limit`): what a live view has not seen."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, time, source, kind, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (int(seq), int(limit)),
            ).fetchall()
        return [
            {"seq": s, "time": t, "source": src, "kind": k, **msgpack.unpackb(p, raw=False)} for s, t, src, k, p in rows
        ]

    def last_event_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    # ------------------------------------------------------------------ spool

    def spool_peek(self, after: int = 0, limit: int = 100) -> list[tuple[int, str, bytes, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT seq, topic, payload, qos FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()

    def spool_depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])

    def spool_append(self, rows: list[tuple[str, bytes, int, float]]) -> list[int]:
        """Insert (topic, payload, qos, created) rows in one transaction, all or none; their ids."""
        if not rows:
            return []
        with self._lock, self._transaction("BEGIN IMMEDIATE"):
            self._db.executemany("INSERT INTO spool(topic, payload, qos, created) VALUES(?, ?, ?, ?)", rows)
            last = int(self._db.execute("SELECT last_insert_rowid()").fetchone()[0])
        # one writer inside one immediate transaction: the ids are consecutive
        return list(range(last - len(rows) + 1, last + 1))

    def wal_checkpoint(self) -> tuple[int, int, int]:
        """Copy the write-ahead log into the database on a connection of its own.

        Safe from any thread and never blocks writers (PASSIVE). Run it off the event loop every
        second or so while writing a lot, so that the automatic checkpoint (and its fsync) does
        not fall on a commit in the event loop. Returns SQLite's (busy, log frames, checkpointed).
        """
        if str(self.path) == ":memory:":
            return (0, 0, 0)
        db = sqlite3.connect(str(self.path), isolation_level=None, timeout=1.0)
        try:
            row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            db.close()
        return (int(row[0]), int(row[1]), int(row[2]))

    def spool_last_id(self) -> int:
        """Highest spool id ever handed out (0 for a new database); new ids are always larger."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
        return int(row[0]) if row else 0

    def spool_remove(self, seqs: list[int]) -> int:
        """Delete acknowledged messages in one transaction; returns how many were still there."""
        if not seqs:
            return 0
        with self._lock, self._transaction():
            cur = self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])
            removed = cur.rowcount
        return int(removed)

    def spool_drop_oldest(self, count: int) -> tuple[int, int]:
        """Drop the `count` oldest messages; returns (how many were dropped, highest id dropped)."""
        if count <= 0:
            return 0, 0
        with self._lock:
            row = self._db.execute("SELECT seq FROM spool ORDER BY seq LIMIT 1 OFFSET ?", (count - 1,)).fetchone()
            if row is None:
                row = self._db.execute("SELECT MAX(seq) FROM spool").fetchone()
                if row is None or row[0] is None:
                    return 0, 0
            cutoff = int(row[0])
            cur = self._db.execute("DELETE FROM spool WHERE seq <= ?", (cutoff,))
        return int(cur.rowcount), cutoff

    # ------------------------------------------------------------------ history

    def append_history(self, rows: Sequence[Any]) -> None:
        """Closed history buckets (gateway.history.HistoryRow or same-shaped) in one transaction."""
        if not rows:
            return
        params = [
            (r.point_id, r.bucket_start, r.interval_s, r.min, r.max, r.mean, r.last, r.n, r.good_fraction) for r in rows
        ]
        with self._lock, self._transaction():
            self._db.executemany(_HISTORY_UPSERT, params)

    def history(
        self, point_id: str, since: float = 0.0, until: float = float("inf"), limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Buckets of one point starting in [since, until] (wall s), the newest `limit`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM (SELECT point_id, bucket_start, interval_s, min, max, mean, last, n, good_fraction "
                "FROM history WHERE point_id = ? AND bucket_start >= ? AND bucket_start <= ? "
                "ORDER BY bucket_start DESC LIMIT ?) ORDER BY bucket_start",
                (point_id, since, until if until != float("inf") else 1e18, int(limit)),
            ).fetchall()
        return [dict(zip(_HISTORY_COLUMNS, row, strict=True)) for row in rows]

    def history_aggregated(
        self, point_id: str, since: float, until: float, interval_s: float = 3600.0
    ) -> list[dict[str, Any]]:
        """Buckets of one point merged into `interval_s` buckets (hourly by default) for [since, until):
        means weighted by good samples, extremes combined. For trends over months without reading
        every minute bucket."""
        step = float(interval_s)
        with self._lock:
            rows = self._db.execute(
                "SELECT CAST(bucket_start / ? AS INTEGER) AS k, "
                "SUM(mean * n * good_fraction) / SUM(n * good_fraction), MIN(min), MAX(max), SUM(n), "
                "SUM(n * good_fraction) / SUM(n) "
                "FROM history WHERE point_id = ? AND bucket_start >= ? AND bucket_start < ? AND mean IS NOT NULL "
                "AND n > 0 AND good_fraction > 0 GROUP BY k ORDER BY k",
                (step, point_id, since, until if until != float("inf") else 1e18),
            ).fetchall()
        return [
            {
                "point_id": point_id,
                "bucket_start": k * step,
                "interval_s": step,
                "mean": mean,
                "min": lo,
                "max": hi,
                "n": int(n),
                "good_fraction": gf,
            }
            for k, mean, lo, hi, n, gf in rows
        ]

    def prune_history(self, before: float, limit: int | None = None) -> int:
        """Delete buckets that started before `before` (wall s), at most `limit` of them; how many.

        With a limit the lock is held briefly: call again until it returns less than the limit.
        """
        with self._lock:
            if limit is None:
                cur = self._db.execute("DELETE FROM history WHERE bucket_start < ?", (before,))
            else:
                cur = self._db.execute(
                    "DELETE FROM history WHERE (point_id, bucket_start) IN (SELECT point_id, bucket_start "
                    "FROM history WHERE bucket_start < ? LIMIT ?)",
                    (before, int(limit)),
                )
        return int(cur.rowcount)
