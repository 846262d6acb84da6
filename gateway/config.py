"""The site file: one TOML document describing one substation.

Loaded and validated once; every problem is reported at once with its key path, the value
found and what was expected. The rest of the gateway only ever sees a valid `SiteConfig`.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.agents.schema import AgentType
from gateway.contract.settings import (
    AmiConfig,
    Iec104Config,
    Iec61850Ied,
    IedConfig,
    ModbusRtuIed,
    ModbusTcpIed,
    SiteIdentity,
    UplinkConfig,
)
from gateway.contract.settings import Identifier as _ID
from gateway.contract.settings import SettingsModel as _Model
from gateway.protection.settings import ProtectionScheme


# --------------------------------------------------------------------------- agents


class CanonicalType(enum.Enum):
    SUPPLY = "supply"
    ROUTE = "route"
    COMMAND = "command"
    DEPENDS_ON = "depends_on"


class Directionality(enum.Enum):
    DIRECTED = "directed"
    BIDIRECTIONAL = "bidirectional"


class ConnectionRule(_Model):
    target_id: _ID
    canonical_type: CanonicalType
    directionality: Directionality = Directionality.DIRECTED
    normally_open: bool = False
    """A tie that can carry load when closed (used for alternative supply paths)."""
    position_m: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """Metres from the sending end of the power line at the other end of the rule, where the
    element is tapped (checked against the line's length with the other cross-references)."""


class AgentConfig(_Model):
    id: _ID
    type: str
    """An agent type of the registry (`stima agents types`)."""
    attributes: dict[str, Any] = Field(default_factory=dict)
    points: dict[str, _ID] = Field(default_factory=dict)
    """Measurement or command name of the agent → point id in the process image."""
    connection_rules: list[ConnectionRule] = Field(default_factory=list)

    @field_validator("type")
    @classmethod
    def _registered_type(cls, value: str) -> str:
        from gateway.agents.registry import SPECS  # the agent types' modules import this one

        if value not in SPECS:
            raise ValueError(f"unknown agent type {value!r}; known: {', '.join(SPECS)}")
        return value

    @model_validator(mode="after")
    def _check_attributes(self) -> AgentConfig:
        from gateway.agents.registry import SPECS

        # `type` is a registered type here: its field validator ran first
        try:
            SPECS[self.type].attributes.model_validate(self.attributes)
        except ValidationError as exc:  # report under `attributes.<key>`, where the file has it
            details: list[Any] = [
                {
                    "type": e["type"],
                    "loc": ("attributes", *e["loc"]),
                    "input": e["input"],
                    **({"ctx": e["ctx"]} if "ctx" in e else {}),
                }
                for e in exc.errors()
            ]
            raise ValidationError.from_exception_data(exc.title, details) from None
        return self


class MeterGroupConfig(_Model):
    """Smart meters held column-wise: ids `{prefix}-{n:05d}` for n in [first, first+count)."""

    id: _ID
    prefix: _ID = "MTR"
    first: int = Field(default=1, ge=0)
    count: int = Field(ge=1, le=100_000)
    connected_transformer: _ID
    meter_type: Literal["residential", "commercial", "industrial"] = "residential"
    nominal_voltage_v: float = Field(default=230.0, gt=0)
    reading_timeout_s: float = Field(default=900.0, gt=0)
    critical_meters: list[str] = Field(default_factory=list)
    """Meters of customers whose loss of supply matters most (a hospital, a water works): counted
    apart in every customer-impact summary."""
    critical: bool = False
    """The whole group serves critical customers (a hospital campus): never curtailed by demand
    response, shed only when nothing else is left."""
    dr_programs: list[_ID] = Field(default_factory=list)
    """Demand-response programs (`[[demand_response.programs]]` ids) the group's meters are
    enrolled in; critical meters of the group never take part."""

    def meter_id(self, n: int) -> str:
        return f"{self.prefix}-{n:05d}"

    @property
    def critical_count(self) -> int:
        """Critical customers in the group: all of them for a critical group."""
        return self.count if self.critical else len(self.critical_meters)

    def critical_ids(self) -> list[str]:
        """The critical customers' meters: every meter of a critical group."""
        if self.critical:
            return [self.meter_id(n) for n in range(self.first, self.first + self.count)]
        return list(self.critical_meters)

    @field_validator("critical_meters")
    @classmethod
    def _check_critical(cls, ids: list[str], info: ValidationInfo) -> list[str]:
        prefix, first, count = info.data.get("prefix"), info.data.get("first"), info.data.get("count")
        if prefix is None or first is None or count is None:
            return ids  # the group's own fields are wrong; those problems are reported instead
        seen: set[str] = set()
        for k, meter in enumerate(ids):
            number = meter[len(prefix) + 1 :] if meter.startswith(prefix + "-") else ""
            n = int(number) if number.isdigit() else -1
            if not first <= n < first + count or f"{prefix}-{n:05d}" != meter:
                raise ValueError(
                    f"critical_meters[{k}] {meter!r} is not a meter of this group "
                    f"(expected an id from {prefix}-{first:05d} to {prefix}-{first + count - 1:05d})"
                )
            if meter in seen:
                raise ValueError(f"critical_meters[{k}] {meter!r} is listed twice")
            seen.add(meter)
        return ids


# --------------------------------------------------------------------------- demand response


class DemandResponseProgram(_Model):
    """A utility demand-response program meters may be enrolled in (docs/ami.md#demand-response)."""

    id: _ID
    kind: Literal["curtail", "shift"]
    """curtail: enrolled load drops by `reduction_pct` for the event (HVAC set-back); shift: the
    deferrable part, `reduction_pct`, moves `shift_h` later (industrial process loads)."""
    reduction_pct: float = Field(gt=0, le=100)
    """Share of an enrolled meter's demand the program asks for."""
    shift_h: float = Field(default=0.0, ge=0, le=24)
    """For `shift`: how much later the deferred load comes back."""
    max_duration_s: float = Field(default=4 * 3600.0, gt=0, le=86_400)
    """Longest event the program's contract allows."""
    notice_s: float = Field(default=0.0, ge=0, le=86_400)
    """Least notice the contract asks between the event's dispatch and its start."""
    incentive_per_kwh: float = Field(default=0.0, ge=0)
    """Credit per kWh of confirmed reduction, in the utility's currency."""

    @model_validator(mode="after")
    def _check_shift(self) -> DemandResponseProgram:
        if self.kind == "shift" and self.shift_h <= 0:
            raise ValueError("a 'shift' program needs shift_h > 0 (hours the deferred load moves)")
        return self


class DemandResponseConfig(_Model):
    programs: list[DemandResponseProgram] = Field(default_factory=list)

    def program(self, program_id: str) -> DemandResponseProgram:
        for program in self.programs:
            if program.id == program_id:
                return program
        raise KeyError(program_id)


# --------------------------------------------------------------------------- uplink


COMMAND_NAMES = (
    "breaker/select",
    "breaker/operate",
    "breaker/cancel",
    "agent/request",
    "switching/approve",
    "switching/abort",
    "alarm/acknowledge",
    "maintenance/accept",
    "maintenance/reschedule",
    "maintenance/close",
)
"""Commands a SCADA host may send on `<base>/cmd/<command>` (gateway/commands.py)."""


class ForecastConfig(_Model):
    """The substation's load forecast from the point history (gateway/agents/forecast.py)."""

    enabled: bool = True
    period_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    """How often the forecast is made (and published on `…/forecast`)."""
    horizon_s: float = Field(default=4 * 3600.0, ge=300.0, le=7 * 86400.0)
    step_s: float = Field(default=300.0, ge=1.0, le=3600.0)
    """Spacing of the forecast's points (its crossing time is this precise)."""
    history_days: int = Field(default=7, ge=1, le=60)
    utc_offset_h: float = Field(default=0.0, ge=-14.0, le=14.0)
    """The substation's local time (the daily shape is by local time of day)."""
    trend_window_s: float = Field(default=2 * 3600.0, ge=60.0, le=86400.0)
    """The trend (Theil–Sen) and the level are taken over this much of the latest history."""
    trend_fade_s: float = Field(default=6 * 3600.0, ge=0.0, le=7 * 86400.0)


PeakAction = Literal["cvr", "capacitors", "demand_response", "der", "transfer", "shed"]
PEAK_ACTIONS: tuple[PeakAction, ...] = ("cvr", "capacitors", "demand_response", "der", "transfer", "shed")


class PeakConfig(_Model):
    """Peak demand: the substation's actions in order of least customer impact, each measured
    (gateway/switching/peak.py, docs/peak.md). Off unless the site file turns it on."""

    enabled: bool = False
    target_percent: float = Field(default=90.0, gt=10.0, le=120.0)
    """Keep the forecast peak under this share of the substation's rated capacity."""
    basis: Literal["apparent", "active"] = "apparent"
    """apparent: loading in kVA against the rating (capacitors count); active: kW only."""
    actions: list[PeakAction] = Field(default_factory=lambda: list(PEAK_ACTIONS))
    """Which actions may be used; always taken in the order of PEAK_ACTIONS."""
    settle_s: float = Field(default=120.0, ge=1.0, le=3600.0)
    """After an action is in force, wait this long before measuring what it brought."""
    window_s: float = Field(default=3 * 3600.0, ge=60.0, le=86400.0)
    """How long demand-response events, battery discharge and load transfers are asked for."""
    release_margin_percent: float = Field(default=5.0, ge=0.0, le=50.0)
    shed: Literal["automatic", "advisory"] = "advisory"
    """automatic: the last action opens feeders through the switching authority; advisory: the
    shedding plan is published for the operator and nothing is opened."""


class CoordinationConfig(_Model):
    """Load transfer with neighbouring substations over the regional broker (docs/mqtt.md,
    "Between substations"): who the neighbours are and the public keys their messages carry."""

    enabled: bool = True
    """With external ties in the site and neighbours listed here."""
    neighbours: dict[_ID, str] = Field(default_factory=dict)
    """Neighbouring substation id → its gateway's Ed25519 public key (64 hex digits or base64)
    or a file holding it (relative to the site file)."""
    max_age_s: float = Field(default=30.0, ge=1.0, le=600.0)
    """A coordination message older (or newer) than this by this gateway's clock is dropped."""


class FlisrConfig(_Model):
    """Fault location, isolation and service restoration (docs/switching.md)."""

    mode: Literal["automatic", "advisory", "off"] = "advisory"
    """automatic: the plan runs at once; advisory: it is published and runs on a signed approval."""
    settle_s: float = Field(default=1.0, ge=0.0, le=60.0)
    """After a lockout, wait this long for indicators and positions before planning."""
    step_timeout_s: float = Field(default=10.0, ge=0.5, le=600.0)
    """Check-back time of each switching step."""
    min_voltage_pu: float = Field(default=0.95, ge=0.8, le=1.0)
    """Lowest voltage a restoration may leave any section at, by the power-flow estimate."""
    max_replans: int = Field(default=2, ge=0, le=10)


class RevenueConfig(_Model):
    """Revenue protection: each metered transformer's energy against its meters' (docs/maintenance.md)."""

    enabled: bool = True
    window_s: float = Field(default=3600.0, ge=10.0, le=7 * 86400.0)
    """The energy balance is drawn over windows this long."""
    threshold_percent: float = Field(default=5.0, gt=0.0, le=100.0)
    """A gap above this share of the transformer's energy (after losses) is unexplained."""
    technical_loss_percent: float = Field(default=2.0, ge=0.0, le=30.0)
    """Modelled losses of the low-voltage network between the transformer and the meters."""
    persistence: int = Field(default=2, ge=1, le=100)
    """Consecutive windows over the threshold before a notice (one heavy hour is not theft)."""
    baseline_windows: int = Field(default=6, ge=1, le=1000)
    """Windows of each meter's own consumption its recent pattern is compared with."""


class MaintenanceConfig(_Model):
    """Predictive maintenance: transformer health, failure probability, work orders, backup plans
    and customer notices (docs/maintenance.md)."""

    enabled: bool = True
    evaluation_period_s: float = Field(default=3600.0, ge=1.0, le=7 * 86400.0)
    """How often each monitored transformer's health is computed from the history."""
    horizon_days: float = Field(default=60.0, gt=0.0, le=365.0)
    probability_threshold: float = Field(default=0.2, gt=0.0, lt=1.0)
    """A maintenance request (and a work order) when the probability of failure within the
    horizon reaches this, or the DGA status is 3."""
    acceptable_risk: float = Field(default=0.25, gt=0.0, lt=1.0)
    """Maintenance is recommended before the probability of failure reaches this."""
    trend_window_days: float = Field(default=180.0, ge=7.0, le=3650.0)
    baseline_days: float = Field(default=30.0, ge=1.0, le=365.0)
    recent_days: float = Field(default=14.0, ge=1.0, le=365.0)
    load_band_pu: float = Field(default=0.1, gt=0.0, le=1.0)
    trend_threshold_c_per_month: float = Field(default=0.5, ge=0.0, le=10.0)
    min_lead_time_days: float = Field(default=3.0, ge=0.0, le=365.0)
    max_lead_time_days: float = Field(default=90.0, gt=0.0, le=365.0)
    window_hours: int = Field(default=6, ge=1, le=72)
    critical_notice_h: float = Field(default=72.0, ge=0.0, le=720.0)
    customer_notice_h: float = Field(default=48.0, ge=0.0, le=720.0)
    utc_offset_h: float = Field(default=0.0, ge=-12.0, le=14.0)
    """Local time of the site (for the outage window and its label)."""
    forecast_weeks: int = Field(default=4, ge=1, le=52)
    step_time_s: float = Field(default=90.0, gt=0.0, le=3600.0)
    """Switching time per step of a backup plan (select, operate, check-back, confirmation)."""
    work_order_prefix: str = Field(default="PM", pattern=r"^[A-Z][A-Z0-9]{0,7}$")
    crew: str = Field(default="transformer specialists", min_length=1, max_length=120)
    revenue: RevenueConfig = RevenueConfig()


class ControlConfig(_Model):
    """The local control socket (`stima` CLI) and who may do what through it.

    Roles, each including the ones before it: viewer (read status, points, events, history),
    operator (switch: breaker select/operate/cancel, agent requests), engineer (settings).
    A peer's role comes from its unix groups in the system's group database; root, and the
    daemon's own user, are engineers. The defaults are safe: members of the socket's group
    may only read until an administrator creates the operator and engineer groups and puts
    people in them; a user in none of the groups gets nothing.
    """

    socket_group: str = "stima"
    viewer_group: str = "stima"
    operator_group: str = "stima-operator"
    engineer_group: str = "stima-engineer"


class HistoryConfig(_Model):
    """Downsampled point history in the state database (min/max/mean/last per interval)."""

    enabled: bool = True
    interval_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    """10 s at least; shorter only in a site with a [simulation] section (tests, HIL)."""
    retention_days: float = Field(default=30.0, ge=1.0, le=3650.0)


class RecordsConfig(_Model):
    """Disturbance records (COMTRADE) at every protection trip, and the status changes logged for
    the sequence-of-events export (docs/commissioning.md)."""

    enabled: bool = True
    directory: Path | None = None
    """Where the records are kept; default `<state_dir>/records`."""
    format: Literal["binary", "ascii", "float32"] = "binary"
    pre_fault_s: float = Field(default=2.0, ge=0.0, le=60.0)
    post_fault_s: float = Field(default=3.0, gt=0.0, le=300.0)
    """After the last trip, reclose, lockout, pickup or dropout, record this long (and on while an
    element is picked up, up to max_record_s)."""
    max_record_s: float = Field(default=30.0, gt=0.0, le=600.0)
    max_records: int = Field(default=200, ge=1, le=100_000)
    """Retention: the oldest records go when there are more, or when they take more than max_total_mb."""
    max_total_mb: float = Field(default=256.0, gt=0.0, le=100_000.0)
    log_status_changes: bool = True
    """Log every change of a binary point (breaker positions, indicators) with its source time."""


class HmiConfig(_Model):
    """The local web HMI (docs/hmi.md): off unless the site file turns it on.

    Served by the daemon on a management address; HTTPS with `cert_file` and `key_file`. Users
    and their roles are in `users_file` (made with `stima hmi user add`); there is no default
    user and no default password.
    """

    enabled: bool = False
    address: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    """The management address to bind (an IP address of this machine; default loopback only)."""
    port: int = Field(default=8443, ge=1, le=65535)
    cert_file: Path | None = None
    """PEM certificate (chain) for HTTPS; with `key_file`."""
    key_file: Path | None = None
    users_file: Path = Path("/etc/stima/hmi-users")
    """Users, roles and password hashes (scrypt); relative paths are from the site file's folder."""
    insecure_http: bool = False
    """Serve plain HTTP on a non-loopback address (passwords in clear on the network): only
    with this set; a warning at every start."""
    session_idle_s: float = Field(default=900.0, ge=60.0, le=86400.0)
    """A session unused this long ends (the user logs in again)."""
    session_max_s: float = Field(default=8 * 3600.0, ge=300.0, le=7 * 86400.0)
    """A session ends this long after its login, however busy."""
    login_failures: int = Field(default=5, ge=1, le=100)
    """Failed logins allowed per client address, and per user name, within `login_window_s`."""
    login_window_s: float = Field(default=300.0, ge=10.0, le=86400.0)
    max_clients: int = Field(default=32, ge=1, le=1000)
    """Live streams (WebSocket) served at once."""

    @model_validator(mode="after")
    def _check(self) -> HmiConfig:
        import ipaddress

        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("HTTPS needs both cert_file and key_file (or neither, for plain HTTP on loopback)")
        try:
            addr = ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"address must be an IP address of this machine, found {self.address!r}") from None
        if self.enabled and self.cert_file is None and not addr.is_loopback and not self.insecure_http:
            raise ValueError(
                f"plain HTTP on {self.address} would send passwords in clear over the network: set "
                "cert_file and key_file (HTTPS), or insecure_http = true on a trusted network"
            )
        if self.session_idle_s > self.session_max_s:
            raise ValueError("session_idle_s must not exceed session_max_s")
        return self

    @property
    def https(self) -> bool:
        return self.cert_file is not None


