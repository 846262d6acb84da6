"""Remote control by SCADA over the MQTT uplink: signed commands, replay protection and
select-before-operate (SBO) for breakers.

A host publishes a signed envelope (msgpack map) to `<base>/cmd/<command>`:

    {id, time, nonce, origin, command, args, key, sig}   (+ `substation`, optional)

`sig` is an Ed25519 signature by the key named `key` (one of the gateway's key book, with its
role) over the *canonical* form of the map without `sig` (gateway.keys.canonical). In the `hmac`
compatibility scheme there is no `key`, and `sig` is HMAC-SHA256 with the site's shared secret
over the same canonical form. The signed map names the
command (and, optionally, the substation), so a captured command cannot be replayed on another
topic or at another substation sharing the key. The gateway refuses a command whose signature
is wrong, whose `time` is more than `max_age_s` away from its own clock, whose nonce it has seen
(nonces are kept in the state database, so this holds across restarts), that the site file does
not allow, or whose arguments are wrong; each refusal says why, in a result message on
`<base>/cmd_result/<command>` and in the event log.

Breakers are operated as IEC 61850 "select before operate with enhanced security": a select
reserves the breaker for one origin until `select_timeout_s`; operate must name that select,
with the same breaker, action and origin, in time, and consumes it. Interlocks are checked at
select and again at operate. The local operator CLI goes through the same engine
(origin `local:<user>`), so a local select blocks a remote one and the other way round.

Everything that decides here is sans-IO: time comes in as arguments or injected callables,
the state database, the uplink and the plant (protection, agents) are injected.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


from gateway.config import COMMAND_NAMES
from gateway.contract.settings import CommandsConfig
from gateway.keys import SIG_BYTES as ED25519_SIG_BYTES
from gateway.keys import KeyBook, KeyRefused, canonical
from gateway.switching.authority import Accepted, Refused, Selection
from gateway.switching.model import Kind, Operation, Origin, Override, Role, Via

log = logging.getLogger("stima.commands")

MIN_KEY_BYTES = 32
SIG_BYTES = 32
DISABLED_MESSAGE = "commands are disabled in the site file"
REQUIRED_FIELDS = ("id", "time", "nonce", "origin", "command", "args", "sig")
OPTIONAL_FIELDS = ("substation",)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_ARG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
BREAKER_ACTIONS = ("open", "close")
UNTRUSTED_AUDIT_LIMIT = 60
"""Refusals of unauthenticated commands written to the event log per UNTRUSTED_AUDIT_WINDOW_S at
most; beyond that they are counted and summarised, so a flood of junk cannot fill the disk."""
UNTRUSTED_AUDIT_WINDOW_S = 60.0


class Reason(enum.Enum):
    """Why a command was refused: the `reason` field of a result, stable for scripts."""

    DISABLED = "disabled"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    WRONG_TARGET = "wrong_target"
    STALE = "stale"
    REPLAYED = "replayed"
    UNKNOWN_KEY = "unknown_key"
    KEY_REVOKED = "key_revoked"
    KEY_EXPIRED = "key_expired"
    RETAINED = "retained"
    UNKNOWN_COMMAND = "unknown_command"
    NOT_ALLOWED = "not_allowed"
    BAD_ARGS = "bad_args"
    RESERVED = "reserved"
    NOT_SELECTED = "not_selected"
    INTERLOCK = "interlock"
    FAILED = "failed"


class CommandRefused(Exception):
    """A command not carried out; `reason` says which check refused it, the message what and why;
    `interlock` the code of the interlock row that refused it (the switching authority's table)."""

    def __init__(
        self, reason: Reason, message: str, interlock: str | None = None, interlocks: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(f"refused ({interlock or reason.value}): {message}")
        self.reason = reason
        self.message = message
        self.interlock = interlock
        self.interlocks = interlocks or []

    @classmethod
    def from_refused(cls, exc: Refused) -> CommandRefused:
        return cls(Reason(exc.reason), exc.message, exc.interlock, [r.as_dict() for r in exc.refusals])


@dataclass(frozen=True, slots=True)
class Command:
    """A command that passed every envelope check; `args` are validated for `name`."""

    name: str
    id: str
    time: float
    nonce: str
    origin: str
    args: dict[str, Any]
    key: str = "hmac"
    """The key that signed (its name in the key book; `hmac` for the shared secret)."""
    role: Role | None = None
    """The key's role (None: the `hmac` scheme's configured role)."""


# --------------------------------------------------------------------------- signing


def signature(key: bytes, fields: Mapping[str, Any]) -> bytes:
    return hmac.new(key, canonical(fields), hashlib.sha256).digest()


def sign_command(
    key: Any,
    command: str,
    args: Mapping[str, Any],
    origin: str,
    now: float,
    *,
    substation: str | None = None,
    command_id: str | None = None,
    nonce: str | None = None,
    key_name: str | None = None,
) -> dict[str, Any]:
    """A signed envelope for `command`, ready to msgpack and publish to `<base>/cmd/<command>`.

    `key` is an Ed25519 private key (with `key_name`, its name in the gateway's key book) or, in
    the `hmac` compatibility scheme, the shared secret's bytes. `now` is the wall-clock time in
    seconds since the epoch; `id` and `nonce` are drawn at random unless given (a nonce must
    never be reused with the same key).
    """
    envelope: dict[str, Any] = {
        "id": command_id or secrets.token_hex(8),
        "time": float(now),
        "nonce": nonce or secrets.token_hex(16),
        "origin": origin,
        "command": command,
        "args": dict(args),
    }
    if substation is not None:
        envelope["substation"] = substation
    if isinstance(key, bytes | bytearray):
        envelope["sig"] = signature(bytes(key), envelope)
        return envelope
    from gateway.keys import sign

    if not key_name:
        raise ValueError("an Ed25519 signature names its key (key_name)")
    return sign(envelope, key, key_name)


def read_key(path: Path) -> bytes:
    """The shared secret in `path` (trailing whitespace removed); ValueError naming the file if unusable.

    The file must hold at least 32 bytes and must not be readable or writable by group or
    others: anyone who reads it can operate the substation's breakers.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ValueError(f"command key file {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"command key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise ValueError(
            f"command key file {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); expected 0600 or 0400 (chmod 600 {path})"
        )
    try:
        key = path.read_bytes().rstrip()
    except OSError as exc:
        raise ValueError(f"command key file {path} cannot be read: {exc.strerror or exc}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"command key file {path} holds {len(key)} bytes; expected at least {MIN_KEY_BYTES} "
            "(e.g. `openssl rand -hex 32`)"
        )
    return key


def key_path(cfg: CommandsConfig, base_dir: Path) -> Path | None:
    if cfg.key_file is None:
        return None
    return cfg.key_file if cfg.key_file.is_absolute() else base_dir / cfg.key_file


# --------------------------------------------------------------------------- envelope checks


class NonceBook(Protocol):
    def remember_nonce(self, nonce: str, expires: float, now: float) -> bool:
        """Record `nonce` until `expires`; False if it was already recorded."""
        ...


class MemoryNonces:
    """A NonceBook in memory (tests, tools); the daemon uses its state database (gateway.storage.Store)."""

    def __init__(self) -> None:
        self._expires: dict[str, float] = {}

    def remember_nonce(self, nonce: str, expires: float, now: float) -> bool:
        self._expires = {n: t for n, t in self._expires.items() if t >= now}
        if nonce in self._expires:
            return False
        self._expires[nonce] = expires
        return True


def _field(
    payload: Mapping[Any, Any],
    name: str,
    kind: type | tuple[type, ...],
    what: str,
    ok: Callable[[Any], bool] = lambda _v: True,
) -> Any:
    value = payload[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        ok_type = False
    else:
        ok_type = isinstance(value, kind)
    if not ok_type or not ok(value):
        raise CommandRefused(Reason.MALFORMED, f"field {name!r}: expected {what}, found {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_KEY_REASONS = {
    "malformed": Reason.MALFORMED,
    "bad_signature": Reason.BAD_SIGNATURE,
    "unknown_key": Reason.UNKNOWN_KEY,
    "key_revoked": Reason.KEY_REVOKED,
    "key_expired": Reason.KEY_EXPIRED,
}


class Verifier:
    """Checks an envelope: form, signature, target, age, nonce, permission, arguments. Sans-IO.

    With `keys` (the Ed25519 scheme) a command names its key and carries that key's role; with
    `key` (the `hmac` compatibility scheme) it is signed with the shared secret."""

    def __init__(
        self,
        key: bytes | None = None,
        *,
        substation: str,
        max_age_s: float,
        nonces: NonceBook,
        allowed: Iterable[str] | None = None,
        keys: KeyBook | None = None,
    ) -> None:
        if keys is None and (key is None or len(key) < MIN_KEY_BYTES):
            raise ValueError(f"the command key must hold at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self.keys = keys
        self.substation = substation
        self.max_age_s = max_age_s
        self.nonces = nonces
        self.allowed = frozenset(COMMAND_NAMES if allowed is None else allowed)

    def verify(self, command: str, payload: Any, now: float) -> Command:
        """The checked command, or CommandRefused naming what is wrong.

        Every check maps the failures it expects to a refusal; anything else escapes, because
        it is a fault in this code, not in the input (the service reports it as `failed` and
        logs the traceback, and the fuzz tests fail on it).
        """
        if not isinstance(payload, Mapping):
            raise CommandRefused(
                Reason.MALFORMED,
                f"the payload is a {type(payload).__name__}; expected a msgpack "
                "map {id, time, nonce, origin, command, args, sig}",
            )
        required = REQUIRED_FIELDS + (("key",) if self.keys is not None else ())
        unknown = sorted(_show(k) for k in payload if k not in required and k not in OPTIONAL_FIELDS)
        if unknown:
            raise CommandRefused(
                Reason.MALFORMED,
                f"unknown field(s) {', '.join(unknown)}; expected {', '.join(required + OPTIONAL_FIELDS)}",
            )
        missing = [k for k in required if k not in payload]
        if missing:
            raise CommandRefused(Reason.MALFORMED, f"missing field(s) {', '.join(missing)}")
        command_id = _field(payload, "id", str, "a string of 1-64 characters", lambda v: 0 < len(v) <= 64)
        sent = _field(
            payload, "time", (int, float), "seconds since the epoch (a finite number)", lambda v: math.isfinite(v)
        )
        nonce = _field(payload, "nonce", str, "a string of 16-128 characters", lambda v: 16 <= len(v) <= 128)
        origin = _field(payload, "origin", str, "a string of 1-128 characters", lambda v: 0 < len(v) <= 128)
        named = _field(payload, "command", str, "the command name")
        args = _field(payload, "args", dict, "a map")
        sig_bytes = SIG_BYTES if self.keys is None else ED25519_SIG_BYTES
        sig = _field(payload, "sig", bytes, f"{sig_bytes} bytes (msgpack bin)", lambda v: len(v) == sig_bytes)
        if "substation" in payload:
            _field(payload, "substation", str, "a substation id")
        key_name, role = "hmac", None
        if self.keys is not None:
            _field(payload, "key", str, "the name of the signing key (1-64 characters)", lambda v: 0 < len(v) <= 64)
            try:
                _checked, entry = self.keys.verify(payload, now)
            except KeyRefused as exc:
                raise CommandRefused(_KEY_REASONS[exc.reason], exc.message) from None
            key_name, role = entry.name, entry.role
        else:
            assert self._key is not None
            try:
                expected = signature(self._key, payload)
            except (TypeError, ValueError, OverflowError):
                raise CommandRefused(Reason.MALFORMED, "args hold a map whose keys are not strings") from None
            if not hmac.compare_digest(expected, sig):
                raise CommandRefused(
                    Reason.BAD_SIGNATURE,
                    "signature does not match (wrong key, or the command was altered after signing)",
                )
        if named != command:
            raise CommandRefused(
                Reason.WRONG_TARGET, f"signed for command {_show(named)} but published on cmd/{command}"
            )
        if "substation" in payload and payload["substation"] != self.substation:
            raise CommandRefused(
                Reason.WRONG_TARGET, f"signed for substation {_show(payload['substation'])}, this is {self.substation}"
            )
        age_s = now - float(sent)
        if abs(age_s) > self.max_age_s:
            when = "old" if age_s > 0 else "in the future"
            raise CommandRefused(
                Reason.STALE,
                f"time is {abs(age_s):.1f} s {when}; accepted within ±{self.max_age_s:g} s of the gateway's clock",
            )
        # a nonce need only be known while a command carrying it could pass the age check
        try:
            fresh = self.nonces.remember_nonce(nonce, now + 2.0 * self.max_age_s, now)
        except Exception as exc:  # cannot prove it is not a replay: refuse
            raise CommandRefused(Reason.FAILED, f"the nonce could not be recorded: {exc}") from None
        if not fresh:
            raise CommandRefused(Reason.REPLAYED, f"nonce {_show(nonce)} was already used: replayed command")
        if command not in COMMAND_NAMES:
            raise CommandRefused(
                Reason.UNKNOWN_COMMAND, f"unknown command {_show(command)}; expected one of {', '.join(COMMAND_NAMES)}"
            )
        if command not in self.allowed:
            raise CommandRefused(
                Reason.NOT_ALLOWED,
                f"command {command} is not allowed by the site file "
                f"(uplink.commands.allowed: {', '.join(sorted(self.allowed)) or 'none'})",
            )
        return Command(
            name=command,
            id=command_id,
            time=float(sent),
            nonce=nonce,
            origin=origin,
            args=validate_args(command, args),
            key=key_name,
            role=role,
        )


# --------------------------------------------------------------------------- arguments


def _arg(args: Mapping[str, Any], name: str, what: str, ok: Callable[[Any], bool]) -> Any:
    if name not in args:
        raise CommandRefused(Reason.BAD_ARGS, f"args.{name}: missing; expected {what}")
    value = args[name]
    if not ok(value):
        raise CommandRefused(Reason.BAD_ARGS, f"args.{name}: expected {what}, found {_show(value)}")
    return value


def _is_id(v: Any) -> bool:
    return isinstance(v, str) and bool(_ID_RE.match(v))


def _is_action(v: Any) -> bool:
    return v in BREAKER_ACTIONS and isinstance(v, str)


_BREAKER_ARGS = {
    "breaker/select": ("breaker", "action", "authorised", "override", "reason"),
    "breaker/operate": ("breaker", "action", "select_id", "authorised", "override", "reason"),
    "breaker/cancel": ("select_id",),
}
_SEQUENCE_ARGS = ("sequence",)
_MAINTENANCE_ARGS = {
    "maintenance/accept": ("work_order", "external_id", "note"),
    "maintenance/reschedule": ("work_order", "start", "note"),
    "maintenance/close": ("work_order", "note"),
}


def _is_override(v: Any) -> bool:
    return (
        v is True
        or v is False
        or (isinstance(v, list) and 0 < len(v) <= 16 and all(isinstance(x, str) and _ARG_NAME_RE.match(x) for x in v))
    )


def _only(args: Mapping[str, Any], known: tuple[str, ...]) -> None:
    extra = sorted(k for k in args if k not in known)
    if extra:
        raise CommandRefused(Reason.BAD_ARGS, f"args: unknown key(s) {', '.join(extra)}; expected {', '.join(known)}")


def _breaker_args(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    known = _BREAKER_ARGS[command]
    _only(args, known)
    out: dict[str, Any] = {}
    if "breaker" in known:
        out["breaker"] = _arg(args, "breaker", "a breaker id", _is_id)
        out["action"] = _arg(args, "action", "'open' or 'close'", _is_action)
        out["authorised"] = bool(
            _arg(args, "authorised", "true or false", lambda v: isinstance(v, bool)) if "authorised" in args else False
        )
        if "override" in args:
            out["override"] = _arg(
                args, "override", "true (every overridable row) or a list of interlock codes", _is_override
            )
        if "reason" in args:
            out["reason"] = _arg(
                args,
                "reason",
                "the reason for the override (1-500 characters)",
                lambda v: isinstance(v, str) and 0 < len(v.strip()) <= 500,
            )
        if (out["authorised"] or out.get("override")) and "reason" not in out:
            raise CommandRefused(
                Reason.BAD_ARGS,
                "args.reason: missing; an authorised close or an override "
                "needs the reason it is made (recorded with the operator's role)",
            )
    if "select_id" in known:
        out["select_id"] = _arg(args, "select_id", "the select_id a breaker/select returned", _is_id)
    return out


def _sequence_args(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    _only(args, _SEQUENCE_ARGS)
    return {"sequence": _arg(args, "sequence", "a switching sequence id", _is_id)}


def _alarm_args(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    _only(args, ("alarm",))
    return {"alarm": _arg(args, "alarm", "an alarm id (alm-<n>, as on …/alarms)", _is_id)}


def _maintenance_args(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    _only(args, _MAINTENANCE_ARGS[command])
    out: dict[str, Any] = {"work_order": _arg(args, "work_order", "a work order id", _is_id)}
    if command == "maintenance/reschedule":
        out["start"] = float(
            _arg(
                args,
                "start",
                "the new window's start (POSIX seconds)",
                lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
            )
        )
    if "external_id" in args:
        out["external_id"] = _arg(
            args,
            "external_id",
            "the asset system's own number (1-64 characters)",
            lambda v: isinstance(v, str) and bool(_ID_RE.match(v)),
        )
    if "note" in args:
        out["note"] = _arg(
            args, "note", "text of 500 characters at most", lambda v: isinstance(v, str) and len(v) <= 500
        )
    return out


def _agent_request_args(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "agent": _arg(args, "agent", "an agent id", _is_id),
        "request": _arg(
            args,
            "request",
            "a request name (e.g. maintenance, curtail, reset)",
            lambda v: isinstance(v, str) and bool(_ARG_NAME_RE.match(v)),
        ),
    }
    passed: dict[str, Any] = {}
    for k, v in args.items():
        if k in ("agent", "request"):
            continue
        if not _ARG_NAME_RE.match(k):
            raise CommandRefused(
                Reason.BAD_ARGS, f"args: key {_show(k)} is not a request argument name (letters, digits, underscore)"
            )
        passed[k] = v
    out["args"] = passed
    return out


_ARG_CHECKS: dict[str, Callable[[str, Mapping[str, Any]], dict[str, Any]]] = {
    **{c: _breaker_args for c in _BREAKER_ARGS},
    "switching/approve": _sequence_args,
    "switching/abort": _sequence_args,
    "alarm/acknowledge": _alarm_args,
    **{c: _maintenance_args for c in _MAINTENANCE_ARGS},
    "agent/request": _agent_request_args,
}


def validate_args(command: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of `command`, checked (CommandRefused BAD_ARGS names the key, the value and what was expected)."""
    if not isinstance(args, Mapping):
        raise CommandRefused(Reason.BAD_ARGS, f"args: expected a map, found {_show(args)}")
    bad_keys = [_show(k) for k in args if not isinstance(k, str)]
    if bad_keys:
        raise CommandRefused(Reason.BAD_ARGS, f"args: keys must be strings, found {', '.join(bad_keys)}")
    check = _ARG_CHECKS.get(command) if isinstance(command, str) else None
    if check is None:
        raise CommandRefused(
            Reason.UNKNOWN_COMMAND, f"unknown command {_show(command)}; expected one of {', '.join(COMMAND_NAMES)}"
        )
    return check(command, args)


# --------------------------------------------------------------------------- the plant


class Plant(Protocol):
    """What the running gateway offers commands (gateway.daemon.Gateway implements it): the
    switching authority's service for every switching device, and the agents."""

    def select(self, op: Operation) -> Selection: ...

    def operate(self, op: Operation) -> Accepted: ...

    def cancel(self, select_id: str, origin: Origin) -> Selection: ...

    def device_status(self, device: str) -> dict[str, Any]: ...

    def approve(self, sequence: str, origin: Origin) -> Any: ...

    def abort(self, sequence: str, origin: Origin) -> Any: ...

    def agent_type(self, agent_id: str) -> str | None: ...

    def maintenance(self, action: str, args: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """accept, reschedule or close a work order (gateway/maintenance/service.py)."""

    def agent_request(
        self, agent_id: str, request: str, args: dict[str, Any], origin: Origin
    ) -> list[dict[str, Any]]: ...

    def acknowledge_alarm(self, alarm_id: str, origin: Origin) -> dict[str, Any]: ...


Publish = Callable[[str, dict[str, Any]], None]
Audit = Callable[[float, str, str, dict[str, Any]], Any]


class CommandService:
    """Commands from SCADA (MQTT) and the local operator (control socket), checked, carried out, audited.

    Call from one thread (the daemon's event loop). Never raises for bad input on the MQTT
    path: every command gets exactly one result message.
    """

    def __init__(
        self,
        cfg: CommandsConfig,
        *,
        key: bytes | None,
        substation: str,
        nonces: NonceBook,
        plant: Plant,
        publish: Publish,
        audit: Audit,
        wall: Callable[[], float],
        monotonic: Callable[[], float],
        keys: KeyBook | None = None,
    ) -> None:
        self.cfg = cfg
        self.plant = plant
        self.publish = publish
        self.audit = audit
        self.wall = wall
        self.monotonic = monotonic
        self.role = Role.parse(cfg.role)
        """The role of an `hmac` command (the shared key's holders); Ed25519 keys carry their own."""
        self.verifier: Verifier | None = None
        if cfg.enabled and cfg.scheme == "hmac" and key is not None:
            self.verifier = Verifier(
                key, substation=substation, max_age_s=cfg.max_age_s, nonces=nonces, allowed=cfg.allowed
            )
        elif cfg.enabled and cfg.scheme == "ed25519":
            self.verifier = Verifier(
                substation=substation,
                max_age_s=cfg.max_age_s,
                nonces=nonces,
                allowed=cfg.allowed,
                keys=keys if keys is not None else KeyBook(),
            )
        self.accepted = 0
        self.refused = 0
        self.suppressed = 0
        """Unauthenticated refusals not written to the event log (flood limit), in total."""
        self._untrusted_window_start = float("-inf")
        self._untrusted_in_window = 0
        self._untrusted_suppressed = 0

    # ------------------------------------------------------------------ entry points

    def on_mqtt(self, command: str, payload: Any, retained: bool = False) -> None:
        """The uplink's command callback (`MqttUplink.on_command`)."""
        self.handle_mqtt(command, payload, retained=retained)

    def handle_mqtt(self, command: str, payload: Any, *, retained: bool = False) -> dict[str, Any]:
        """Check, carry out, publish the result on `cmd_result/<command>`, audit; the result."""
        command_id = payload.get("id") if isinstance(payload, Mapping) else None
        origin = payload.get("origin") if isinstance(payload, Mapping) else None
        result: dict[str, Any] = {
            "id": command_id if isinstance(command_id, str) else None,
            "command": command,
            "origin": origin if isinstance(origin, str) else None,
        }
        args: dict[str, Any] = {}
        try:
            if retained:
                raise CommandRefused(
                    Reason.RETAINED,
                    "a command published with the retain flag is never carried "
                    "out (a retained copy would be delivered again at every connect): publish "
                    "with retain false, and clear the retained copy with an empty retained message",
                )
            if self.verifier is None:
                raise CommandRefused(Reason.DISABLED, DISABLED_MESSAGE)
            checked = self.verifier.verify(command, payload, self.wall())
            args = checked.args
            result["key"] = checked.key
            who = Origin(via=Via.MQTT, who=f"scada:{checked.origin}", role=checked.role or self.role)
            result.update(self._carry_out(checked.name, checked.args, who))
            self._record(result, args, via="mqtt", error=None)
        except CommandRefused as exc:
            self._record(result, args, via="mqtt", error=exc)
        except Exception as exc:  # a fault in the plant must not stop the uplink
            log.exception("command failed", extra={"command": command})
            self._record(result, args, via="mqtt", error=CommandRefused(Reason.FAILED, f"command failed: {exc}"))
        try:
            self.publish(f"cmd_result/{command}", result)
        except Exception:
            log.exception("command result could not be published", extra={"command": command})
        return result

    def local(self, command: str, args: Mapping[str, Any], origin: Origin) -> dict[str, Any]:
        """A command from the local operator (authenticated by the control socket's peer
        credentials, with the role of their unix groups).

        Raises CommandRefused with the reason; audited either way.
        """
        result: dict[str, Any] = {"id": "local-" + secrets.token_hex(4), "command": command, "origin": origin.who}
        checked: dict[str, Any] = {}
        try:
            checked = validate_args(command, args)
            result.update(self._carry_out(command, checked, origin))
        except CommandRefused as exc:
            self._record(result, checked or dict(args), via="local", error=exc)
            raise
        except Exception as exc:
            log.exception("command failed", extra={"command": command})
            refused = CommandRefused(Reason.FAILED, f"command failed: {exc}")
            self._record(result, checked or dict(args), via="local", error=refused)
            raise refused from exc
        self._record(result, checked, via="local", error=None)
        return result

    def breaker_status(self, breaker: str) -> dict[str, Any]:
        try:
            return dict(self.plant.device_status(breaker))
        except KeyError:
            raise CommandRefused(Reason.BAD_ARGS, f"no switching device {breaker!r} in the site file") from None

    # ------------------------------------------------------------------ carrying out

    def _operation(self, args: dict[str, Any], origin: Origin, select_id: str | None = None) -> Operation:
        override = None
        if args.get("authorised") or args.get("override"):
            rows: frozenset[str] = frozenset()
            if isinstance(args.get("override"), list):
                rows = frozenset(args["override"])
            elif args.get("authorised") and not args.get("override"):
                rows = frozenset({"protection_lockout", "agent_locked_out"})
            override = Override(reason=str(args["reason"]).strip(), rows=rows)
        return Operation(
            kind=Kind.OPEN if args["action"] == "open" else Kind.CLOSE,
            target=args["breaker"],
            origin=origin,
            override=override,
            select_id=select_id,
            reason=str(args.get("reason") or f"{args['action']} by {origin.who}"),
        )

    def _carry_out(self, command: str, args: dict[str, Any], origin: Origin) -> dict[str, Any]:
        try:
            return self._carry_out_checked(command, args, origin)
        except Refused as exc:
            raise CommandRefused.from_refused(exc) from None

    def _carry_out_checked(self, command: str, args: dict[str, Any], origin: Origin) -> dict[str, Any]:
        if command == "breaker/select":
            breaker, action = args["breaker"], args["action"]
            sel = self.plant.select(self._operation(args, origin))
            timeout = sel.expires_at - sel.selected_at
            return {
                "breaker": breaker,
                "action": action,
                "select_id": sel.select_id,
                "expires_in_s": timeout,
                "expires": self.wall() + timeout,
                "state": self.breaker_status(breaker),
            }
        if command == "breaker/operate":
            breaker, action = args["breaker"], args["action"]
            accepted = self.plant.operate(self._operation(args, origin, args["select_id"]))
            return {
                "breaker": breaker,
                "action": action,
                "select_id": args["select_id"],
                "op_id": accepted.op_id,
                "overridden": [r.as_dict() for r in accepted.overridden],
                "state": self.breaker_status(breaker),
            }
        if command == "breaker/cancel":
            sel = self.plant.cancel(args["select_id"], origin)
            return {"breaker": sel.target, "action": sel.action, "select_id": sel.select_id}
        if command == "switching/approve":
            seq = self.plant.approve(args["sequence"], origin)
            return {"sequence": args["sequence"], "status": getattr(getattr(seq, "status", None), "value", None)}
        if command == "switching/abort":
            seq = self.plant.abort(args["sequence"], origin)
            return {"sequence": args["sequence"], "status": getattr(getattr(seq, "status", None), "value", None)}
        if command == "alarm/acknowledge":
            try:
                alarm = self.plant.acknowledge_alarm(args["alarm"], origin)
            except KeyError as exc:
                raise CommandRefused(Reason.BAD_ARGS, f"args.alarm: {exc.args[0] if exc.args else exc}") from None
            return {"alarm": alarm}
        if command.startswith("maintenance/"):
            try:
                order = self.plant.maintenance(command.split("/", 1)[1], dict(args), origin)
            except (KeyError, ValueError) as exc:
                raise CommandRefused(Reason.FAILED, f"{args['work_order']}: {exc}") from None
            return {"work_order": args["work_order"], "status": order.get("status"), "window": order.get("window")}
        if command == "agent/request":
            agent, request = args["agent"], args["request"]
            kind = self.plant.agent_type(agent)
            if kind is None:
                raise CommandRefused(Reason.BAD_ARGS, f"args.agent: no agent {agent} in the site file")
            if kind == "circuit_breaker" and request in BREAKER_ACTIONS:
                raise CommandRefused(
                    Reason.BAD_ARGS,
                    f"{agent} is a switching device: operate it with breaker/select and breaker/operate",
                )
            try:
                actions = self.plant.agent_request(agent, request, dict(args["args"]), origin)
            except Refused:
                raise
            except (KeyError, ValueError, TypeError, PermissionError) as exc:
                raise CommandRefused(Reason.FAILED, f"{agent} refused {request}: {exc}") from None
            return {"agent": agent, "request": request, "actions": actions}
        raise CommandRefused(Reason.UNKNOWN_COMMAND, f"unknown command {command}")

    def _record(
        self, result: dict[str, Any], args: Mapping[str, Any], *, via: str, error: CommandRefused | None
    ) -> None:
        now = self.wall()
        result["ok"] = error is None
        result["error"] = None if error is None else error.message
        result["reason"] = None if error is None else error.reason.value
        if error is not None and error.interlock:
            result["interlock"] = error.interlock
            result["interlocks"] = error.interlocks
        result["time"] = now
        source = str(
            args.get("breaker")
            or args.get("agent")
            or args.get("sequence")
            or args.get("alarm")
            or args.get("work_order")
            or "gateway"
        )
        record = {
            "id": result.get("id"),
            "command": result.get("command"),
            "origin": result.get("origin"),
            "via": via,
            "args": _plain(args),
            "ok": result["ok"],
            "error": result["error"],
            "reason": result["reason"],
            "interlock": result.get("interlock"),
            "key": result.get("key"),
        }
        if error is None:
            self.accepted += 1
            kind = "command.accepted"
            log.warning(
                "command accepted",
                extra={
                    "command": result.get("command"),
                    "command_id": result.get("id"),
                    "origin": result.get("origin"),
                    "via": via,
                    "target": source,
                },
            )
        else:
            self.refused += 1
            kind = "command.refused"
            if error.reason in _UNTRUSTED and not self._untrusted_audit_allowed(now):
                return
            log.warning(
                "command refused",
                extra={
                    "command": result.get("command"),
                    "command_id": result.get("id"),
                    "origin": result.get("origin"),
                    "via": via,
                    "target": source,
                    "reason": error.reason.value,
                    "error": error.message,
                },
            )
        try:
            self.audit(now, source, kind, record)
        except Exception:
            log.exception("command audit could not be written", extra={"command": result.get("command")})

    def _untrusted_audit_allowed(self, now: float) -> bool:
        """Flood limit for refusals of commands that proved nothing (no valid signature)."""
        if now - self._untrusted_window_start >= UNTRUSTED_AUDIT_WINDOW_S:
            if self._untrusted_suppressed:
                log.error(
                    "unauthenticated commands refused without an event-log entry (flood limit)",
                    extra={"suppressed": self._untrusted_suppressed, "window_s": UNTRUSTED_AUDIT_WINDOW_S},
                )
                try:
                    self.audit(
                        now,
                        "gateway",
                        "command.refused",
                        {
                            "suppressed": self._untrusted_suppressed,
                            "reason": "flood limit",
                            "ok": False,
                            "error": f"{self._untrusted_suppressed} more unauthenticated "
                            "command(s) refused in the last window",
                        },
                    )
                except Exception:
                    log.exception("command audit could not be written")
            self._untrusted_window_start = now
            self._untrusted_in_window = 0
            self._untrusted_suppressed = 0
        if self._untrusted_in_window < UNTRUSTED_AUDIT_LIMIT:
            self._untrusted_in_window += 1
            return True
        self._untrusted_suppressed += 1
        self.suppressed += 1
        return False

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.verifier is not None,
            "accepted": self.accepted,
            "refused": self.refused,
            "audit_suppressed": self.suppressed,
        }


_UNTRUSTED = frozenset(
    {
        Reason.DISABLED,
        Reason.MALFORMED,
        Reason.BAD_SIGNATURE,
        Reason.UNKNOWN_KEY,
        Reason.KEY_REVOKED,
        Reason.KEY_EXPIRED,
        Reason.RETAINED,
    }
)


def _plain(value: Any) -> Any:
    """Arguments as stored in the event log (msgpack-able; anything odd as its repr)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    return repr(value)
