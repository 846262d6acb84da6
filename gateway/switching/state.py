"""The plant as switching sees it now: device positions, indicators, modes and section loads.

Fed from the process image (`on_point`), read by the authority, FLISR and sequence validation.
A value whose quality is not good is unknown here (None): a switch whose position is stale is
neither open nor closed, and whatever depends on it refuses.

Section loads are estimated from what is measured on each section (transformer loads,
capacitor and DER output) and, where the devices bounding a section measure current, from the
current entering it minus the current leaving it; each energised section's estimate is kept
for a few minutes so that FLISR can plan with the load a section carried before it lost supply.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.switching.network import DEFAULT_POWER_FACTOR, SQRT3, Network

DEVICE_NAMES = frozenset({"closed", "fpi", "local", "ia", "ib", "ic", "voltage_kv"})
LOAD_NAMES = {
    "transformer": ("load_kw", "load_kvar"),
    "capacitor_bank": (None, "reactive_power_kvar"),
    "renewable_energy": ("active_power_kw", "reactive_power_kvar"),
}
LOAD_SIGN = {"transformer": 1.0, "capacitor_bank": -1.0, "renewable_energy": -1.0}
KEEP_SAMPLES = 600
DEAD_FRACTION = 0.1
"""Below this share of its nominal voltage a side is dead."""
SOURCE_PU_RANGE = (0.9, 1.1)
IDLE_GENERATION_KVA = 1.0
"""A DER putting out less than this is at rest: it does not hide the load from the current balance."""
PLAUSIBLE_LOAD = 1.5
"""A section 'load' above this share of its line's ampacity is a fault current, not remembered."""


@dataclass(frozen=True, slots=True)
class LoadSample:
    time: float
    kva: complex
    method: str