# --------------------------------------------------------------------------- the site


class SiteConfig(_Model):
    site: SiteIdentity
    uplink: UplinkConfig
    ieds: list[IedConfig] = Field(default_factory=list)
    agents: list[AgentConfig] = Field(default_factory=list)
    meter_groups: list[MeterGroupConfig] = Field(default_factory=list)
    protection: list[ProtectionScheme] = Field(default_factory=list)
    ami: AmiConfig | None = None
    control: ControlConfig = ControlConfig()
    history: HistoryConfig = HistoryConfig()
    flisr: FlisrConfig = FlisrConfig()
    forecast: ForecastConfig = ForecastConfig()
    peak: PeakConfig = PeakConfig()
    coordination: CoordinationConfig = CoordinationConfig()
    demand_response: DemandResponseConfig = DemandResponseConfig()
    records: RecordsConfig = RecordsConfig()
    iec104: Iec104Config = Iec104Config()
    maintenance: MaintenanceConfig = MaintenanceConfig()
    hmi: HmiConfig = HmiConfig()
    simulation: dict[str, Any] = Field(default_factory=dict)
    """Electrical data for the hardware-in-the-loop simulator; validated by `hil`, ignored here."""

    @model_validator(mode="after")
    def _peak_orders_the_substation(self) -> SiteConfig:
        """With `[peak]` on, the substation agent leaves CVR and var support to the peak manager,
        which takes them one at a time and measures each."""
        if self.peak.enabled:
            for agent in self.agents:
                if agent.type == AgentType.SUBSTATION:
                    if agent.attributes.get("peak_actions", "ordered") != "ordered":
                        raise ValueError(
                            f"agents[{agent.id}].attributes.peak_actions: [peak] is enabled, so the "
                            f"substation's actions are ordered by it; remove the key or set 'ordered'"
                        )
                    agent.attributes["peak_actions"] = "ordered"
        return self

    def ied(self, ied_id: str) -> ModbusTcpIed | ModbusRtuIed | Iec61850Ied:
        for ied in self.ieds:
            if ied.id == ied_id:
                return ied
        raise KeyError(ied_id)

    def agent(self, agent_id: str) -> AgentConfig:
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        raise KeyError(agent_id)


