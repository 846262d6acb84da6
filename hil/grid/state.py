"""The simulated substation's state: its elements, their records and what every part reads.

`hil.grid.builder` fills it from the site file, `hil.grid.physics` advances it in time and
`hil.grid.point_map` reads it as the IEDs' points; `hil.grid.model.GridModel` is all of them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.agents.schema import (
    CapacitorBankAttributes,
    CircuitBreakerAttributes,
    PowerLineAttributes,
    RenewableEnergyAttributes,
    TransformerAttributes,
)
from gateway.config import AgentConfig, DemandResponseProgram
from hil.grid.ageing import Condition
from hil.grid.demand_response import DemandResponse
from hil.grid.faults import FaultInfo, FaultKind
from hil.grid.flows import branch_flow
from hil.grid.layout import SiteLayout
from hil.grid.meters import MeterBypass
from hil.grid.network import BranchKind, Loop, Network, RadialTree
from hil.grid.powerflow import PowerFlowResult
from hil.grid.profiles import SmoothNoise
from hil.grid.sections import Section
from hil.grid.settings import SimulationSettings
from hil.grid.switching import DeviceRole, SwitchingDevice

log = logging.getLogger("hil.grid.model")
"""One logger for the whole model, whichever part of it speaks."""

SQRT3 = math.sqrt(3.0)


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True, slots=True)
class MeterReadings:
    """One reading of every smart meter, column-wise (index i is meter `ids[i]`)."""

    time_s: float
    ids: list[str]
    group_ids: list[str]
    """Meter group of each meter."""
    voltage_v: npt.NDArray[np.float64]
    current_a: npt.NDArray[np.float64]
    demand_kw: npt.NDArray[np.float64]
    energy_kwh: npt.NDArray[np.float64]
    power_factor: npt.NDArray[np.float64]
    thd_pct: npt.NDArray[np.float64]
    powered: npt.NDArray[np.bool_]
    tamper: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------- elements


@dataclass(slots=True)
class _Line:
    id: str
    attrs: PowerLineAttributes
    start_bus: int
    segments: list[tuple[float, float, int, int, int]]
    """(from m, to m, from bus, to bus, branch) of each stretch of conductor, from the sending
    end; an in-series device sits between two of them."""
    z1_ohm_per_m: complex
    z0_ohm_per_m: complex
    breaker_id: str | None
    at_bus: dict[float, int] = field(default_factory=dict)
    """Position (m) → the bus there, on the source side of a device at that position."""
    breaks: list[tuple[float, str]] = field(default_factory=list)
    """In-series devices on it, (position, id), from the sending end: the section boundaries."""
    taps: dict[str, float] = field(default_factory=dict)
    """Element id → where it is tapped (m); ties included."""

    @property
    def end_bus(self) -> int:
        return self.segments[-1][3]

    @property
    def first_bus(self) -> int:
        return self.segments[0][3]


@dataclass(slots=True)
class _Transformer:
    id: str
    attrs: TransformerAttributes
    branch: int
    primary_bus: int
    bus: int
    rated_kva: float
    tap_position: int
    tap_setpoint: int
    next_tap_s: float = 0.0
    top_oil_rise_c: float | None = None
    nominal_ratio: float = 1.0
    ramps: list[tuple[float, float, float]] = field(default_factory=list)
    """(start_s, duration_s, delta_c) ambient offsets."""


@dataclass(slots=True)
class _Capacitor:
    id: str
    attrs: CapacitorBankAttributes
    bus: int
    steps_active: int = 0
    steps_cmd: int = 0


@dataclass(slots=True)
class _Der:
    id: str
    attrs: RenewableEnergyAttributes
    bus: int
    p_limit_pct: float = 100.0
    q_setpoint_kvar: float = 0.0
    connect_cmd: bool = True
    connected: bool = True
    ready_s: float = 0.0
    """Grid present since long enough to enter service from this time on."""
    p_kw: float = 0.0
    q_kvar: float = 0.0
    irradiance_w_m2: float = 0.0
    energy_kwh: float = 0.0
    """Delivered to the grid since start (inverters count it; SunSpec TotWhInj)."""
    soc_pct: float | None = None
    """State of charge of a battery (None for other DER)."""
    p_setpoint_kw: float = 0.0
    """A battery's active-power set-point: + discharge into the grid, − charge."""
    efficiency: float = 0.95


@dataclass(slots=True)
class _Load:
    """One load component: a transformer's own load, a meter group's, or a line's lumped load."""

    id: str
    bus: int
    peak_kw: float
    power_factor: float
    shape: int
    owners: frozenset[str]
    """Ids a load step may name to scale this component (itself, its transformer, its line...)."""
    load_class: str = "residential"
    """Voltage dependence (`[simulation] load_models`): residential, commercial, industrial or flat."""
    factor: float = 1.0
    kw: float = 0.0
    kvar: float = 0.0
    energy_kwh: float = 0.0


