"""A reload gives the retired configuration back: what was frozen for the old configuration is
collected once the new one is frozen in its place."""

from __future__ import annotations

import gc
import weakref

from gateway.memory import after_reload, freeze_long_lived, trim_heap


class _Configuration:
    """Stands for a gateway: its parts point back at it (callbacks), so only the cyclic
    collector can free it."""

    def __init__(self) -> None:
        self.parts = [{"owner": self} for _ in range(10)]


def test_a_configuration_retired_after_a_freeze_is_collected_at_the_next_one() -> None:
    try:
        old = _Configuration()
        gone = weakref.ref(old)
        freeze_long_lived()  # the old configuration started
        new = _Configuration()
        del old  # the reload dropped it
        gc.collect()
        assert gone() is not None, "frozen objects are out of the collector's reach until unfrozen"
        frozen = after_reload()
        assert gone() is None
        assert frozen >= 1
        assert new.parts[0]["owner"] is new
    finally:
        gc.unfreeze()


def test_the_heap_is_trimmed_on_glibc() -> None:
    assert trim_heap(), "Debian's C library is glibc, which has malloc_trim"