def _items(data: Any, key: str) -> list[dict[str, Any]]:
    value = data.get(key) if isinstance(data, dict) else None
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["id"] for i in items if isinstance(i.get("id"), str)]


def _dangling(reference: Any, known: set[str]) -> bool:
    """A reference naming nothing known; one that is not a string is the schema's type error."""
    return isinstance(reference, str) and reference not in known


def reference_problems(data: dict[str, Any]) -> list[ConfigProblem]:
    """Cross-references between sections: unique ids, and every reference names something real.

    Works on the raw document so that these problems are reported together with type errors.
    """
    ieds = _items(data, "ieds")
    agents = _items(data, "agents")
    groups = _items(data, "meter_groups")
    points = [p for i in ieds for p in _items(i, "points")]
    out = _duplicate_ids(ieds, points, agents, groups)
    known_points = {p["id"] for p in points if isinstance(p.get("id"), str)}
    known_agents = set(_ids(agents)) | set(_ids(groups))
    out += _agent_references(agents, known_points, known_agents)
    for n, group in enumerate(groups):
        xfmr = group.get("connected_transformer")
        if _dangling(xfmr, known_agents):
            out.append(
                ConfigProblem(
                    f"meter_groups[{n}:{group.get('id', '?')}].connected_transformer", "is not an agent id", xfmr
                )
            )
    out += _demand_response_problems(data, groups)
    for n, scheme in enumerate(_items(data, "protection")):
        breaker = scheme.get("breaker")
        if _dangling(breaker, known_agents):
            out.append(ConfigProblem(f"protection[{n}].breaker", "is not an agent id", breaker))
    # a rule whose target is not a string is the schema's type error; the layout checks skip it
    out += feeder_layout_problems(
        [
            {**a, "connection_rules": [r for r in _items(a, "connection_rules") if isinstance(r.get("target_id"), str)]}
            for a in agents
        ]
    )
    out += _serial_line_problems(ieds)
    return out


