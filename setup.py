"""Only here for cffi: setuptools accepts `cffi_modules` from setup.py, not from pyproject.toml."""

from setuptools import setup

setup(
    cffi_modules=["native/build_protection.py:ffibuilder"],
    # The build script reads the header: ship it (and the source) in the sdist.
    package_data={"native": ["stima_protection.h", "stima_protection.c"]},
)
