"""The simulator's control socket: JSON lines over a unix socket, and the units people type.

A request is one JSON object on one line, `{"op": "...", ...}`; the answer is one line,
`{"ok": true, "result": {...}}` or `{"ok": false, "error": "..."}`. Operations: `status`,
`fault`, `clear`, `clearings`, `commloss`, `loadstep`, `temp`, and for switching devices
`failure` (stuck, slow, none), `local` (local/remote control), `operate` (by hand at the
device) and `external` (the neighbour's feeder behind an external tie live or dead); `inject`
plays a relay test set's sequence of states into a bay's measurements and `injection` reports
when the gateway's trip and close commands arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import re
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path(".run/hil.sock")
OPS = (
    "status",
    "fault",
    "clear",
    "clearings",
    "commloss",
    "loadstep",
    "temp",
    "failure",
    "local",
    "operate",
    "external",
    "ramp",
    "age",
    "bypass",
    "inject",
    "injection",
)
MAX_REQUEST_BYTES = 64 * 1024

_NUMBER = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
_DISTANCE_UNITS = {"": 1.0, "m": 1.0, "km": 1000.0}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}


class UnitError(ValueError):
    """A quantity that does not parse, or is out of range; the message says what was expected."""


def _parse(text: str, units: dict[str, float], what: str, example: str) -> float:
    match = re.fullmatch(_NUMBER + r"\s*([A-Za-z]*)", str(text).strip())
    if match is None:
        raise UnitError(f"bad {what} {text!r}: expected a number with a unit, e.g. {example}")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit not in units:
        raise UnitError(f"bad {what} {text!r}: unit {unit!r} is not one of {', '.join(u for u in units if u)}")
    value = number * units[unit]
    if not math.isfinite(value):
        raise UnitError(f"bad {what} {text!r}: not a finite number")
    return value


def parse_distance_m(text: str) -> float:
    """'2300m', '2.3km', '2300' (metres) → metres, >= 0."""
    value = _parse(text, _DISTANCE_UNITS, "distance", "2300m or 2.3km")
    if value < 0:
        raise UnitError(f"bad distance {text!r}: must not be negative")
    return value


def parse_duration_s(text: str) -> float:
    """'30s', '5min', '1h', '500ms', '30' (seconds) → seconds, > 0."""
    value = _parse(text, _DURATION_UNITS, "duration", "30s, 5min or 500ms")
    if value <= 0:
        raise UnitError(f"bad duration {text!r}: must be greater than zero")
    return value


def parse_temperature_delta_c(text: str) -> float:
    """'25', '25C', '-10c' → degrees Celsius (a difference, so any sign)."""
    return _parse(text, {"": 1.0, "c": 1.0, "k": 1.0}, "temperature change", "25 or 25C")


def parse_factor(text: str) -> float:
    """'1.3', 'x1.3', '130%' → a positive multiplier."""
    raw = str(text).strip()
    percent = raw.endswith("%")
    raw = raw.rstrip("%").lstrip("xX*")
    try:
        value = float(raw)
    except ValueError:
        raise UnitError(f"bad factor {text!r}: expected a number such as 1.3 or 130%") from None
    if percent:
        value /= 100.0
    if not math.isfinite(value) or value <= 0:
        raise UnitError(f"bad factor {text!r}: must be a finite number greater than zero")
    return value


# --------------------------------------------------------------------------- server side


def dispatch(runtime: Any, request: Any) -> dict[str, Any]:
    """Run one request against the runtime; every failure becomes an error answer."""
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        return {"ok": False, "error": 'a request is a JSON object with an "op" string'}
    op = request["op"]
    try:
        if op == "status":
            result = runtime.status()
        elif op == "fault":
            result = runtime.inject_fault(
                _required(request, "line"),
                _required(request, "distance_m"),
                request.get("kind", "3ph"),
                bool(request.get("transient", False)),
                request.get("impedance_ohm", 0.0),
            )
        elif op == "clear":
            result = runtime.clear_faults()
        elif op == "clearings":
            result = runtime.clearings[-int(request.get("last", 1000)) :]
        elif op == "commloss":
            result = runtime.inject_commloss(_required(request, "ied"), _required(request, "duration_s"))
        elif op == "loadstep":
            result = runtime.load_step(_required(request, "target"), _required(request, "factor"))
        elif op == "temp":
            result = runtime.temperature_ramp(
                _required(request, "transformer"), _required(request, "delta_c"), request.get("duration_s", 0.0)
            )
        elif op == "failure":
            result = runtime.inject_device_failure(
                _required(request, "device"), _required(request, "mode"), request.get("delay_s", 0.0)
            )
        elif op == "local":
            result = runtime.set_local(_required(request, "device"), _required(request, "on"))
        elif op == "operate":
            result = runtime.operate_device(_required(request, "device"), _required(request, "action"))
        elif op == "external":
            result = runtime.set_external_source(_required(request, "tie"), _required(request, "live"))
        elif op == "inject":
            result = runtime.secondary_injection(_required(request, "breaker"), _required(request, "states"))
        elif op == "injection":
            result = runtime.injection_status(bool(request.get("stop", False)))
        elif op == "ramp":
            result = runtime.load_ramp(
                _required(request, "substation"),
                _required(request, "rate_kw_per_h"),
                start_kw=request.get("start_kw"),
                ambient_c=request.get("ambient_c"),
            )
        elif op == "age":
            result = runtime.age(
                _required(request, "transformer"),
                _required(request, "months"),
                _required(request, "path"),
                request.get("seed"),
            )
        elif op == "bypass":
            result = runtime.bypass_meter(_required(request, "meter"), request.get("registered", 0.0))
        else:
            return {"ok": False, "error": f"unknown op {op!r}; expected {', '.join(OPS)}"}
    except ValueError as exc:  # InjectionError and bad values
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        log.exception("control request %r failed", op)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "result": result}


def _required(request: dict[str, Any], key: str) -> Any:
    if key not in request:
        raise ValueError(f'request "{request.get("op")}" needs "{key}"')
    return request[key]


class ControlServer:
    """Listens on a unix socket and answers JSON-line requests from `stima-hil` commands."""

    def __init__(self, runtime: Any, path: str | Path) -> None:
        self.runtime = runtime
        self.path = Path(path)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise RuntimeError(f"another simulator already listens on {self.path}")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o660)
        log.info("control socket %s", self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    answer = {"ok": False, "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
                    writer.write((json.dumps(answer) + "\n").encode())
                    break
                if not line:
                    break
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    answer = {"ok": False, "error": f"not JSON: {exc}"}
                else:
                    answer = dispatch(self.runtime, request)
                    pending = answer.get("result")
                    if inspect.isawaitable(pending):  # long work (ageing) off the loop's step
                        try:
                            answer = {"ok": True, "result": await pending}
                        except ValueError as exc:
                            answer = {"ok": False, "error": str(exc)}
                        except Exception as exc:
                            log.exception("control request failed")
                            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write((json.dumps(answer, default=str) + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
            with contextlib.suppress(OSError):
                self.path.unlink()


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


# --------------------------------------------------------------------------- client side


class ControlError(RuntimeError):
    """The simulator could not be reached, or answered an error."""


def request(path: str | Path, message: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """Send one request to a running simulator and return its result (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise ControlError(f"no simulator control socket at {path} (is `stima-hil serve` running?)") from None
        except OSError as exc:
            raise ControlError(f"cannot reach the simulator at {path}: {exc.strerror or exc}") from None
        s.sendall((json.dumps(message) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    try:
        answer = json.loads(buf)
    except ValueError:
        raise ControlError(f"the simulator sent a malformed answer: {buf[:200]!r}") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error", "unknown error")))
    result = answer.get("result")
    return result if isinstance(result, dict) else {"result": result}