def _duplicate_ids(
    ieds: list[dict[str, Any]], points: list[dict[str, Any]], agents: list[dict[str, Any]], groups: list[dict[str, Any]]
) -> list[ConfigProblem]:
    out = [ConfigProblem("ieds", "IED id is used more than once", dup) for dup in _dupes(_ids(ieds))]
    out += [
        ConfigProblem("ieds[].points", "point id is used more than once", dup)
        for dup in _dupes([p["id"] for p in points if isinstance(p.get("id"), str)])
    ]
    out += [
        ConfigProblem("agents", "agent id is used more than once", dup) for dup in _dupes(_ids(agents) + _ids(groups))
    ]
    return out


def _agent_references(
    agents: list[dict[str, Any]], known_points: set[str], known_agents: set[str]
) -> list[ConfigProblem]:
    """Each agent's points are IED points, and its connection rules name agents."""
    out: list[ConfigProblem] = []
    for n, agent in enumerate(agents):
        where = f"agents[{n}:{agent.get('id', '?')}]"
        agent_points = agent.get("points")
        if isinstance(agent_points, dict):
            for name, pid in agent_points.items():
                if _dangling(pid, known_points):
                    out.append(ConfigProblem(f"{where}.points.{name}", "is not a point of any IED", pid))
        for k, rule in enumerate(_items(agent, "connection_rules")):
            target = rule.get("target_id")
            if _dangling(target, known_agents):
                out.append(ConfigProblem(f"{where}.connection_rules[{k}].target_id", "is not an agent id", target))
    return out


