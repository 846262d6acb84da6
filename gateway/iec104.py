"""IEC 60870-5-104 outstation, the deciding half: the point map, what to report, what a command means.

Sans-IO (the adapter protocols/iec104.py owns the sockets, lib60870 and threads):

- `build_map(site)`: the IOA map generated from the site file's points, with overrides —
  every process-image point a monitored object (analog → short float, binary → single point,
  a switching device's position → double point, counter → integrated total), one double
  command per switching device, one set-point command per writable agent set-point;
- `quality_descriptor`: the process image's quality as the 104 quality bits (IV, NT, SB, OV, BL);
- `Reporter`: spontaneous transmission with dead-bands, general and counter interrogation
  snapshots, return information (COT 11) after a master's own command;
- `CommandHandler`: a master's double command or set-point (select, execute, deactivate)
  turned into a switching `Operation` for `SwitchingService.select/operate/cancel`, and the
  answer (positive or negative confirmation, with its cause of transmission).

Everything takes `now` (monotonic s) and wall times as arguments.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config import SiteConfig
from gateway.contract.settings import Iec104Config
from gateway.contract.points import PointKind, Quality, QualityReason, Validity
from gateway.switching.authority import SETPOINT_POINTS, Accepted, Refused, Selection, kind_for_point
from gateway.switching.model import Kind, Operation, Origin, Role, Via
from gateway.switching.network import Network

log = logging.getLogger("stima.iec104")


class TypeId(enum.IntEnum):
    """Type identifications used (IEC 60870-5-101 §7.2.1.1)."""

    M_SP_NA_1 = 1
    M_DP_NA_1 = 3
    M_ME_NC_1 = 13
    M_IT_NA_1 = 15
    M_SP_TB_1 = 30
    M_DP_TB_1 = 31
    M_ME_TF_1 = 36
    M_IT_TB_1 = 37
    C_DC_NA_1 = 46
    C_SE_NC_1 = 50
    C_DC_TA_1 = 59
    C_SE_TC_1 = 63
    C_IC_NA_1 = 100
    C_CI_NA_1 = 101
    C_CS_NA_1 = 103

    @property
    def time_tagged(self) -> bool:
        return self in (
            TypeId.M_SP_TB_1,
            TypeId.M_DP_TB_1,
            TypeId.M_ME_TF_1,
            TypeId.M_IT_TB_1,
            TypeId.C_DC_TA_1,
            TypeId.C_SE_TC_1,
        )


class Cot(enum.IntEnum):
    """Causes of transmission (IEC 60870-5-101 §7.2.3)."""

    SPONTANEOUS = 3
    ACTIVATION = 6
    ACTIVATION_CON = 7
    DEACTIVATION = 8
    DEACTIVATION_CON = 9
    ACTIVATION_TERMINATION = 10
    RETURN_INFO_REMOTE = 11
    INTERROGATED_BY_STATION = 20
    REQUESTED_BY_GENERAL_COUNTER = 37
    UNKNOWN_TYPE_ID = 44
    UNKNOWN_COT = 45
    UNKNOWN_CA = 46
    UNKNOWN_IOA = 47


# quality descriptor bits (101 §7.2.6.3); integrated totals carry only IV, CA, CY in their sequence octet
QDS_OV, QDS_BL, QDS_SB, QDS_NT, QDS_IV = 0x01, 0x10, 0x20, 0x40, 0x80
DP_INTERMEDIATE, DP_OFF, DP_ON, DP_INDETERMINATE = 0, 1, 2, 3
QOI_STATION = 20
QCC_GENERAL = 5
MAX_OBJECTS_PER_ASDU = 127

_QUALITY_BITS: Mapping[QualityReason, int] = {
    QualityReason.NOT_YET_RECEIVED: QDS_IV | QDS_NT,
    QualityReason.COMMUNICATION_FAILURE: QDS_IV | QDS_NT,
    QualityReason.OLD_DATA: QDS_NT,
    QualityReason.OVERFLOW: QDS_OV,
    QualityReason.OUT_OF_RANGE: QDS_OV,
    QualityReason.SUBSTITUTED: QDS_SB,
    QualityReason.OPERATOR_BLOCKED: QDS_BL,
}


def quality_descriptor(quality: Quality, analog: bool) -> int:
    """The 104 quality bits of an image quality: invalid → IV; a value not refreshed → NT;
    overflow or out of range → OV (short floats only); substituted → SB; blocked → BL.
    A questionable value with no such reason is sent as not topical."""
    bits = _QUALITY_BITS.get(quality.reason, 0)
    if not analog:
        bits &= ~QDS_OV
    if quality.validity is Validity.INVALID:
        bits |= QDS_IV
    elif quality.validity is Validity.QUESTIONABLE and not bits:
        bits |= QDS_NT
    return bits


# --------------------------------------------------------------------------- the map


@dataclass(frozen=True, slots=True)
class MonitorPoint:
    point_id: str
    ioa: int
    type_id: TypeId
    deadband: float
    kind: PointKind


@dataclass(frozen=True, slots=True)
class CommandPoint:
    ioa: int
    target: str
    """A switching device, or the agent whose set-point this is."""
    setpoint: str | None = None
    """The agent's set-point name (`p_limit_pct` …); None for a double command."""

    @property
    def types(self) -> tuple[TypeId, TypeId]:
        return (TypeId.C_DC_NA_1, TypeId.C_DC_TA_1) if self.setpoint is None else (TypeId.C_SE_NC_1, TypeId.C_SE_TC_1)


