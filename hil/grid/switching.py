"""Switching devices of the simulated feeders: breakers, reclosers, load-break switches, ties.

Each device is a zero-impedance branch of the network (`hil.grid.network`), open or closed.
What a real pole-top or station device adds to that lives here, as plain state and rules the
model applies at its own simulated time:

- **Operating time and failures.** A command moves the device after the site's opening or
  closing time; a device made to fail does not: `stuck` never moves (the command is accepted
  and nothing happens, as with a seized mechanism), `slow` moves only after its delay.
- **Local/remote.** In local control the device refuses every remote command (the IED answers
  with an exception or a control refusal); an operator at the device may still operate it.
- **Fault-passage indicator.** Latches when the current through the device exceeds
  `fpi_pickup_a`; resets on a remote reset, and by itself once voltage has been present at the
  device for `fpi_reset_delay_s` with the current back below pickup.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any


class CommandRefused(ValueError):
    """The device refuses a remote command because of its state (local control).

    A Modbus IED answers it with exception 01 ("illegal function": the server is in the wrong
    state to process the request); an IEC 61850 IED refuses the control.
    """

    def __init__(self, device_id: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.device_id = device_id
        self.reason = reason


class DeviceRole(enum.Enum):
    FEEDER = "feeder"
    """Fed at one end and feeding what hangs below it: a station breaker, a lateral's recloser."""
    SERIES = "series"
    """Tapped on a line at a position, splitting it: a sectionaliser or mid-line recloser."""
    TIE = "tie"
    """Between two lines (normally open)."""
    EXTERNAL_TIE = "external_tie"
    """Between a local line and a feeder of another substation (modelled as a source)."""


class FailureMode(enum.Enum):
    STUCK = "stuck"
    SLOW = "slow"


def parse_failure(mode: str | FailureMode | None) -> FailureMode | None:
    """'stuck', 'slow', or 'none' / None (a healthy device)."""
    if mode is None or isinstance(mode, FailureMode):
        return mode
    text = str(mode).strip().lower()
    if text in ("none", "healthy", "ok", ""):
        return None
    try:
        return FailureMode(text)
    except ValueError:
        raise ValueError(f"unknown failure mode {mode!r}; expected 'stuck', 'slow' or 'none'") from None


@dataclass(slots=True)
class SwitchingDevice:
    """One switching device and its branch: side 1 is `from_bus`, side 2 `bus` (the load side of a
    feeder or in-series device; a tie's second line or external source)."""

    id: str
    branch: int
    from_bus: int
    bus: int
    role: DeviceRole = DeviceRole.FEEDER
    function: str = "breaker"
    line: str | None = None
    """The line it is tapped on (in-series devices) or its first line (ties)."""
    position_m: float | None = None
    closed: bool = True
    normally_open: bool = False
    operations: int = 0
    """Mechanical operations: each opening and each closing counts one."""
    trip_cmd: bool = False
    close_cmd: bool = False
    position_cmd: bool = True
    # fault-passage indicator
    fpi_pickup_a: float | None = None
    fpi: bool = False
    fpi_reset: bool = False
    """Last value written to the reset command point."""
    fpi_latched_s: float | None = None
    voltage_since_s: float | None = None
    """Voltage present (and current below pickup) at the device continuously since then."""
    # local/remote and failures
    local: bool = False
    failure: FailureMode | None = None
    slow_delay_s: float = 0.0
    refused: int = 0
    """Remote commands refused (local control)."""
    ignored: int = 0
    """Commands that could not move it (stuck)."""

    @property
    def interrupts_fault_current(self) -> bool:
        return self.function != "load_break_switch"

    def check_remote(self, point_id: str) -> None:
        """Refuse a remote command in local control (raises CommandRefused)."""
        if self.local:
            self.refused += 1
            raise CommandRefused(self.id, "local", f"{self.id} is in local control: remote command {point_id} refused")

    def operating_delay_s(self, close: bool, opening_time_ms: float, closing_time_ms: float) -> float | None:
        """Seconds from a command until the contacts move; None when they never will (stuck)."""
        if self.failure is FailureMode.STUCK:
            self.ignored += 1
            return None
        if self.failure is FailureMode.SLOW:
            return self.slow_delay_s
        return (closing_time_ms if close else opening_time_ms) / 1000.0

    def set_failure(self, mode: str | FailureMode | None, delay_s: float = 0.0) -> None:
        failure = parse_failure(mode)
        if failure is FailureMode.SLOW and not (math.isfinite(delay_s) and delay_s > 0):
            raise ValueError(f"a slow device needs delay_s > 0 (seconds before it moves), found {delay_s!r}")
        self.failure = failure
        self.slow_delay_s = float(delay_s) if failure is FailureMode.SLOW else 0.0

    def update_indicator(self, current_a: float, voltage_present: bool, now_s: float, reset_delay_s: float) -> bool:
        """Latch or reset the fault-passage indicator from the present current and voltage.

        Returns True when the indicator changed. Current above pickup latches it and holds the
        reset timer; the timer runs while voltage is present at the device.
        """
        if self.fpi_pickup_a is None:
            return False
        changed = False
        if current_a > self.fpi_pickup_a:
            if not self.fpi:
                self.fpi, self.fpi_latched_s, changed = True, now_s, True
            self.voltage_since_s = None
            return changed
        if not voltage_present:
            self.voltage_since_s = None
        elif self.voltage_since_s is None:
            self.voltage_since_s = now_s
        return self.reset_if_due(now_s, reset_delay_s)

    def reset_if_due(self, now_s: float, reset_delay_s: float) -> bool:
        """Reset by itself after voltage has been present long enough; True when it did."""
        if self.fpi and self.voltage_since_s is not None and now_s - self.voltage_since_s >= reset_delay_s - 1e-9:
            self.fpi, self.fpi_latched_s = False, None
            return True
        return False

    def reset_indicator(self) -> None:
        self.fpi, self.fpi_latched_s = False, None

    def state(self) -> dict[str, Any]:
        return {
            "closed": self.closed,
            "normally_open": self.normally_open,
            "role": self.role.value,
            "function": self.function,
            "line": self.line,
            "position_m": self.position_m,
            "operations": self.operations,
            "fpi": self.fpi if self.fpi_pickup_a is not None else None,
            "fpi_pickup_a": self.fpi_pickup_a,
            "local": self.local,
            "failure": None
            if self.failure is None
            else {"mode": self.failure.value, "delay_s": self.slow_delay_s or None},
            "refused_commands": self.refused,
            "ignored_commands": self.ignored,
        }
