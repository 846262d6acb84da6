"""A small mutation fuzzer and the gateway's parsers as fuzz targets.

Each target takes bytes as they arrive at the gateway (a site file, a Modbus response frame, an
MMS value in BER, an MQTT command, an AMI batch, a control-socket request line, a DER's
readings) and runs the gateway's own code on them. An input either parses, or is refused with
the exception that parser documents (and a message that says something); anything else is a
crash and is reported with the input that caused it. Nothing catches `Exception` on the way, so
a crash inside a parser cannot pass as a refusal.

Inputs come from seeds (valid examples) through mutations (bit flips, interesting values,
insertions, deletions, splices, truncations) and from structure-aware generators that build
values of the right shape with random contents, so deep checks are reached and not only the
first byte test. Deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 1.0
"""One input taking longer than this counts as a hang."""

_INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x80\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\x80\x7f",
    b"\x00\x00\xc0\x7f",
    b"-1",
    b"0",
    b"1e309",
    b"nan",
    b"inf",
    b"-inf",
    b"[]",
    b"{}",
    b'""',
    b"null",
    b"true",
    b"\n",
    b"=",
    b"[[",
    b"]]",
    b"\xc0",
    b"\xdc\xff\xff",
    b"\xdf\xff\xff\xff\xff",
]


@dataclass
class Outcome:
    name: str
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    crashes: list[dict[str, Any]] = field(default_factory=list)
    crash_count: int = 0
    hangs: int = 0
    unclear_refusals: int = 0
    slowest_s: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.crash_count == 0 and self.hangs == 0 and self.unclear_refusals == 0

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "refused": self.refused,
            "crashes": self.crash_count,
            "hangs": self.hangs,
            "unclear_refusals": self.unclear_refusals,
            "slowest_ms": round(self.slowest_s * 1e3, 2),
            "seconds": round(self.seconds, 1),
            "per_s": round(self.inputs / self.seconds) if self.seconds else None,
            "first_crashes": self.crashes[:3],
        }


@dataclass
class Target:
    """`call(data)` parses; `refusals` are the exceptions it documents for bad input."""

    name: str
    call: Callable[[bytes], Any]
    refusals: tuple[type[BaseException], ...]
    seeds: list[bytes]
    generate: Callable[[random.Random], bytes] | None = None
    """Structure-aware inputs; half the inputs when present."""


def mutate(data: bytes, rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # bit flip
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # interesting value, inserted or overwritten
            token = rng.choice(_INTERESTING)
            if rng.random() < 0.5:
                buf[pos:pos] = token
            else:
                buf[pos : pos + len(token)] = token
        elif op == 3 and buf:  # delete a range
            end = min(len(buf), pos + rng.randrange(1, 32))
            del buf[pos:end]
        elif op == 4 and buf:  # duplicate a range
            start = rng.randrange(len(buf))
            chunk = buf[start : start + rng.randrange(1, 64)]
            buf[pos:pos] = chunk * rng.choice((1, 2, 16))
        elif op == 5:  # random bytes
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif op == 6 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 7 and buf:  # truncate
            del buf[rng.randrange(len(buf)) :]
        elif op == 8 and buf:  # arithmetic on a byte
            i = rng.randrange(len(buf))
            buf[i] = (buf[i] + rng.choice((-1, 1, -16, 16, 128))) & 0xFF
    return bytes(buf)


def run_target(target: Target, inputs: int, *, seed: int = 1, budget_s: float | None = None) -> Outcome:
    """Run `inputs` inputs (fewer if `budget_s` runs out) and classify every outcome."""
    rng = random.Random(seed)
    out = Outcome(target.name)
    corpus = list(target.seeds)
    start = time.perf_counter()
    for n in range(inputs):
        if budget_s is not None and n % 256 == 0 and time.perf_counter() - start > budget_s:
            break
        if n < len(target.seeds):
            data = target.seeds[n]
        elif target.generate is not None and rng.random() < 0.5:
            data = target.generate(rng)
            if rng.random() < 0.3:
                data = mutate(data, rng, corpus)
        else:
            data = mutate(rng.choice(corpus), rng, corpus)
        t0 = time.perf_counter()
        try:
            target.call(data)
            out.accepted += 1
            if len(corpus) < 512 and rng.random() < 0.02:
                corpus.append(data)  # a new valid input: mutate from it too
        except target.refusals as exc:
            out.refused += 1
            if not str(exc).strip():
                out.unclear_refusals += 1
                if len(out.crashes) < 5:
                    out.crashes.append(
                        {"kind": "refusal without a message", "type": type(exc).__name__, "input_hex": data[:256].hex()}
                    )
        except Exception as exc:  # noqa: BLE001 - the point: anything else is a crash
            out.crash_count += 1
            if len(out.crashes) < 5:
                out.crashes.append(
                    {
                        "kind": "crash",
                        "type": type(exc).__name__,
                        "error": str(exc)[:300],
                        "input_hex": data[:256].hex(),
                        "traceback": traceback.format_exc(limit=6)[-1500:],
                    }
                )
        took = time.perf_counter() - t0
        out.slowest_s = max(out.slowest_s, took)
        if took > HANG_S:
            out.hangs += 1
        out.inputs += 1
    out.seconds = time.perf_counter() - start
    return out


# --------------------------------------------------------------------------- random values


def random_scalar(rng: random.Random) -> Any:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice([0, 1, -1, 2**31, -(2**63), 2**64 - 1, 255, 65535])
    if kind == 1:
        return rng.choice([0.0, -0.0, 1.5, 1e308, -1e-308, math.nan, math.inf, -math.inf])
    if kind == 2:
        return rng.choice(["", "x", "CB-045", "open", "close", "é" * 3, "\x00", "a" * 200, "../../etc"])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.randbytes(rng.choice((0, 1, 16, 32, 33)))
    if kind == 5:
        return rng.uniform(-1e6, 1e6)
    if kind == 6:
        return rng.randrange(-1000, 100000)
    return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.6:
        return random_scalar(rng)
    if rng.random() < 0.5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {
        str(random_scalar(rng)) if rng.random() < 0.9 else random_scalar(rng): random_value(rng, depth + 1)
        for _ in range(rng.randrange(4))
    }


def _packb(value: Any) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return msgpack.packb(str(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- targets


def site_file_target() -> Target:
    """The site file as `stima config validate` and a reload read it: bytes → TOML → schema."""
    import tomllib

    import tomli_w

    from gateway.config import ConfigError, loads

    example = (ROOT / "deploy" / "examples" / "sub-003.toml").read_bytes()
    doc = tomllib.loads(example.decode())
    small = dict(doc)
    small["ieds"] = [dict(doc["ieds"][0], points=doc["ieds"][0]["points"][:6])]
    small["protection"] = []
    small["agents"] = doc["agents"][:4]
    seeds = [tomli_w.dumps(small).encode()]  # the whole example parses in ~5 ms: too slow to mutate at scale
    keys = [
        ("ieds", 0, "poll_period_ms"),
        ("ieds", 0, "points"),
        ("agents", 0, "attributes"),
        ("uplink",),
        ("site", "substation_id"),
        ("protection",),
        ("meter_groups",),
        ("history",),
        ("control",),
        ("agents", 1, "connection_rules", 0, "target_id"),
        ("agents", 1, "connection_rules", 0, "position_m"),
        ("agents", 2, "points"),
        ("ieds", 0, "points", 0, "id"),
        ("agents", 0, "id"),
    ]

    def generate(rng: random.Random) -> bytes:
        mutated = tomllib.loads(seeds[0].decode())
        for _ in range(rng.randrange(1, 4)):
            path = rng.choice(keys)
            node: Any = mutated
            for part in path[:-1]:
                try:
                    node = node[part]
                except (KeyError, IndexError, TypeError):
                    break
            else:
                if isinstance(node, dict | list):
                    try:
                        node[path[-1]] = random_value(rng)  # type: ignore[index]
                    except (IndexError, TypeError):
                        pass
        try:
            return tomli_w.dumps(_tomlable(mutated)).encode()
        except (TypeError, ValueError):
            return seeds[0]

    def call(data: bytes) -> Any:
        return loads(data, "fuzz.toml")

    return Target("site file (TOML → schema)", call, (ConfigError,), seeds, generate)


def _tomlable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_tomlable(v) for v in value if v is not None]
    if isinstance(value, bytes):
        return value.hex()
    return value


def modbus_target(framing: str) -> Target:
    """A Modbus response as it arrives: the frame decoded (pymodbus, the framing the master uses),
    then the registers or bits cut into the example site's points by the master's own decoder."""
    from pymodbus.exceptions import ModbusException
    from pymodbus.framer import FramerRTU, FramerSocket
    from pymodbus.pdu import DecodePDU

    from gateway.config import load
    from protocols.modbus import decode_block, plan_blocks

    site = load(ROOT / "deploy" / "examples" / "sub-003.toml")
    blocks = [b for ied in site.ieds if hasattr(ied, "unit_id") for b in plan_blocks(ied.points)]
    framer_type = FramerSocket if framing == "tcp" else FramerRTU

    def frame(pdu: bytes, rng: random.Random | None = None) -> bytes:
        if framing == "tcp":
            return struct.pack(">HHHB", 1, 0, len(pdu) + 1, 1) + pdu
        body = b"\x01" + pdu
        return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")

    seeds = [
        frame(bytes([3, 8]) + bytes(range(8))),
        frame(bytes([4, 4]) + b"\x00\x0a\xff\xff"),
        frame(bytes([1, 1, 0x05])),
        frame(bytes([0x83, 2])),
        frame(bytes([6, 0, 10, 0, 5])),
        frame(bytes([16, 0, 10, 0, 2])),
    ]

    def generate(rng: random.Random) -> bytes:
        fc = rng.choice((1, 2, 3, 4, 5, 6, 15, 16, 0x81, 0x83, 0x84, 0x90, 43, 23))
        if fc in (3, 4, 23):
            count = rng.choice((0, 1, 2, 10, 125, 126, 127))
            pdu = bytes([fc, min(255, 2 * count)]) + rng.randbytes(2 * count)
        elif fc in (1, 2):
            count = rng.randrange(0, 260)
            pdu = bytes([fc, min(255, count)]) + rng.randbytes(count)
        elif fc >= 0x80:
            pdu = bytes([fc, rng.randrange(0, 20)])
        else:
            pdu = bytes([fc]) + rng.randbytes(rng.randrange(0, 8))
        return frame(pdu, rng)

    class FrameDiscarded(ModbusException):
        """No frame in the bytes (bad CRC, short, unknown): the master drops them and times out."""

    def call(data: bytes) -> Any:
        framer = framer_type(DecodePDU(False))
        _used, pdu = framer.handleFrame(data, 0, 0)
        if pdu is None:
            raise FrameDiscarded("no complete frame: the bytes are dropped and the request times out")
        words = getattr(pdu, "registers", None) or getattr(pdu, "bits", None)
        if words:
            for block in blocks:
                decode_block(block, words)
        return pdu

    name = (
        "Modbus TCP responses (MBAP frame → points)"
        if framing == "tcp"
        else "Modbus RTU responses (RTU frame + CRC → points)"
    )
    return Target(name, call, (ModbusException,), seeds, generate)


def iec61850_target() -> Target:
    """An MMS value as it arrives in a read response or report: BER bytes decoded by
    libiec61850 (MmsValue_decodeMmsData), then turned into every point kind's value and quality
    by the client's own decoder. A value libiec61850 cannot decode is NULL: a refusal."""
    from gateway.contract.settings import Iec61850Point
    from protocols._iec61850_ffi import ffi, lib
    from protocols.iec61850 import decode_value

    class MmsUndecodable(ValueError):
        pass

    points = [
        Iec61850Point.model_validate(p)
        for p in (
            {"id": "a", "reference": "LD0/MMXU1.TotW.mag.f", "fc": "MX", "kind": "analog", "scale": 0.001},
            {"id": "b", "reference": "LD0/XCBR1.Pos.stVal", "fc": "ST", "kind": "binary"},
            {"id": "c", "reference": "LD0/MMTR1.TotWh.actVal", "fc": "ST", "kind": "counter"},
            {"id": "d", "reference": "LD0/MMXU1.Hz.mag.f", "fc": "MX", "kind": "analog", "valid_range": [45, 55]},
        )
    ]
    seeds = [
        bytes.fromhex(h)
        for h in (
            "8705083f800000",
            "830101",
            "850400000064",
            "8403060040",
            "a20a8705083f8000008301ff",
            "800100",
            "8c0800000000000000000",
            "8a03616263",
        )
        if len(h) % 2 == 0
    ]

    def generate(rng: random.Random) -> bytes:
        tag = rng.choice((0x80, 0x83, 0x84, 0x85, 0x86, 0x87, 0x89, 0x8A, 0x8C, 0x91, 0xA1, 0xA2))
        body = rng.randbytes(rng.choice((0, 1, 2, 4, 5, 8, 9, 17)))
        length = rng.choice((len(body), len(body), 0x81, 0x82, 0xFF, len(body) + 1))
        return bytes([tag, min(255, length)]) + body

    def call(data: bytes) -> Any:
        buf = ffi.new("uint8_t[]", data) if data else ffi.new("uint8_t[]", 1)
        end = ffi.new("int*")
        value = lib.MmsValue_decodeMmsData(buf, 0, len(data), end)
        if value == ffi.NULL:
            raise MmsUndecodable("libiec61850 could not decode the MMS value")
        try:
            return [decode_value(value, p) for p in points]
        finally:
            lib.MmsValue_delete(value)

    return Target("IEC 61850 values (MMS BER → points)", call, (MmsUndecodable,), seeds, generate)


