"""The C protection core under a coverage-guided fuzzer with AddressSanitizer and UBSan."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.reliability.common import Report, part_main

TITLE = "C core fuzzing (libFuzzer + ASan/UBSan)"
BUDGET_S = 420
RUNS = 1_000_000
METHOD = f"""
`native/fuzz/fuzz_protection.c` drives the protection core's whole public API from any bytes:
relay and element settings as raw structs (NaN, infinities and absurd values included), then
steps with raw samples and quality flags, manual trips and closes with small event buffers,
relay and element states written back raw, and curve evaluations. It is built with clang's
libFuzzer (Debian's `clang`) and AddressSanitizer + UndefinedBehaviorSanitizer, every UB
finding fatal; besides memory and UB errors the harness aborts when a status is not a
ProtStatus, more events are written than the buffer holds, or an event names a relay that does
not exist. {RUNS:,} runs (or 4 minutes). Without clang it falls back to gcc with the same
sanitizers and a random driver. A build with a planted out-of-bounds write must be caught, so the
harness can fail.
"""

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "native" / "fuzz" / "fuzz_protection.c", ROOT / "native" / "stima_protection.c"]


def _build(workdir: Path, *, canary: bool) -> tuple[list[str], str]:
    out = workdir / ("fuzz_canary" if canary else "fuzz_protection")
    extra = ["-DFUZZ_CANARY"] if canary else []
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-g", "-O1"]
    if shutil.which("clang"):
        cmd = [
            "clang",
            "-fsanitize=fuzzer",
            *san,
            *extra,
            f"-I{ROOT / 'native'}",
            *map(str, SOURCES),
            "-lm",
            "-o",
            str(out),
        ]
        engine = "libFuzzer (clang)"
    else:
        cmd = [
            "gcc",
            "-DSTANDALONE_MAIN",
            *san,
            *extra,
            f"-I{ROOT / 'native'}",
            *map(str, SOURCES),
            "-lm",
            "-o",
            str(out),
        ]
        engine = "random driver (gcc; install Debian's clang for coverage guidance)"
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    return [str(out)], engine


def _fuzz(
    binary: list[str], workdir: Path, runs: int, seconds: int, libfuzzer: bool
) -> subprocess.CompletedProcess[str]:
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if libfuzzer:
        argv = [
            *binary,
            f"-runs={runs}",
            f"-max_total_time={seconds}",
            "-seed=1",
            "-print_final_stats=1",
            f"-artifact_prefix={workdir}/",
            str(corpus),
        ]
    else:
        argv = [*binary, str(runs), "1"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)


def run(report: Report, workdir: Path, quick: bool) -> None:
    if not shutil.which("clang") and not shutil.which("gcc"):
        report.skip("neither clang nor gcc is installed")
        return
    libfuzzer = shutil.which("clang") is not None
    binary, engine = _build(workdir, canary=False)
    report.row("engine", engine)
    runs = 200_000 if quick else RUNS
    result = _fuzz(binary, workdir, runs, 240, libfuzzer)
    text = result.stdout + result.stderr
    done = re.search(r"Done (\d+) runs", text)
    executed = int(done.group(1)) if done else 0
    crashed = result.returncode != 0 or "ERROR: AddressSanitizer" in text or "runtime error" in text
    cov = re.findall(r"cov: (\d+)", text)
    report.check("runs", f"{executed:,}", f"≥ {min(runs, 1_000_000):,}", executed >= min(runs, 1_000_000))
    report.check("crashes, sanitizer reports, broken API promises", 0 if not crashed else "≥ 1", "0", not crashed)
    if cov:
        report.row("edges covered (libFuzzer)", cov[-1])
    if crashed:
        report.note("fuzzer output: " + text[-2500:])
    canary_bin, _ = _build(workdir, canary=True)
    canary = (
        _fuzz(canary_bin, workdir / "canary", 2_000_000, 60, libfuzzer)
        if libfuzzer
        else _fuzz(canary_bin, workdir, 2_000_000, 60, False)
    )
    caught = canary.returncode != 0 and "Sanitizer" in canary.stdout + canary.stderr
    report.check("planted out-of-bounds write found", "yes" if caught else "no", "yes (the harness can fail)", caught)
    report.headline = (
        f"{executed:,} runs, {'no' if not crashed else 'a'} sanitizer finding; planted bug caught: "
        f"{'yes' if caught else 'NO'}"
    )
    report.data = {"runs": executed, "returncode": result.returncode}


if __name__ == "__main__":
    part_main("cfuzz", TITLE, run)
