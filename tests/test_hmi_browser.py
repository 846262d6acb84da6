"""The HMI in a real browser: Debian's headless Chromium, driven through ChromeDriver.

On the HIL rig (the real daemon, the simulated substation, real Modbus and IEC 61850): log in,
the diagram's colours before and after a simulated trip, an alarm appearing and acknowledged, a
trend drawn, a refused close showing its interlock code and reason, the trip's COMTRADE record
downloaded, a viewer without control.
On a 30-feeder site with 100,000 meters: the diagram renders with no label over another.
Screenshots are kept under each test's tmp folder, in `screenshots/`.
"""

from __future__ import annotations

import asyncio
import base64
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import comtrade
import pytest

from gateway.agents import visualization as viz
from hil.rig import ROOT, Rig, example_document
from tests.support import browser as br
from tests.support.feeder_sites import feeder_site
from tests.support.hmi import PASSWORDS, served

pytestmark = pytest.mark.skipif(br.available() is not None, reason=str(br.available()))


@contextmanager
def served_in_thread(doc: dict[str, Any], workdir: Path) -> Iterator[str]:
    """A gateway built from `doc` (not polling) and its HMI, on a loop of their own; the URL."""
    ready, stop = threading.Event(), threading.Event()
    found: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            try:
                async with served(doc, workdir) as (_gw, _hmi, client):
                    found["url"] = str(client.make_url("/"))
                    ready.set()
                    while not stop.is_set():
                        await asyncio.sleep(0.05)
            except BaseException as exc:
                found["error"] = exc
                ready.set()

        asyncio.run(main())

    thread = threading.Thread(target=serve, name="hmi-under-test")
    thread.start()
    try:
        assert ready.wait(120), "the HMI did not start"
        if "error" in found:
            raise found["error"]
        yield found["url"]
    finally:
        stop.set()
        thread.join(30)


OVERLAPS_JS = """
const texts = [...document.querySelectorAll('#diagram text')];
const boxes = texts.map(t => { const r = t.getBoundingClientRect();
  return {text: t.textContent, x: r.left, y: r.top, w: r.width, h: r.height,
          size: parseFloat(getComputedStyle(t).fontSize)}; });
const bad = [];
for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
  const a = boxes[i], b = boxes[j];
  if (a.x + a.w - 0.5 > b.x && b.x + b.w - 0.5 > a.x && a.y + a.h - 0.5 > b.y && b.y + b.h - 0.5 > a.y)
    bad.push(a.text + ' / ' + b.text);
}
return {labels: boxes.length, overlapping: bad.slice(0, 10), smallest: Math.min(...boxes.map(b => b.size)),
        nodes: document.querySelectorAll('#diagram *').length};
"""


def test_thirty_feeders_and_a_hundred_thousand_meters_render_readably(tmp_path: Path) -> None:
    doc = feeder_site(30, 3, customers=1112)
    with served_in_thread(doc, tmp_path) as url, br.chromium(tmp_path) as b:
        b.log_in(url, "bob", PASSWORDS["bob"])
        b.wait(lambda: len(b.finds("#diagram g.device")) == 30 + 60 + 29, "the diagram")
        b.wait(lambda: b.find("#link").get_attribute("class") == "link up", "the live stream")
        found = b.js(OVERLAPS_JS)
        assert found["overlapping"] == [] and found["smallest"] >= 12.0, found
        assert found["labels"] >= 30 * 3 + 30 * 3 + 119  # sections, transformers, devices
        assert len(b.finds("#diagram .meter-dot")) == 90  # one cluster per transformer
        assert found["nodes"] < 3000  # not 100,000 of anything
        assert b.finds("#diagram text")[0].is_displayed()
        b.shot("thirty-feeders")
        b.click('#diagram g.element[data-id="XFMR-17-2"]')
        b.wait(
            lambda: "Meters" in b.find("#details-body").text or "meters" in b.find("#details-body").text.lower(),
            "the transformer's details",
        )
        assert not b.find("#control").is_displayed()  # a viewer gets no control
        b.shot("thirty-feeders-details")


FETCH_JS = """
return (async (href) => {
  const answer = await fetch(href, {credentials: 'same-origin'});
  if (!answer.ok) throw new Error(href + ': ' + answer.status);
  const bytes = new Uint8Array(await answer.arrayBuffer());
  let text = '';
  for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return btoa(text);
})(arguments[0]);
"""
"""A file the page links to, fetched with the page's session: its bytes in base64."""