class _Nonces:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def remember_nonce(self, nonce: str, expires: float, now: float) -> bool:
        if nonce in self.seen:
            return False
        self.seen.add(nonce)
        return True


def command_targets() -> list[Target]:
    """An MQTT command as it arrives: msgpack decoded as the uplink does, then verified
    (signature, age, nonce, arguments). Unsigned: anything at all. Signed: envelopes built with
    the right key around random commands and arguments, so the argument checks are reached."""
    from gateway.commands import CommandRefused, Verifier, sign_command
    from gateway.config import COMMAND_NAMES

    key = b"k" * 32
    now = 1_767_225_600.0
    names = list(COMMAND_NAMES) + ["rebirth", "nope", ""]

    def verifier() -> Verifier:
        return Verifier(key, substation="SUB-003", max_age_s=30.0, nonces=_Nonces())

    good_args: list[dict[str, Any]] = [
        {"breaker": "CB-045", "action": "open"},
        {"breaker": "CB-044", "action": "close", "authorised": True},
        {"select_id": "abc"},
        {},
    ]

    def envelope(rng: random.Random) -> tuple[str, dict[str, Any]]:
        command = rng.choice(names)
        args = dict(rng.choice(good_args)) if rng.random() < 0.5 else {}
        for _ in range(rng.randrange(3)):
            args[
                rng.choice(
                    [
                        "breaker",
                        "action",
                        "select_id",
                        "authorised",
                        "reason",
                        "device",
                        "sequence",
                        "steps",
                        "value",
                        "x",
                    ]
                )
            ] = random_value(rng)
        try:
            env = sign_command(
                key,
                command or "x",
                args,
                rng.choice(["scada", "", "x" * 200]),
                now + rng.choice((0.0, 1.0, -100.0, 1e9)),
                substation=rng.choice((None, "SUB-003", "X")),
            )
        except TypeError:  # a map with non-string keys cannot be signed; send it unsigned
            env = {"command": command, "args": args}
        if rng.random() < 0.2:
            env[rng.choice(list(env))] = random_value(rng)
        return command, env

    seeds_unsigned = [_packb(sign_command(key, "breaker.select", a, "scada", now)) for a in good_args]

    def unsigned(data: bytes) -> Any:
        try:
            payload: Any = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - as protocols/mqtt.py: handed on as raw bytes
            payload = bytes(data)
        return verifier().verify("breaker.select", payload, now)

    def signed(data: bytes) -> Any:
        command, _, body = data.partition(b"\x00")
        try:
            payload: Any = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001
            payload = bytes(body)
        return verifier().verify(command.decode(errors="replace"), payload, now)

    def generate_signed(rng: random.Random) -> bytes:
        command, env = envelope(rng)
        return command.encode() + b"\x00" + _packb(env)

    seeds_signed = [b"breaker.select\x00" + s for s in seeds_unsigned]
    return [
        Target(
            "MQTT commands, unsigned (msgpack → verifier)",
            unsigned,
            (CommandRefused,),
            seeds_unsigned,
            lambda rng: _packb(random_value(rng)),
        ),
        Target(
            "MQTT commands, signed (verifier → arguments)", signed, (CommandRefused,), seeds_signed, generate_signed
        ),
    ]