class GridState:
    def __init__(self, network: Network) -> None:
        self.network = network
        self._feeds: dict[str, list[tuple[str, str]]] = {}
        for dev in network.devices.values():
            for name, pid in dev.points.items():
                if name in DEVICE_NAMES:
                    self._feeds.setdefault(pid, []).append((dev.id, name))
        for element, points in network.element_points.items():
            for load_name in LOAD_NAMES.get(network.element_types.get(element, ""), ()):
                if load_name and load_name in points:
                    self._feeds.setdefault(points[load_name], []).append((element, load_name))
        for src in network.sources:
            point = network.element_points.get(src, {}).get("bus_voltage_kv")
            if point:
                self._feeds.setdefault(point, []).append((src, "bus_voltage_kv"))
        self._fpi_since: dict[str, float] = {}
        self._values: dict[tuple[str, str], float | bool | None] = {}
        self._times: dict[tuple[str, str], float] = {}
        self._history: dict[str, deque[LoadSample]] = {s: deque(maxlen=KEEP_SAMPLES) for s in network.sections}
        self._moved_at: dict[str, float] = {}
        """Device → when its position last changed (monotonic s)."""
        self.position_changes = 0
        """Bumped when a device position changes (so waiters know to look again)."""

    @property
    def points(self) -> list[str]:
        """Point ids this state listens to."""
        return list(self._feeds)

    def on_point(self, point_id: str, value: float | bool | None, good: bool, now: float) -> None:
        for key in self._feeds.get(point_id, ()):
            if isinstance(value, float) and not math.isfinite(value):
                good = False
            new = value if good else None
            if key[1] == "closed" and self._values.get(key) != new:
                self.position_changes += 1
                self._moved_at[key[0]] = now
            if key[1] == "fpi":
                if new and not self._values.get(key):
                    self._fpi_since[key[0]] = now
                elif new is not None and not new:
                    self._fpi_since.pop(key[0], None)
            self._values[key] = new
            self._times[key] = now

    # ------------------------------------------------------------------ devices

    def value(self, element: str, name: str) -> float | bool | None:
        return self._values.get((element, name))

    def far_side_waiting(self, device: str, now: float, limit_s: float) -> bool:
        """True while an open device's far-side voltage was read before the last move, less than
        `limit_s` ago, of a device that changed what feeds that far side (anywhere on the network:
        a feeder breaker opened two sections away de-energises it as surely as the next switch):
        the reading may still show a source that has just been switched away (or miss one just
        switched in). A close waits for a fresh reading rather than being judged on an old one;
        after `limit_s` the interlocks judge what there is (and refuse when it cannot be
        explained). Moves that left the far side's supply as it was do not make it wait."""
        dev = self.network.devices.get(device)
        if dev is None or (device, "voltage_kv") not in self._times or dev.b not in self.network.sections:
            return False
        read_at = self._times[(device, "voltage_kv")]
        recent = [d for d, at in self._moved_at.items() if d != device and read_at < at and now - at < limit_s]
        if not recent:
            return False
        config = self.configuration()
        config[device] = False
        fed = self.network.energise(config).source_of.get(dev.b)
        for moved in recent:
            position = config.get(moved)
            if position is None:
                return True  # a device that moved to an unknown position: wait for the reading
            before = {**config, moved: not position}
            if self.network.energise(before).source_of.get(dev.b) != fed:
                return True
        return False

    def position(self, device: str) -> bool | None:
        """True closed, False open, None unknown (no point, not yet received, or not good)."""
        value = self._values.get((device, "closed"))
        return None if value is None else bool(value)

    def fpi(self, device: str) -> bool | None:
        if "fpi" not in self.network.devices[device].points:
            return None
        value = self._values.get((device, "fpi"))
        return None if value is None else bool(value)

    def fpi_since(self, device: str, since: float) -> bool | None:
        """The indicator as evidence about a fault that started at `since`: True when it latched
        at or after then, False when it is reset, None when unknown or latched before (by an
        earlier event)."""
        latched = self.fpi(device)
        if latched is None or not latched:
            return latched
        at = self._fpi_since.get(device)
        return True if at is not None and at >= since else None

    def source_voltages(self) -> dict[str, float]:
        """Each source's measured voltage in pu (the substation bus), where it is known and in its
        regulated range (a bus sagging under a fault is no basis for an estimate of normal flows)."""
        out = {}
        for src_id, src in self.network.sources.items():
            kv = self._values.get((src_id, "bus_voltage_kv"))
            if isinstance(kv, int | float) and not isinstance(kv, bool) and src.nominal_kv > 0:
                pu = float(kv) / src.nominal_kv
                if SOURCE_PU_RANGE[0] <= pu <= SOURCE_PU_RANGE[1]:
                    out[src_id] = pu
        return out

    def local(self, device: str) -> bool | None:
        """Whether the device is in local control; False when it has no such point."""
        points = self.network.element_points.get(device, {})
        if "local" not in points:
            return False
        value = self._values.get((device, "local"))
        return None if value is None else bool(value)

    def current_a(self, device: str) -> float | None:
        phases = [self._values.get((device, n)) for n in ("ia", "ib", "ic")]
        known = [abs(float(v)) for v in phases if isinstance(v, int | float) and not isinstance(v, bool)]
        return max(known) if known else None

    def configuration(self, assume: Mapping[str, bool] | None = None) -> dict[str, bool | None]:
        """Every device's position (None when unknown), with `assume` laid over it; an external
        source whose open tie measures no voltage on its side is dead (`EXT:<tie>` → False)."""
        config: dict[str, bool | None] = {d: self.position(d) for d in self.network.devices}
        for dev in self.network.devices.values():
            ext = f"EXT:{dev.id}"
            if dev.external_source and ext in self.network.sources and config.get(dev.id) is False:
                kv = self._values.get((dev.id, "voltage_kv"))
                if isinstance(kv, int | float) and kv < DEAD_FRACTION * self.network.sources[ext].nominal_kv:
                    config[ext] = False
        if assume:
            config.update(assume)
        return config

    # ------------------------------------------------------------------ loads

    def section_load(self, section: str) -> LoadSample | None:
        """The section's load now (kW + j kvar), or None when nothing on it is measured."""
        sec = self.network.sections[section]
        if section in self.network.station_nodes:
            # a station transformer's bus: its devices measure on two voltage levels, and what it
            # carries is its feeders' load (its own losses are left out)
            return LoadSample(0.0, 0j, "station transformer")
        total, measured, generation = 0j, False, False
        for element in sec.elements:
            kind = self.network.element_types.get(element, "")
            names = LOAD_NAMES.get(kind)
            if names is None:
                continue
            p_name, q_name = names
            p = self._values.get((element, p_name)) if p_name else 0.0
            q = self._values.get((element, q_name)) if q_name else 0.0
            if p is None and q is None:
                continue
            measured = True
            value = complex(float(p or 0.0), float(q or 0.0))
            # a generator at rest (PV at night) leaves the currents telling the load
            generation |= kind == "renewable_energy" and abs(value) >= IDLE_GENERATION_KVA
            total += LOAD_SIGN[kind] * value
        # currents are magnitudes: they cannot tell generation from load
        by_current = None if generation else self._current_balance(section)
        if by_current is not None:
            pf = abs(total.real) / abs(total) if measured and abs(total) > 1.0 else DEFAULT_POWER_FACTOR
            s = SQRT3 * sec.nominal_kv * by_current
            from_current = complex(s * pf, s * math.sqrt(max(0.0, 1.0 - pf * pf)))
            if not measured or abs(from_current) > abs(total):
                return LoadSample(0.0, from_current, "current balance")
        if measured:
            return LoadSample(0.0, total, "element measurements")
        if not sec.elements and not sec.customers:
            return LoadSample(0.0, 0j, "nothing connected")
        return None

    def _current_balance(self, section: str) -> float | None:
        """Current into the section minus current out of it, when every device around it that is
        closed measures its current (the feeding side is the one carrying more current), and has
        measured it since the last switching around the section: a current read before a device
        around it opened still carries what flowed through that device."""
        around = self.network.devices_of(section)
        moved = max((self._moved_at.get(d, -math.inf) for d in around), default=-math.inf)
        currents = []
        for dev in around:
            pos = self.position(dev)
            if pos is False:
                continue
            amps = self.current_a(dev)
            if amps is None:
                return None
            if min(self._times.get((dev, n), -math.inf) for n in ("ia", "ib", "ic") if (dev, n) in self._times) < moved:
                return None
            currents.append(amps)
        if not currents:
            return None
        currents.sort(reverse=True)
        return max(0.0, currents[0] - sum(currents[1:]))

    def sample_loads(self, now: float, energised: Iterable[str], frozen: Iterable[str] = ()) -> None:
        """Remember the present load of each energised section not in `frozen` (sections whose
        feeder carries a fault now: their currents are fault currents, not load)."""
        skip = set(frozen)
        for section in energised:
            if section in skip or section not in self._history:
                continue
            sample = self.section_load(section)
            if sample is None or not self.plausible_load(section, sample.kva):
                continue  # a fault current, not a load
            self._history[section].append(LoadSample(now, sample.kva, sample.method))

    def loads_for_estimate(self, now: float) -> dict[str, complex]:
        """Each section's load to estimate with: live where measured now, else the last
        remembered. A value far beyond the section's ampacity is a fault current, never a load:
        with nothing remembered the section counts as unloaded, as an unmeasured one does."""
        out: dict[str, complex] = {}
        for section in self.network.sections:
            live = self.section_load(section)
            plausible = live is not None and self.plausible_load(section, live.kva)
            if live is not None and plausible and abs(live.kva) > 0.0:
                out[section] = live.kva
                continue
            remembered = self.load_before(section, now)
            if remembered is not None:
                out[section] = remembered.kva
            else:
                out[section] = live.kva if live is not None and plausible else 0j
        return out

    def plausible_load(self, section: str, kva: complex) -> bool:
        """Whether `kva` can be the section's load (far beyond its line's ampacity it is a fault)."""
        sec = self.network.sections[section]
        return abs(kva) / (SQRT3 * sec.nominal_kv) <= PLAUSIBLE_LOAD * sec.ampacity_a

    def load_before(self, section: str, time: float) -> LoadSample | None:
        """The last load remembered for `section` at or before `time` (monotonic s)."""
        best = None
        for sample in self._history.get(section, ()):
            if sample.time <= time:
                best = sample
            else:
                break
        return best
