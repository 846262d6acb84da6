"""The simulator's register encoding agrees with the gateway's decoding, and writes are mapped exactly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.constants import ExcCodes

from gateway.contract.settings import DataType, ModbusPoint, ModbusTcpIed, WordOrder
from hil.modbus_servers import RegisterMap, from_registers, to_registers
from protocols.modbus import decode_registers, to_engineering

_LIMITS = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}

points = st.builds(
    lambda t, w, scale, offset: ModbusPoint(id="P", address=0, type=t, word_order=w, scale=scale, offset=offset),
    st.sampled_from([DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.FLOAT32]),
    st.sampled_from(list(WordOrder)),
    st.sampled_from([1.0, 0.1, 0.01, 10.0, 0.001]),
    st.sampled_from([0.0, -40.0, 100.0]),
)


@given(points, st.floats(-1e12, 1e12, allow_nan=False))
def test_gateway_decodes_what_the_simulator_encodes(point: ModbusPoint, value: float) -> None:
    words = to_registers(value, point)
    assert len(words) == point.type.registers and all(0 <= w <= 0xFFFF for w in words)
    decoded = to_engineering(decode_registers(words, point), point)
    assert decoded == from_registers(words, point)
    raw = (value - point.offset) / point.scale
    if point.type is DataType.FLOAT32:
        if abs(raw) < 3e38:
            tolerance = point.scale * (abs(raw) * 2**-23 + 1e-44) + 1e-12 * (abs(point.offset) + abs(value))
            assert decoded == pytest.approx(value, rel=0, abs=tolerance)
        return
    low, high = _LIMITS[point.type]
    clamped = min(max(round(raw), low), high)  # a device saturates, it does not wrap
    assert decoded == pytest.approx(clamped * point.scale + point.offset, rel=1e-12, abs=1e-9)


def test_non_finite_values() -> None:
    p16 = ModbusPoint(id="P", address=0, type=DataType.INT16)
    assert to_registers(math.nan, p16) == [0]
    assert to_registers(math.inf, p16) == [0]
    pf = ModbusPoint(id="P", address=0, type=DataType.FLOAT32)
    assert math.isnan(from_registers(to_registers(math.nan, pf), pf))


def _ied() -> ModbusTcpIed:
    return ModbusTcpIed.model_validate(
        {
            "id": "IED",
            "protocol": "modbus_tcp",
            "host": "127.0.0.1",
            "points": [
                {"id": "ro", "address": 0, "type": "float32"},
                {"id": "sp32", "address": 10, "type": "int32", "word_order": "little", "writable": True},
                {"id": "sp16", "address": 12, "type": "uint16", "scale": 0.1, "writable": True},
                {"id": "trip", "address": 0, "function": "coil", "type": "bool", "writable": True},
                {"id": "close", "address": 1, "function": "coil", "type": "bool", "writable": True},
                {"id": "local", "address": 2, "function": "coil", "type": "bool"},
            ],
        }
    )


def test_writes_map_to_points() -> None:
    regmap = RegisterMap(_ied())
    current = [0] * 16
    sp32 = regmap.by_id["sp32"]
    words = to_registers(-70000, sp32)
    assert regmap.decode_write(16, 10, words + [123], current, 0) == [("sp32", -70000), ("sp16", pytest.approx(12.3))]
    assert regmap.decode_write(6, 12, [5], current, 0) == [("sp16", pytest.approx(0.5))]
    # half of a 32-bit point: the other word is kept from the table
    current[10:12] = to_registers(65536 + 7, sp32)
    assert regmap.decode_write(6, 10, [9], current, 0) == [("sp32", 65536 + 9)]
    assert regmap.decode_write(6, 0, [1], current, 0) is ExcCodes.ILLEGAL_ADDRESS  # read-only point
    assert regmap.decode_write(6, 5, [1], current, 0) is ExcCodes.ILLEGAL_ADDRESS  # a gap
    assert regmap.decode_write(16, 12, [1, 2], current, 0) is ExcCodes.ILLEGAL_ADDRESS  # runs past the map
    assert regmap.decode_write(15, 0, [True, False], current, 0) == [("trip", True), ("close", False)]
    assert regmap.decode_write(5, 1, [True], current, 0) == [("close", True)]
    assert regmap.decode_write(5, 2, [True], current, 0) is ExcCodes.ILLEGAL_ADDRESS  # not writable
    assert regmap.decode_write(15, 1, [True, True, True], current, 0) is ExcCodes.ILLEGAL_ADDRESS


def test_only_changed_points_are_rewritten() -> None:
    regmap = RegisterMap(_ied())
    first = regmap.changed_words({"ro": 1.5, "trip": False, "sp16": 2.0, "unknown": 1})
    assert sorted((fc, a) for fc, a, _ in first) == [(1, 0), (3, 0), (3, 12)]
    assert regmap.changed_words({"ro": 1.5, "trip": False, "sp16": 2.0}) == []
    assert regmap.changed_words({"ro": 2.5}) == [(3, 0, to_registers(2.5, regmap.by_id["ro"]))]
    regmap.forget()
    assert len(regmap.changed_words({"ro": 2.5})) == 1
