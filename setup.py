"""Only here for cffi: setuptools accepts `cffi_modules` from setup.py, not from pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build_protection.py:ffibuilder"])
