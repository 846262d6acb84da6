"""Keeping the daemon's memory flat across reloads.

The daemon moves what a configuration builds out of the cyclic collector's way (`gc.freeze`), so
collections stay short on the protection path. Frozen objects are never collected, so a reload
must give the retired configuration back to the collector before freezing the new one:
otherwise every SIGHUP keeps the whole old gateway (agents, process image, 100,000-meter
columns) alive for the rest of the process's life.

After a reload the C allocator is also asked to return freed pages to the system
(`malloc_trim`, glibc): the retired configuration's arrays are freed in the middle of the
heap, where glibc keeps them unless asked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from functools import cache

log = logging.getLogger(__name__)

RELEASE_AFTER_RELOAD_S = 2.0
"""How long after a reload the old configuration is given back: its adapters' threads and the
tasks it cancelled end within this (a reload's retirement is bounded by its own deadline)."""


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return libc


def freeze_long_lived() -> int:
    """Collect, then freeze what is alive: the configuration just started lives until the next
    reload. Objects frozen by an earlier call are unfrozen first, so a configuration retired
    since then is collected now. Returns the number of frozen objects."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def trim_heap() -> bool:
    """Give the heap's free pages back to the system; False where the C library cannot."""
    libc = _libc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except OSError:
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True


def after_reload() -> int:
    """What a reload does once the old configuration is dropped: re-freeze the new one alone
    and return the old one's memory. Returns the number of frozen objects."""
    started = time.perf_counter()
    frozen = freeze_long_lived()
    trim_heap()
    log.info(
        "retired configuration released",
        extra={"pause_ms": round((time.perf_counter() - started) * 1e3, 1), "frozen_objects": frozen},
    )
    return frozen
