"""An ended uplink session gives back its paho client (and the socket pair paho keeps for waking
its loop) at once. The daemon freezes what a configuration builds out of the cyclic collector's
reach, so a client that only the collector could free would hold its descriptors for as long as
the configuration runs: two more after every link loss."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path
from typing import Any

from tests.support.broker import run_mosquitto
from tests.test_mqtt import make_uplink, run, until, uplink_config


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


_RECONNECTIONS = 8
_SLACK = 4


async def _reconnect(broker: Any, up: Any) -> None:
    broker.stop()
    assert await until(lambda: up.status()["state"] != "connected")
    broker.start()
    assert await until(lambda: up.status()["state"] == "connected")


def test_an_ended_session_frees_its_client_without_the_cyclic_collector(tmp_path: Path) -> None:
    async def main() -> None:
        with run_mosquitto(tmp_path) as broker:
            up = make_uplink(tmp_path, uplink_config(broker))
            task = asyncio.create_task(up.run())
            assert await until(lambda: up.status()["state"] == "connected")
            gc.collect()
            gc.disable()
            try:
                await _reconnect(broker, up)
                before = _fds()
                for _ in range(_RECONNECTIONS):
                    await _reconnect(broker, up)
                after = _fds()
            finally:
                gc.enable()
            # A leak holds two descriptors per ended session (16 here); the slack is for descriptors
            # other threads of the test process open and close meanwhile.
            assert after - before <= _SLACK, f"{after - before} more descriptors after {_RECONNECTIONS} reconnections"
            await up.close()
            await asyncio.wait_for(task, 10)

    run(main)
