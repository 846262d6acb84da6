"""The transformer agent's side: a health evaluation becomes a prediction, a trend warning and —
once per crossing — a maintenance request with the evidence, the probability and the mode."""

from __future__ import annotations

import pytest

from gateway.agents.actions import Alert, BusMessage, Severity
from gateway.agents.base import Links
from gateway.agents.runtime import AgentRuntime, UnknownAgent
from gateway.agents.schema import TransformerAttributes
from gateway.agents.elements.transformer import TransformerAgent
from gateway.config import validate
from hil.scenarios.predictive_maintenance import site
from tests.test_maintenance_failure import SCENARIO, inputs


def agent() -> TransformerAgent:
    return TransformerAgent(
        "XFMR-234",
        TransformerAttributes(rated_capacity=6000, secondary_voltage=11000),
        Links(substation="SUB-003", customers_downstream=2500, critical_customers_downstream=3),
    )


def test_an_ageing_transformer_asks_for_maintenance_once_with_its_evidence() -> None:
    x = agent()
    m = x.initial_memory(0.0)
    aged = inputs(**SCENARIO)  # type: ignore[arg-type]
    m, actions = x.on_health(m, aged, 10.0, horizon_days=60, threshold=0.2)
    alerts = [a for a in actions if isinstance(a, Alert)]
    requests = [a for a in actions if isinstance(a, BusMessage) and a.kind == "maintenance_request"]
    assert any("trending up +2.0 °C a month" in a.message for a in alerts)
    assert any(a.severity is Severity.MAJOR and "chance of failure within 60 days" in a.message for a in alerts)
    (req,) = requests
    p = req.payload
    assert p["failure_probability"] == pytest.approx(0.45, abs=0.03)
    assert p["failure_mode"] == "winding insulation breakdown" and p["failure_mode_key"] == "winding"
    assert p["dga_status"] == 3 and p["duval_zone"] == "D2"
    assert p["customers"] == 2500 and p["critical_customers"] == 3
    assert p["contributions"][0]["factor"] in ("dga_status", "acetylene")
    assert p["health"]["top_oil_trend"]["detected"] is True
    assert x.attributes(m)["failure_probability"] == pytest.approx(p["failure_probability"])
    # the next evaluation, still bad: nothing new is asked
    m, again = x.on_health(m, aged, 3610.0, horizon_days=60, threshold=0.2)
    assert not [a for a in again if isinstance(a, BusMessage)] and not [a for a in again if isinstance(a, Alert)]
    # back to health after the work, then worse again: a new request
    m, _ = x.on_health(m, inputs(), 7210.0)
    m, later = x.on_health(m, aged, 10810.0)
    assert [a.kind for a in later if isinstance(a, BusMessage)] == ["maintenance_request"]


def test_a_healthy_twin_asks_for_nothing() -> None:
    x = agent()
    m = x.initial_memory(0.0)
    for t in range(10):
        m, actions = x.on_health(m, inputs(), float(t * 3600))
        assert actions == []
    assert x.attributes(m)["failure_probability"] < 0.01


def test_dga_status_3_alone_is_a_reason() -> None:
    x = agent()
    m = x.initial_memory(0.0)
    gassy = inputs(c2h2=3.0, c2h4=30.0, ch4=40.0)
    m, actions = x.on_health(m, gassy, 1.0, threshold=0.99)
    (req,) = [a for a in actions if isinstance(a, BusMessage)]
    assert "status 3" in req.payload["reason"]


def test_the_runtime_hands_the_evaluation_to_the_agent() -> None:
    rt = AgentRuntime(validate(site()), now=0.0)
    actions = rt.on_health("XFMR-234", inputs(**SCENARIO), 5.0)  # type: ignore[arg-type]
    (req,) = [a for a in actions if isinstance(a, BusMessage)]
    assert req.payload["customers"] == 2500 and req.payload["critical_customers"] == 3
    assert rt.show("XFMR-234")["attributes"]["failure_probability"] == pytest.approx(0.45, abs=0.03)
    with pytest.raises(UnknownAgent):
        rt.on_health("CB-045", inputs(), 5.0)