@dataclass(frozen=True)
class PointMap:
    common_address: int
    monitored: tuple[MonitorPoint, ...]
    commands: tuple[CommandPoint, ...]
    by_point: Mapping[str, MonitorPoint] = field(default_factory=dict)
    by_command_ioa: Mapping[int, CommandPoint] = field(default_factory=dict)

    def describe(self) -> list[dict[str, Any]]:
        """The map as a table (`stima iec104 map`, docs)."""
        rows: list[dict[str, Any]] = [
            {"ioa": m.ioa, "type": m.type_id.name, "point": m.point_id, "deadband": m.deadband} for m in self.monitored
        ]
        rows += [
            {"ioa": c.ioa, "type": "/".join(t.name for t in c.types), "target": c.target, "setpoint": c.setpoint}
            for c in self.commands
        ]
        return sorted(rows, key=lambda r: r["ioa"])


class MapError(ValueError):
    """The IEC 104 map cannot be built as configured (message names the key and the value)."""


class _Ioas:
    """IOAs handed out: explicit ones reserved, generated ones counted up past any taken."""

    def __init__(self, explicit: set[int]) -> None:
        self.explicit = explicit
        self.used: dict[int, str] = {}

    def claim(self, ioa: int, what: str) -> None:
        if ioa in self.used:
            raise MapError(f"iec104: IOA {ioa} is given to both {self.used[ioa]} and {what}")
        self.used[ioa] = what

    def next_free(self, start: int) -> int:
        while start in self.explicit or start in self.used:
            start += 1
        return start


def _known_points(site: SiteConfig) -> dict[str, tuple[PointKind, float, bool]]:
    """Every IED point: (kind, dead-band, writable)."""
    known: dict[str, tuple[PointKind, float, bool]] = {}
    for ied in site.ieds:
        for p in ied.points:
            writable = bool(getattr(p, "writable", False) or getattr(p, "control", False))
            known[p.id] = (PointKind(p.point_kind.value), float(getattr(p, "deadband", 0.0)), writable)
    return known


_TYPE_FITS = {PointKind.ANALOG: ("M_ME",), PointKind.COUNTER: ("M_IT",), PointKind.BINARY: ("M_SP", "M_DP")}


def _monitor_type(pid: str, kind: PointKind, is_position: bool, time_tags: bool, override: Any) -> TypeId:
    """The ASDU type of a monitored point: from its kind (a breaker position is double-point),
    unless the site names one that fits the kind."""
    if override is not None and override.type is not None:
        type_id = TypeId[override.type]
        if not type_id.name.startswith(_TYPE_FITS[kind]):
            raise MapError(f"iec104.points[{pid}].type: {type_id.name} does not fit a {kind.value} point")
        return type_id
    if kind is PointKind.ANALOG:
        return TypeId.M_ME_TF_1 if time_tags else TypeId.M_ME_NC_1
    if kind is PointKind.COUNTER:
        return TypeId.M_IT_TB_1 if time_tags else TypeId.M_IT_NA_1
    if is_position:
        return TypeId.M_DP_TB_1 if time_tags else TypeId.M_DP_NA_1
    return TypeId.M_SP_TB_1 if time_tags else TypeId.M_SP_NA_1


