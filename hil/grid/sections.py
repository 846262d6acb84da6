"""Line sections: the stretches of a line between its in-series switching devices.

Section ids follow the site-file contract: `<LINE>/<n>`, numbered from 1 at the sending end; a
line without in-series devices is one section `<LINE>/1`. An element tapped exactly at a
device's position belongs to the section on the device's source side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Section:
    id: str
    line: str
    from_m: float
    to_m: float
    buses: tuple[int, ...]
    elements: tuple[str, ...]
    """Elements tapped on it (transformers, capacitors, DER, lines, ties), nearest the source first."""
    upstream_device: str | None
    """The in-series device at its sending end (None for the first section)."""
    downstream_device: str | None


def line_sections(
    line_id: str,
    start_bus: int,
    length_m: float,
    segments: list[tuple[float, float, int, int, int]],
    breaks: list[tuple[float, str]],
    taps: dict[str, float],
) -> list[Section]:
    """Cut a line at its in-series devices (`breaks`, by position) into sections."""
    devices = {device for _, device in breaks}
    bounds = [(0.0, None)] + [(p, device) for p, device in breaks]
    out = []
    for n, (start_m, up) in enumerate(bounds):
        end_m, down = (breaks[n][0], breaks[n][1]) if n < len(breaks) else (length_m, None)
        buses = [seg[3] for seg in segments if start_m <= seg[0] and seg[1] <= end_m]
        first = [start_bus] if n == 0 else []
        first += [seg[2] for seg in segments if seg[0] == start_m and n > 0][:1]
        in_range = sorted(
            (p, e) for e, p in taps.items() if e not in devices and (start_m < p <= end_m or (n == 0 and p == 0.0))
        )
        out.append(
            Section(
                f"{line_id}/{n + 1}",
                line_id,
                start_m,
                end_m,
                tuple(dict.fromkeys(first + buses)),
                tuple(e for _, e in in_range),
                up,
                down,
            )
        )
    return out