def _demand_response_problems(data: dict[str, Any], groups: list[dict[str, Any]]) -> list[ConfigProblem]:
    """Programs named once; groups enrolled in programs that exist, and never a critical group."""
    dr = data.get("demand_response")
    programs = _ids(_items(dr, "programs")) if isinstance(dr, dict) else []
    out = [
        ConfigProblem("demand_response.programs", "program id is used more than once", dup) for dup in _dupes(programs)
    ]
    for n, group in enumerate(groups):
        where = f"meter_groups[{n}:{group.get('id', '?')}]"
        enrolled = group.get("dr_programs")
        for k, program in enumerate(enrolled if isinstance(enrolled, list) else []):
            if isinstance(program, str) and program not in programs:
                out.append(
                    ConfigProblem(f"{where}.dr_programs[{k}]", "is not a [[demand_response.programs]] id", program)
                )
        if group.get("critical") is True and enrolled:
            out.append(
                ConfigProblem(
                    f"{where}.dr_programs",
                    "a critical group is never curtailed: it cannot be enrolled in demand response",
                    enrolled,
                )
            )
    return out


def _serial_line_problems(ieds: list[dict[str, Any]]) -> list[ConfigProblem]:
    """Modbus RTU IEDs on one serial port share its baud rate, parity and stop bits."""
    out: list[ConfigProblem] = []
    rtu: dict[str, dict[str, Any]] = {}
    for n, ied in enumerate(ieds):
        if ied.get("protocol") != "modbus_rtu" or not isinstance(ied.get("serial_port"), str):
            continue
        first = rtu.setdefault(ied["serial_port"], ied)
        line = [(x.get("baudrate", 19200), x.get("parity", "E"), x.get("stopbits", 1)) for x in (first, ied)]
        if first is not ied and line[0] != line[1]:
            out.append(
                ConfigProblem(
                    f"ieds[{n}:{ied.get('id', '?')}]",
                    f"shares serial line {ied['serial_port']} with {first.get('id')} "
                    "but its baudrate/parity/stopbits differ",
                )
            )
    return out