def _rig_document() -> dict[str, Any]:
    doc = example_document()
    doc["hmi"] = {"enabled": True, "users_file": "hmi-users", "session_idle_s": 3600}
    doc["flisr"] = {"mode": "off"}
    doc["history"] = {"interval_s": 1.0}
    for scheme in doc["protection"]:
        if scheme["breaker"] == "CB-045":  # one quick reclose onto the fault, then lockout: the breaker stays open
            scheme["reclose"] = {
                "shots": 1,
                "dead_times_s": [0.5],
                "trip_curves": ["fast", "delayed"],
                "reclaim_s": 5.0,
            }
    return doc


def _add_user(rig: Rig, name: str, role: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "hmi",
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "--config",
            str(rig.site_path),
            "--no-group",
        ],
        input=PASSWORDS[name] + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _stroke(b: br.Browser, section: str) -> str:
    return str(b.find(f'#diagram line.section-line[data-id="{section}"]').get_attribute("stroke"))


def _position(b: br.Browser, device: str) -> str:
    return str(b.find(f'#diagram g.device[data-id="{device}"] rect.symbol').get_attribute("data-position"))


@pytest.mark.slow
def test_hmi_on_the_rig(tmp_path: Path) -> None:
    rig = Rig(_rig_document(), tmp_path)
    _add_user(rig, "ada", "operator")
    _add_user(rig, "bob", "viewer")
    with rig, br.chromium(tmp_path) as b:
        url = rig.hmi_url + "/"
        # login: a wrong password is refused on the page, the right one opens the diagram
        b.log_in(url, "ada", "not the password")
        b.wait(lambda: "wrong user name or password" in b.find("#login-error").text, "the login refusal")
        b.type("#login-password", PASSWORDS["ada"])
        b.click("#login-submit")
        b.wait(lambda: b.find("#who").text == "ada (operator)", "the operator logged in")
        b.wait(
            lambda: _position(b, "CB-045") == "closed" and _stroke(b, "LINE-045/3") == viz.YELLOW,
            "the live diagram",
            30,
        )
        assert _stroke(b, "LINE-046/1") == viz.YELLOW  # 11 kV lines are yellow
        assert "dashed" in str(
            b.find('#diagram line.section-line[data-id="LINE-046/2"]').get_attribute("class")
        ) or "flow" in str(b.find('#diagram line.section-line[data-id="LINE-046/2"]').get_attribute("class"))
        assert b.find('#diagram g.device[data-id="CB-045"] rect.symbol').get_attribute("fill") == viz.RED
        b.shot("diagram-in-service")

        # a refused close: TIE-045-046 would parallel two feeders of one source
        b.click('#diagram g.device[data-id="TIE-045-046"]')
        b.wait(lambda: b.find("#control").is_displayed(), "the control panel")
        b.click("#ctl-close")
        b.wait(lambda: "refused" in str(b.find("#control-result").get_attribute("class")), "the refusal")
        result = b.find("#control-result")
        assert result.get_attribute("data-interlock") == "parallel"
        assert result.text.startswith("Refused (parallel): closing TIE-045-046 would parallel")
        b.shot("refused-close")
        audit = [e for e in rig.daemon_call("events", source="TIE-045-046") if e["kind"] == "switching.refused"]
        assert (
            audit
            and audit[-1]["origin"] == "hmi:ada"
            and audit[-1]["via"] == "hmi"
            and audit[-1]["interlock"] == "parallel"
            and audit[-1]["stage"] == "select"
        )
        b.click("#details-close")

        # a simulated fault: protection trips CB-045 and the feeder goes grey
        rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph")
        b.wait(lambda: _position(b, "CB-045") == "open", "CB-045 open on the diagram", 30)
        b.wait(lambda: all(_stroke(b, f"LINE-045/{n}") == viz.DEENERGISED for n in (1, 2, 3)), "LINE-045 greyed", 10)
        assert b.find('#diagram g.device[data-id="CB-045"] rect.symbol').get_attribute("stroke") == viz.GREEN
        assert _stroke(b, "LINE-044/1") == viz.YELLOW and _stroke(b, "LINE-046/1") == viz.YELLOW
        b.shot("diagram-after-trip")

        # the alarm appears; the operator acknowledges it
        b.click('header .tab[data-tab="alarms"]')

        def fault_alarm() -> Any:
            # read in one go: the table is redrawn as alarms change, leaving a row found before stale
            for r in b.finds("#alarms-table tbody tr"):
                if "LINE-045 fault" in r.text:
                    return r.get_attribute("data-alarm"), r.find_element("css selector", "td.condition").text
            return None

        alarm_id, condition = b.wait(fault_alarm, "the fault alarm", 30)
        b.shot("alarm-raised")
        assert condition == "standing"  # LINE-045 is still faulted
        b.click(f'#alarms-table button.ack[data-alarm="{alarm_id}"]')
        b.wait(
            lambda: (
                b.find(f'#alarms-table tr[data-alarm="{alarm_id}"] td.ack-state').text.startswith("hmi:ada at")
                and "hmi:ada" in b.find(f'#acked-table tr[data-acked="{alarm_id}"]').text
            ),
            "the acknowledgement",
        )
        assert not b.finds(f'#alarms-table button.ack[data-alarm="{alarm_id}"]')
        b.shot("alarm-acknowledged")
        acked = [e for e in rig.daemon_call("events", since=0.0, limit=2000) if e["kind"] == "alarm.acknowledged"]
        assert [(e["id"], e["origin"]) for e in acked] == [(alarm_id, "hmi:ada")]

        # a trend of a feeder current, from the history and the live stream
        b.click('header .tab[data-tab="trends"]')
        b.type("#trend-point", "CB-044.ia")
        b.find("#trend-window").send_keys("15 min")
        rig.wait(lambda: len(rig.daemon_call("points.history", id="CB-044.ia")) >= 3, "three history intervals", 30)
        b.click('#trend-form button[type="submit"]')
        b.wait(lambda: int(b.find("#trend").get_attribute("data-points") or 0) >= 3, "the trend drawn", 30)
        xs = [float(p.split(",")[0]) for p in b.find("#trend polyline.mean").get_attribute("points").split()]
        assert len(xs) >= 3 and xs == sorted(xs) and 60.0 <= xs[0] and xs[-1] <= 890.0  # in time order, on the plot
        b.shot("trend")

        # the protection timeline lists the trip
        b.click('header .tab[data-tab="events"]')
        b.click('#events-form [data-preset="protection.,fault."]')
        b.wait(
            lambda: any(r.get_attribute("data-kind") == "protection.trip" for r in b.finds("#events-table tbody tr")),
            "the trip in the protection timeline",
        )
        b.shot("protection-timeline")

        # the trip's disturbance record: listed on the page, its COMTRADE files downloaded with the
        # session and read back by an independent reader
        def record_row() -> Any:
            # read in one go: a row found before the table is redrawn goes stale
            for r in b.finds('#records-table tr[data-breaker="CB-045"]'):
                cells = [r.find_element("css selector", f"td:nth-child({n})").text for n in (5, 6)]
                links = {
                    k: r.find_element("css selector", f"a.record-{k}").get_attribute("href") for k in ("cfg", "dat")
                }
                return r.get_attribute("data-record"), cells[0], cells[1], links
            return None

        rid, lockout, location, links = b.wait(record_row, "the disturbance record of the trip", 60)
        assert lockout == "yes"  # the lockout is in it
        assert location.startswith("LINE-045/2 ")  # fault at 2300 m
        b.shot("disturbance-record")
        for kind in ("cfg", "dat"):
            (tmp_path / f"{rid}.{kind}").write_bytes(base64.b64decode(b.js(FETCH_JS, links[kind])))
        data = comtrade.load(str(tmp_path / f"{rid}.cfg"), str(tmp_path / f"{rid}.dat"))
        ia = [v for v in data.analog[data.analog_channel_ids.index("ia")] if math.isfinite(v)]
        assert max(ia) > 1000.0 and min(ia) < 1.0  # the fault current, then the open breaker's zero

        # a viewer reads and cannot act
        b.click("#logout")
        b.wait(
            lambda: b.find("#login-form").is_displayed() and "Logged out" in b.find("#login-error").text, "logged out"
        )
        assert rig.daemon_call("status")["hmi"]["sessions"] == 0
        b.log_in(url, "bob", PASSWORDS["bob"])
        b.wait(lambda: b.find("#who").text == "bob (viewer)", "the viewer logged in")
        b.wait(lambda: _position(b, "CB-045") == "open", "the diagram for the viewer")
        b.click('#diagram g.device[data-id="CB-045"]')
        b.wait(
            lambda: b.finds(f'#details-records tr[data-record="{rid}"] a.record-cfg'),
            "CB-045's details with its disturbance record",
        )
        assert "Switching" in b.find("#details-body").text
        assert not b.find("#control").is_displayed()
        b.js("arguments[0].scrollIntoView()", b.find("#details-records"))
        b.shot("viewer-breaker-details")
        b.click('header .tab[data-tab="alarms"]')
        assert not b.finds("#alarms-table button.ack")
        b.shot("viewer")
        rig.hil_call("clear")
