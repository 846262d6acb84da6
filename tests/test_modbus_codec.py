"""Register encoding/decoding and block planning (property tests)."""

from __future__ import annotations

import math
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract.settings import DataType, ModbusPoint, RegisterFunction, WordOrder
from protocols.modbus import (
    DEVICE_EXCEPTION,
    MALFORMED,
    OUT_OF_RANGE,
    EncodingError,
    decode_block,
    decode_columns,
    decode_registers,
    encode_value,
    plan_blocks,
    to_engineering,
)

RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}
REGISTER_TYPES = [DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.FLOAT32]


def point(
    dtype: DataType,
    order: WordOrder = WordOrder.BIG,
    scale: float = 1.0,
    offset: float = 0.0,
    address: int = 0,
    **kw: object,
) -> ModbusPoint:
    return ModbusPoint(id="p", address=address, type=dtype, word_order=order, scale=scale, offset=offset, **kw)


@st.composite
def typed_value(draw: st.DrawFn) -> tuple[DataType, WordOrder, float | int]:
    dtype = draw(st.sampled_from(REGISTER_TYPES))
    order = draw(st.sampled_from(list(WordOrder)))
    if dtype is DataType.FLOAT32:
        value: float | int = draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
    else:
        lo, hi = RANGES[dtype]
        value = draw(st.integers(lo, hi))
    return dtype, order, value


@given(typed_value())
def test_round_trip_every_type_and_word_order(case: tuple[DataType, WordOrder, float | int]) -> None:
    dtype, order, value = case
    p = point(dtype, order)
    words = encode_value(value, p)
    assert len(words) == dtype.registers
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_registers(words, p) == value


@given(typed_value())
def test_word_order_swaps_words(case: tuple[DataType, WordOrder, float | int]) -> None:
    dtype, _, value = case
    big = encode_value(value, point(dtype, WordOrder.BIG))
    little = encode_value(value, point(dtype, WordOrder.LITTLE))
    assert little == list(reversed(big))


def test_known_encodings() -> None:
    # 123.5 as IEEE-754 big-endian is 0x42F7 0x0000 ("ABCD"); little word order is "CDAB".
    assert encode_value(123.5, point(DataType.FLOAT32)) == [0x42F7, 0x0000]
    assert encode_value(123.5, point(DataType.FLOAT32, WordOrder.LITTLE)) == [0x0000, 0x42F7]
    assert decode_registers([0xFFFF], point(DataType.INT16)) == -1
    assert decode_registers([0x0001, 0x0000], point(DataType.UINT32)) == 65536
    assert decode_registers([0x0000, 0x0001], point(DataType.UINT32, WordOrder.LITTLE)) == 65536


@given(
    st.sampled_from([DataType.INT16, DataType.INT32, DataType.FLOAT32]),
    st.floats(min_value=0.001, max_value=100.0),
    st.floats(min_value=-1000, max_value=1000),
    st.integers(-30000, 30000),
)
def test_scaling_round_trip(dtype: DataType, scale: float, offset: float, raw: int) -> None:
    p = point(dtype, scale=scale, offset=offset)
    engineering = raw * scale + offset
    value = to_engineering(decode_registers(encode_value(engineering, p), p), p)
    assert math.isclose(float(value), engineering, rel_tol=1e-6, abs_tol=scale)


def test_values_the_type_cannot_carry_are_refused() -> None:
    for value, dtype in ((70000, DataType.UINT16), (-1, DataType.UINT32), (40000, DataType.INT16)):
        try:
            encode_value(value, point(dtype))
        except EncodingError as exc:
            assert "outside" in str(exc)
        else:
            raise AssertionError(f"{value} accepted as {dtype}")
    try:
        encode_value(float("nan"), point(DataType.FLOAT32))
    except EncodingError as exc:
        assert "finite" in str(exc)
    else:
        raise AssertionError("NaN accepted")


@st.composite
def register_maps(draw: st.DrawFn) -> list[ModbusPoint]:
    n = draw(st.integers(1, 60))
    addresses = draw(st.lists(st.integers(0, 600), min_size=n, max_size=n, unique=True))
    out = []
    for i, address in enumerate(addresses):
        function = draw(st.sampled_from(list(RegisterFunction)))
        bit = function in (RegisterFunction.COIL, RegisterFunction.DISCRETE)
        dtype = DataType.BOOL if bit else draw(st.sampled_from(REGISTER_TYPES))
        out.append(ModbusPoint(id=f"p{i}", address=address, function=function, type=dtype))
    return out


@settings(max_examples=200)
@given(register_maps(), st.integers(1, 125), st.integers(0, 20))
def test_block_plan_covers_every_point_within_limits(points: list[ModbusPoint], limit: int, gap: int) -> None:
    points = [p for p in points if p.type.registers <= limit]
    blocks = plan_blocks(points, max_registers=limit, max_bits=limit, gap_tolerance=gap)
    covered = [p.id for b in blocks for p in b.points]
    assert sorted(covered) == sorted(p.id for p in points)
    for b in blocks:
        assert 1 <= b.count <= limit
        for p in b.points:
            assert p.function is b.function
            width = 1 if b.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE) else p.type.registers
            assert b.start <= p.address and p.address + width <= b.end
        # a block never spans a hole larger than the gap tolerance
        ends = sorted((p.address, p.address + p.type.registers) for p in b.points)
        reach = ends[0][1]
        for start, end in ends[1:]:
            assert start - reach <= gap
            reach = max(reach, end)


