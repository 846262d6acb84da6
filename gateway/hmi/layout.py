"""The one-line diagram's layout, computed from the switching network (sans-IO, no hand placing).

The network in its normal configuration is a forest: each source (the substation's bus) feeds
its feeder breakers, each breaker a line's first section, each in-series device the next
section. That tree is laid out in columns, top to bottom:

- a source is a horizontal bus bar across the columns of its feeders;
- a chain of sections continues in its parent's column, one below the other, the device
  between them on the line; a second child of a node (a branch) opens a new column to the
  right, after every column of the first child's subtree, so branches never cross;
- the elements tapped on a section (transformers with their meter clusters, capacitor banks,
  DER) hang to the right of its line, one row each; a section is as tall as its rows;
- feeders are ordered so that those joined by ties sit side by side: a tie between
  neighbouring columns runs through the gap between them; any other tie runs down to a lane
  of its own below the diagram; a tie to another substation ends at an external-source mark.

Sizes are in CSS pixels at 100 % zoom, with 12 px labels: nothing overlaps at any number of
feeders (the diagram grows wider and the page scrolls), checked in tests with 30 feeders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.switching.network import Network

COL_W = 240.0
"""Width of one column: the line, then its elements and their labels."""
LINE_DX = 44.0
"""The line's x inside its column (section labels to its left)."""
TOP = 24.0
BUS_Y = 56.0
DEVICE_H = 44.0
"""Height of the row of a device between two sections (or under the bus)."""
ROW_H = 30.0
"""Height of one element's row beside its section."""
SECTION_PAD = 14.0
SECTION_MIN = 96.0
"""A section is at least this tall (its rotated label fits beside it)."""
ELEMENT_DX = 26.0
"""From the line to an element's symbol."""
SYMBOL = 16.0
CHAR_W = 7.2
"""Width of one character of a 12 px label (an upper bound for the shipped sans-serif font)."""
LABEL_H = 14.0
LANE_GAP = 24.0
GAP_X = COL_W - 22.0
"""x of the gap between a column and the next one, from the column's left."""


def natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass
class Box:
    """Something drawn, for overlap checks: id, kind, and its rectangle."""

    id: str
    kind: str
    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Box, margin: float = 0.0) -> bool:
        return not (
            self.x + self.w + margin <= other.x
            or other.x + other.w + margin <= self.x
            or self.y + self.h + margin <= other.y
            or other.y + other.h + margin <= self.y
        )


@dataclass
class Diagram:
    width: float = 0.0
    height: float = 0.0
    buses: list[dict[str, Any]] = field(default_factory=list)
    sections: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    elements: list[dict[str, Any]] = field(default_factory=list)
    wires: list[dict[str, Any]] = field(default_factory=list)
    """Polylines between nodes; each belongs to the node whose energisation colours it."""
    externals: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": round(self.width),
            "height": round(self.height),
            "buses": self.buses,
            "sections": self.sections,
            "devices": self.devices,
            "elements": self.elements,
            "wires": self.wires,
            "externals": self.externals,
        }

    def boxes(self) -> list[Box]:
        """Every symbol and label as a rectangle (labels estimated at CHAR_W per character)."""
        out: list[Box] = []
        for b in self.buses:
            out.append(Box(b["id"], "bus-label", b["label_x"], b["y"] - 8 - LABEL_H, _text_w(b["label"]), LABEL_H))
        for s in self.sections:  # reads upwards from its anchor, glyphs to the anchor's left
            h = _text_w(s["label"])
            out.append(Box(s["id"], "section-label", s["label_x"] - 11, s["label_y"] - h, LABEL_H, h))
        for d in self.devices:
            out.append(Box(d["id"], "device", d["x"] - SYMBOL / 2, d["y"] - SYMBOL / 2, SYMBOL, SYMBOL))
            if d.get("label_rotated"):  # reads downwards from its anchor, glyphs to the anchor's right
                out.append(Box(d["id"], "device-label", d["label_x"] - 3, d["label_y"], LABEL_H, _text_w(d["label"])))
            else:
                out.append(
                    Box(d["id"], "device-label", d["label_x"], d["label_y"] - LABEL_H + 3, _text_w(d["label"]), LABEL_H)
                )
        for e in self.elements:
            out.append(Box(e["id"], "element", e["x"] - SYMBOL / 2, e["y"] - SYMBOL / 2, SYMBOL, SYMBOL))
            out.append(
                Box(
                    e["id"],
                    "element-label",
                    e["label_x"],
                    e["y"] - LABEL_H / 2 - 1,
                    _text_w(e["label"]) + (_text_w(e["meter_label"]) + SYMBOL if e.get("meter_label") else 0),
                    LABEL_H,
                )
            )
        for x in self.externals:
            out.append(Box(x["id"], "external", x["x"] - SYMBOL / 2, x["y"] - SYMBOL / 2, SYMBOL, SYMBOL))
            out.append(Box(x["id"], "external-label", x["label_x"] - 3, x["label_y"], LABEL_H, _text_w(x["label"])))
        return out


