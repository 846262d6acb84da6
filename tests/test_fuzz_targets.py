"""The parsers `make reliability` fuzzes at 100,000 inputs each, here at a few thousand, and
the regressions those runs found. The canary shows that a crash is reported, not swallowed."""

from __future__ import annotations

import logging

import msgpack
import pytest

from gateway.config import ConfigError, validate
from protocols.ami import AmiPayloadError, decode_batch
from tests.reliability.fuzzing import all_targets, canary_target, run_target


@pytest.mark.parametrize("index", range(len(all_targets())), ids=[t.name.split(" (")[0] for t in all_targets()])
def test_parser_survives_fuzzing(index: int) -> None:
    logging.disable(logging.CRITICAL)
    try:
        outcome = run_target(all_targets()[index], 1500, seed=index)
    finally:
        logging.disable(logging.NOTSET)
    assert outcome.inputs == 1500
    assert outcome.crash_count == 0 and outcome.unclear_refusals == 0, outcome.crashes
    assert outcome.hangs == 0


def test_the_fuzzer_reports_a_planted_crash() -> None:
    outcome = run_target(canary_target(), 5000, seed=3)
    assert outcome.crash_count > 0
    assert outcome.crashes[0]["type"] == "IndexError"


@pytest.mark.parametrize("dtype", [{"a": 1}, [1, 2], 7])
def test_ami_column_dtype_of_the_wrong_type_is_refused(dtype: object) -> None:
    payload = msgpack.packb(
        {
            "v": 1,
            "substation_id": "S",
            "concentrator_id": "DC",
            "seq": 1,
            "reading_time": 1.0,
            "interval_s": 900.0,
            "part": 0,
            "parts": 1,
            "ids": ["M1"],
            "columns": {"voltage_v": {"dtype": dtype, "data": b"\x00" * 4}},
        }
    )
    with pytest.raises(AmiPayloadError, match="dtype"):
        decode_batch(payload)


def test_a_reference_that_is_a_list_is_a_type_error_not_a_crash() -> None:
    from tests.test_config import example

    data = example()
    data["protection"][0]["breaker"] = ["CB-045"]
    data["agents"][0].setdefault("connection_rules", [{}])[0]["target_id"] = ["x"]
    with pytest.raises(ConfigError) as info:
        validate(data)
    assert any(p.path.startswith("protection[0") for p in info.value.problems)
