"""The HMI over HTTP against a real gateway: sessions, roles, CSRF, login limits, security
headers, control through the switching authority, the REST API, GeoJSON and the stream."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import geojson
import pytest
from openapi_spec_validator import validate as validate_openapi

from gateway.hmi.security import CONTENT_SECURITY_POLICY
from gateway.hmi.server import OPENAPI_FILE
from hil.rig import example_document
from tests.support.feeder_sites import feeder_site
from tests.support.hmi import FakeClock, apply, login, normal_positions, origin, served, write_headers


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())


# --------------------------------------------------------------------------- security rules


def test_security_headers_on_every_answer(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path) as (_gw, _hmi, client):
            answers = [
                await client.get(p)
                for p in (
                    "/",
                    "/static/app.js",
                    "/static/app.css",
                    "/api/session",
                    "/api/status",
                    "/static/nothing.js",
                    "/api/nothing",
                )
            ]
            assert [a.status for a in answers] == [200, 200, 200, 200, 401, 404, 401]
            for a in answers:
                assert a.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert a.headers["X-Content-Type-Options"] == "nosniff"
                assert a.headers["X-Frame-Options"] == "DENY"
                assert a.headers["Referrer-Policy"] == "no-referrer"
                assert a.headers["Cache-Control"] == "no-store"
                assert "Strict-Transport-Security" not in a.headers  # plain HTTP on loopback
            assert (
                "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
            )

    run(go)


def test_every_asset_comes_from_the_gateway(tmp_path: Path) -> None:
    """No CDN, no external fonts or tiles: the page and its assets name no other host."""

    async def go() -> None:
        async with served(example_document(), tmp_path) as (_gw, _hmi, client):
            for path in ("/", "/static/app.js", "/static/app.css"):
                text = await (await client.get(path)).text()
                for marker in ("http://", "https://", "//fonts.", "@import", "cdn"):
                    hits = [line for line in text.splitlines() if marker in line and "www.w3.org/2000/svg" not in line]
                    assert not hits, (path, hits)

    run(go)


def test_a_write_without_the_csrf_token_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path) as (gw, _hmi, client):
            me = await login(client, "ada")
            gw.publish("alarms", {"time": 1.0, "source": "CB-045", "severity": "major", "message": "test alarm"})
            alarm = gw.alarms.active()[0].id
            path = f"/api/alarms/{alarm}/acknowledge"
            no_token = await client.post(path, json={}, headers={"Origin": origin(client)})
            wrong = await client.post(path, json={}, headers=write_headers(client, me["csrf"] + "x"))
            other_site = await client.post(
                path, json={}, headers={"X-CSRF-Token": me["csrf"], "Origin": "https://evil.example"}
            )
            fetch_cross = await client.post(
                path, json={}, headers={**write_headers(client, me["csrf"]), "Sec-Fetch-Site": "cross-site"}
            )
            assert [r.status for r in (no_token, wrong, other_site, fetch_cross)] == [403, 403, 403, 403]
            assert [(a.id, a.acknowledged) for a in gw.alarms.active()] == [(alarm, None)]  # not acknowledged
            ok = await client.post(path, json={}, headers=write_headers(client, me["csrf"]))
            assert ok.status == 200
            [acked] = gw.alarms.active()  # CB-045 is not back to normal: the alarm stands, acknowledged
            assert acked.id == alarm and acked.acknowledged_by == "hmi:ada"
            listed = await (await client.get("/api/alarms")).json()
            assert listed["unacknowledged"] == 0 and listed["active"][0]["acknowledged_by"] == "hmi:ada"
            assert [(e["id"], e["origin"]) for e in listed["acknowledged"]] == [(alarm, "hmi:ada")]
            # an alarm with no agent behind it is over once acknowledged
            gw.publish("alarms", {"time": 2.0, "source": "flisr", "severity": "major", "message": "sequence stopped"})
            event = next(a for a in gw.alarms.active() if a.source == "flisr")
            ok = await client.post(
                f"/api/alarms/{event.id}/acknowledge", json={}, headers=write_headers(client, me["csrf"])
            )
            assert ok.status == 200 and [a.id for a in gw.alarms.active()] == [alarm]
            again = await client.post(
                f"/api/alarms/{event.id}/acknowledge", json={}, headers=write_headers(client, me["csrf"])
            )
            assert again.status == 404

    run(go)


def test_login_needs_the_login_token(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path) as (_gw, hmi, client):
            r = await client.post(
                "/api/login",
                json={"user": "ada", "password": "ada's long password"},
                headers={"Origin": origin(client)},
            )
            assert r.status == 403 and not len(hmi.sessions)
            assert (await client.get("/api/status")).status == 401

    run(go)


def test_sessions_expire_when_idle_and_at_their_lifetime(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock()
        async with served(example_document(), tmp_path, clock=clock, session_idle_s=600, session_max_s=3600) as (
            _gw,
            _hmi,
            client,
        ):
            assert (await login(client, "bob"))["status"] == 200
            clock.now += 599
            assert (await client.get("/api/alarms")).status == 200  # used within the idle time
            clock.now += 599
            assert (await client.get("/api/alarms")).status == 200
            clock.now += 600
            assert (await client.get("/api/alarms")).status == 401  # idle 600 s: ended
            assert (await login(client, "bob"))["status"] == 200
            for _ in range(6):
                clock.now += 500
                assert (await client.get("/api/alarms")).status == 200
            clock.now += 600
            assert (await client.get("/api/alarms")).status == 401  # an hour after login, however busy

    run(go)


def test_login_is_rate_limited(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path, login_failures=3, login_window_s=60) as (gw, _hmi, client):
            for _ in range(3):
                assert (await login(client, "ada", "wrong password!"))["status"] == 401
            limited = await login(client, "ada")  # even the right password, until the window passes
            assert limited["status"] == 429 and 0 < limited["retry_after_s"] <= 60
            other = await login(client, "bob")  # the same address
            assert other["status"] == 429
            kinds = [e["kind"] for e in gw.store.events(source="hmi:ada")]
            assert kinds == ["hmi.login_failed"] * 3

    run(go)


def test_no_user_no_login(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path) as (_gw, _hmi, client):
            assert (await login(client, "root", "any password at all"))["status"] == 401
            assert (await login(client, "admin", "admin"))["status"] == 401

    run(go)


def test_viewers_read_only(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path) as (gw, _hmi, client):
            apply(gw, normal_positions(gw))
            me = await login(client, "bob")
            assert me["role"] == "viewer"
            assert (await client.get("/api/state")).status == 200
            gw.publish("alarms", {"time": 1.0, "source": "CB-045", "severity": "major", "message": "x"})
            h = write_headers(client, me["csrf"])
            ack = await client.post(f"/api/alarms/{gw.alarms.active()[0].id}/acknowledge", json={}, headers=h)
            sel = await client.post("/api/control/select", json={"device": "CB-044", "action": "open"}, headers=h)
            assert (ack.status, sel.status) == (403, 403)
            assert "needs the operator role" in (await sel.json())["error"]
            assert (
                gw.alarms.active()[0].acknowledged is None and gw.switching.authority.sbo.holder("CB-044", 0.0) is None
            )

    run(go)


# --------------------------------------------------------------------------- control


def test_control_goes_through_the_authority_with_select_before_operate(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path) as (gw, _hmi, client):
            apply(gw, normal_positions(gw))
            me = await login(client, "ada")
            h = write_headers(client, me["csrf"])
            # operate without a select: the authority's select-before-operate row refuses it
            r = await client.post(
                "/api/control/operate",
                json={"device": "SW-045-1", "action": "open", "select_id": "sel-forged"},
                headers=h,
            )
            body = await r.json()
            assert r.status == 409 and body["reason"] == "not_selected"
            # closing a tie that would parallel the feeders: refused at select, with the row's code
            r = await client.post("/api/control/select", json={"device": "TIE-045-046", "action": "close"}, headers=h)
            body = await r.json()
            assert r.status == 409 and body["interlock"] == "parallel" and body["stage"] == "select"
            assert "would parallel" in body["message"]
            # select, then cancel
            r = await client.post("/api/control/select", json={"device": "SW-045-1", "action": "open"}, headers=h)
            sel = await r.json()
            assert r.status == 200 and sel["select_id"].startswith("sel-")
            held = gw.switching.authority.sbo.holder("SW-045-1", __import__("time").monotonic())
            assert held is not None and held.origin == "hmi:ada"
            r = await client.post("/api/control/cancel", json={"select_id": sel["select_id"]}, headers=h)
            assert r.status == 200
            # select and operate: accepted and carried out (the write cannot reach an IED here: check-back fails)
            sel = await (
                await client.post("/api/control/select", json={"device": "SW-045-1", "action": "open"}, headers=h)
            ).json()
            r = await client.post(
                "/api/control/operate",
                json={"device": "SW-045-1", "action": "open", "select_id": sel["select_id"]},
                headers=h,
            )
            assert r.status == 200 and (await r.json())["op_id"].startswith("op-")
            audit = [e for e in gw.store.events(kinds=("switching.",)) if e.get("origin") == "hmi:ada"]
            kinds = [e["kind"] for e in audit]
            assert kinds[:2] == ["switching.refused", "switching.refused"]
            assert "switching.selected" in kinds and "switching.cancelled" in kinds and "switching.accepted" in kinds
            assert all(e.get("via", "hmi") == "hmi" for e in audit)
            refused = next(e for e in audit if e.get("interlock") == "parallel")
            assert refused["role"] == "operator" and refused["target"] == "TIE-045-046"

    run(go)


# --------------------------------------------------------------------------- interfaces


def test_geojson_is_valid_and_carries_the_agents_coordinates(tmp_path: Path) -> None:
    async def go() -> None:
        doc = example_document()
        for agent in doc["agents"]:
            if agent["id"] == "SUB-003":
                agent["attributes"]["coordinates"] = [-1.3180, 36.8880]
            if agent["id"] == "XFMR-101":
                agent["attributes"]["coordinates"] = [-1.3240, 36.9050]
        async with served(doc, tmp_path) as (gw, _hmi, client):
            apply(gw, normal_positions(gw))
            assert (await client.get("/topology.geojson")).status == 401
            await login(client, "bob")
            r = await client.get("/topology.geojson")
            assert r.status == 200 and r.headers["Content-Type"].startswith("application/geo+json")
            text = await r.text()
            obj = geojson.loads(text)
            assert isinstance(obj, geojson.FeatureCollection) and obj.is_valid, obj.errors()
            features = {f["id"]: f for f in obj["features"]}
            # [longitude, latitude]: LINE-045 starts at (-1.3190, 36.8890) in the site file
            assert features["LINE-045/1"]["geometry"]["coordinates"][0] == [36.889, -1.319]
            assert features["LINE-045/3"]["geometry"]["coordinates"][-1] == [36.908, -1.325]
            assert features["SUB-003"]["geometry"] == {"type": "Point", "coordinates": [36.888, -1.318]}
            assert features["XFMR-101"]["properties"]["coordinates_from"] == "attributes"
            # an element without coordinates sits at its position along its line
            assert features["XFMR-102"]["properties"]["coordinates_from"] == "line position"
            assert features["XFMR-101"]["properties"]["meters"]["count"] == 1250
            assert "LINE-044/1" in json.loads(text)["unplaced"]  # LINE-044 has no coordinates

    run(go)


def test_the_rest_api_is_documented(tmp_path: Path) -> None:
    spec = json.loads(OPENAPI_FILE.read_text())
    validate_openapi(spec)

    async def go() -> None:
        async with served(example_document(), tmp_path) as (_gw, hmi, client):
            routes = {
                r.resource.canonical
                for r in client.server.app.router.routes()  # type: ignore[union-attr]
                if r.resource is not None
            }
            served_api = {r for r in routes if r.startswith("/api/") or r.endswith(".geojson")}
            assert served_api == set(spec["paths"]), served_api ^ set(spec["paths"])
            await login(client, "bob")
            assert (await client.get("/api/openapi.json")).status == 200
            for path in spec["paths"]:
                if "get" in spec["paths"][path] and "{" not in path and path != "/api/stream":
                    assert (await client.get(path)).status == 200, path

    run(go)


def test_trend_history_is_merged_to_a_bounded_number_of_buckets(tmp_path: Path) -> None:
    from gateway.history import HistoryRow

    async def go() -> None:
        async with served(example_document(), tmp_path) as (gw, _hmi, client):
            rows = [
                HistoryRow(
                    "CB-044.ia",
                    1_000_000.0 + 60.0 * k,
                    60.0,
                    100.0 + k % 7,
                    120.0 + k % 7,
                    110.0 + k % 7,
                    111.0,
                    60,
                    1.0,
                )
                for k in range(10_080)
            ]  # a week of minutes
            gw.store.append_history(rows)
            await login(client, "bob")
            r = await client.get(
                "/api/points/CB-044.ia/history", params={"since": "1000000", "until": str(1_000_000 + 7 * 86400)}
            )
            body = await r.json()
            buckets = body["buckets"]
            assert 1000 < len(buckets) <= 2000
            assert min(b["min"] for b in buckets) == 100.0 and max(b["max"] for b in buckets) == 126.0
            assert sum(b["n"] for b in buckets) == 60 * 10_080
            assert (await client.get("/api/points/NOPE/history")).status == 404

    run(go)


def test_the_stream_sends_a_snapshot_then_changes(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(example_document(), tmp_path) as (gw, _hmi, client):
            apply(gw, normal_positions(gw))
            await login(client, "bob")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # not from a page of this HMI
                await client.ws_connect("/api/stream")
            assert refused.value.status == 403
            ws = await client.ws_connect("/api/stream", headers={"Origin": origin(client)})
            first = json.loads((await ws.receive(timeout=10)).data)
            assert first["type"] == "snapshot"
            assert first["state"]["devices"]["CB-045"]["position"] == "closed"
            assert first["state"]["sections"]["LINE-045/2"]["energised"] is True
            await ws.send_str(json.dumps({"points": ["CB-045.*"]}))
            apply(gw, {"CB-045.closed": False, "CB-045.ia": 0.0})  # the breaker opens
            gw.publish("alarms", {"time": 2.0, "source": "CB-045", "severity": "critical", "message": "CB-045 tripped"})
            seen: dict[str, Any] = {}
            for _ in range(40):
                msg = json.loads((await ws.receive(timeout=10)).data)
                seen.setdefault(msg["type"], []).append(msg)
                state = [m for m in seen.get("state", []) if "CB-045" in m["changes"].get("devices", {})]
                if (
                    state
                    and "alarms" in seen
                    and any(
                        p["id"] == "CB-045.closed" and p["value"] is False
                        for m in seen.get("points", [])
                        for p in m["points"]
                    )
                ):
                    break
            changes = state[-1]["changes"]
            assert changes["devices"]["CB-045"]["position"] == "open"
            assert {s: v["energised"] for s, v in changes["sections"].items() if s.startswith("LINE-045")} == {
                "LINE-045/1": False,
                "LINE-045/2": False,
                "LINE-045/3": False,
            }
            assert changes["sections"]["LINE-045/1"]["color"] == "#9e9e9e"
            assert seen["alarms"][-1]["active"][0]["message"] == "CB-045 tripped"
            await ws.close()

    run(go)


def test_a_hundred_thousand_meters_travel_as_counts_per_transformer(tmp_path: Path) -> None:
    async def go() -> None:
        doc = feeder_site(30, 3, customers=1112)
        async with served(doc, tmp_path) as (gw, hmi, client):
            assert sum(g.count for g in gw.site.meter_groups) == 100_080
            await login(client, "bob")
            state = await (await client.get("/api/state")).text()
            assert len(state) < 200_000 and "M1100001" not in state
            parsed = json.loads(state)
            meters = [e["meters"] for e in parsed["elements"].values() if "meters" in e]
            assert len(meters) == 90 and sum(m["count"] for m in meters) == 100_080
            assert all(sum(m["states"].values()) == 1112 for m in meters)
            diagram = await (await client.get("/api/diagram")).text()
            assert len(diagram) < 400_000
            agents = await (await client.get("/api/agents")).json()
            assert len(agents) < 400  # groups, not meters

    run(go)


def test_removing_a_user_or_changing_their_role_ends_their_sessions(tmp_path: Path) -> None:
    from gateway.hmi import users as users_mod
    from gateway.switching.model import Role

    async def go() -> None:
        async with served(example_document(), tmp_path) as (_gw, hmi, client):
            assert (await login(client, "ada"))["status"] == 200
            assert (await client.get("/api/alarms")).status == 200
            path = tmp_path / "hmi-users"
            found = users_mod.load(path)
            found["ada"] = users_mod.User("ada", Role.VIEWER, found["ada"].password_hash)
            users_mod.save(path, found, group=None)
            assert (await client.get("/api/alarms")).status == 401
            assert (await login(client, "ada"))["role"] == "viewer"
            del found["ada"]
            users_mod.save(path, found, group=None)
            assert (await client.get("/api/alarms")).status == 401 and not len(hmi.sessions)
            assert (await login(client, "ada"))["status"] == 401

    run(go)


def test_the_stream_closes_when_its_session_expires(tmp_path: Path) -> None:
    async def go() -> None:
        clock = FakeClock()
        async with served(example_document(), tmp_path, clock=clock, session_idle_s=600) as (_gw, _hmi, client):
            await login(client, "bob")
            ws = await client.ws_connect("/api/stream", headers={"Origin": origin(client)})
            assert json.loads((await ws.receive(timeout=10)).data)["type"] == "snapshot"
            clock.now += 601
            for _ in range(50):
                msg = await ws.receive(timeout=10)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    break
            assert ws.close_code == 4401
            assert (await client.get("/api/alarms")).status == 401

    run(go)


def test_disturbance_records_are_listed_and_downloaded_as_comtrade(tmp_path: Path) -> None:
    """A real trip (protection on fault currents) gives a COMTRADE record: listed with its links,
    its files downloaded by a viewer and read back by an independent reader; only a record's own
    file names are served, only from the records directory."""
    import comtrade

    async def go() -> None:
        async with served(example_document(), tmp_path) as (gw, _hmi, client):
            apply(gw, normal_positions(gw))
            assert (await client.get("/api/records")).status == 401
            await login(client, "bob")
            assert await (await client.get("/api/records")).json() == []
            recorder = gw.recording.recorders["CB-045"]
            for k in range(200):  # load, then a fault until protection trips and the record's window opens
                apply(gw, {f"CB-045.{p}": 60.0 if k < 5 else 3000.0 for p in ("ia", "ib", "ic")})
                await asyncio.sleep(0.02)
                if k > 5 and recorder.next_deadline() is not None:
                    break
            deadline = recorder.next_deadline()
            assert deadline is not None, "no trip"
            apply(gw, {f"CB-045.{p}": 0.0 for p in ("ia", "ib", "ic")})
            assert [s["breaker"] for s in await gw.recording.flush(deadline + 0.01)] == ["CB-045"]

            listed = await (await client.get("/api/records", params={"breaker": "CB-045"})).json()
            assert len(listed) == 1 and listed[0]["trips"] >= 1 and listed[0]["element"] == "51P", listed
            rid = listed[0]["record_id"]
            assert set(listed[0]["links"]) == {"cfg", "dat", "hdr", "json"}
            assert await (await client.get("/api/records", params={"breaker": "CB-044"})).json() == []
            for kind in ("cfg", "dat", "hdr"):
                got = await client.get(listed[0]["links"][kind])
                assert got.status == 200, await got.text()
                assert got.headers["Content-Disposition"] == f'attachment; filename="{rid}.{kind}"'
                (tmp_path / f"{rid}.{kind}").write_bytes(await got.read())
            data = comtrade.load(str(tmp_path / f"{rid}.cfg"), str(tmp_path / f"{rid}.dat"))
            ia = [v for v in data.analog[data.analog_channel_ids.index("ia")] if math.isfinite(v)]  # NaN: no reading
            # load, fault, then the currents gone (to the binary format's resolution)
            assert max(ia) == pytest.approx(3000.0, rel=1e-3) and min(ia) == pytest.approx(0.0, abs=1.0)
            assert any(abs(v - 60.0) < 1.0 for v in ia)
            assert "51P" in (tmp_path / f"{rid}.hdr").read_text()

            # only a record's own files, only from its directory
            outside = tmp_path / "outside.cfg"
            outside.write_text("not a record")
            (gw.recording.directory / "LINKED.cfg").symlink_to(outside)
            for path, status in (
                (f"/api/records/{rid}/{rid}.sh", 400),
                (f"/api/records/{rid}/other.cfg", 400),
                (f"/api/records/{rid}/{rid}", 400),
                ("/api/records/.x/.x.cfg", 400),
                ("/api/records/LINKED/LINKED.cfg", 404),
                ("/api/records/CB-045-1-1/CB-045-1-1.cfg", 404),
                ("/api/records/x/..%2F..%2Fstima.db", 400),
            ):
                got = await client.get(path)
                assert got.status == status, (path, got.status, await got.text())

    run(go)