def _text_w(text: str) -> float:
    return CHAR_W * len(text)


def _meter_label(count: int) -> str:
    return f"{count:,}".replace(",", " ")


def layout(
    net: Network,
    *,
    element_types: dict[str, str] | None = None,
    meters_by_transformer: dict[str, list[tuple[str, int]]] | None = None,
    labels: dict[str, str] | None = None,
) -> Diagram:
    """The diagram of `net`. `meters_by_transformer` maps a transformer to its meter groups and
    their sizes (drawn as one cluster); `labels` overrides the text shown for an id."""
    types = element_types or dict(net.element_types)
    meters = meters_by_transformer or {}
    labels = labels or {}
    config = net.normal_configuration()
    en = net.energise(config)
    children: dict[str, list[tuple[str, str | None]]] = {}
    for node, (parent, dev) in en.parent.items():
        children.setdefault(parent, []).append((node, dev))
    tree_devices = {dev for _, dev in en.parent.values() if dev is not None}
    ties = [d for d in net.devices.values() if d.id not in tree_devices]
    roots = [s for s in net.sources if not net.sources[s].external]
    # sections nothing feeds in the normal configuration start trees of their own
    orphans = sorted((n for n in net.sections if n not in en.source_of), key=natural_key)
    diagram = Diagram()
    col_of: dict[str, int] = {}
    y_top: dict[str, float] = {}
    y_end: dict[str, float] = {}
    next_col = 0

    def order(node: str) -> list[tuple[str, str | None]]:
        kids = sorted(children.get(node, []), key=lambda c: natural_key(c[1] or c[0]))
        if node in net.sources:
            kids = _tie_order(kids, children, ties)
        return kids

    def place(node: str, col: int, top: float, dev: str | None, parent: str | None) -> None:
        """Place `dev` (the device feeding `node`, in its row at `top`), then `node` below it."""
        nonlocal next_col
        x = col * COL_W + LINE_DX
        if dev is not None:
            d = net.devices[dev]
            dy = top + DEVICE_H / 2
            diagram.devices.append(
                {
                    "id": dev,
                    "function": d.function,
                    "tie": d.tie,
                    "x": x,
                    "y": dy,
                    "a": d.a,
                    "b": d.b,
                    "label": labels.get(dev, dev),
                    "label_x": x + SYMBOL,
                    "label_y": dy + 4,
                    "normally_open": d.normally_open,
                    "protected": d.protected,
                }
            )
            diagram.wires.append({"node": d.a, "device": dev, "points": [[x, top], [x, dy - SYMBOL / 2]]})
            diagram.wires.append({"node": node, "device": dev, "points": [[x, dy + SYMBOL / 2], [x, top + DEVICE_H]]})
            top += DEVICE_H
        elif parent is not None:
            diagram.wires.append({"node": node, "device": None, "points": [[x, top], [x, top + 12]]})
            top += 12
        sec = net.sections[node]
        rows = _rows(net, sec.elements, types)
        height = max(SECTION_MIN, 2 * SECTION_PAD + len(rows) * ROW_H)
        col_of[node], y_top[node], y_end[node] = col, top, top + height
        label = labels.get(node, node)
        diagram.sections.append(
            {
                "id": node,
                "line": sec.line,
                "x": x,
                "y1": top,
                "y2": top + height,
                "label": label,
                "label_x": x - 6,
                "label_y": top + height / 2 + _text_w(label) / 2,
                "customers": sec.customers,
            }
        )
        for k, element in enumerate(rows):
            ey = top + SECTION_PAD + ROW_H * (k + 0.5)
            ex = x + ELEMENT_DX
            groups = meters.get(element, [])
            count = sum(n for _, n in groups)
            label = labels.get(element, element)
            diagram.elements.append(
                {
                    "id": element,
                    "type": types.get(element, ""),
                    "section": node,
                    "x": ex,
                    "y": ey,
                    "label": label,
                    "label_x": ex + SYMBOL / 2 + 4,
                    "meter_groups": [g for g, _ in groups],
                    "meters": count,
                    "meter_label": _meter_label(count) if groups else "",
                    "meter_x": ex + SYMBOL / 2 + 4 + _text_w(label) + SYMBOL / 2 + 2,
                }
            )
            diagram.wires.append({"node": node, "device": None, "points": [[x, ey], [ex - SYMBOL / 2, ey]]})
        kids = order(node)
        for n, (child, cdev) in enumerate(kids):
            if n == 0:
                place(child, col, top + height, cdev, node)
            else:
                branch_col = next_col
                next_col += 1
                bx = branch_col * COL_W + LINE_DX
                diagram.wires.append({"node": node, "device": None, "points": [[x, top + height], [bx, top + height]]})
                place(child, branch_col, top + height, cdev, node)

    for root in roots:
        kids = order(root)
        first = next_col
        feeders: list[int] = []
        for child, dev in kids:
            col = next_col
            next_col += 1
            feeders.append(col)
            place(child, col, BUS_Y, dev, root)
        if not feeders:
            feeders = [next_col]
            next_col += 1
        x1 = first * COL_W + LINE_DX - 20
        x2 = max(feeders) * COL_W + LINE_DX + 20
        src = net.sources[root]
        diagram.buses.append(
            {
                "id": root,
                "x1": x1,
                "x2": x2,
                "y": BUS_Y,
                "label_x": x1,
                "label": labels.get(root, f"{root} {src.nominal_kv:g} kV"),
            }
        )
    for node in orphans:
        if node in col_of:
            continue
        col = next_col
        next_col += 1
        place(node, col, BUS_Y + 24, None, None)
    gap_use: dict[int, int] = {}
    lane = 0.0

    def far_apart(tie: Any) -> bool:
        ends = [col_of[n] for n in (tie.a, tie.b) if n in col_of]
        return len(ends) == 2 and abs(ends[0] - ends[1]) > 1

    # ties beside their columns first, then those that need a lane below everything drawn
    for tie in sorted(ties, key=lambda d: (far_apart(d), natural_key(d.id))):
        if far_apart(tie) and not lane:
            lane = max([y_end.get(n, BUS_Y) for n in col_of] + [b.y + b.h for b in diagram.boxes()]) + 24
        ends = [n for n in (tie.a, tie.b) if n in col_of]
        external = next((n for n in (tie.a, tie.b) if n in net.sources and net.sources[n].external), None)
        if not ends:
            continue
        if len(ends) == 1:
            node = ends[0]
            col = col_of[node]
            x, y = col * COL_W + LINE_DX, y_end[node] - 8
            gx = col * COL_W + GAP_X - 8 * gap_use.get(col, 0)
            gap_use[col] = gap_use.get(col, 0) + 1
            diagram.wires.append({"node": node, "device": tie.id, "points": [[x, y], [gx - SYMBOL / 2, y]]})
            label_h = _tie_symbol(diagram, tie, gx, y, labels, rotated=True)
            if external is not None:
                ext_id = tie.external_source or external
                ey = y + SYMBOL + label_h + 16
                diagram.wires.append(
                    {"node": external, "device": tie.id, "points": [[gx, y + SYMBOL / 2], [gx, ey - SYMBOL / 2]]}
                )
                diagram.externals.append(
                    {
                        "id": external,
                        "x": gx,
                        "y": ey,
                        "label": ext_id,
                        "label_x": gx + 4,
                        "label_y": ey + SYMBOL / 2 + 4,
                    }
                )
            continue
        a, b = sorted(ends, key=lambda n: col_of[n])
        ca, cb = col_of[a], col_of[b]
        xa, ya = ca * COL_W + LINE_DX, y_end[a] - 8
        xb, yb = cb * COL_W + LINE_DX, y_end[b] - 8
        if cb - ca <= 1:
            gcol = ca if cb > ca else ca - 1
            gx = gcol * COL_W + GAP_X - 8 * gap_use.get(gcol, 0)
            gap_use[gcol] = gap_use.get(gcol, 0) + 1
            my = (ya + yb) / 2
            diagram.wires.append({"node": a, "device": tie.id, "points": [[xa, ya], [gx, ya], [gx, my - SYMBOL / 2]]})
            diagram.wires.append({"node": b, "device": tie.id, "points": [[gx, my + SYMBOL / 2], [gx, yb], [xb, yb]]})
            _tie_symbol(diagram, tie, gx, my, labels, rotated=True)
        else:
            lane += LANE_GAP
            ga = ca * COL_W + GAP_X - 8 * gap_use.get(ca, 0)
            gap_use[ca] = gap_use.get(ca, 0) + 1
            gb = (cb - 1) * COL_W + GAP_X - 8 * gap_use.get(cb - 1, 0)
            gap_use[cb - 1] = gap_use.get(cb - 1, 0) + 1
            mx = (ga + gb) / 2
            diagram.wires.append(
                {"node": a, "device": tie.id, "points": [[xa, ya], [ga, ya], [ga, lane], [mx - SYMBOL / 2, lane]]}
            )
            diagram.wires.append(
                {"node": b, "device": tie.id, "points": [[mx + SYMBOL / 2, lane], [gb, lane], [gb, yb], [xb, yb]]}
            )
            _tie_symbol(diagram, tie, mx, lane, labels, rotated=False)
    diagram.width = max(next_col, 1) * COL_W + 40
    drawn = [b.y + b.h for b in diagram.boxes()] + [p[1] for w in diagram.wires for p in w["points"]]
    diagram.height = max(drawn, default=BUS_Y) + 32
    return diagram


