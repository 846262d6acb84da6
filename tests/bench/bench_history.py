"""Point history: aggregator cost per update and one flush of 2,000 points' buckets to SQLite.

The aggregator runs for every point update (~20,000/s at a busy substation); the flush runs once
per interval in one transaction, off the event loop. Also measured: how long a write of the event
loop (a protection snapshot) waits for the store's lock while a flush is in progress.
Asserts nothing about speed; run with `.venv/bin/python tests/bench/bench_history.py`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.daemon import HISTORY_WRITE_CHUNK
from gateway.history import HistoryAggregator, HistoryRow
from gateway.contract.points import GOOD, PointKind, PointUpdate, ProcessImage
from gateway.storage import Store

POINTS = 2_000
UPDATES = 400_000
RATE_GOAL_PER_S = 20_000


def bench_add() -> None:
    agg = HistoryAggregator(60.0)
    ids = [f"P{i}" for i in range(POINTS)]
    t0 = 1_700_000_000.0
    samples = [(ids[i % POINTS], float(i % 977), t0 + i * 0.0001) for i in range(UPDATES)]
    add = agg.add
    start = time.perf_counter()
    for pid, v, t in samples:
        add(pid, v, True, t)
    add_us = (time.perf_counter() - start) / UPDATES * 1e6

    image = ProcessImage()
    for pid in ids:
        image.define(pid, PointKind.ANALOG)
    updates = [
        PointUpdate(point_id=pid, value=v, quality=GOOD, receive_monotonic=t, receive_time=t) for pid, v, t in samples
    ]
    apply = image.apply
    start = time.perf_counter()
    for u in updates:
        apply(u)
    bare_us = (time.perf_counter() - start) / UPDATES * 1e6
    image.subscribe_all(HistoryAggregator(60.0).on_point)
    start = time.perf_counter()
    for u in updates:
        apply(u)
    with_us = (time.perf_counter() - start) / UPDATES * 1e6
    listener_us = with_us - bare_us
    print(f"aggregator add():                 {add_us:.3f} µs/update")
    print(f"process image apply(), bare:      {bare_us:.3f} µs/update")
    print(f"process image apply() + history:  {with_us:.3f} µs/update (listener adds {listener_us:.3f} µs)")
    print(
        f"at {RATE_GOAL_PER_S} updates/s the history listener costs {listener_us * RATE_GOAL_PER_S / 1e4:.2f} % "
        f"of one core"
    )


def bench_flush() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "stima.db")
        agg = HistoryAggregator(60.0)
        times = []
        base = 1_700_000_040.0
        for n in range(10):
            t = base + 60.0 * n
            for i in range(POINTS):
                for k in range(3):
                    agg.add(f"P{i}", float(i + k), k != 2, t + k)
            rows = agg.take_closed(t + 60.0)
            start = time.perf_counter()
            store.append_history(rows)
            times.append((time.perf_counter() - start) * 1000.0)
        print(
            f"flush of {len(rows)} buckets (one transaction, file DB, WAL): "
            f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms over {len(times)} flushes"
        )
        start = time.perf_counter()
        got = store.history("P1234", since=0.0)
        print(f"read back one point's {len(got)} buckets: {(time.perf_counter() - start) * 1000.0:.2f} ms")

        def snapshot_waits(first_cycle: int, write: Callable[[list[HistoryRow]], None]) -> list[float]:
            """How long a write of the event loop waits for the store's lock while `write` flushes
            a closed interval's buckets in a worker thread, over ten intervals."""
            waits = []
            for n in range(first_cycle, first_cycle + 10):
                t = base + 60.0 * n
                for i in range(POINTS):
                    agg.add(f"P{i}", float(i), True, t)
                worker = threading.Thread(target=write, args=(agg.take_closed(t + 60.0),))
                worker.start()
                time.sleep(0.0005)
                start = time.perf_counter()
                store.save_snapshot("protection/CB-045", {"state": "closed"}, t)
                waits.append((time.perf_counter() - start) * 1000.0)
                worker.join()
            return waits

        waits = snapshot_waits(10, store.append_history)
        print(
            f"snapshot write during a one-transaction flush: median {statistics.median(waits):.2f} ms, "
            f"max {max(waits):.2f} ms"
        )

        # the daemon writes in transactions of HISTORY_WRITE_CHUNK rows, releasing the lock in between
        chunk_ms: list[float] = []

        def chunked(rows: list[HistoryRow]) -> None:
            for k in range(0, len(rows), HISTORY_WRITE_CHUNK):
                start = time.perf_counter()
                store.append_history(rows[k : k + HISTORY_WRITE_CHUNK])
                chunk_ms.append((time.perf_counter() - start) * 1000.0)
                time.sleep(0)

        waits = snapshot_waits(20, chunked)
        print(
            f"one {HISTORY_WRITE_CHUNK}-row transaction: median {statistics.median(chunk_ms):.2f} ms, "
            f"max {max(chunk_ms):.2f} ms"
        )
        print(
            f"snapshot write during a chunked flush: median {statistics.median(waits):.2f} ms, max {max(waits):.2f} ms"
        )
        start = time.perf_counter()
        pruned = store.prune_history(base + 60.0 * 10, HISTORY_WRITE_CHUNK)
        print(f"retention prune of {pruned} buckets (one chunk): {(time.perf_counter() - start) * 1000.0:.1f} ms")
        start = time.perf_counter()
        pruned = store.prune_history(base + 60.0 * 10)
        print(f"retention prune of {pruned} buckets (all at once): {(time.perf_counter() - start) * 1000.0:.1f} ms")
        store.close()


if __name__ == "__main__":
    bench_add()
    bench_flush()