@dataclass(slots=True)
class _MeterGroup:
    id: str
    load: int
    """Index of the load component in `GridModel._loads`."""
    transformer: str
    nominal_v: float
    start: int
    stop: int
    prefix: str
    first: int
    meter_type: str
    critical: bool = False
    programs: frozenset[str] = frozenset()
    critical_meters: tuple[str, ...] = ()


@dataclass(slots=True)
class _Fault:
    fault_id: int
    line_id: str
    distance_m: float
    kind: FaultKind
    impedance_ohm: float
    transient: bool
    start_s: float
    info: FaultInfo | None = None


class GridState:
    """Electrical state of one substation: the elements, the network and the last solution."""

    # Filled by `GridBuilder` from the site; declared here for every part that reads them.
    conditions: dict[str, Condition]
    _v2: npt.NDArray[np.complex128]
    _v0: npt.NDArray[np.complex128]
    _bus_load_kw: npt.NDArray[np.float64]
    _bus_load_kvar: npt.NDArray[np.float64]
    _shapes: npt.NDArray[np.float64]
    _load_shape: npt.NDArray[np.int64]
    _load_peak_kw: npt.NDArray[np.float64]
    _load_tan_phi: npt.NDArray[np.float64]
    _load_bus: npt.NDArray[np.int64]
    _term_load: npt.NDArray[np.int64]
    _term_share: npt.NDArray[np.float64]
    _term_exp: npt.NDArray[np.float64]
    _load_group: npt.NDArray[np.int64]
    _dr_programs: dict[str, DemandResponseProgram]
    _load_noise: SmoothNoise
    _weather_noise: SmoothNoise
    _meter_ids: list[str]
    _meter_group_ids: list[str]
    _meter_weight: npt.NDArray[np.float64]
    _meter_pf: npt.NDArray[np.float64]
    _meter_thd: npt.NDArray[np.float64]
    _meter_drop: npt.NDArray[np.float64]
    _meter_energy0: npt.NDArray[np.float64]
    _meter_nominal_v: npt.NDArray[np.float64]
    _meter_tamper: npt.NDArray[np.bool_]
    bypass: MeterBypass
    _meter_noise: SmoothNoise
    _meter_index: dict[str, int]
    dr: DemandResponse
    _meter_dr: npt.NDArray[np.float64]
    """Each meter's demand-response multiplier at the last solve."""
    _ramp_mask: dict[str, npt.NDArray[np.bool_]]

    def __init__(self, settings: SimulationSettings, seed: int) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else seed
        self.net = Network(base_mva=settings.base_mva)
        self._now = 0.0
        self._last_solve_s: float | None = None
        self._dirty = True
        self._topology_dirty = True
        self._tree: RadialTree | None = None
        self._result: PowerFlowResult | None = None
        self._pending: list[tuple[float, int, str, bool]] = []
        self._event_seq = 0
        self.substation_id = ""
        """The first substation (the one a single-site model has)."""
        self.substation_ids: list[str] = []
        self._station_bus_of: dict[str, int] = {}
        self.station_bus = 0
        self._reference_pu = settings.source_voltage_pu
        """EMF of the first substation's grid: the root of the one tree holding every source."""
        self.source_bus = 0
        self._agent_types: dict[str, str] = {}
        self._agents: dict[str, AgentConfig] = {}
        self.breakers: dict[str, SwitchingDevice] = {}
        """Every switching device by id: feeder breakers, in-series devices, ties."""
        self._device_attrs: dict[str, CircuitBreakerAttributes] = {}
        self._layout = SiteLayout()
        self._external: dict[str, tuple[int, int, int]] = {}
        """External tie id → (its source's EMF bus, the bus behind its impedance, the EMF branch)."""
        self._source_names: dict[int, str] = {}
        """Top-level bus under the reference → the name of the source it is (for `sections`)."""
        self._closed_order: dict[int, int] = {}
        self._closed_seq = 0
        self._loops: list[Loop] = []
        self._fault_directions: dict[str, str] = {}
        self._sections: list[Section] = []
        self.lines: dict[str, _Line] = {}
        self.transformers: dict[str, _Transformer] = {}
        self.capacitors: dict[str, _Capacitor] = {}
        self.ders: dict[str, _Der] = {}
        self.ties: dict[str, int] = {}
        """Tie switch id (`TIE-<line>-<line>`) → branch index."""
        self._loads: list[_Load] = []
        self._groups: list[_MeterGroup] = []
        self._faults: list[_Fault] = []
        self._next_fault_id = 1
        self._point_sources: list[tuple[str, str, str]] = []
        self._command_targets: dict[str, tuple[str, str]] = {}
        self._ied_point_ids: list[str] = []
        # electrical results of the last solve, per bus
        self._v: npt.NDArray[np.complex128] = np.zeros(0, dtype=np.complex128)
        self._i_abc: npt.NDArray[np.complex128] = np.zeros((0, 3), dtype=np.complex128)
        self._i1: npt.NDArray[np.complex128] = np.zeros(0, dtype=np.complex128)
        self._energised: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._frequency_hz = settings.frequency_hz
        self._irradiance_w_m2 = 0.0
        self._collapsed = False
        self._point_cache: dict[str, float | int | bool] | None = None
        """Point values of the last solve; every state change goes through a solve."""
        self._ramps: dict[str, tuple[float, float, float]] = {}
        """Substation id → (start s, underlying demand at start kW, kW per hour): a load ramp."""
        self._ambient_override_c: dict[str, float] = {}
        """Substation id → the ambient temperature its transformers see (a heat-wave injection)."""
        self._sub_of_bus: dict[int, str] = {}

    def _owners(self, bus: int) -> set[str]:
        """Lines, breakers and the substation upstream of `bus` in the as-built (normal) topology."""
        owners: set[str] = set()
        station_of = {b: sid for sid, b in self._station_bus_of.items()}
        parents: dict[int, tuple[int, str, BranchKind]] = {}
        ties = (DeviceRole.TIE, DeviceRole.EXTERNAL_TIE)
        for br in self.net.branches:
            if br.kind in (BranchKind.IDEAL, BranchKind.SOURCE) and br.name != "source":
                continue
            if br.kind is not BranchKind.SWITCH or (
                br.name in self.breakers and self.breakers[br.name].role not in ties
            ):
                parents[br.to_bus] = (br.from_bus, br.name, br.kind)
        line_of_branch_prefix = set(self.lines)
        while True:
            if bus in station_of:
                owners.add(station_of[bus])
            if bus not in parents:
                break
            parent, name, kind = parents[bus]
            base = name.split(":", 1)[0]
            if base in line_of_branch_prefix or name in self.breakers or kind is BranchKind.TRANSFORMER:
                owners.add(base)
            bus = parent
        if not owners & set(self.substation_ids):
            owners.add(self.substation_id)
        return owners

    def _substation_of_load(self) -> list[str]:
        subs = set(self.substation_ids)
        return [next(iter(sorted(ld.owners & subs)), self.substation_id) for ld in self._loads]

    def _substation_of_bus(self, bus: int) -> str:
        found = self._sub_of_bus.get(bus)
        if found is None:
            found = self._sub_of_bus[bus] = next(
                iter(sorted(self._owners(bus) & set(self.substation_ids))), self.substation_id
            )
        return found

    def _kv(self, bus: int) -> float:
        return float(abs(self._v[bus]) * self.net.buses[bus].base_kv)

    def _flow(self, branch: int) -> tuple[npt.NDArray[np.complex128], complex, int]:
        """Phase currents through a branch (pu), the power (kW + j kvar) it carries in its from → to
        direction, and the direction (+1, −1 when fed from its `to` side, 0 when carrying nothing)."""
        assert self._tree is not None
        flow = branch_flow(self._tree, branch, self.net.branches[branch], self._v, self._i1, self._i_abc)
        return flow.currents_pu, flow.power_pu * self.net.base_mva * 1000.0, flow.direction

    def _device_voltage_bus(self, device: SwitchingDevice) -> int:
        """Where a device measures its voltage: closed, on the side its supply comes from; open,
        on its load side (a feeder breaker's line side, an in-series device's downstream side,
        a tie's second line or external source)."""
        if device.closed:
            _, _, direction = self._flow(device.branch)
            if direction < 0 or (direction == 0 and not self._energised[device.from_bus]):
                return device.bus
            return device.from_bus
        return device.bus

    @staticmethod
    def _tap_ratio(t: _Transformer) -> float:
        return t.nominal_ratio * (1.0 + t.tap_position * t.attrs.tap_step_percent / 100.0)

    def _modelled(self) -> set[str]:
        return (
            set(self.substation_ids)
            | set(self.breakers)
            | set(self.lines)
            | set(self.transformers)
            | set(self.capacitors)
            | set(self.ders)
        )

    def _switching_device(self, device_id: str) -> SwitchingDevice:
        try:
            return self.breakers[device_id]
        except KeyError:
            raise KeyError(
                f"{device_id!r} is not a modelled switching device; known: {', '.join(sorted(self.breakers)) or 'none'}"
            ) from None
