"""Bad input: every parser of the gateway fuzzed with 100,000 inputs or more."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

from tests.reliability.common import Report, part_main

TITLE = "Bad input (fuzzing the parsers)"
BUDGET_S = 1800  # about 11 minutes on a quiet 2-core machine; 900 s ran out at load average 14
INPUTS = 100_000
METHOD = f"""
Each parser takes bytes as they arrive and runs the gateway's own code on them
(`tests/reliability/fuzzing.py`): the site file (TOML → schema → cross-references, as `stima config
validate` and a reload read it), Modbus TCP and RTU response frames (pymodbus framing, then the
master's block decoder into the example site's points), IEC 61850 values (MMS BER decoded by
libiec61850, then the client's value and quality decoder for each point kind), MQTT commands
unsigned (anything: msgpack decoding as the uplink does it, then the verifier) and signed
(envelopes signed with the right key around random commands and arguments, so the argument
checks are reached), AMI batches, control-socket request lines, and a DER's readings stepped
through the renewable agent. {INPUTS:,} inputs per parser, from seeds by mutation and from
structure-aware generators. An input must parse or be refused with the parser's documented
error carrying a message; any other exception is a crash, an input over 1 s a hang.
Nothing catches `Exception` on the way, and a canary parser with a planted bug must be
reported as crashing, so these fuzz runs can fail. The gateway reads no SCL file (IEDs are
described in the site file) and DER values arrive as Modbus or IEC 61850 points, which the
targets above cover. The C protection core is fuzzed separately (next part). Then the same
kinds of bad input go to a running daemon on the rig: 2,000 bad control-socket requests (and one
over 64 KiB, one nested 30,000 deep), 2,000 bad MQTT commands signed and unsigned on its command
topics, 1,000 bad AMI batches on the AMI broker; the daemon must answer every request, keep every
IED online and the uplink connected, and log no traceback.
"""


def _fuzz_one(index: int, inputs: int) -> dict[str, Any]:
    logging.disable(logging.CRITICAL)  # pymodbus logs every bad frame
    from tests.reliability.fuzzing import all_targets, run_target

    target = all_targets()[index]
    return run_target(target, inputs, seed=1000 + index).summary()


def _live(report: Report, workdir: Path, quick: bool) -> None:
    """The same kinds of bad input sent to a running daemon: it must answer and keep serving."""
    import random
    import socket
    import time

    import msgpack
    import paho.mqtt.client as mqtt

    from hil.rig import Rig
    from tests.reliability.fuzzing import command_targets, control_request_target, mutate, random_value
    from tests.reliability.rig_tools import BrokerLog, base_topic, example_with_commands

    doc, _key = example_with_commands(workdir)
    n = 300 if quick else 2000
    rng = random.Random(21)
    with Rig(doc, workdir) as rig:
        log_path = rig.workdir / "gatewayd.log"
        tracebacks_before = log_path.read_text(errors="replace").count('"exc":')
        broker_log = BrokerLog(rig.tls, rig.tls_port, base_topic(rig), client_id="reliability-fuzz")
        control = control_request_target()
        sock_path = str(rig.runtime_dir / "control.sock")
        answered = 0
        extreme = [
            b'{"op": "status", "args": {"x": "' + b"a" * 100_000 + b'"}}\n',
            b"[" * 30_000 + b"]" * 30_000 + b"\n",
            b"\xff\xfe\x00garbage\n",
        ]
        for i in range(n + len(extreme)):
            data = (
                extreme[i - n]
                if i >= n
                else (
                    control.generate(rng)
                    if control.generate and rng.random() < 0.5
                    else mutate(rng.choice(control.seeds), rng, control.seeds)
                )
            )
            if not data.endswith(b"\n"):
                data += b"\n"
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(sock_path)
                try:
                    s.sendall(data)
                    answered += bool(s.makefile("rb").readline())
                except OSError:
                    pass
        report.check(
            "control socket: bad requests answered (of which oversized and 30,000 deep)",
            f"{answered} of {n + len(extreme)}",
            "all",
            answered == n + len(extreme),
        )
        unsigned, signed = command_targets()
        base = base_topic(rig)
        for i in range(n):
            target = unsigned if i % 2 else signed
            data = target.generate(rng) if target.generate else rng.choice(target.seeds)
            if target is signed:
                name, _, body = data.partition(b"\0")
                topic = f"{base}/cmd/{name.decode(errors='replace') or 'x'}"
            else:
                topic, body = f"{base}/cmd/{rng.choice(['breaker/select', 'breaker/operate', 'x'])}", data
            broker_log.client.publish(topic.replace("#", "").replace("+", ""), body, qos=1)
            if i % 100 == 0:
                time.sleep(0.05)
        ami = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="reliability-ami-fuzz", protocol=mqtt.MQTTv5)
        ami.connect("127.0.0.1", rig.ami_port)
        ami.loop_start()
        ami_topic = rig.doc["ami"]["topic"].replace("+", "DC-FUZZ")
        for _ in range(n // 2):
            ami.publish(
                ami_topic,
                msgpack.packb(random_value(rng), use_bin_type=True)
                if rng.random() < 0.5
                else rng.randbytes(rng.randrange(0, 300)),
                qos=1,
            )
        time.sleep(3)
        ami.loop_stop()
        ami.disconnect()
        status = rig.daemon_call("status")
        online = sum(i["state"] == "online" for i in status["ieds"])
        report.check(
            "after the bad input: daemon serving",
            f"status answers; uplink {status['uplink']['state']}; "
            f"{online}/{len(status['ieds'])} IEDs online; {status['uplink']['commands']} commands received",
            "serving, connected, every IED online",
            status["uplink"]["state"] == "connected" and online == len(status["ieds"]),
        )
        time.sleep(1)
        tracebacks = log_path.read_text(errors="replace").count('"exc":') - tracebacks_before
        report.check("tracebacks logged by the daemon during the bad input", tracebacks, "0", tracebacks == 0)
        broker_log.stop()


def run(report: Report, workdir: Path, quick: bool) -> None:
    logging.disable(logging.CRITICAL)
    from tests.reliability.fuzzing import all_targets, canary_target, run_target

    inputs = 10_000 if quick else INPUTS
    names = [t.name for t in all_targets()]
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # the site file is the slow one: in parallel
        results = pool.starmap(_fuzz_one, [(i, inputs) for i in range(len(names))])
    canary = run_target(canary_target(), 20_000, seed=5).summary()
    report.check(
        "canary parser with a planted bug: crashes found",
        canary["crashes"],
        "> 0 (the fuzzer can fail)",
        canary["crashes"] > 0,
    )
    total = 0
    for result in results:
        total += result["inputs"]
        bad = result["crashes"] + result["hangs"] + result["unclear_refusals"]
        report.check(
            result["target"],
            f"{result['inputs']:,} inputs ({result['accepted']:,} parsed, {result['refused']:,} refused); "
            f"{result['crashes']} crashes, {result['hangs']} hangs, {result['unclear_refusals']} refusals without "
            f"a message; slowest {result['slowest_ms']} ms; {result['per_s']:,}/s",
            f"≥ {inputs:,} inputs, 0 crashes, 0 hangs",
            result["inputs"] >= inputs and bad == 0,
        )
        for crash in result["first_crashes"]:
            report.note(
                f"{result['target']}: {crash.get('type')}: {crash.get('error', '')} — input "
                f"{crash.get('input_hex', '')[:120]}"
            )
    report.row("inputs in all", f"{total:,}")
    _live(report, workdir, quick)
    crashes = sum(r["crashes"] + r["hangs"] + r["unclear_refusals"] for r in results)
    report.headline = (
        f"{len(results)} parsers, {total:,} inputs (≥ {inputs:,} each): {crashes} crashes or hangs; "
        f"canary caught: {'yes' if canary['crashes'] else 'NO'}"
    )
    report.data = {"targets": results, "canary": canary}
    report.note(
        "Found and fixed by these runs: an AMI batch whose column dtype was a map or list, and a site "
        "file whose point or agent reference was a list, raised TypeError instead of a refusal."
    )


if __name__ == "__main__":
    part_main("fuzz", TITLE, run)
