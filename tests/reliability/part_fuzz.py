"""Bad input: every parser of the gateway fuzzed with 100,000 inputs or more."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

from tests.reliability.common import Report, part_main

TITLE = "Bad input (fuzzing the parsers)"
BUDGET_S = 900
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
targets above cover. The C protection core is fuzzed separately (next part).
"""


def _fuzz_one(index: int, inputs: int) -> dict[str, Any]:
    logging.disable(logging.CRITICAL)  # pymodbus logs every bad frame
    from tests.reliability.fuzzing import all_targets, run_target

    target = all_targets()[index]
    return run_target(target, inputs, seed=1000 + index).summary()


def run(report: Report, workdir: Path, quick: bool) -> None:
    logging.disable(logging.CRITICAL)
    from tests.reliability.fuzzing import all_targets, canary_target, run_target

    inputs = 10_000 if quick else INPUTS
    names = [t.name for t in all_targets()]
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # the site file is the slow one: in parallel
        results = pool.starmap(_fuzz_one, [(i, inputs) for i in range(len(names))])
    canary = run_target(canary_target(), 20_000, seed=5).summary()
    report.check("canary parser with a planted bug: crashes found", canary["crashes"], "> 0 (the fuzzer can fail)",
                 canary["crashes"] > 0)
    total = 0
    for result in results:
        total += result["inputs"]
        bad = result["crashes"] + result["hangs"] + result["unclear_refusals"]
        report.check(
            result["target"],
            f"{result['inputs']:,} inputs ({result['accepted']:,} parsed, {result['refused']:,} refused); "
            f"{result['crashes']} crashes, {result['hangs']} hangs, {result['unclear_refusals']} refusals without "
            f"a message; slowest {result['slowest_ms']} ms; {result['per_s']:,}/s",
            f"≥ {inputs:,} inputs, 0 crashes, 0 hangs", result["inputs"] >= inputs and bad == 0)
        for crash in result["first_crashes"]:
            report.note(f"{result['target']}: {crash.get('type')}: {crash.get('error', '')} — input "
                        f"{crash.get('input_hex', '')[:120]}")
    report.row("inputs in all", f"{total:,}")
    crashes = sum(r["crashes"] + r["hangs"] + r["unclear_refusals"] for r in results)
    report.headline = (f"{len(results)} parsers, {total:,} inputs (≥ {inputs:,} each): {crashes} crashes or hangs; "
                       f"canary caught: {'yes' if canary['crashes'] else 'NO'}")
    report.data = {"targets": results, "canary": canary}
    report.note("Found and fixed by these runs: an AMI batch whose column dtype was a map or list, and a site "
                "file whose point or agent reference was a list, raised TypeError instead of a refusal.")


if __name__ == "__main__":
    part_main("fuzz", TITLE, run)