def _command_targets(
    site: SiteConfig, network: Network, known: dict[str, tuple[PointKind, float, bool]]
) -> list[tuple[str, str | None]]:
    """Every switching device, then every writable agent set-point (FPI resets excepted)."""
    targets: list[tuple[str, str | None]] = [(d, None) for d in network.devices]
    for agent in site.agents:
        for name, pid in agent.points.items():
            if (
                any(name in names for names in SETPOINT_POINTS.values())
                and known.get(pid, (None, 0, False))[2]
                and name != "fpi_reset"
            ):
                targets.append((agent.id, name))
    return targets


def build_map(site: SiteConfig, network: Network | None = None) -> PointMap:
    """The IOA map from the site file: generated in site-file order, overrides applied."""
    cfg: Iec104Config = site.iec104
    network = network or Network.from_site(site)
    overrides = {o.id: o for o in cfg.points}
    known = _known_points(site)
    for pid in overrides:
        if pid not in known:
            raise MapError(f"iec104.points: {pid!r} is not a point of any IED")
    positions = {dev.points["closed"] for dev in network.devices.values() if "closed" in dev.points}
    ioas = _Ioas({o.ioa for o in cfg.points if o.ioa is not None} | {c.ioa for c in cfg.commands})
    monitored: list[MonitorPoint] = []
    next_ioa = cfg.monitor_ioa_start
    for pid, (kind, deadband, _w) in known.items():
        o = overrides.get(pid)
        if o is not None and o.exclude:
            continue
        type_id = _monitor_type(pid, kind, pid in positions, cfg.time_tags, o)
        if o is not None and o.ioa is not None:
            ioa = o.ioa
        else:
            ioa = ioas.next_free(next_ioa)
            next_ioa = ioa + 1
        ioas.claim(ioa, pid)
        band = o.deadband if o is not None and o.deadband is not None else deadband
        monitored.append(MonitorPoint(pid, ioa, type_id, band, kind))

    commands: list[CommandPoint] = []
    cmd_overrides = {c.target: c.ioa for c in cfg.commands}
    targets = _command_targets(site, network, known)
    names = {(t if s is None else f"{t}.{s}") for t, s in targets}
    for key in cmd_overrides:
        if key not in names:
            raise MapError(
                f"iec104.commands: {key!r} is not a switching device nor a writable agent set-point "
                f"(<agent>.<set-point>)"
            )
    next_cmd, next_sp = cfg.command_ioa_start, cfg.setpoint_ioa_start
    for target, setpoint in targets:
        key = target if setpoint is None else f"{target}.{setpoint}"
        if key in cmd_overrides:
            ioa = cmd_overrides[key]
        elif setpoint is None:
            ioa = ioas.next_free(next_cmd)
            next_cmd = ioa + 1
        else:
            ioa = ioas.next_free(next_sp)
            next_sp = ioa + 1
        ioas.claim(ioa, key)
        commands.append(CommandPoint(ioa, target, setpoint))
    return PointMap(
        cfg.common_address,
        tuple(monitored),
        tuple(commands),
        {m.point_id: m for m in monitored},
        {c.ioa: c for c in commands},
    )


# --------------------------------------------------------------------------- monitoring


@dataclass(frozen=True, slots=True)
class Sample:
    """One information object to send: its IOA and type, value, quality bits, time (ms since the epoch)."""

    ioa: int
    type_id: TypeId
    value: float | int | bool
    qds: int
    time_ms: int | None
    cot: Cot


def _encode_value(mp: MonitorPoint, value: Any) -> float | int | bool:
    if mp.type_id in (TypeId.M_DP_NA_1, TypeId.M_DP_TB_1):
        if value is None:
            return DP_INDETERMINATE
        return DP_ON if bool(value) else DP_OFF
    if mp.type_id in (TypeId.M_SP_NA_1, TypeId.M_SP_TB_1):
        return bool(value) if value is not None else False
    if mp.type_id in (TypeId.M_IT_NA_1, TypeId.M_IT_TB_1):
        try:
            return int(value) & 0xFFFFFFFF if value is not None else 0
        except (TypeError, ValueError, OverflowError):
            return 0
    try:
        v = float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


