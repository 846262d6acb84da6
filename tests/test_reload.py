"""SIGHUP on a real rig: the new configuration is built beside the running one and takes over
protection's live state; a file that validates but cannot be built is refused, nothing changed.

Breakers whose scheme is unchanged keep their state through the reload: a lockout stays a
lockout, a reclaim runs on with its remaining time, and a dead time in progress ends in its
reclose (a restart would lock out instead). IEDs whose settings are unchanged keep polling on
the same link. The gap in protection evaluation is measured in tests/bench/bench_reload.py.
"""

from __future__ import annotations

import signal
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from hil.rig import Rig
from tests.support.faults import close_and_settle, fault_site


def reload_site() -> dict[str, Any]:
    doc = fault_site(reclose=True, relay_poll_ms=20)
    for scheme in doc["protection"]:
        if scheme["breaker"] == "CB-045":  # a second dead time long enough to reload in
            scheme["reclose"] = {
                "shots": 2,
                "dead_times_s": [0.2, 6.0],
                "trip_curves": ["fast", "delayed", "delayed"],
                "reclaim_s": 20.0,
            }
    return doc


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir: Path = tmp_path_factory.mktemp("reload")
    with Rig(reload_site(), workdir, hil_args=("--no-ami",)) as r:
        yield r


def protection(rig: Rig, cb: str) -> dict[str, Any]:
    return dict(rig.daemon_call("status")["protection"]["breakers"][cb])


def sighup(rig: Rig, doc: dict[str, Any]) -> dict[str, Any]:
    """Write `doc` as the site file, send SIGHUP, wait for the reload's outcome; the daemon's status."""
    before = rig.daemon_call("status")
    count = before["reloads"] + before["reload_failures"]
    rig.site_path.write_text(tomli_w.dumps(doc))
    assert rig.daemon is not None
    rig.daemon.send_signal(signal.SIGHUP)
    return rig.wait(
        lambda: (s := rig.daemon_call("status"))["reloads"] + s["reload_failures"] > count and s,
        "the reload to finish",
        30,
    )


def poll_period_changed(doc: dict[str, Any], ied_id: str, period_ms: int) -> dict[str, Any]:
    doc = tomllib.loads(tomli_w.dumps(doc))  # a deep copy
    for ied in doc["ieds"]:
        if ied["id"] == ied_id:
            ied["poll_period_ms"] = period_ms
    return doc


def test_lockout_and_reclaim_carry_over_a_reload(rig: Rig) -> None:
    # CB-046 (IEC 61850 bay): a permanent fault ends in lockout; the fault is then cleared
    rig.hil_call("fault", line="LINE-046", distance_m=500.0, kind="3ph", transient=False)
    rig.wait(lambda: protection(rig, "CB-046")["locked_out"], "CB-046 lockout", 30)
    rig.hil_call("clear")
    # CB-045 (Modbus TCP relay): a transient fault, tripped and reclosed: in its 20 s reclaim
    rig.hil_call("fault", line="LINE-045", distance_m=1500.0, kind="3ph", transient=True)
    rig.wait(lambda: protection(rig, "CB-045")["reclose_state"] == "reclaim", "CB-045 in reclaim", 30)
    # a new site file: one IED's poll period changes, protection schemes do not
    status = sighup(rig, poll_period_changed(rig.doc, "IED-CB-044", 150))
    report = status["last_reload"]
    assert status["reloads"] == 1 and report["ok"], report
    after = status["protection"]["breakers"]
    assert after["CB-046"]["locked_out"], "a breaker locked out before the reload is locked out after it"
    assert after["CB-045"]["reclose_state"] == "reclaim" and after["CB-045"]["shot"] == 1
    assert 0 < after["CB-045"]["timer_remaining_s"] < 20.0, "the reclaim runs on; it does not start again"
    assert {"CB-045", "CB-046"} <= set(report["breakers_handed_over"])
    assert "IED-CB-044" in report["ieds_restarted"] and "IED-CB-045" in report["ieds_kept_running"]
    with pytest.raises(Exception, match="locked out"):
        rig.daemon_call("breaker.operate", breaker="CB-046", action="close", authorised=False)
    # the reclaim runs out as it would have without the reload
    rig.wait(lambda: protection(rig, "CB-045")["reclose_state"] == "ready", "CB-045 reclaim to run out", 30)
    close_and_settle(rig, "CB-046")


def test_a_dead_time_in_progress_ends_in_its_reclose(rig: Rig) -> None:
    cb = "CB-045"
    before = len([e for e in rig.daemon_call("events", source=cb, limit=10_000) if e["kind"] == "protection.reclose"])
    rig.hil_call("fault", line="LINE-045", distance_m=700.0, kind="3ph", transient=False)
    # trip, 0.2 s, reclose onto the fault, trip: now in the 6 s second dead time
    rig.wait(
        lambda: (p := protection(rig, cb))["reclose_state"] == "dead_time" and p["shot"] == 2,
        "CB-045 in its second dead time",
        30,
    )
    status = sighup(rig, poll_period_changed(rig.doc, "IED-CB-044", 200))
    assert status["last_reload"]["ok"]
    # the sequence goes on: the second reclose comes at the end of the dead time, onto the
    # permanent fault, and the last trip locks out
    rig.wait(lambda: protection(rig, cb)["locked_out"], f"{cb} lockout", 30)
    events = rig.daemon_call("events", source=cb, limit=10_000)
    recloses = [e for e in events if e["kind"] == "protection.reclose"]
    assert len(recloses) - before == 2, [e["kind"] for e in events[-12:]]
    assert cb in status["last_reload"]["breakers_handed_over"]
    rig.hil_call("clear")
    close_and_settle(rig, cb)


def test_a_file_that_validates_but_cannot_be_built_is_refused(rig: Rig, tmp_path: Path) -> None:
    bad_ca = tmp_path / "not-a-certificate.pem"
    bad_ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    doc = poll_period_changed(rig.doc, "IED-CB-044", 300)
    doc["uplink"]["ca_file"] = str(bad_ca)
    applied = rig.daemon_call("status")["updates_applied"]
    status = sighup(rig, doc)
    report = status["last_reload"]
    assert status["reload_failures"] == 1 and not report["ok"]
    assert report["stage"] == "build" and "ca_file" in report["error"], report
    # the running configuration is untouched: same IED settings, still polling, still protecting
    assert rig.daemon.poll() is None  # type: ignore[union-attr]
    rig.wait(lambda: rig.daemon_call("status")["updates_applied"] > applied + 50, "values after the refusal", 20)
    assert protection(rig, "CB-045")["reclose_state"] == "ready"
    rig.site_path.write_text(tomli_w.dumps(rig.doc))
