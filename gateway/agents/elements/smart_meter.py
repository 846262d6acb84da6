"""Smart Meter agents, held column-wise: one numpy array per attribute, evaluated in bulk.

100 000 meters are not 100 000 objects. Each evaluation classifies every meter into one event
(vectorised, in priority order) and moves all of them through the same transition table at
once, using the table compiled to a (state × event) array. Transitions are reported per group
as bulk events.

Interruptions go to the reliability ledger, one record per meter from the start of supply loss
to its return. Two witnesses feed it: the meters themselves (an Outage and its end, at the
fleet's evaluation cadence) and the runtime, which knows from the breakers at once when a
group loses and regains supply (`interruption_started` / `interruption_ended`), so a 0.5 s
reclose between two meter readings is still counted. A return of supply by an auto-reclose is
held as pending until the reclose sequence is over (`confirm_restorations`): a trip meanwhile
continues the same interruption, as IEEE 1366 counts a reclose sequence as one event.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from gateway.agents.actions import Action, Alert, BusMessage, Severity, Topic
from gateway.agents import spec
from gateway.agents.fsm import IGNORE, TransitionTable, row
from gateway.agents.schema import SmartMeterAttributes
from gateway.config import MeterGroupConfig
from gateway.agents.reliability import OutageLedger


class MeterState(enum.Enum):
    ACTIVE = "Active"
    HIGH_CONSUMPTION = "High_Consumption"
    LOW_VOLTAGE = "Low_Voltage"
    POWER_QUALITY_ISSUE = "Power_Quality_Issue"
    OUTAGE = "Outage"
    TAMPERED = "Tampered"
    COMMUNICATION_LOSS = "Communication_Loss"


class MeterEvent(enum.Enum):
    READING_NORMAL = enum.auto()
    HIGH_DEMAND = enum.auto()
    VOLTAGE_LOW = enum.auto()
    POWER_QUALITY = enum.auto()
    NO_POWER = enum.auto()
    TAMPER_DETECTED = enum.auto()
    TAMPER_CLEARED = enum.auto()
    READINGS_STOPPED = enum.auto()


_S, _E = MeterState, MeterEvent
_FOLLOW = dict(
    READING_NORMAL=_S.ACTIVE,
    HIGH_DEMAND=_S.HIGH_CONSUMPTION,
    VOLTAGE_LOW=_S.LOW_VOLTAGE,
    POWER_QUALITY=_S.POWER_QUALITY_ISSUE,
    NO_POWER=_S.OUTAGE,
    TAMPER_DETECTED=_S.TAMPERED,
    TAMPER_CLEARED=IGNORE,
    READINGS_STOPPED=_S.COMMUNICATION_LOSS,
)


def _follow(own: str, **extra: Any) -> dict[MeterEvent, Any]:
    return row(_E, **{**_FOLLOW, own: IGNORE, **extra})


TABLE: TransitionTable[MeterState, MeterEvent] = TransitionTable(
    MeterState,
    MeterEvent,
    initial=_S.ACTIVE,
    rows={
        _S.ACTIVE: _follow("READING_NORMAL"),
        _S.HIGH_CONSUMPTION: _follow("HIGH_DEMAND"),
        _S.LOW_VOLTAGE: _follow("VOLTAGE_LOW"),
        _S.POWER_QUALITY_ISSUE: _follow("POWER_QUALITY"),
        _S.OUTAGE: _follow("NO_POWER", READINGS_STOPPED=IGNORE),  # a dead meter cannot talk
        # a tamper flag stands until cleared: readings go on but do not lift it
        _S.TAMPERED: row(
            _E,
            TAMPER_CLEARED=_S.ACTIVE,
            NO_POWER=_S.OUTAGE,
            ignore="READING_NORMAL HIGH_DEMAND VOLTAGE_LOW POWER_QUALITY TAMPER_DETECTED READINGS_STOPPED",
        ),
        _S.COMMUNICATION_LOSS: _follow("READINGS_STOPPED"),
    },
)

STATES = list(MeterState)
EVENTS = list(MeterEvent)
STATE_CODE = {s: i for i, s in enumerate(STATES)}
EVENT_CODE = {e: i for i, e in enumerate(EVENTS)}


def compile_table(table: TransitionTable[MeterState, MeterEvent]) -> np.ndarray:
    """The table as an int8 array: next_state = NEXT[state_code, event_code]."""
    out = np.zeros((len(STATES), len(EVENTS)), dtype=np.int8)
    for s in STATES:
        for e in EVENTS:
            out[STATE_CODE[s], EVENT_CODE[e]] = STATE_CODE[table.next(s, e)]
    return out


NEXT = compile_table(TABLE)
_OUTAGE = STATE_CODE[_S.OUTAGE]
_CAUSES = {
    _E.READING_NORMAL: "readings normal",
    _E.HIGH_DEMAND: "demand above typical pattern",
    _E.VOLTAGE_LOW: "voltage below range",
    _E.POWER_QUALITY: "harmonics or overvoltage",
    _E.NO_POWER: "no power at the meter",
    _E.TAMPER_DETECTED: "tamper flag",
    _E.TAMPER_CLEARED: "tamper cleared",
    _E.READINGS_STOPPED: "no reading within the timeout",
}

COLUMNS = ("voltage_v", "current_a", "demand_kw", "energy_kwh", "power_factor", "thd_pct", "tamper", "powered")
"""What a reading may carry (docs/ami.md). `powered` False is the meter's power-off event: it
reads as zero voltage whatever else the reading says."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkStateChange:
    """Meters of one group that made the same move in one evaluation."""

    group_id: str
    old: str
    new: str
    cause: str
    time: float
    meter_ids: tuple[str, ...]
    agent_type: str = "smart_meter"


