"""The C core builds cleanly as strict C99, runs standalone, and is wrapped by one module."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"
STRICT = [
    "-std=c99",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-Wshadow",
    "-Wconversion",
    "-Wno-sign-conversion",
    "-O2",
]

SMOKE = r"""
#include <stdio.h>
#include <string.h>
#include "stima_protection.h"

int main(void)
{
    ProtCore core = NULL;
    ProtRelaySettings relay;
    ProtElementSettings el;
    ProtEvent events[16];
    double samples[PROT_CHANNELS] = {0};
    uint8_t quality[PROT_CHANNELS] = {1, 1, 1, 1, 1, 1, 1, 1};
    int32_t index = -1, count = 0, k;
    double trip = -1.0;
    memset(&relay, 0, sizeof relay);
    memset(&el, 0, sizeof el);
    relay.nominal_kv = 11.0;
    el.relay = 0; el.kind = PROT_ELEM_51P; el.pickup = 100.0; el.dropout_ratio = 0.95;
    el.curve = PROT_CURVE_IEC_SI; el.fast_curve = PROT_CURVE_IEC_SI; el.tms = 0.1;
    el.fast_tms = 0.1; el.start_factor = 1.0; el.m_max = 20.0;
    if (ProtCore_create(1, 1, &core) != PROT_OK) return 1;
    if (ProtCore_setRelay(core, 0, &relay) != PROT_OK) return 2;
    if (ProtCore_addElement(core, &el, &index) != PROT_OK || index != 0) return 3;
    if (ProtCore_addElement(core, &el, &index) != PROT_ERR_FULL) return 4;
    samples[PROT_CH_IA] = 200.0;
    samples[PROT_CH_CLOSED] = 1.0;
    for (k = 0; k < 2000 && trip < 0.0; k++) {
        int32_t i;
        if (ProtCore_step(core, k * 0.001, samples, quality, events, 16, &count) != PROT_OK) return 5;
        for (i = 0; i < count; i++) {
            if (events[i].kind == PROT_EV_TRIP) trip = events[i].time;
        }
    }
    samples[PROT_CH_IA] = 0.0; /* dropout event into a zero-size buffer */
    if (ProtCore_step(core, 5.0, samples, quality, events, 0, &count) != PROT_ERR_FULL || count != 0) return 6;
    if (ProtCore_manualClose(core, 0, 6.0, 0, events, 16, &count) != PROT_ERR_STATE) return 7;
    ProtCore_destroy(core);
    ProtCore_destroy(NULL);
    printf("%.3f\n", trip);
    return 0;
}
"""


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    return gcc


def test_core_compiles_as_strict_c99(tmp_path: Path) -> None:
    gcc = _gcc()
    result = subprocess.run(
        [gcc, *STRICT, "-c", str(NATIVE / "stima_protection.c"), "-o", str(tmp_path / "core.o")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_standalone_program_uses_the_public_api(tmp_path: Path) -> None:
    """A C program (no Python) links the core, trips IEC SI TMS 0.1 at M = 2 in 1.003 s."""
    gcc = _gcc()
    (tmp_path / "smoke.c").write_text(SMOKE)
    exe = tmp_path / "smoke"
    flags = [*STRICT, "-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    cmd = [
        gcc,
        *flags,
        "-I",
        str(NATIVE),
        str(tmp_path / "smoke.c"),
        str(NATIVE / "stima_protection.c"),
        "-lm",
        "-o",
        str(exe),
    ]
    build = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    if build.returncode != 0 and "sanitize" in build.stderr:
        build = subprocess.run(
            [c for c in cmd if "sanitize" not in c and "omit-frame" not in c],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], check=False, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, (run.returncode, run.stderr)
    assert float(run.stdout) == pytest.approx(1.003, abs=1e-9)


def test_header_cdef_block_parses() -> None:
    from cffi import FFI

    from native.build_protection import cdef_text

    ffi = FFI()
    ffi.cdef(cdef_text())
    assert ffi.sizeof("ProtEvent") == 32  # double, four int32, double


def test_exactly_one_module_imports_the_compiled_core() -> None:
    pattern = re.compile(
        r"^\s*(from|import)\s+native\._stima_native|^\s*from\s+native\s+import\s+_stima_native", re.MULTILINE
    )
    importers = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "build", "tests") or "site-packages" in rel.parts:
            continue
        if pattern.search(path.read_text(encoding="utf-8", errors="replace")):
            importers.append(str(rel))
    assert importers == ["gateway/protection/_native.py"]


def test_python_enums_mirror_the_header() -> None:
    native = pytest.importorskip("native._stima_native")
    from gateway.protection import core

    lib = native.lib
    pairs = [
        (core.EventKind, "PROT_EV_"),
        (core.RecloseState, "PROT_AR_"),
        (core.Curve, "PROT_CURVE_"),
        (core.ResetMode, "PROT_RESET_"),
        (core.Phase, "PROT_PHASE_"),
        (core.Channel, "PROT_CH_"),
    ]
    for enum_cls, prefix in pairs:
        for member in enum_cls:
            assert getattr(lib, prefix + member.name) == member.value, (prefix, member)
    kinds = {
        "P50": "50P",
        "N50": "50N",
        "P51": "51P",
        "N51": "51N",
        "UV27": "27",
        "OV59": "59",
        "UF81": "81U",
        "OF81": "81O",
        "TH49": "49",
    }
    for member in core.ElementKind:
        assert getattr(lib, "PROT_ELEM_" + kinds[member.name]) == member.value
    assert lib.PROT_CHANNELS == core.CHANNELS


def test_only_create_allocates() -> None:
    """Memory policy: ProtCore_create allocates, ProtCore_destroy frees, nothing else does."""
    source = (NATIVE / "stima_protection.c").read_text()
    functions = re.split(r"\n(?=[A-Za-z][^\n;]*\([^;{]*\)\s*\{)", source)
    for body in functions:
        name = body.split("(")[0].split()[-1] if "(" in body else ""
        allocates = re.search(r"\b(malloc|calloc|realloc)\s*\(", body)
        frees = re.search(r"\bfree\s*\(", body)
        if allocates:
            assert name == "ProtCore_create", name
        if frees:
            assert name == "ProtCore_destroy", name