def test_neighbouring_registers_coalesce_into_one_read() -> None:
    points = [ModbusPoint(id=f"r{i}", address=2 * i, type=DataType.FLOAT32) for i in range(100)]
    blocks = plan_blocks(points)
    assert [(b.start, b.count) for b in blocks] == [(0, 124), (124, 76)]


def test_decode_block_marks_short_frames_and_out_of_range() -> None:
    pts = [
        point(DataType.FLOAT32, address=0, valid_range=(0.0, 100.0)),
        ModbusPoint(id="q", address=2, type=DataType.UINT16),
    ]
    pts[0] = ModbusPoint(id="a", address=0, type=DataType.FLOAT32, valid_range=(0.0, 100.0))
    (block,) = plan_blocks(pts)
    words = list(struct.unpack(">HH", struct.pack(">f", 250.0))) + [7]
    decoded = {p.id: (v, q) for p, v, q in decode_block(block, words)}
    assert decoded["a"] == (250.0, OUT_OF_RANGE)
    assert decoded["q"][0] == 7 and decoded["q"][1].good
    short = {p.id: q for p, _, q in decode_block(block, words[:1])}
    assert short == {"a": MALFORMED, "q": MALFORMED}
    assert DEVICE_EXCEPTION.reason.value == "device_exception"


@given(st.lists(st.integers(0, 0xFFFF), max_size=8), st.sampled_from(REGISTER_TYPES), st.sampled_from(list(WordOrder)))
def test_garbage_either_decodes_or_is_marked_malformed(words: list[int], dtype: DataType, order: WordOrder) -> None:
    p = ModbusPoint(id="g", address=0, type=dtype, word_order=order, valid_range=(-1e9, 1e9))
    (block,) = plan_blocks([p])
    ((_, value, quality),) = decode_block(block, words)
    if len(words) < dtype.registers:
        assert quality == MALFORMED and value is None
    else:
        assert quality.good or quality == OUT_OF_RANGE


@given(
    st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8),
    st.sampled_from(REGISTER_TYPES),
    st.sampled_from(list(WordOrder)),
    st.sampled_from([(1.0, 0.0), (0.1, -40.0), (0.001, 0.0)]),
    st.integers(0, 6),
)
def test_block_decoder_agrees_with_pymodbus_conversion(
    words: list[int], dtype: DataType, order: WordOrder, scaling: tuple[float, float], at: int
) -> None:
    p = ModbusPoint(id="x", address=at, type=dtype, word_order=order, scale=scaling[0], offset=scaling[1])
    filler = ModbusPoint(id="f", address=0, type=DataType.UINT16)
    points = [p] if at == 0 else [filler, p]
    (block,) = plan_blocks(points)
    got = {q.id: v for q, v, _ in decode_block(block, words[: block.count])}
    expected = to_engineering(decode_registers(words[at : at + dtype.registers], p), p)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got["x"])
    else:
        assert got["x"] == expected


@settings(max_examples=200)
@given(
    st.lists(st.integers(0, 0xFFFF), min_size=12, max_size=12),
    st.sampled_from([DataType.INT16, DataType.UINT16]),
    st.sets(st.integers(0, 11), min_size=1),
)
def test_a_block_of_plain_registers_decodes_as_one_array_view_with_the_same_values(
    words: list[int], dtype: DataType, addresses: set[int]
) -> None:
    """The array view over a whole block gives what pymodbus's per-register conversion gives."""
    points = [ModbusPoint(id=f"r{a}", address=a, type=dtype) for a in sorted(addresses)]
    (block,) = plan_blocks(points, gap_tolerance=len(words))  # one block, whatever the gaps
    assert block.plain16 is not None
    values, qualities = decode_columns(block, words[block.start : block.start + block.count])
    for p, value, quality in zip(block.points, values, qualities, strict=True):
        expected = decode_registers([words[p.address]], p)
        assert value == expected and type(value) is int and quality.good


def test_a_short_response_to_a_plain_block_marks_only_the_missing_points() -> None:
    points = [ModbusPoint(id=f"r{a}", address=a, type=DataType.UINT16) for a in range(4)]
    (block,) = plan_blocks(points)
    values, qualities = decode_columns(block, [7, 8])
    assert values[:2] == [7, 8] and all(q.good for q in qualities[:2])
    assert values[2:] == [None, None] and qualities[2:] == [MALFORMED, MALFORMED]


def test_blocks_with_scaling_ranges_or_wide_types_keep_the_per_point_decoder() -> None:
    assert plan_blocks([point(DataType.UINT16, scale=0.1)])[0].plain16 is None
    assert plan_blocks([point(DataType.INT32)])[0].plain16 is None
    assert plan_blocks([point(DataType.UINT16, valid_range=(0, 10))])[0].plain16 is None
    ranged = plan_blocks([point(DataType.UINT16, valid_range=(0, 10))])[0]
    assert decode_columns(ranged, [11]) == ([11], [OUT_OF_RANGE])
