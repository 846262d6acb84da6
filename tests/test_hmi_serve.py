"""The HMI as the daemon serves it: off by default, HTTPS with the site's certificate, a safe
address, and the site file's checks."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.contract.clock import SystemClock
from gateway.config import ConfigError, validate
from gateway.daemon import Gateway
from gateway.hmi.server import Hmi
from gateway.storage import Store
from hil.broker import free_port, make_tls_files
from hil.rig import example_document
from tests.support.hmi import PASSWORDS, hmi_document, write_users


def test_the_hmi_is_off_unless_the_site_file_turns_it_on() -> None:
    doc = example_document()
    doc["uplink"] = {"broker_host": "127.0.0.1", "transport": "tcp"}
    site = validate(doc)
    assert site.hmi.enabled is False and site.hmi.address == "127.0.0.1"


@pytest.mark.parametrize(
    ("hmi", "message"),
    [
        ({"address": "10.1.2.3"}, "plain HTTP on 10.1.2.3 would send passwords in clear"),
        ({"cert_file": "hmi.crt"}, "HTTPS needs both cert_file and key_file"),
        ({"address": "hmi.example"}, "address must be an IP address"),
        ({"session_idle_s": 7200, "session_max_s": 3600}, "session_idle_s must not exceed session_max_s"),
    ],
)
def test_unsafe_or_wrong_hmi_settings_are_refused(tmp_path: Path, hmi: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate(hmi_document(example_document(), tmp_path, **hmi))
    assert any(p.path == "hmi" and message in p.message for p in exc.value.problems), exc.value


def test_plain_http_on_a_network_address_only_when_asked_for(tmp_path: Path) -> None:
    site = validate(hmi_document(example_document(), tmp_path, address="10.1.2.3", insecure_http=True))
    assert site.hmi.https is False


def test_https_with_the_sites_certificate(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    port = free_port()

    async def go() -> None:
        site = validate(
            hmi_document(
                example_document(), tmp_path, port=port, cert_file=str(tls.server_cert), key_file=str(tls.server_key)
            )
        )
        write_users(tmp_path / "hmi-users")
        store = Store(tmp_path / "stima.db")
        gw = Gateway(site, base_dir=tmp_path, clock=SystemClock(), store=store)
        hmi = Hmi(site.hmi, base_dir=tmp_path, gateway=lambda: gw, store=store)
        await hmi.start()
        try:
            trusted = ssl.create_default_context(cafile=str(tls.ca_file))
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # IP hosts
                async with http.get(f"https://127.0.0.1:{port}/api/session", ssl=trusted) as r:
                    assert r.status == 200
                    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
                    assert "Secure" in r.headers["Set-Cookie"]
                    token = (await r.json())["login_csrf"]
                async with http.post(
                    f"https://127.0.0.1:{port}/api/login",
                    ssl=trusted,
                    json={"user": "ada", "password": PASSWORDS["ada"]},
                    headers={"X-CSRF-Token": token, "Origin": f"https://127.0.0.1:{port}"},
                ) as r:
                    assert r.status == 200
                    assert "Secure" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
                with pytest.raises(aiohttp.ClientError):  # no plain HTTP on that port
                    async with http.get(
                        f"http://127.0.0.1:{port}/api/session", timeout=aiohttp.ClientTimeout(total=10)
                    ) as r:
                        await r.read()
        finally:
            await hmi.close()
            store.close()

    asyncio.run(go())


def test_a_port_in_use_leaves_the_daemon_running_without_the_hmi(tmp_path: Path) -> None:
    import socket

    from gateway.daemon import Server

    async def go() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            site = validate(hmi_document(example_document(), tmp_path, port=port))
            server = Server(tmp_path / "site.toml")
            server.store = Store(tmp_path / "stima.db")
            server.gateway = Gateway(site, base_dir=tmp_path, clock=SystemClock(), store=server.store)
            started = time.monotonic()
            await server._start_hmi(site)
            assert server.hmi is None and time.monotonic() - started < 30
            server.store.close()

    asyncio.run(go())
