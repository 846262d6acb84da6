"""cffi build script (out-of-line API mode) for the protection core.

Run by setuptools through `cffi_modules` in setup.py, so `pip install .` and `pip install -e .`
compile the core. The declarations are read from the public header, between its CDEF markers,
so the header stays the single source of truth.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "stima_protection.h"

# -ffp-contract=off: no fused multiply-add, so the core rounds exactly like the Python
# reference and both produce their events on the same steps.
COMPILE_ARGS = ["-std=c99", "-O2", "-ffp-contract=off"]


def cdef_text(header: Path = HEADER) -> str:
    text = header.read_text(encoding="utf-8")
    start = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = text.index("/* CDEF-END */")
    return text[start:end]


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "native._stima_native",
    '#include "stima_protection.h"',
    sources=["native/stima_protection.c"],
    include_dirs=["native"],
    extra_compile_args=COMPILE_ARGS,
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