def _tie_symbol(diagram: Diagram, tie: Any, x: float, y: float, labels: dict[str, str], *, rotated: bool) -> float:
    """A tie's symbol at (x, y); its label reads downwards beside the wire below it in a gap
    between columns (`rotated`), or to its right on a lane. Returns the label's height."""
    label = labels.get(tie.id, tie.id)
    if rotated:
        lx, ly = x + 4, y + SYMBOL / 2 + 4
    else:
        lx, ly = x + SYMBOL / 2 + 3, y - SYMBOL / 2 - 1
    diagram.devices.append(
        {
            "id": tie.id,
            "function": tie.function,
            "tie": True,
            "x": x,
            "y": y,
            "a": tie.a,
            "b": tie.b,
            "label": label,
            "label_x": lx,
            "label_y": ly,
            "label_rotated": rotated,
            "normally_open": tie.normally_open,
            "protected": tie.protected,
        }
    )
    return _text_w(label) if rotated else 0.0


def _rows(net: Network, tapped: Iterable[str], types: dict[str, str]) -> list[str]:
    """Elements beside a section: its tapped elements, transformers first."""
    rank = {"transformer": 0, "capacitor_bank": 1, "renewable_energy": 2}
    return sorted(tapped, key=lambda e: (rank.get(types.get(e, ""), 3), natural_key(e)))