def ami_target() -> Target:
    """An AMI data concentrator's batch as it arrives (msgpack, columns as raw arrays)."""
    import numpy as np

    from protocols.ami import AmiPayloadError, decode_batch, encode_batch

    def batch(rng: random.Random, n: int) -> bytes:
        ids = [f"M{i:06d}" for i in range(n)]
        kwargs: dict[str, Any] = {
            "substation_id": "SUB-003",
            "concentrator_id": "DC-1",
            "seq": rng.randrange(100),
            "reading_time": 1.7e9,
            "interval_s": 900.0,
            "meter_ids": ids,
        }
        try:
            return encode_batch(
                **kwargs,
                columns={"voltage_v": np.full(n, 230.0, dtype="<f4"), "power_kw": np.full(n, 1.5, dtype="<f4")},
            )
        except TypeError:
            return encode_batch(**kwargs)

    seeds = [batch(random.Random(1), n) for n in (1, 3, 50)]

    def generate(rng: random.Random) -> bytes:
        message = msgpack.unpackb(rng.choice(seeds), raw=False)
        for _ in range(rng.randrange(1, 3)):
            target = message
            if rng.random() < 0.4 and isinstance(message.get("columns"), dict) and message["columns"]:
                target = rng.choice(list(message["columns"].values()))
            if isinstance(target, dict) and target:
                target[rng.choice(list(target) + ["extra"])] = random_value(rng)
        return _packb(message)

    return Target("AMI batches (msgpack → columns)", decode_batch, (AmiPayloadError,), seeds, generate)


