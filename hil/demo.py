"""`make demo`: the simulated substation, a local broker and the real daemon, working together.

Starts, all on 127.0.0.1: mosquitto (TLS with client certificates for the uplink, plain for
the AMI data concentrators), `stima-hil serve` with the example site SUB-003 and
`stima-gatewayd` against it. Then shows a live view of key points read from the daemon and a
count of the messages arriving on the broker, injects a transient fault on LINE-045 so the
protection trips and recloses CB-045, then plays regional SCADA: signed select-before-operate
commands over MQTT open CB-044 and close it again. Last, a permanent fault in the middle
section of LINE-045: CB-045 recloses twice and locks out, and FLISR (automatic here) locates
the fault from the switches' fault-passage indicators, opens the switches around it, closes
CB-045 again for the first section and picks up the last one through the tie to LINE-046.
Stops everything on Ctrl-C (or after --duration).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.commands import sign_command
from gateway.keys import public_bytes
from gateway.control import ControlError, DaemonNotRunning
from hil.broker import TlsFiles
from hil.rig import Rig
from hil.scenarios.fault_isolation import site as fault_isolation_site

ROOT = Path(__file__).resolve().parents[1]
WATCHED = [
    "SUB-003.total_load_kw",
    "SUB-003.bus_voltage_kv",
    "CB-044.ia",
    "CB-044.closed",
    "CB-045.ia",
    "CB-045.closed",
    "CB-046.ia",
    "CB-046.closed",
    "XFMR-101.load_kw",
    "XFMR-101.top_oil_temp_c",
    "XFMR-101.tap_position",
    "CAP-301.bus_voltage_kv",
    "CAP-301.steps_active",
    "SOLAR-201.active_power_kw",
    "SW-045-1.closed",
    "SW-045-2.closed",
    "TIE-045-046.closed",
]


class BrokerCounter:
    """Counts what arrives on the broker under the gateway's topic prefix."""

    def __init__(self, tls: TlsFiles, port: int, prefix: str) -> None:
        self.counts: Counter[str] = Counter()
        self.values = 0
        self.last_event = ""
        self.last_protection = ""
        """The last protection event (trip, reclose, lockout): agents' events follow it within a second."""
        self.events: Counter[str] = Counter()
        """Every event and alarm seen, as "<source> <kind>" (the summary at the end lists them)."""
        self.results: dict[str, dict[str, Any]] = {}
        """Command results by command id (what SCADA reads on cmd_result/#)."""
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stima-demo-viewer", protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(tls.ca_file), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.split("/")[3] if msg.topic.count("/") >= 3 else msg.topic
        with self._lock:
            self.counts[kind] += 1
            try:
                payload = msgpack.unpackb(msg.payload, raw=False)
            except Exception:
                return
            if isinstance(payload, dict):
                if kind == "cmd_result" and isinstance(payload.get("id"), str):
                    self.results[payload["id"]] = payload
                values = payload.get("values") or payload.get("points") or payload.get("metrics")
                if isinstance(values, list | dict):
                    self.values += len(values)
                if kind in ("events", "alarms"):
                    what = payload.get("kind") or payload.get("message", "")
                    self.last_event = f"{payload.get('source', '?')}: {what}"
                    self.events[f"{payload.get('source', '?')} {what}"] += 1
                    if str(payload.get("kind", "")).startswith("protection."):
                        self.last_protection = f"{payload.get('source', '?')}: {payload['kind']}"

    def stop(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


class Scada:
    """Regional SCADA in miniature: opens then closes one breaker with signed select-before-operate
    commands published on the broker, reading each result before the next step."""

    def __init__(
        self, counter: BrokerCounter, key: Any, key_name: str, base: str, substation: str, breaker: str
    ) -> None:
        self.counter, self.key, self.base, self.substation, self.breaker = counter, key, base, substation, breaker
        self.key_name = key_name
        """The SCADA host's own Ed25519 key and its name in the gateway's key book."""
        self.plan = [
            ("breaker/select", "open"),
            ("breaker/operate", "open"),
            ("breaker/select", "close"),
            ("breaker/operate", "close"),
        ]
        self.waiting: str | None = None
        self.select_id = ""
        self.hold_until = 0.0
        self.note = ""
        self.done: list[str] = []
        """Operations carried out, as "<action> <breaker> ok" or "... refused: why"."""

    def step(self, now: float) -> None:
        """Advance by at most one command; called from the demo's refresh loop."""
        if self.waiting is not None:
            with self.counter._lock:
                result = self.counter.results.get(self.waiting)
            if result is None:
                return
            self.waiting = None
            command, action = self.plan.pop(0)
            if not result.get("ok"):
                self.note = f"SCADA {command} {action} {self.breaker} refused: {result.get('error')}"
                self.done.append(f"{command} {action} {self.breaker} refused: {result.get('error')}")
                self.plan.clear()
                return
            if command == "breaker/select":
                self.select_id = str(result.get("select_id", ""))
                self.note = f"SCADA selected {self.breaker} for {action} (select {self.select_id})"
            else:
                self.note = f"SCADA operated: {action} {self.breaker} (signed command, result ok)"
                self.done.append(f"{action} {self.breaker} ok")
                self.hold_until = now + 8.0  # leave it open a while before closing again
        if not self.plan or now < self.hold_until:
            return
        command, action = self.plan[0]
        args: dict[str, Any] = {"breaker": self.breaker, "action": action}
        if command == "breaker/operate":
            args["select_id"] = self.select_id
        envelope = sign_command(
            self.key, command, args, "demo-scada", time.time(), substation=self.substation, key_name=self.key_name
        )
        self.counter.client.publish(f"{self.base}/cmd/{command}", msgpack.packb(envelope, use_bin_type=True), qos=1)
        self.waiting = envelope["id"]


def render(
    points: list[dict[str, Any]], counter: BrokerCounter, status: dict[str, Any], elapsed: float, note: str
) -> str:
    lines = [f"Stima demo — SUB-003 — {elapsed:5.0f} s   (Ctrl-C stops everything)", ""]
    for p in points:
        value = p["value"]
        shown = f"{value:10.2f}" if isinstance(value, float) else f"{value!s:>10}"
        quality = p["quality"] + ("" if p["reason"] == "none" else f"({p['reason']})")
        lines.append(f"  {p['id']:<26} {shown} {p['unit']:<5} {quality}")
    ieds = status.get("ieds", [])
    online = sum(1 for i in ieds if i["state"] == "online")
    pts = status.get("points", {})
    up = status.get("uplink", {})
    with counter._lock:
        counts = dict(counter.counts)
        values = counter.values
        last_event = counter.last_event
        last_protection = counter.last_protection
    lines += [
        "",
        f"  IEDs online {online}/{len(ieds)}   points good {pts.get('good', 0)}/{pts.get('total', 0)}   "
        f"uplink {up.get('state', '?')}, spool {up.get('spool_depth', 0)}",
        f"  broker: {sum(counts.values())} messages ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
        f"{values} values",
        f"  last event: {last_event or '-'}",
        f"  last protection event: {last_protection or '-'}",
        f"  {note}",
    ]
    return "\n".join(lines)


def flisr_note(rig: Rig) -> tuple[str | None, dict[str, Any] | None]:
    """What FLISR is doing now (the latest FLISR sequence), and the sequence once it is over."""
    seqs = [s for s in rig.daemon_call("switching.list") if s["source"] == "flisr"]
    if not seqs:
        return None, None
    seq = seqs[-1]
    steps = ", ".join(f"{s['action']} {s['device']}" for s in seq["steps"][: len(seq["results"])])
    plan = seq["plan"]
    text = (
        f"FLISR {seq['status']}: fault located in {', '.join(plan['located_zone'])} by {plan['located_by']}; "
        f"{steps or 'planning'}; {plan['customers_restored']} of {plan['customers_interrupted']} customers "
        "restored"
    )
    return text, seq if seq["status"] in ("done", "failed", "invalid") else None


def summary(
    rig: Rig, counter: BrokerCounter, scada: Scada, positions_seen: set[object], flisr: dict[str, Any] | None = None
) -> list[str]:
    """What the demo showed, in a few lines printed at the end (what a reader, or a test, checks)."""
    with counter._lock:
        events = sorted(counter.events.items())
    lines = ["demo: events on the broker: " + (", ".join(f"{e} x{n}" for e, n in events) or "none")]
    lines.append("demo: SCADA: " + (", ".join(scada.done) or "no command carried out"))
    seen = sorted("open" if v is False else "closed" if v is True else str(v) for v in positions_seen if v is not None)
    lines.append(f"demo: {scada.breaker} positions seen: {', '.join(seen) or 'none'}")
    if flisr is not None:
        plan = flisr["plan"]
        lines.append(
            f"demo: FLISR: {flisr['status']}; located {', '.join(plan['located_zone'])}; "
            + ", ".join(f"{s['action']} {s['device']}" for s in flisr["steps"])
            + f"; {plan['customers_restored']} of {plan['customers_interrupted']} customers restored, "
            f"{plan['customers_left_out']} left out"
        )
    try:
        status = rig.daemon_call("status")
        points = {p["id"]: p["value"] for p in rig.daemon_call("points.read", ids=WATCHED)}
    except (DaemonNotRunning, ControlError, OSError, json.JSONDecodeError) as exc:
        lines.append(f"demo: at the end: the daemon did not answer ({exc})")
        return lines
    ieds = status.get("ieds", [])
    pts = status.get("points", {})
    breakers = ", ".join(
        f"{b} {'closed' if points.get(f'{b}.closed') else 'open'}"
        for b in ("CB-044", "CB-045", "CB-046", "SW-045-1", "SW-045-2", "TIE-045-046")
    )
    lines.append(
        f"demo: at the end: {breakers}; IEDs online {sum(1 for i in ieds if i['state'] == 'online')}/{len(ieds)}, "
        f"points good {pts.get('good', 0)}/{pts.get('total', 0)}, uplink {status.get('uplink', {}).get('state', '?')}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.demo", description=__doc__)
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C on a terminal, 55 s otherwise)",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / ".run" / "demo")
    parser.add_argument(
        "--fault-at", type=float, default=15.0, help="inject a transient fault on LINE-045 after N s (0: never)"
    )
    parser.add_argument(
        "--scada-at",
        type=float,
        default=25.0,
        help="open and close CB-044 by signed MQTT commands after N s (0: never)",
    )
    parser.add_argument(
        "--flisr-at",
        type=float,
        default=40.0,
        help="a permanent fault in LINE-045's middle section after N s, for FLISR (0: never)",
    )
    args = parser.parse_args(argv)
    interactive = sys.stdout.isatty()
    duration = args.duration if args.duration is not None else (None if interactive else 55.0)
    workdir: Path = args.workdir
    print(f"demo: starting broker, simulator and daemon in {workdir} (logs: {workdir}/*.log)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    doc = fault_isolation_site()  # the example site, FLISR automatic, CB-045's reclose dead times 0.5 s and 1 s
    workdir.mkdir(parents=True, exist_ok=True)
    # the SCADA host's own key pair: the gateway is given only its public key, with the operator role
    scada_key = Ed25519PrivateKey.generate()
    doc["uplink"]["commands"] = {**doc["uplink"].get("commands", {}), "enabled": True, "scheme": "ed25519"}
    with Rig(doc, workdir, hil_args=("--ami-interval", "30s")) as rig:
        rig.daemon_call(
            "keys.add", name="demo-scada", public_key=public_bytes(scada_key.public_key()).hex(), role="operator"
        )
        counter = BrokerCounter(rig.tls, rig.tls_port, rig.doc["uplink"]["topic_prefix"])
        site = rig.doc["site"]
        base = f"{rig.doc['uplink']['topic_prefix']}/{site['region']}/{site['substation_id']}"
        scada = Scada(counter, scada_key, "demo-scada", base, site["substation_id"], "CB-044")
        started = time.monotonic()
        fault_done = False
        flisr_fault_done = False
        flisr_seq: dict[str, Any] | None = None
        positions_seen: set[object] = set()
        """Every position of the SCADA breaker read while the demo ran (it must be seen open)."""
        final: list[str] = []
        note = "values flowing: IEDs → daemon → broker"
        try:
            while not stop.is_set():
                elapsed = time.monotonic() - started
                if duration is not None and elapsed > duration:
                    break
                if args.fault_at and not fault_done and elapsed > args.fault_at:
                    fault_done = True
                    try:
                        rig.hil_call("fault", line="LINE-045", distance_m=2300.0, kind="3ph", transient=True)
                        note = "injected a transient 3-phase fault on LINE-045 at 2.3 km: watch CB-045 trip and reclose"
                    except Exception as exc:
                        note = f"fault injection failed: {exc}"
                if args.flisr_at and not flisr_fault_done and elapsed > args.flisr_at:
                    flisr_fault_done = True
                    try:
                        rig.hil_call("fault", line="LINE-045", distance_m=2700.0, kind="3ph", transient=False)
                        note = (
                            "injected a permanent 3-phase fault on LINE-045 at 2.7 km (section 2 of 3): "
                            "watch CB-045 lock out and FLISR restore around it"
                        )
                    except Exception as exc:
                        note = f"fault injection failed: {exc}"
                if flisr_fault_done and flisr_seq is None:
                    with contextlib.suppress(DaemonNotRunning, ControlError, OSError, json.JSONDecodeError):
                        text, flisr_seq = flisr_note(rig)
                        note = text or note
                try:
                    points = rig.daemon_call("points.read", ids=WATCHED)
                    status = rig.daemon_call("status")
                except (DaemonNotRunning, ControlError, OSError, json.JSONDecodeError):
                    stop.wait(0.5)
                    continue
                positions_seen.update(p["value"] for p in points if p["id"] == f"{scada.breaker}.closed")
                screen = render(points, counter, status, elapsed, note)
                if interactive:
                    sys.stdout.write("\x1b[H\x1b[2J" + screen + "\n")
                else:
                    sys.stdout.write(screen + "\n\n")
                sys.stdout.flush()
                next_screen = time.monotonic() + (1.0 if interactive else 5.0)
                while not stop.is_set() and time.monotonic() < next_screen:
                    now = time.monotonic() - started
                    if args.scada_at and now > args.scada_at:
                        scada.step(now)
                        note = scada.note or note
                        if scada.done and len(scada.done) < 2:  # between the open and the close
                            with contextlib.suppress(DaemonNotRunning, ControlError, OSError, json.JSONDecodeError):
                                read = rig.daemon_call("points.read", ids=[f"{scada.breaker}.closed"])
                                positions_seen.update(p["value"] for p in read)
                    stop.wait(0.2)
            final = summary(rig, counter, scada, positions_seen, flisr_seq)
        finally:
            counter.stop()
    total = sum(counter.counts.values())
    for line in final:
        print(line, flush=True)
    print(f"demo: stopped. {total} messages arrived on the broker ({counter.values} values).", flush=True)
    return 0 if total > 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