_TAP_TYPES = ("supply", "depends_on", "route")
_INJECTING = ("renewable_energy", "capacitor_bank")


def _attributes(agent: dict[str, Any]) -> dict[str, Any]:
    attrs = agent.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Layout:
    """The site's agents as the layout checks read them (raw dicts, before validation)."""

    def __init__(self, agents: list[dict[str, Any]]) -> None:
        self.by_id = {a["id"]: a for a in agents if isinstance(a.get("id"), str)}
        self.kind = {i: a.get("type") for i, a in self.by_id.items()}
        self.where_of = {
            a["id"]: f"agents[{n}:{a['id']}]" for n, a in enumerate(agents) if isinstance(a.get("id"), str)
        }
        self.out: list[ConfigProblem] = []

    def is_line(self, agent_id: Any) -> bool:
        return self.kind.get(agent_id) == "power_line"

    def problem(self, path: str, message: str, found: Any = None) -> None:
        self.out.append(ConfigProblem(path, message, found))

    def ties(self) -> set[str]:
        """Circuit breakers with route rules (or an external source), each checked."""
        ties: set[str] = set()
        for agent_id, agent in self.by_id.items():
            if self.kind[agent_id] == "circuit_breaker" and self._tie(agent_id, agent):
                ties.add(agent_id)
        return ties

    def _tie(self, agent_id: str, agent: dict[str, Any]) -> bool:
        where = self.where_of[agent_id]
        attrs = _attributes(agent)
        routes = [(k, r) for k, r in enumerate(_items(agent, "connection_rules")) if r.get("canonical_type") == "route"]
        external = attrs.get("external_source")
        if not routes and external is None:
            for key in ("allow_parallel", "normally_open"):
                if attrs.get(key) is True:
                    self.problem(
                        f"{where}.attributes.{key}",
                        "is for a tie: a switching device with route rules "
                        "to two different power lines, or to one line and an external_source",
                        True,
                    )
            return False
        targets = [r.get("target_id") for _, r in routes]
        for k, r in routes:
            if r.get("target_id") in self.by_id and not self.is_line(r.get("target_id")):
                self.problem(
                    f"{where}.connection_rules[{k}].target_id",
                    "a tie's route rule must name a power_line",
                    r.get("target_id"),
                )
        lines = [t for t in targets if self.is_line(t)]
        if external is not None:
            if len(routes) != 1:
                self.problem(
                    f"{where}.connection_rules",
                    f"a tie to external_source {external!r} needs exactly one route rule, to the local power line",
                    targets,
                )
        elif len(routes) != 2 or (len(lines) == 2 and lines[0] == lines[1]):
            self.problem(
                f"{where}.connection_rules",
                "a tie's route rules must name two different power lines "
                "(or one line, with attributes.external_source for a neighbour's feeder)",
                targets,
            )
        return True

    def taps(self, ties: set[str]) -> dict[tuple[str, str], list[tuple[str, float | None]]]:
        """(element, line) → [(rule path, position or None)], each position checked."""
        taps: dict[tuple[str, str], list[tuple[str, float | None]]] = {}
        for agent_id, agent in self.by_id.items():
            for k, rule in enumerate(_items(agent, "connection_rules")):
                self._tap(agent_id, f"{self.where_of[agent_id]}.connection_rules[{k}]", rule, ties, taps)
        return taps

    def _on_line(self, agent_id: str, target: Any, ctype: Any) -> tuple[str | None, str | None]:
        """(line, element) when the rule taps an element on a power line."""
        if ctype == "supply" and self.is_line(agent_id):
            return agent_id, target
        if ctype in ("depends_on", "route") and self.is_line(target):
            return target, agent_id
        if ctype == "supply" and self.is_line(target) and self.kind.get(agent_id) in _INJECTING:
            return target, agent_id
        return None, None

    def _tap(
        self,
        agent_id: str,
        path: str,
        rule: dict[str, Any],
        ties: set[str],
        taps: dict[tuple[str, str], list[tuple[str, float | None]]],
    ) -> None:
        target = rule.get("target_id")
        ctype = rule.get("canonical_type")
        raw = rule.get("position_m")
        if target not in self.by_id:
            return
        line, element = self._on_line(agent_id, target, ctype)
        if raw is None:
            if line is not None and element is not None and (ctype != "route" or element in ties):
                taps.setdefault((element, line), []).append((path, None))
            return
        if ctype not in _TAP_TYPES:
            self.problem(
                f"{path}.position_m",
                "is only for supply, depends_on and route rules (where an element is tapped on a power line)",
                raw,
            )
            return
        if ctype == "route" and self.is_line(agent_id) and self.is_line(target):
            self.problem(
                f"{path}.position_m",
                "a route rule between two power lines has no position: to tie "
                "two lines mid-way, use a tie switch (a circuit_breaker with route rules to both lines)",
                raw,
            )
            return
        if line is None or element is None:
            self.problem(
                f"{path}.position_m",
                "is measured along a power line: the other end of the rule must be "
                f"a power_line ({agent_id} → {target})",
                raw,
            )
            return
        position = _number(raw)
        length = _number(_attributes(self.by_id[line]).get("length", 5000.0))
        if position is not None and length is not None and position > length:  # < 0: a type error
            self.problem(f"{path}.position_m", f"must be within 0..{length:g} m, the length of {line}", raw)
        taps.setdefault((element, line), []).append((path, position))

    def series(self, ties: set[str], taps: dict[tuple[str, str], list[tuple[str, float | None]]]) -> None:
        """One position per tap; every element on a line carrying in-series devices says where it is."""
        in_series: dict[str, list[str]] = {}
        for (element, line), found in taps.items():
            given = {p for _, p in found if p is not None}
            if len(given) > 1:
                self.problem(
                    found[0][0] + ".position_m",
                    f"{element} is tapped on {line} at different positions by its rules: {sorted(given)}",
                )
            if (
                self.kind.get(element) == "circuit_breaker"
                and element not in ties
                and given
                and _attributes(self.by_id[element]).get("normally_open") is not True
            ):
                in_series.setdefault(line, []).append(element)
        for (element, line), found in taps.items():
            devices = in_series.get(line)
            if not devices or element in ties or any(p is not None for _, p in found):
                continue
            self.problem(
                found[0][0] + ".position_m",
                f"{element} is tapped on {line}, which carries in-series "
                f"switching devices ({', '.join(sorted(devices))}): give where it is tapped (metres "
                f"from the sending end of {line})",
            )


