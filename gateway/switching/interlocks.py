"""The interlock table: every reason the gateway refuses an operation on the plant, as data.

Each row names the operations it applies to, the condition that refuses (a pure function of the
operation and the plant's state now), and who may override it:

- `never`: nobody; the refusal stands (the device would refuse anyway, or the site file is the
  permission);
- `local`: an origin at the substation's control socket with at least `role`, with a reason;
- `any`: any origin with at least `role` (a signed SCADA command included), with a reason.

`automatic` rows may also be passed by the gateway's own automation (FLISR) with a recorded
reason, where the row says what makes that safe. Every refusal carries the row's code; the
command result, the CLI and the event log all show that code and the same message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.switching.faults import FaultBook
from gateway.switching.model import Kind, Operation, Role, Via
from gateway.switching.network import Device, Network
from gateway.switching.state import GridState

OverrideScope = Literal["never", "local", "any"]
SWITCHING = frozenset({Kind.OPEN, Kind.CLOSE})
CLOSE = frozenset({Kind.CLOSE})
OPEN = frozenset({Kind.OPEN})
EVERY = frozenset(Kind)
MAINTENANCE_STATES = frozenset({"Maintenance", "Maintenance_Mode"})
LIVE_FRACTION = 0.5
"""A far side measuring more than this share of its nominal voltage is live."""


@dataclass(frozen=True, slots=True)
class Tag:
    """A do-not-operate tag on a device or agent (crew working, equipment out of service)."""

    target: str
    who: str
    reason: str
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What a row may look at: the operation and the plant now."""

    op: Operation
    device: Device | None
    """The switching device operated (None for set-points on agents that are not devices)."""
    network: Network
    state: GridState
    faults: FaultBook
    agent_state: str | None
    locked_out: bool
    """The protection core holds this breaker locked out."""
    tags: tuple[Tag, ...]
    selected: bool
    """A valid select by this origin precedes the operate (select-before-operate)."""
    loads_kva: Mapping[str, complex]
    """Section loads to estimate with (live where energised, remembered where not)."""
    source_voltage_pu: Mapping[str, float] = field(default_factory=dict)
    """The sources' measured voltages."""


@dataclass(frozen=True, slots=True)
class Row:
    code: str
    kinds: frozenset[Kind]
    override: OverrideScope
    role: Role
    automatic: bool
    protects: str
    check: Callable[[Context], str | None]


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    override: OverrideScope
    role: Role

    def as_dict(self) -> dict[str, str]:
        return {
            "interlock": self.code,
            "message": self.message,
            "override": self.override,
            "override_role": str(self.role),
        }


# --------------------------------------------------------------------------- conditions


def _selection(ctx: Context) -> str | None:
    if ctx.op.origin.via.remote and not ctx.selected:
        return (
            f"{ctx.op.target}: a remote operation needs a select first (select-before-operate), "
            "and the operate must name it"
        )
    return None


def _local_mode(ctx: Context) -> str | None:
    local = ctx.state.local(ctx.op.target) if ctx.op.target in ctx.network.element_points else False
    if local is None:
        return f"{ctx.op.target}: local/remote mode is unknown (its 'local' point is not good): refused"
    if local:
        return f"{ctx.op.target} is in local control: it can only be operated at the device"
    return None


def _position_unknown(ctx: Context) -> str | None:
    if ctx.device is None:
        return None
    if ctx.state.position(ctx.device.id) is None:
        return (
            f"{ctx.device.id}: its position is unknown (stale, invalid or not yet received): "
            "refused until the position is known again"
        )
    return None


def _maintenance(ctx: Context) -> str | None:
    if ctx.tags:
        tag = ctx.tags[0]
        return f"{ctx.op.target} is tagged by {tag.who}: {tag.reason}"
    if ctx.agent_state in MAINTENANCE_STATES:
        return f"{ctx.op.target} is in maintenance: end the maintenance first"
    return None


def _protection_lockout(ctx: Context) -> str | None:
    if ctx.locked_out:
        return f"{ctx.op.target} is locked out by protection: only an authorised close re-arms it"
    return None


def _agent_locked_out(ctx: Context) -> str | None:
    if ctx.agent_state == "Locked_Out":
        return f"{ctx.op.target} is Locked_Out (persistent fault): manual intervention required"
    return None


def _after_close(ctx: Context) -> tuple[dict[str, bool | None], set[str]]:
    assert ctx.device is not None
    config = ctx.state.configuration()
    before = ctx.network.energise(config)
    config[ctx.device.id] = True
    after = ctx.network.energise(config)
    return config, {n for n in after.source_of if n not in before.source_of}


def _fault_indicated(ctx: Context) -> str | None:
    if ctx.device is None:
        return None
    _, newly = _after_close(ctx)
    faulted = ctx.faults.faulted_nodes()
    hit = sorted(n for n in newly if n in faulted)
    if hit:
        rec = faulted[hit[0]]
        return (
            f"closing {ctx.device.id} would energise {', '.join(hit)}, where fault {rec.id} "
            f"({rec.element} trip of {rec.breaker}, {rec.status.value}) is still indicated"
        )
    return None


