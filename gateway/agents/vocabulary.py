"""The point names each agent type reads or writes, with the kind and unit each must have.

An agent's `points` table in the site file maps these names to point ids of the process image.
A name outside this vocabulary would be read by nobody, so a typo is a site-file error; a
measurement mapped to a point of the wrong kind or unit, or a command mapped to a point the
gateway cannot write, is one too. The site file's validation (`gateway.site`) checks every
agent against this table. The names are declared by each agent type's spec (its `POINTS`);
this module presents them by type name.
"""

from __future__ import annotations

from gateway.agents.registry import SPECS
from gateway.agents.spec import PointName

__all__ = ["POINT_NAMES", "PointName"]

POINT_NAMES: dict[str, dict[str, PointName]] = {t: dict(spec.points) for t, spec in SPECS.items()}
"""Agent type → point name → what the point must be."""