class Reporter:
    """What a master is told: spontaneous changes beyond their dead-band, and snapshots on request."""

    def __init__(self, point_map: PointMap) -> None:
        self.map = point_map
        self._last: dict[str, tuple[Any, int]] = {}
        self._return_until: dict[str, float] = {}
        self.spontaneous = 0

    def on_update(self, point_id: str, value: Any, quality: Quality, time_s: float | None, now: float) -> Sample | None:
        """A spontaneous report of this new value, or None when it stays within its dead-band."""
        mp = self.map.by_point.get(point_id)
        if mp is None:
            return None
        qds = quality_descriptor(quality, mp.kind is PointKind.ANALOG)
        encoded = _encode_value(mp, value)
        last = self._last.get(point_id)
        if last is not None and last[1] == qds:
            if mp.kind is PointKind.ANALOG:
                if abs(float(encoded) - float(last[0])) <= mp.deadband and (mp.deadband > 0 or encoded == last[0]):
                    return None
            elif encoded == last[0]:
                return None
        self._last[point_id] = (encoded, qds)
        cot = Cot.SPONTANEOUS
        until = self._return_until.get(point_id)
        if until is not None:
            if now <= until and mp.type_id in (TypeId.M_DP_NA_1, TypeId.M_DP_TB_1):
                cot = Cot.RETURN_INFO_REMOTE
                del self._return_until[point_id]
            elif now > until:
                del self._return_until[point_id]
        self.spontaneous += 1
        return Sample(mp.ioa, mp.type_id, encoded, qds, _ms(time_s), cot)

    def expect_return(self, point_id: str, until: float) -> None:
        """The next change of `point_id` before `until` answers a master's command (COT 11)."""
        self._return_until[point_id] = until

    def interrogation(self, points: Mapping[str, Any], counters: bool = False) -> list[Sample]:
        """Every monitored point (`counters`: every integrated total) as the image holds it now.

        `points` maps point ids to objects with `value`, `quality`, `source_time`, `receive_time`."""
        out: list[Sample] = []
        for mp in self.map.monitored:
            is_counter = mp.kind is PointKind.COUNTER
            if is_counter != counters:
                continue
            p = points.get(mp.point_id)
            if p is None:
                continue
            qds = quality_descriptor(p.quality, mp.kind is PointKind.ANALOG)
            encoded = _encode_value(mp, p.value)
            if not counters:
                self._last[mp.point_id] = (encoded, qds)
            cot = Cot.REQUESTED_BY_GENERAL_COUNTER if counters else Cot.INTERROGATED_BY_STATION
            out.append(
                Sample(
                    mp.ioa,
                    mp.type_id,
                    encoded,
                    qds,
                    _ms(p.source_time if p.source_time is not None else p.receive_time),
                    cot,
                )
            )
        return out


def _ms(time_s: float | None) -> int | None:
    return None if time_s is None or not math.isfinite(time_s) else int(round(time_s * 1000.0))


