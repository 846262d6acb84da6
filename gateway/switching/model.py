"""What a request to the plant is: the operation, who asks, with what authority.

Frozen, slotted, keyword-only dataclasses validated when built (a malformed request is the
caller's fault and raises ValueError at once, before any interlock is consulted).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class Role(enum.IntEnum):
    """What an origin may do (through the control socket, SCADA, the HMI). Ordered: a higher
    role may do what a lower one may; NONE may do nothing."""

    NONE = 0
    VIEWER = 1
    OPERATOR = 2
    ENGINEER = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"role must be viewer, operator or engineer, not {text!r}") from None

    def __str__(self) -> str:
        return self.name.lower()


class Via(enum.Enum):
    """The road a request took to the authority."""

    LOCAL = "local"
    """The local control socket (CLI, commissioning tools)."""
    MQTT = "mqtt"
    """A signed SCADA command over the uplink."""
    IEC104 = "iec104"
    AGENT = "agent"
    """An agent's own decision (tap changer, capacitor controller, DER, shedding)."""
    FLISR = "flisr"
    TRANSFER = "transfer"
    """A load transfer agreed with a neighbouring substation (gateway/switching/transfer.py)."""
    PROTECTION = "protection"
    HMI = "hmi"
    """The web HMI: a logged-in user over the management network (never `local` for overrides)."""

    @property
    def remote(self) -> bool:
        """Requests that reach the gateway over a network (the control centre, the web HMI):
        select-before-operate applies."""
        return self in (Via.MQTT, Via.IEC104, Via.HMI)

    @property
    def automatic(self) -> bool:
        return self in (Via.AGENT, Via.FLISR, Via.TRANSFER, Via.PROTECTION)


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    via: Via
    who: str
    """`local:<user>`, `scada:<origin>`, `agent:<id>`, `flisr`, ..."""
    role: Role | None = None
    """None for automatic origins: they pass overridable rows only where the row says so."""

    def __post_init__(self) -> None:
        if not self.who or len(self.who) > 128:
            raise ValueError(f"origin must be 1-128 characters, found {self.who!r}")
        if self.role is None and not self.via.automatic:
            raise ValueError(f"a {self.via.value} origin needs a role")

    def describe(self) -> str:
        return self.who if self.role is None else f"{self.who} ({self.role})"


class Kind(enum.Enum):
    """What an operation does to the plant (the interlock table's rows apply per kind)."""

    OPEN = "open"
    CLOSE = "close"
    CAPACITOR_STEP = "capacitor_step"
    TAP_CHANGE = "tap_change"
    DER_SETPOINT = "der_setpoint"
    INDICATOR_RESET = "indicator_reset"

    @property
    def switching(self) -> bool:
        return self in (Kind.OPEN, Kind.CLOSE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """An explicit, audited override of overridable interlock rows."""

    reason: str
    rows: frozenset[str] = frozenset()
    """Codes of the rows overridden; empty means every row the origin may override."""

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValueError("an override needs a reason (who checked what)")
        if len(self.reason) > 500:
            raise ValueError("an override reason is 500 characters at most")

    def covers(self, code: str) -> bool:
        return not self.rows or code in self.rows


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One write to the plant: `kind` on `target` (a device or an agent), `value` for set-points."""

    kind: Kind
    target: str
    origin: Origin
    value: float | bool | None = None
    point: str | None = None
    """The agent's command point name (set-points); switching finds its own."""
    reason: str = ""
    override: Override | None = None
    select_id: str | None = None
    sequence: str | None = None
    """The switching sequence this step belongs to."""
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("an operation needs a target")
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError(f"{self.target}: value must be finite, found {self.value!r}")
        if self.kind.switching and self.value is not None:
            raise ValueError("open and close take no value")

    @property
    def action(self) -> str:
        return self.kind.value


AUTOMATIC_ROLE = "automatic"
