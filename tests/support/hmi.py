"""A real gateway (built from a site document, not polling) behind a real HMI, for HTTP tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from gateway.contract.clock import SystemClock
from gateway.config import validate
from gateway.daemon import Gateway
from gateway.hmi import users
from gateway.hmi.server import Hmi
from gateway.contract.points import GOOD, PointUpdate
from gateway.storage import Store
from gateway.switching.model import Role

PASSWORDS = {"ada": "ada's long password", "bob": "bob's long password", "eve": "eve's long password"}
ROLES = {"ada": Role.OPERATOR, "bob": Role.VIEWER, "eve": Role.ENGINEER}


def write_users(path: Path) -> None:
    users.save(
        path, {n: users.User(n, ROLES[n], users.hash_password(p, log2_n=12)) for n, p in PASSWORDS.items()}, group=None
    )


def hmi_document(doc: dict[str, Any], workdir: Path, **hmi: Any) -> dict[str, Any]:
    doc = dict(doc)
    doc["site"] = {**doc["site"], "state_dir": str(workdir / "state"), "runtime_dir": str(workdir / "run")}
    doc["uplink"] = {"broker_host": "127.0.0.1", "transport": "tcp"}
    doc["hmi"] = {"enabled": True, "users_file": str(workdir / "hmi-users"), **hmi}
    return doc


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def served(
    doc: dict[str, Any], workdir: Path, *, clock: FakeClock | None = None, **hmi: Any
) -> AsyncIterator[tuple[Gateway, Hmi, TestClient]]:
    """The gateway of `doc` (built, not started: no IED is polled) and its HMI on a test server."""
    site = validate(hmi_document(doc, workdir, **hmi))
    write_users(workdir / "hmi-users")
    store = Store(workdir / "stima.db")
    gw = Gateway(site, base_dir=workdir, clock=SystemClock(), store=store)
    app_hmi = Hmi(site.hmi, base_dir=workdir, gateway=lambda: gw, store=store, monotonic=clock or time.monotonic)
    client = TestClient(TestServer(app_hmi.app()))
    await client.start_server()
    try:
        yield gw, app_hmi, client
    finally:
        await app_hmi.stream.close_all()
        await client.close()
        store.close()


def origin(client: TestClient) -> str:
    return str(client.make_url("/")).rstrip("/")


async def login(client: TestClient, user: str, password: str | None = None) -> dict[str, Any]:
    """Log in as a page would; the session's answer (with `csrf`) or the error with `status`."""
    r = await client.get("/api/session")
    token = (await r.json())["login_csrf"]
    r = await client.post(
        "/api/login",
        json={"user": user, "password": password or PASSWORDS[user]},
        headers={"X-CSRF-Token": token, "Origin": origin(client)},
    )
    return {"status": r.status, **(await r.json())}


def write_headers(client: TestClient, csrf: str) -> dict[str, str]:
    return {"X-CSRF-Token": csrf, "Origin": origin(client)}


def apply(gw: Gateway, values: dict[str, Any]) -> None:
    """Readings as an IED would have given them."""
    now_m, now_w = time.monotonic(), time.time()
    for point_id, value in values.items():
        gw.image.apply(
            PointUpdate(point_id=point_id, value=value, quality=GOOD, receive_monotonic=now_m, receive_time=now_w)
        )


def normal_positions(gw: Gateway) -> dict[str, Any]:
    """Every device's position point as in the normal configuration, local/remote on remote."""
    values: dict[str, Any] = {}
    for dev in gw.switching.network.devices.values():
        if "closed" in dev.points:
            values[dev.points["closed"]] = not dev.normally_open
        if "local" in dev.points:
            values[dev.points["local"]] = False
    return values