def group_samples(samples: Iterable[Sample], max_objects: int) -> list[list[Sample]]:
    """Samples packed into ASDUs: consecutive samples of one type and cause share one, in order."""
    out: list[list[Sample]] = []
    for s in samples:
        if out and out[-1][0].type_id == s.type_id and out[-1][0].cot == s.cot and len(out[-1]) < max_objects:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def objects_per_asdu(type_id: TypeId, max_asdu_bytes: int = 249) -> int:
    """How many information objects fit one ASDU (6-octet header, 3-octet IOAs, 104 §9)."""
    element = {
        TypeId.M_SP_NA_1: 1,
        TypeId.M_DP_NA_1: 1,
        TypeId.M_ME_NC_1: 5,
        TypeId.M_IT_NA_1: 5,
        TypeId.M_SP_TB_1: 8,
        TypeId.M_DP_TB_1: 8,
        TypeId.M_ME_TF_1: 12,
        TypeId.M_IT_TB_1: 12,
    }[type_id]
    return min(MAX_OBJECTS_PER_ASDU, (max_asdu_bytes - 6) // (3 + element))


# --------------------------------------------------------------------------- commands


class Plant(Protocol):
    def select(self, op: Operation) -> Selection: ...

    def operate(self, op: Operation) -> Accepted: ...

    def cancel(self, select_id: str, origin: Origin) -> Selection: ...


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A command ASDU as received: type, cause, common address, IOA, the S/E bit and the value."""

    type_id: int
    cot: int
    common_address: int
    ioa: int
    select: bool
    value: float | int
    master: str
    """The master's IP address (the origin is `iec104:<address>`)."""
    test: bool = False
    time_ms: int | None = None
    """The CP56Time2a of a time-tagged command (C_DC_TA_1, C_SE_TC_1) in ms since the epoch (UTC);
    None without a time tag or when the master marked it invalid (IV)."""


TIME_TAGGED_COMMANDS = frozenset({TypeId.C_DC_TA_1, TypeId.C_SE_TC_1})


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The answer: the cause of transmission and the P/N bit; `terminate` adds an activation
    termination after a positive execute; `refusal` the switching authority's refusal, if any."""

    cot: Cot
    negative: bool
    message: str
    terminate: bool = False
    refusal: Refused | None = None
    op_id: str | None = None


class CommandHandler:
    """A master's commands through the switching authority: select → `select`, execute (with the
    select it made) → `operate`, deactivation → `cancel`. One select per master and IOA."""

    def __init__(
        self,
        point_map: PointMap,
        plant: Plant,
        role: Role,
        *,
        position_point: Callable[[str], str | None] = lambda _d: None,
        on_return: Callable[[str], None] = lambda _p: None,
        max_delay_s: float = 0.0,
    ) -> None:
        self.map = point_map
        self.plant = plant
        self.role = role
        self.max_delay_s = max_delay_s
        """Supervision of the maximum delay in command direction: a time-tagged activation further
        than this from the gateway's clock is refused (0: not checked)."""
        self._position_point = position_point
        self._on_return = on_return
        self._selects: dict[tuple[str, int], tuple[str, Kind, float | None]] = {}
        self.accepted = 0
        self.refused = 0

    def origin(self, master: str) -> Origin:
        return Origin(via=Via.IEC104, who=f"iec104:{master}", role=self.role)

    def handle(self, req: CommandRequest, now_wall_s: float | None = None) -> CommandReply:
        """The answer to one command ASDU; `now_wall_s` (the gateway's UTC clock) checks a
        time-tagged command's delay."""
        if req.common_address != self.map.common_address:
            return self._reject(
                Cot.UNKNOWN_CA, f"common address {req.common_address} is not this station's ({self.map.common_address})"
            )
        cp = self.map.by_command_ioa.get(req.ioa)
        if cp is None:
            return self._reject(Cot.UNKNOWN_IOA, f"no command object at IOA {req.ioa}")
        if req.type_id not in cp.types:
            return self._reject(
                Cot.UNKNOWN_TYPE_ID, f"IOA {req.ioa} takes {'/'.join(t.name for t in cp.types)}, not type {req.type_id}"
            )
        if req.cot not in (Cot.ACTIVATION, Cot.DEACTIVATION):
            return self._reject(Cot.UNKNOWN_COT, f"a command comes with activation or deactivation, not COT {req.cot}")
        if req.test:
            # T = 1: generated under test conditions, not meant to control the process (IEC 60870-5-101 §7.2.3)
            con = Cot.DEACTIVATION_CON if req.cot == Cot.DEACTIVATION else Cot.ACTIVATION_CON
            return self._done(con, True, f"IOA {req.ioa}: a command with the test bit set is not carried out")
        origin = self.origin(req.master)
        key = (req.master, req.ioa)
        if req.cot == Cot.DEACTIVATION:
            held = self._selects.pop(key, None)
            if held is None:
                return self._done(Cot.DEACTIVATION_CON, True, f"no select of IOA {req.ioa} to cancel")
            try:
                self.plant.cancel(held[0], origin)
            except Refused as exc:
                return self._done(Cot.DEACTIVATION_CON, True, exc.message, refusal=exc)
            return self._done(Cot.DEACTIVATION_CON, False, f"select of {cp.target} cancelled")
        late = self._too_late(req, now_wall_s)
        if late is not None:
            return self._done(Cot.ACTIVATION_CON, True, late)
        try:
            kind, value = self._meaning(cp, req)
        except ValueError as exc:
            return self._done(Cot.ACTIVATION_CON, True, str(exc))
        op = Operation(
            kind=kind,
            target=cp.target,
            origin=origin,
            value=value,
            point=cp.setpoint,
            reason=f"{kind.value} of {cp.target} by IEC 104 master {req.master}",
        )
        try:
            if req.select:
                sel = self.plant.select(op)
                self._selects[key] = (sel.select_id, kind, value)
                return self._done(Cot.ACTIVATION_CON, False, f"{cp.target} selected for {kind.value}")
            held = self._selects.pop(key, None)
            select_id = held[0] if held is not None else None
            if held is not None and (held[1], held[2]) != (kind, value) and not kind.switching:
                select_id = None  # a set-point executed with another value than it selected
            op = Operation(
                kind=kind,
                target=cp.target,
                origin=origin,
                value=value,
                point=cp.setpoint,
                reason=op.reason,
                select_id=select_id,
            )
            accepted = self.plant.operate(op)
        except Refused as exc:
            if not req.select:
                self._selects.pop(key, None)
            return self._done(Cot.ACTIVATION_CON, True, exc.message, refusal=exc)
        if kind.switching:
            point = self._position_point(cp.target)
            if point is not None:
                self._on_return(point)
        return self._done(
            Cot.ACTIVATION_CON,
            False,
            f"{kind.value} of {cp.target} accepted ({accepted.op_id})",
            terminate=True,
            op_id=accepted.op_id,
        )

    def forget(self, master: str) -> None:
        """A master's connection closed: its pending selects lapse in the authority by time-out."""
        for key in [k for k in self._selects if k[0] == master]:
            del self._selects[key]

    def _too_late(self, req: CommandRequest, now_wall_s: float | None) -> str | None:
        """Why a time-tagged activation may not be carried out: it waited in the network longer
        than `max_delay_s` (or its time cannot be checked), so the situation it was sent for may
        have changed. A select or execute held back that long is refused, never acted on late."""
        if self.max_delay_s <= 0 or req.type_id not in TIME_TAGGED_COMMANDS:
            return None
        if req.time_ms is None:
            return "the command's time tag is marked invalid: its delay cannot be checked"
        if now_wall_s is None or not math.isfinite(now_wall_s):
            return "the gateway has no clock to check the command's time tag against"
        delay_s = now_wall_s - req.time_ms / 1000.0
        if abs(delay_s) > self.max_delay_s:
            when = "old" if delay_s > 0 else "ahead of the gateway's clock"
            return (
                f"the command's time tag is {abs(delay_s):.1f} s {when}, beyond the maximum delay "
                f"of {self.max_delay_s:g} s (iec104.command_max_delay_s)"
            )
        return None

    @staticmethod
    def _meaning(cp: CommandPoint, req: CommandRequest) -> tuple[Kind, float | None]:
        if cp.setpoint is None:
            state = int(req.value)
            if state == DP_OFF:
                return Kind.OPEN, None
            if state == DP_ON:
                return Kind.CLOSE, None
            raise ValueError(f"double command state {state} is not permitted (1 = OFF/open, 2 = ON/close)")
        value = float(req.value)
        if not math.isfinite(value):
            raise ValueError("a set-point value must be finite")
        return kind_for_point(cp.setpoint, value), value

    def _reject(self, cot: Cot, message: str) -> CommandReply:
        return self._done(cot, True, message)

    def _done(
        self,
        cot: Cot,
        negative: bool,
        message: str,
        *,
        terminate: bool = False,
        refusal: Refused | None = None,
        op_id: str | None = None,
    ) -> CommandReply:
        if negative:
            self.refused += 1
        elif cot == Cot.ACTIVATION_CON:
            self.accepted += 1
        return CommandReply(cot, negative, message, terminate, refusal, op_id)


# --------------------------------------------------------------------------- clock synchronisation


@dataclass(frozen=True, slots=True)
class ClockSyncReply:
    accepted: bool
    offset_s: float
    """The master's time minus the gateway's."""
    message: str


def clock_sync(policy: str, master_ms: int, wall_s: float) -> ClockSyncReply:
    """Confirm (`accept`) or refuse a clock synchronisation. The gateway's own clock is NTP's: an
    accepted command is confirmed and its offset logged, the system clock is not stepped."""
    offset = master_ms / 1000.0 - wall_s
    if policy == "accept":
        return ClockSyncReply(
            True,
            offset,
            f"clock synchronisation confirmed; the master's clock is "
            f"{offset:+.3f} s from the gateway's (NTP keeps the gateway's)",
        )
    return ClockSyncReply(
        False,
        offset,
        f"clock synchronisation refused by setting (iec104.clock_sync); "
        f"the master's clock is {offset:+.3f} s from the gateway's",
    )