def _tie_order(
    kids: list[tuple[str, str | None]], children: dict[str, list[tuple[str, str | None]]], ties: list[Any]
) -> list[tuple[str, str | None]]:
    """Feeders of one bus ordered so that feeders joined by a tie are neighbours where possible:
    a walk along the tie graph, each time to the untaken neighbour first in natural order."""
    owner: dict[str, str] = {}
    for child, _ in kids:
        stack = [child]
        while stack:
            n = stack.pop()
            owner[n] = child
            stack.extend(c for c, _ in children.get(n, []))
    links: dict[str, set[str]] = {c: set() for c, _ in kids}
    for tie in ties:
        fa, fb = owner.get(tie.a), owner.get(tie.b)
        if fa and fb and fa != fb:
            links[fa].add(fb)
            links[fb].add(fa)
    by_id = dict(kids)
    remaining = sorted(by_id, key=lambda c: natural_key(by_id[c] or c))
    out: list[str] = []
    while remaining:
        # start a chain at a feeder with the fewest links (an end of a chain of ties)
        start = min(remaining, key=lambda c: (len(links[c] & set(remaining)), remaining.index(c)))
        current: str | None = start
        while current is not None:
            out.append(current)
            remaining.remove(current)
            nxt = sorted((n for n in links[current] if n in remaining), key=lambda c: remaining.index(c))
            current = nxt[0] if nxt else None
    return [(c, by_id[c]) for c in out]
