"""A full disk (SQLite's "database or disk is full", here by capping the database's pages)
refuses the writes that do not fit with that error, keeps everything written before, and
leaves the store usable once there is room again."""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future
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
    for write in (
        lambda: store.spool_append(big),
        lambda: store.append_events([(1.0, "CB-1", "protection.trip", {"a": "b" * 4000})] * 20),
    ):
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


def test_the_daemon_will_not_start_without_a_usable_state_directory(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tomllib

    import tomli_w

    doc = tomllib.loads((Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml").read_text())
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    doc["site"]["state_dir"] = str(blocker)
    doc["site"]["runtime_dir"] = str(tmp_path / "run")
    doc["uplink"].update(transport="tcp", ca_file=None, cert_file=None, key_file=None)
    doc["uplink"] = {k: v for k, v in doc["uplink"].items() if v is not None}
    site = tmp_path / "site.toml"
    site.write_text(tomli_w.dumps(doc))
    out = subprocess.run(
        [sys.executable, "-m", "gateway.daemon", "--config", str(site)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"state directory {blocker} is unusable" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


class _FullDisk(Store):
    """The state database on a disk that is full while `full` is set (snapshot writes fail as
    SQLite fails them: "database or disk is full")."""

    full = False

    def save_snapshot(self, key: str, value: object, now: float) -> None:
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        super().save_snapshot(key, value, now)


def test_a_protection_state_the_disk_refused_is_saved_once_it_has_room(tmp_path: Path) -> None:
    """A trip's dead-time state that the disk refused would leave the state of before in the
    database: the bridge writes the present state again as soon as the disk takes it."""
    from gateway.config import load
    from gateway.contract.points import ProcessImage
    from gateway.protection.bridge import SNAPSHOT_KEY, ProtectionBridge
    from gateway.protection.engine import ProtectionEngine

    site = load(Path(__file__).resolve().parents[1] / "deploy" / "examples" / "sub-003.toml")
    store = _FullDisk(tmp_path / "stima.db")
    engine = ProtectionEngine(site.protection, backend="reference")
    written: list[str] = []

    def submit(point_id: str, *_: object) -> Future[None]:
        written.append(point_id)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    bridge = ProtectionBridge(
        engine,
        ProcessImage(),
        submit=submit,
        store=store,
        publish=lambda *a, **k: None,
        publish_many=lambda m: None,
        wall=lambda: 1.7e9,
        monotonic=lambda: 0.0,
    )
    before = engine.snapshot()
    store.save_snapshot(SNAPSHOT_KEY, before, 1.0)
    store.full = True
    cb = site.protection[0].breaker
    bridge.carry_out(engine.manual_trip(cb, 10.0))  # an operator open: the state changes
    assert written, "the breaker command went out although the disk is full"
    changed = engine.snapshot()
    assert changed != before and store.load_snapshot(SNAPSHOT_KEY) == before
    bridge.step(11.0)  # still full: nothing written, no error
    assert store.load_snapshot(SNAPSHOT_KEY) == before
    store.full = False
    bridge.step(14.0)
    assert store.load_snapshot(SNAPSHOT_KEY) == changed