def feeder_layout_problems(agents: list[dict[str, Any]]) -> list[ConfigProblem]:
    """Positions along lines, in-series switching devices and ties (the switching-devices contract).

    A rule's `position_m` is measured along the power line at one end of it; a switching device
    tapped on a line at a position (not a tie, not normally open) is in series and splits the
    line there, so every element tapped on that line must then say where it is.
    """
    layout = _Layout(agents)
    ties = layout.ties()
    layout.series(ties, layout.taps(ties))
    return layout.out


def _dupes(items: list[str]) -> list[str]:
    seen: set[str] = set()
    dupes: list[str] = []
    for item in items:
        if item in seen and item not in dupes:
            dupes.append(item)
        seen.add(item)
    return dupes


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str
    message: str
    found: Any = None

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.found is None:
            return f"{where}: {self.message}"
        return f"{where}: {self.message} (found {self.found!r})"


class ConfigError(Exception):
    """The site file cannot be used; `problems` lists every reason."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")

    def __iter__(self) -> Iterator[ConfigProblem]:
        return iter(self.problems)


def _path_of(loc: tuple[Any, ...], data: Any) -> tuple[str, Any]:
    """Turn a pydantic location into a readable key path, naming list items by their id."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("id"), str):
                    label = f"[{item}:{node['id']}]"
            else:
                node = None
            parts.append(label)
        else:
            key = str(item)
            if isinstance(node, dict) and key in node:
                node = node[key]
                parts.append(("." if parts else "") + key)
            elif key in ("modbus_tcp", "modbus_rtu", "iec61850") or key.startswith("function-"):
                continue  # discriminator branch names, not keys of the file
            else:
                node = None
                parts.append(("." if parts else "") + key)
    return "".join(parts), node


