"""Stima: edge-gateway daemon for one electric distribution substation."""

__version__ = "0.1.0"