def _parallel(ctx: Context) -> str | None:
    dev = ctx.device
    if dev is None or dev.allow_parallel:
        return None
    config = ctx.state.configuration()
    config[dev.id] = False
    en = ctx.network.energise(config)
    a, b = en.source_of.get(dev.a), en.source_of.get(dev.b)
    if a is not None and b is not None:
        what = "two sources" if a != b else "a loop on one source"
        return (
            f"closing {dev.id} would parallel {what} ({dev.a} fed from {a}, {dev.b} fed from {b}); "
            "the site file does not allow it for this device"
        )
    # an open device measures its far side: voltage there that the model cannot explain is a
    # source it does not know (a neighbour's tie closed, a generator): closing would parallel it
    far_kv = ctx.state.value(dev.id, "voltage_kv") if ctx.state.position(dev.id) is False else None
    nominal = ctx.network.sections[dev.b].nominal_kv if dev.b in ctx.network.sections else None
    if a is not None and b is None and isinstance(far_kv, int | float) and nominal and far_kv > LIVE_FRACTION * nominal:
        return (
            f"{dev.id} measures {far_kv:.2f} kV on its far side ({dev.b}), which nothing known feeds: "
            "closing would parallel an unknown source"
        )
    return None


def _overload(ctx: Context) -> str | None:
    if ctx.device is None:
        return None
    config, newly = _after_close(ctx)
    if not newly:
        return None
    before = dict(config)
    before[ctx.device.id] = False
    v = ctx.source_voltage_pu
    worse = ctx.network.estimate(config, ctx.loads_kva, source_voltage_pu=v).worse_than(
        ctx.network.estimate(before, ctx.loads_kva, source_voltage_pu=v)
    )
    if worse:
        return f"closing {ctx.device.id} would pick up {', '.join(sorted(newly))} and load beyond limits: " + "; ".join(
            str(v) for v in worse[:4]
        )
    return None


def _interrupting(ctx: Context) -> str | None:
    dev = ctx.device
    if dev is None:
        return None
    amps = ctx.state.current_a(dev.id)
    if amps is not None and amps > dev.interrupting_a:
        return (
            f"{dev.id} ({dev.function}) carries {amps:.0f} A, beyond what it can interrupt "
            f"({dev.interrupting_a:.0f} A): open it only dead or after the breaker upstream"
        )
    return None


TABLE: tuple[Row, ...] = (
    Row(
        "not_selected",
        EVERY,
        "never",
        Role.ENGINEER,
        False,
        "a remote operation without its select (IEC 61850 select-before-operate)",
        _selection,
    ),
    Row(
        "local_mode",
        EVERY,
        "never",
        Role.ENGINEER,
        False,
        "a device switched to local control at its panel",
        _local_mode,
    ),
    Row(
        "position_unknown",
        SWITCHING,
        "local",
        Role.ENGINEER,
        False,
        "switching a device whose position the gateway does not know",
        _position_unknown,
    ),
    Row(
        "maintenance",
        EVERY,
        "local",
        Role.ENGINEER,
        False,
        "operating equipment in maintenance or tagged do-not-operate",
        _maintenance,
    ),
    Row(
        "protection_lockout",
        CLOSE,
        "any",
        Role.OPERATOR,
        True,
        "closing a breaker protection locked out (re-arming it) without an authorised decision",
        _protection_lockout,
    ),
    Row(
        "agent_locked_out",
        CLOSE,
        "any",
        Role.OPERATOR,
        True,
        "closing a breaker its agent holds Locked_Out after a persistent fault",
        _agent_locked_out,
    ),
    Row(
        "fault_indicated",
        CLOSE,
        "local",
        Role.ENGINEER,
        False,
        "closing onto a fault that is still indicated (energising a section inside an active fault's zone)",
        _fault_indicated,
    ),
    Row(
        "parallel",
        CLOSE,
        "never",
        Role.ENGINEER,
        False,
        "closing a device that would parallel two sources or close a loop, unless the site allows it",
        _parallel,
    ),
    Row(
        "overload",
        CLOSE,
        "any",
        Role.OPERATOR,
        False,
        "picking up load that the receiving feeder cannot carry (power-flow estimate from live loads)",
        _overload,
    ),
    Row(
        "interrupting_capacity",
        OPEN,
        "never",
        Role.ENGINEER,
        False,
        "opening a device under a current beyond what it can interrupt",
        _interrupting,
    ),
)
ROWS: dict[str, Row] = {r.code: r for r in TABLE}


def evaluate(ctx: Context, table: tuple[Row, ...] = TABLE) -> list[tuple[Row, str]]:
    """Every row that refuses this operation now, with its message, in table order."""
    out = []
    for row in table:
        if ctx.op.kind not in row.kinds:
            continue
        message = row.check(ctx)
        if message:
            out.append((row, message))
    return out


def may_override(row: Row, ctx: Context) -> bool:
    """Whether the operation's override (if any) lets it pass `row`."""
    op = ctx.op
    if op.override is None or not op.override.covers(row.code):
        return False
    origin = op.origin
    if origin.role is None:
        return row.automatic and origin.via is Via.FLISR
    if row.override == "never" or origin.role < row.role:
        return False
    if row.override == "local":
        return origin.via is Via.LOCAL
    return True