def validate(data: dict[str, Any], source: str = "<site>") -> SiteConfig:
    """Validate parsed TOML; raise ConfigError listing every problem."""
    site, problems = validate_document(data, source)
    if problems:
        raise ConfigError(source, problems)
    return site


def validate_document(data: dict[str, Any], source: str = "<site>") -> tuple[SiteConfig, list[ConfigProblem]]:
    """The configuration and the problems found in the document beyond its schema.

    Raises ConfigError (schema and reference problems together) when the document does not fit
    the schema; otherwise returns the problems still found, so a caller with more checks
    (`gateway.site.load_site`) reports them all at once.
    """
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", "a site file is a table of sections", type(data).__name__)])
    too_deep = nesting_problem(data)
    if too_deep is not None:
        raise ConfigError(source, [too_deep])
    try:
        site = SiteConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            path, _ = _path_of(tuple(err["loc"]), data)
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            found = err.get("input")
            if err["type"] == "missing" or isinstance(found, dict | list):
                found = None
            problems.append(ConfigProblem(path=path, message=msg, found=found))
        problems += reference_problems(data)
        raise ConfigError(source, problems) from None
    problems = reference_problems(data)
    if site.history.interval_s < 10.0 and not site.simulation:
        problems.append(
            ConfigProblem(
                "history.interval_s",
                "must be ≥ 10 s (shorter only in a site with a [simulation] section)",
                site.history.interval_s,
            )
        )
    known_points = {p.id for ied in site.ieds for p in ied.points}
    for n, scheme in enumerate(site.protection):
        for pid in scheme.referenced_points():
            if pid not in known_points:
                problems.append(
                    ConfigProblem(f"protection[{n}:{scheme.breaker}]", "reads or writes a point that no IED has", pid)
                )
    return site, problems


def load(path: str | Path) -> SiteConfig:
    return validate(read_document(path), str(path))


def read_document(path: str | Path) -> dict[str, Any]:
    """The site file at `path` as parsed TOML, or ConfigError saying why it cannot be read."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read the file: {exc.strerror}")]) from None
    return parse_document(raw, str(path))


def loads(raw: bytes, source: str = "<site>") -> SiteConfig:
    """A site file's bytes → the validated configuration, or ConfigError naming every problem."""
    return validate(parse_document(raw, source), source)


def parse_document(raw: bytes, source: str = "<site>") -> dict[str, Any]:
    """A site file's bytes as parsed TOML, or ConfigError saying why they are not TOML."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not UTF-8 text: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [ConfigProblem("", f"not valid TOML: {exc}")]) from None
    except RecursionError:
        raise ConfigError(
            source,
            [
                ConfigProblem(
                    "", f"arrays or tables nested too deeply to read (a site file needs at most {MAX_NESTING} levels)"
                )
            ],
        ) from None
    return data


MAX_NESTING = 32
"""Deepest nesting of tables and arrays a site file may have; the real schema needs fewer than 8."""


def nesting_problem(data: Any) -> ConfigProblem | None:
    """The first value nested deeper than MAX_NESTING, found without recursion (a crafted file
    must get an answer, not a crash)."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_NESTING:
            return ConfigProblem(where, f"nested more than {MAX_NESTING} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}[{n}]") for n, v in enumerate(node))
    return None