@dataclass
class _Group:
    config: MeterGroupConfig
    start: int
    stop: int


class MeterFleet:
    """Every smart meter of the site as columns; `evaluate` steps them all."""

    def __init__(
        self, groups: Sequence[MeterGroupConfig], now: float, attrs: SmartMeterAttributes | None = None
    ) -> None:
        self.attrs = attrs or SmartMeterAttributes()
        self.groups: list[_Group] = []
        start = 0
        for cfg in groups:
            self.groups.append(_Group(cfg, start, start + cfg.count))
            start += cfg.count
        n = start
        self.n = n
        self.ids: list[str] = [
            f"{g.config.prefix}-{i:05d}"
            for g in self.groups
            for i in range(g.config.first, g.config.first + g.config.count)
        ]
        self.index: dict[str, int] = {mid: i for i, mid in enumerate(self.ids)}
        self.critical = np.zeros(n, dtype=bool)
        """Meters of critical customers (hospitals, water works): the groups' `critical_meters`, every
        meter of a `critical` group."""
        for g in self.groups:
            self.critical[[self.index[m] for m in g.config.critical_ids()]] = True
        self.nominal_v = np.empty(n, dtype=np.float32)
        self.timeout_s = np.empty(n, dtype=np.float32)
        for g in self.groups:
            self.nominal_v[g.start : g.stop] = g.config.nominal_voltage_v
            self.timeout_s[g.start : g.stop] = g.config.reading_timeout_s
        nan32 = np.full(n, np.nan, dtype=np.float32)
        self.voltage_v = nan32.copy()
        self.current_a = nan32.copy()
        self.demand_kw = nan32.copy()
        self.power_factor = nan32.copy()
        self.thd_pct = nan32.copy()
        self.typical_kw = nan32.copy()
        self.peak_kw = np.zeros(n, dtype=np.float32)
        self.energy_kwh = np.zeros(n, dtype=np.float64)
        self.energy_known = np.zeros(n, dtype=bool)
        """Meters whose energy register has been read (zero until then is not a reading)."""
        self.last_reading = np.full(n, now, dtype=np.float64)
        """Counted from start-up, so a silent meter reaches Communication_Loss after its timeout."""
        self.since = np.full(n, now, dtype=np.float64)
        self.outage_start = np.full(n, np.nan, dtype=np.float64)
        """Start of the meter's open interruption (NaN: none)."""
        self.restore_pending = np.full(n, np.nan, dtype=np.float64)
        """When supply came back by an auto-reclose whose sequence is not over yet (NaN: none)."""
        self.state = np.zeros(n, dtype=np.int8)
        self.tamper = np.zeros(n, dtype=bool)
        self.supply_lost = np.zeros(n, dtype=bool)
        self.ledger = OutageLedger(n)
        self.unknown_ids = 0

    # ------------------------------------------------------------------ inputs

    def group_slice(self, group_id: str) -> slice:
        for g in self.groups:
            if g.config.id == group_id:
                return slice(g.start, g.stop)
        raise KeyError(group_id)

    def ingest(self, meter_ids: Sequence[str], columns: Mapping[str, np.ndarray], now: float) -> int:
        """Store one batch of readings; unknown ids are skipped and counted."""
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"unknown meter column(s) {unknown}; expected some of {list(COLUMNS)}")
        lookup = self.index.get
        idx_list = [lookup(mid, -1) for mid in meter_ids]
        idx = np.fromiter(idx_list, dtype=np.int64, count=len(idx_list))
        ok = idx >= 0
        self.unknown_ids += int((~ok).sum())
        if not ok.all():
            idx = idx[ok]
        for name, values in columns.items():
            col = np.asarray(values)
            if len(col) != len(meter_ids):
                raise ValueError(f"meter column {name!r} has {len(col)} values for {len(meter_ids)} ids")
            if not ok.all():
                col = col[ok]
            if name == "powered":
                continue  # applied after the voltages below
            if name == "tamper":
                self.tamper[idx] |= col.astype(bool)
            elif name == "demand_kw":
                demand = col.astype(np.float32)
                typical = self.typical_kw[idx]
                fresh = np.isnan(typical)
                self.typical_kw[idx] = np.where(fresh, demand, typical + 0.02 * (demand - typical))
                self.peak_kw[idx] = np.maximum(self.peak_kw[idx], demand)
                self.demand_kw[idx] = demand
            elif name == "energy_kwh":
                self.energy_kwh[idx] = col
                self.energy_known[idx] = True
            else:
                getattr(self, name)[idx] = col
        if "powered" in columns:
            powered = np.asarray(columns["powered"]).astype(bool)
            if not ok.all():
                powered = powered[ok]
            self.voltage_v[idx[~powered]] = 0.0
        self.last_reading[idx] = now
        return int(idx.size)

    def set_supply(self, group_ids: Sequence[str], lost: bool, now: float | None = None) -> None:
        """Topology says the transformer(s) feeding these groups lost (or regained) supply.

        On restoration, readings taken while dead no longer describe the meter, and its silence
        timer restarts (a meter is given its reading timeout to report after power returns).
        """
        for gid in group_ids:
            sl = self.group_slice(gid)
            was = self.supply_lost[sl].copy()
            self.supply_lost[sl] = lost
            if not lost:
                v = self.voltage_v[sl]
                v[was] = np.nan
                if now is not None:
                    last = self.last_reading[sl]
                    last[was] = np.maximum(last[was], now)

    def interruption_started(self, group_ids: Sequence[str], now: float) -> None:
        """These groups lost supply at `now` (known from the breakers): open an interruption, or go on with one."""
        for gid in group_ids:
            sl = self.group_slice(gid)
            start = self.outage_start[sl]
            start[np.isnan(start)] = now
            self.restore_pending[sl] = np.nan

    def interruption_ended(self, group_ids: Sequence[str], now: float, pending: bool) -> None:
        """Supply came back to these groups at `now`: record their interruptions, or hold them as pending."""
        for gid in group_ids:
            sl = self.group_slice(gid)
            idx = np.arange(sl.start, sl.stop)[~np.isnan(self.outage_start[sl])]
            if pending:
                self.restore_pending[idx] = now
            else:
                self._record(idx, now)

    def confirm_restorations(self, group_ids: Sequence[str] | None = None) -> int:
        """The reclose sequence is over: pending returns of supply end their interruptions. Returns how many."""
        slices = [slice(0, self.n)] if group_ids is None else [self.group_slice(g) for g in group_ids]
        count = 0
        for sl in slices:
            idx = np.arange(sl.start, sl.stop)[~np.isnan(self.restore_pending[sl]) & ~np.isnan(self.outage_start[sl])]
            self._record(idx, self.restore_pending[idx])
            self.restore_pending[sl] = np.nan
            count += idx.size
        return count

    def _record(self, idx: np.ndarray, end: float | np.ndarray) -> None:
        if idx.size:
            self.ledger.record(idx, self.outage_start[idx], end)
            self.outage_start[idx] = np.nan
            self.restore_pending[idx] = np.nan

    def clear_tamper(self, meter_ids: Sequence[str]) -> int:
        idx = [self.index[m] for m in meter_ids if m in self.index]
        self.tamper[idx] = False
        return len(idx)

    # ------------------------------------------------------------------ evaluation

    def classify(self, now: float) -> np.ndarray:
        a = self.attrs
        v = self.voltage_v
        nominal = self.nominal_v
        with np.errstate(invalid="ignore"):
            dead = self.supply_lost | (v < a.outage_voltage_pu * nominal)
            stopped = (now - self.last_reading) > self.timeout_s
            low = v < a.low_voltage_pu * nominal
            pq = (self.thd_pct > a.thd_limit_pct) | (v > a.high_voltage_pu * nominal)
            # entered above ratio × typical, left below 80 % of that (no flapping on noisy demand)
            ratio = np.where(
                self.state == STATE_CODE[_S.HIGH_CONSUMPTION], 0.8 * a.high_consumption_ratio, a.high_consumption_ratio
            )
            high = (self.demand_kw > ratio * self.typical_kw) & (self.typical_kw > 0.05)
        return np.select(
            [dead, self.tamper, stopped, low, pq, high],
            [
                EVENT_CODE[_E.NO_POWER],
                EVENT_CODE[_E.TAMPER_DETECTED],
                EVENT_CODE[_E.READINGS_STOPPED],
                EVENT_CODE[_E.VOLTAGE_LOW],
                EVENT_CODE[_E.POWER_QUALITY],
                EVENT_CODE[_E.HIGH_DEMAND],
            ],
            default=np.where(
                self.state == STATE_CODE[_S.TAMPERED], EVENT_CODE[_E.TAMPER_CLEARED], EVENT_CODE[_E.READING_NORMAL]
            ),
        ).astype(np.int8)

    def evaluate(self, now: float) -> tuple[list[BulkStateChange], list[Action]]:
        events = self.classify(now)
        old = self.state
        new = NEXT[old, events]
        changed = np.flatnonzero(new != old)
        changes: list[BulkStateChange] = []
        actions: list[Action] = []
        if changed.size == 0:
            return changes, actions
        old_c, new_c, ev_c = old[changed], new[changed], events[changed]
        went_out = changed[new_c == _OUTAGE]
        restored = changed[(old_c == _OUTAGE) & (new_c != _OUTAGE)]
        starts = self.outage_start.copy()  # for the restoration notices: how long each was out
        if went_out.size:
            # an interruption already opened by the breakers keeps its earlier start
            self.outage_start[went_out] = np.where(np.isnan(starts[went_out]), now, starts[went_out])
            self.restore_pending[went_out] = np.nan
        if restored.size:
            # a return held pending by an auto-reclose is recorded when the sequence is over
            self._record(
                restored[~np.isnan(self.outage_start[restored]) & np.isnan(self.restore_pending[restored])], now
            )
        self.state = new
        self.since[changed] = now
        # `changed` is sorted and each group a contiguous range of meters: one slice per group
        bounds = np.searchsorted(changed, [b for g in self.groups for b in (g.start, g.stop)])
        all_keys = old_c.astype(np.int32) * 64 + new_c.astype(np.int32) * 8 + ev_c
        ids = self.ids
        for k, g in enumerate(self.groups):
            lo, hi = int(bounds[2 * k]), int(bounds[2 * k + 1])
            if lo == hi:
                continue
            keys, members = all_keys[lo:hi], changed[lo:hi]
            for key in np.unique(keys).tolist():
                sel = members[keys == key].tolist()
                o, nw, e = STATES[key // 64], STATES[(key // 8) % 8], EVENTS[key % 8]
                meter_ids = itemgetter(*sel)(ids) if len(sel) > 1 else (ids[sel[0]],)
                changes.append(
                    BulkStateChange(
                        group_id=g.config.id, old=o.value, new=nw.value, cause=_CAUSES[e], time=now, meter_ids=meter_ids
                    )
                )
            actions += self._group_notices(g, members, old_c[lo:hi], new_c[lo:hi], starts, now)
        # a meter still out whose interruption was closed when its supply came back (a reading taken
        # while it was dead, or a fault behind it): its interruption goes on from now
        stuck = (self.state == _OUTAGE) & np.isnan(self.outage_start)
        self.outage_start[stuck] = now
        return changes, actions

    def _group_notices(
        self, g: _Group, idx: np.ndarray, old: np.ndarray, new: np.ndarray, starts: np.ndarray, now: float
    ) -> list[Action]:
        out: list[Action] = []
        gid, xfmr = g.config.id, g.config.connected_transformer
        went_out = idx[new == _OUTAGE]
        back = idx[(old == _OUTAGE) & (new != _OUTAGE)]
        n_low = int((new == STATE_CODE[_S.LOW_VOLTAGE]).sum())
        n_tamper = int((new == STATE_CODE[_S.TAMPERED]).sum())
        if went_out.size:
            out.append(
                BusMessage(
                    source=gid,
                    topic=Topic.FAULT_ALERTS,
                    kind="meter_outage",
                    urgent=True,
                    payload={
                        "group": gid,
                        "transformer": xfmr,
                        "meters": int(went_out.size),
                        "critical_meters": [self.ids[i] for i in went_out[self.critical[went_out]]],
                    },
                )
            )
        if back.size:
            durations = now - starts[back]
            durations = durations[~np.isnan(durations)]
            out.append(
                BusMessage(
                    source=gid,
                    topic=Topic.LOAD_CHANGES,
                    kind="service_restored",
                    payload={
                        "group": gid,
                        "transformer": xfmr,
                        "meters": int(back.size),
                        "critical_meters": [self.ids[i] for i in back[self.critical[back]]],
                        "mean_outage_s": float(durations.mean()) if durations.size else 0.0,
                    },
                )
            )
        if n_low:
            low = idx[new == STATE_CODE[_S.LOW_VOLTAGE]]
            out.append(
                BusMessage(
                    source=gid,
                    target=xfmr,
                    kind="low_voltage_at_customer",
                    payload={
                        "group": gid,
                        "transformer": xfmr,
                        "meters": n_low,
                        "critical_meters": [self.ids[i] for i in low[self.critical[low]]],
                        "lowest_voltage_v": float(np.nanmin(self.voltage_v[low]))
                        if np.isfinite(self.voltage_v[low]).any()
                        else None,
                        "nominal_voltage_v": g.config.nominal_voltage_v,
                    },
                )
            )
        if n_tamper:
            out.append(
                Alert(
                    agent_id=gid,
                    severity=Severity.MAJOR,
                    time=now,
                    message=f"tampering suspected at {n_tamper} meter(s) of {gid}",
                )
            )
        return out

    # ------------------------------------------------------------------ views and persistence

    def counts(self, sl: slice | None = None) -> dict[str, int]:
        states = self.state if sl is None else self.state[sl]
        hist = np.bincount(states, minlength=len(STATES))
        return {s.value: int(hist[i]) for i, s in enumerate(STATES) if hist[i]}

    def meter(self, meter_id: str) -> dict[str, Any]:
        i = self.index[meter_id]
        g = next(g for g in self.groups if g.start <= i < g.stop)

        def f(x: Any) -> float | None:
            return None if np.isnan(x) else float(x)

        return {
            "meter_id": meter_id,
            "group": g.config.id,
            "connected_transformer": g.config.connected_transformer,
            "meter_type": g.config.meter_type,
            "state": STATES[self.state[i]].value,
            "since": float(self.since[i]),
            "voltage": f(self.voltage_v[i]),
            "current": f(self.current_a[i]),
            "current_demand": f(self.demand_kw[i]),
            "power_factor": f(self.power_factor[i]),
            "thd_pct": f(self.thd_pct[i]),
            "energy_consumed": float(self.energy_kwh[i]),
            "peak_demand": float(self.peak_kw[i]),
            "last_reading_date": float(self.last_reading[i]),
            "tampered": bool(self.tamper[i]),
            "supply_lost": bool(self.supply_lost[i]),
        }

    def shift_times(self, delta_s: float) -> None:
        """The monotonic clock's origin moved (restart after reboot): move every stored time."""
        self.since += delta_s
        self.outage_start += delta_s
        self.restore_pending += delta_s
        self.ledger.shift_times(delta_s)

    _PERSISTED = (
        "state",
        "since",
        "outage_start",
        "restore_pending",
        "tamper",
        "energy_kwh",
        "peak_kw",
        "typical_kw",
        "supply_lost",
    )

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = {"n": self.n}
        for name in self._PERSISTED:
            arr = getattr(self, name)
            data[name] = {"dtype": str(arr.dtype), "data": arr.tobytes()}
        data["ledger"] = self.ledger.snapshot()
        return data

    def restore(self, data: dict[str, Any]) -> bool:
        """Restore columns saved by `snapshot`; refuses (False) if the meter population changed."""
        if data.get("n") != self.n:
            return False
        for name in self._PERSISTED:
            col = data.get(name)
            if col is None:
                continue  # a snapshot from before this column existed: it starts empty
            setattr(self, name, np.frombuffer(col["data"], dtype=np.dtype(col["dtype"])).copy())
        self.ledger.restore(data["ledger"])
        return True


# --------------------------------------------------------------------------- the type, declared once

SPEC = spec.AgentSpec(
    type_name="smart_meter",
    listing_order=3,
    table=TABLE,
    attributes=SmartMeterAttributes,
    points={},
    description="the smart meters of the meter groups, held column-wise and evaluated in bulk (MeterFleet); "
    "an [[agents]] entry of this type carries the fleet-wide meter settings",
)