def control_request_target() -> Target:
    """A control-socket request line as the daemon reads it (JSON, one object, op and args)."""
    from gateway.control import BadRequest, parse_request

    seeds = [
        json.dumps({"op": op, "args": args}).encode() + b"\n"
        for op, args in (
            ("status", {}),
            ("points.read", {"ids": ["CB-045.ia"]}),
            ("breaker.operate", {"breaker": "CB-045", "action": "open"}),
            ("switching.submit", {"text": "step 1 open CB-045", "run": True}),
        )
    ]

    def generate(rng: random.Random) -> bytes:
        request = {
            "op": random_value(rng) if rng.random() < 0.3 else rng.choice(["status", "events", "x"]),
            "args": random_value(rng),
        }
        if rng.random() < 0.1:
            depth = rng.choice((10, 1000, 30_000))
            return b'{"op": "status", "args": ' + b"[" * depth + b"]" * depth + b"}\n"
        try:
            return json.dumps(_jsonable(request), allow_nan=True).encode() + b"\n"
        except (TypeError, ValueError):
            return seeds[0]

    return Target("control-socket requests (JSON line → op, args)", parse_request, (BadRequest,), seeds, generate)


def der_target() -> Target:
    """A DER's readings as they arrive at its agent (what its IED points deliver: any number,
    NaN, infinities, out of range, missing), stepped through the renewable agent's state machine."""
    from gateway.agents.elements.renewable import DerInputs, RenewableEnergyAgent
    from gateway.agents.schema import RenewableEnergyAttributes

    fields = ["active_power_kw", "reactive_power_kvar", "voltage_pu", "irradiance_w_m2", "connected", "grid_available"]
    agent = RenewableEnergyAgent("PV-1", RenewableEnergyAttributes(rated_capacity=500.0, enter_service_delay_s=10.0))
    box: dict[str, Any] = {"memory": agent.initial_memory(0.0), "now": 0.0}

    def decode(data: bytes) -> Any:
        readings: dict[str, Any] = {}
        for i in range(0, len(data) - 8, 9):
            name = fields[data[i] % len(fields)]
            (value,) = struct.unpack("<d", data[i + 1 : i + 9])
            readings[name] = (value > 0.5) if name in ("connected", "grid_available") else value
        return DerInputs(**readings)

    def call(data: bytes) -> Any:
        box["now"] += 1.0
        if int(box["now"]) % 1000 == 0:
            box["memory"] = agent.initial_memory(box["now"])  # start fresh now and then
        box["memory"], actions = agent.step(box["memory"], decode(data), box["now"])
        return actions

    def generate(rng: random.Random) -> bytes:
        out = b""
        for _ in range(rng.randrange(1, 6)):
            value = rng.choice([rng.uniform(-1e4, 1e4), math.nan, math.inf, -math.inf, 0.0, 1e300, -1.0, 1.0])
            out += bytes([rng.randrange(256)]) + struct.pack("<d", value)
        return out

    seeds = [generate(random.Random(i)) for i in range(4)]
    return Target("DER readings (renewable agent)", call, (), seeds, generate)


def all_targets() -> list[Target]:
    return [
        site_file_target(),
        modbus_target("tcp"),
        modbus_target("rtu"),
        iec61850_target(),
        *command_targets(),
        ami_target(),
        control_request_target(),
        der_target(),
    ]


def canary_target() -> Target:
    """A parser with a planted bug (an IndexError on one short input pattern): the fuzzer must
    report it as a crash, or it could not fail on a real one."""

    class Refused(ValueError):
        pass

    def call(data: bytes) -> Any:
        if not data.startswith(b"{"):
            raise Refused("expected a map")
        if len(data) > 2 and data[1] == 0xFF:
            return data[1000]  # the planted bug
        return None

    return Target("canary (a planted crash)", call, (Refused,), [b"{}", b'{"a": 1}'])
