"""A full disk (SQLite's "database or disk is full", here by capping the database's pages)
refuses the writes that do not fit with that error, keeps everything written before, and
leaves the store usable once there is room again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.storage import Store


def _fill(store: Store) -> int:
    pages = int(store._db.execute("PRAGMA page_count").fetchone()[0])
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    return pages


def test_writes_on_a_full_disk_fail_cleanly_and_the_store_recovers(tmp_path: Path) -> None:
    store = Store(tmp_path / "stima.db")
    ids = store.spool_append([("telemetry", b"x" * 100, 1, 1.0)] * 10)
    pages = _fill(store)
    big = [("telemetry", b"y" * 4000, 1, 2.0)] * 50
    for write in (lambda: store.spool_append(big), lambda: store.spool_put_many(big),
                  lambda: store.append_events([(1.0, "CB-1", "protection.trip", {"a": "b" * 4000})] * 20)):
        with pytest.raises(sqlite3.OperationalError, match="full"):
            write()
        assert not store._db.in_transaction
    assert store.spool_depth() == 10  # nothing accepted before was lost
    store.spool_remove(ids[:5])  # acknowledgements still go through
    assert store.spool_depth() == 5
    store._db.execute(f"PRAGMA max_page_count = {pages * 1000}")
    more = store.spool_append(big)  # room again: the same connection works
    assert len(more) == 50 and store.spool_depth() == 55
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
