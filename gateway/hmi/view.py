"""What the HMI draws, from one running configuration: the diagram (once per configuration) and
its live state (positions, energisation, colours, loads, meter clusters), the GeoJSON export.

Reads the gateway's own views (switching network and state, agents, protection); decides
nothing. Meters are never listed one by one: each transformer carries the counts by state of
the meter groups behind it (`AgentRuntime.meter_states`, bulk over the fleet's columns).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from gateway.agents import visualization as viz
from gateway.hmi.layout import Diagram, layout


_POSITION = {None: "unknown", True: "closed", False: "open"}


class View:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        site = gateway.site
        net = gateway.switching.network
        self.net = net
        self.types = {a.id: a.type for a in site.agents}
        self.configured: dict[str, dict[str, Any]] = {}
        for a in site.agents:
            agent = gateway.agents.runtime.agents.get(a.id)
            attrs = getattr(agent, "attrs", None)
            self.configured[a.id] = attrs.model_dump() if attrs is not None else dict(a.attributes)
        self.groups_of: dict[str, list[tuple[str, int]]] = {}
        self.meter_type: dict[str, str] = {}
        for g in site.meter_groups:
            self.groups_of.setdefault(g.connected_transformer, []).append((g.id, g.count))
            self.meter_type[g.id] = g.meter_type
        self.diagram: Diagram = layout(net, element_types=dict(net.element_types), meters_by_transformer=self.groups_of)
        self._line_of_section = {s.id: s.line for s in net.sections.values()}
        self._built: dict[str, Any] = {}

    # ------------------------------------------------------------------ static

    def diagram_dict(self) -> dict[str, Any]:
        out = self.diagram.to_dict()
        out["substation"] = self.gateway.site.site.substation_id
        out["colors"] = {
            "deenergised": viz.DEENERGISED,
            "red": viz.RED,
            "yellow": viz.YELLOW,
            "blue": viz.BLUE,
            "green": viz.GREEN,
            "grey": viz.GREY,
            "magenta": viz.MAGENTA,
        }
        return out

    # ------------------------------------------------------------------ live

    def _live(self, agent_id: str) -> tuple[dict[str, Any], str | None]:
        runtime = self.gateway.agents.runtime
        agent = runtime.agents.get(agent_id)
        if agent is None:
            return {}, None
        memory = runtime.memory[agent_id]
        try:
            return agent.attributes(memory), str(memory.state.value)
        except Exception:
            return {}, str(memory.state.value)

    def state(self) -> dict[str, Any]:
        """The diagram's live state: one entry per section, device, element and bus."""
        steps = self.state_steps()
        for _ in steps:
            pass
        return self._built

    async def state_async(self) -> dict[str, Any]:
        """The same, letting the event loop run (protection first) between its parts."""
        import asyncio

        for _ in self.state_steps():
            await asyncio.sleep(0)
        return self._built

    def state_steps(self) -> Iterator[None]:
        """Builds `self._built` part by part (a millisecond or two each at 30 feeders)."""
        gw = self.gateway
        sw = gw.switching
        en = self.net.energise(sw.state.configuration())
        sections: dict[str, Any] = {}
        line_meta: dict[str, dict[str, Any]] = {}
        for line in {s.line for s in self.net.sections.values()}:
            live, _ = self._live(line)
            line_meta[line] = viz.metadata("power_line", self.configured.get(line, {}), live)
        for sid, sec in self.net.sections.items():
            meta = line_meta.get(sec.line, viz.line_metadata({}))
            energised = en.energised(sid)
            load = sw.state.section_load(sid)
            sections[sid] = {
                "energised": energised,
                "uncertain": sid in en.uncertain,
                "color": meta["color"] if energised else viz.DEENERGISED,
                "width": meta["width"],
                "style": meta["style"],
                "flow": bool(meta["power_flow_animation"]) and energised,
                "load_kw": None if load is None else _round(load.kva.real),
            }
        yield
        devices: dict[str, Any] = {}
        memory = gw.agents.runtime.memory
        tags = sw.authority.tags
        for dev_id, dev in self.net.devices.items():
            position = _POSITION[sw.state.position(dev_id)]
            meta = viz.switch_metadata(self.configured.get(dev_id, {}), position)
            m = memory.get(dev_id)
            devices[dev_id] = {
                "position": position,
                "color": meta["color"],
                "filled": meta["filled"],
                "state": None if m is None else m.state.value,
                "locked_out": bool(sw._locked_out(dev_id)) if dev.protected else False,
                "tagged": bool(tags.get(dev_id)),
                "fpi": sw.state.fpi(dev_id),
                "local": sw.state.local(dev_id),
                "energised": en.energised(dev.a) or en.energised(dev.b),
            }
        yield
        meter_states = gw.agents.runtime.meter_states()
        elements: dict[str, Any] = {}
        for element, sid in self.net.element_section.items():
            kind = self.types.get(element, "")
            live, state = self._live(element)
            meta = viz.metadata(kind, self.configured.get(element, {}), live, state)
            energised = en.energised(sid)
            entry: dict[str, Any] = {
                "state": state,
                "color": meta.get("color", viz.GREY) if energised else viz.DEENERGISED,
                "icon": meta.get("icon"),
                "energised": energised,
            }
            if "size" in meta:
                entry["size"] = meta["size"]
            if kind == "transformer":
                entry["load_percentage"] = _round(live.get("load_percentage"))
            groups = self.groups_of.get(element)
            if groups:
                counts: dict[str, int] = {}
                for gid, _ in groups:
                    for k, v in meter_states.get(gid, {}).items():
                        counts[k] = counts.get(k, 0) + v
                mtype = self.meter_type.get(groups[0][0], "residential")
                entry["meters"] = {
                    "count": sum(n for _, n in groups),
                    "states": counts,
                    **viz.meters_metadata(mtype, counts),
                }
            elements[element] = entry
        buses = {
            src: {"energised": True, "voltage_pu": _round(sw.state.source_voltages().get(src))}
            for src in self.net.sources
        }
        active = gw.alarms.active()
        self._built = {
            "time": gw.clock.wall(),
            "sections": sections,
            "devices": devices,
            "elements": elements,
            "buses": buses,
            "alarms": {"active": len(active), "unacknowledged": sum(1 for a in active if a.acknowledged is None)},
        }

    # ------------------------------------------------------------------ GIS

    def geojson(self) -> dict[str, Any]:
        """The network with the agents' coordinates as a GeoJSON FeatureCollection (RFC 7946:
        [longitude, latitude]). Sections are LineStrings cut from their line's coordinates;
        elements without coordinates of their own sit at their position along their line."""
        from gateway.agents.schema import PowerLineAttributes

        site = self.gateway.site
        state = self.state()
        features: list[dict[str, Any]] = []
        unplaced: list[str] = []
        paths: dict[str, list[tuple[float, float]]] = {}
        lengths: dict[str, float] = {}
        for a in site.agents:
            if a.type == "power_line":
                attrs = PowerLineAttributes.model_validate(a.attributes)
                if len(attrs.coordinates) >= 2:
                    paths[a.id] = [(lat, lon) for lat, lon in attrs.coordinates]
                    lengths[a.id] = attrs.length
        for sid, sec in self.net.sections.items():
            path = paths.get(sec.line)
            if path is None:
                unplaced.append(sid)
                continue
            coords = _cut(path, sec.from_m / lengths[sec.line], sec.to_m / lengths[sec.line])
            live = state["sections"][sid]
            meta = viz.metadata("power_line", self.configured.get(sec.line, {}), {})
            features.append(
                {
                    "type": "Feature",
                    "id": sid,
                    "geometry": {"type": "LineString", "coordinates": [[lon, lat] for lat, lon in coords]},
                    "properties": {
                        "kind": "line_section",
                        "line": sec.line,
                        "from_m": sec.from_m,
                        "to_m": sec.to_m,
                        "energised": live["energised"],
                        "customers": sec.customers,
                        "visualization_metadata": meta,
                        "color": live["color"],
                    },
                }
            )
        positions = self._tap_positions()
        for a in site.agents:
            if a.type == "power_line":
                continue
            coord = self.configured.get(a.id, {}).get("coordinates")
            derived = False
            if not coord and a.id in positions:
                line, pos = positions[a.id]
                if line in paths:
                    coord = _cut(paths[line], pos / lengths[line], pos / lengths[line])[0]
                    derived = True
            if not coord:
                unplaced.append(a.id)
                continue
            props: dict[str, Any] = {
                "kind": a.type,
                "coordinates_from": "line position" if derived else "attributes",
            }
            if a.id in state["devices"]:
                props.update({"position": state["devices"][a.id]["position"], "color": state["devices"][a.id]["color"]})
            if a.id in state["elements"]:
                el = state["elements"][a.id]
                props.update({"state": el["state"], "color": el["color"], "energised": el["energised"]})
                if "meters" in el:
                    props["meters"] = {k: el["meters"][k] for k in ("count", "states", "color")}
            live, st = self._live(a.id)
            props["visualization_metadata"] = viz.metadata(a.type, self.configured.get(a.id, {}), live, st)
            features.append(
                {
                    "type": "Feature",
                    "id": a.id,
                    "geometry": {"type": "Point", "coordinates": [float(coord[1]), float(coord[0])]},
                    "properties": props,
                }
            )
        return {
            "type": "FeatureCollection",
            "features": features,
            "substation": site.site.substation_id,
            "unplaced": sorted(unplaced),
        }

    def _tap_positions(self) -> dict[str, tuple[str, float]]:
        """Each element tapped on (or switching in series with) a line at a known position."""
        out: dict[str, tuple[str, float]] = {}
        for a in self.gateway.site.agents:
            for rule in a.connection_rules:
                pos = getattr(rule, "position_m", None)
                if pos is not None and self.types.get(rule.target_id) == "power_line" and a.id not in out:
                    out[a.id] = (rule.target_id, float(pos))
        return out


def _cut(path: list[tuple[float, float]], start: float, end: float) -> list[tuple[float, float]]:
    """The part of a polyline between two fractions of its length (plain degrees: short lines)."""
    seg = [math.dist(path[i], path[i + 1]) for i in range(len(path) - 1)]
    total = sum(seg) or 1.0

    def at(f: float) -> tuple[float, float]:
        d = min(max(f, 0.0), 1.0) * total
        for i, s in enumerate(seg):
            if d <= s or i == len(seg) - 1:
                t = 0.0 if s == 0 else min(d / s, 1.0)
                return (path[i][0] + t * (path[i + 1][0] - path[i][0]), path[i][1] + t * (path[i + 1][1] - path[i][1]))
            d -= s
        return path[-1]

    if start == end:
        return [at(start)]
    out = [at(start)]
    acc = 0.0
    for i, s in enumerate(seg):
        acc += s
        if start * total < acc < end * total:
            out.append(path[i + 1])
    out.append(at(end))
    return out


def _round(value: Any, digits: int = 1) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), digits)
