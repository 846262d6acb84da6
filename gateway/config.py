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
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gateway.agents.schema import AGENT_ATTRIBUTE_MODELS, AgentType
from gateway.protection.settings import ProtectionScheme

_ID = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- identity


class SiteIdentity(_Model):
    region: _ID
    substation_id: _ID
    name: str = ""
    state_dir: Path = Path("/var/lib/stima")
    runtime_dir: Path = Path("/run/stima")
    require_native_protection: bool = False
    """Refuse to run protection on the Python reference when the C core is missing."""


# --------------------------------------------------------------------------- IED points


class RegisterFunction(enum.Enum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"


class DataType(enum.Enum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    BOOL = "bool"

    @property
    def registers(self) -> int:
        return 2 if self in (DataType.INT32, DataType.UINT32, DataType.FLOAT32) else 1


class WordOrder(enum.Enum):
    BIG = "big"
    """Most significant word first (the Modbus convention, 'ABCD')."""
    LITTLE = "little"
    """Least significant word first ('CDAB')."""


class PointKindName(enum.Enum):
    ANALOG = "analog"
    BINARY = "binary"
    COUNTER = "counter"


class ModbusPoint(_Model):
    id: _ID
    address: int = Field(ge=0, le=65535)
    function: RegisterFunction = RegisterFunction.HOLDING
    type: DataType = DataType.UINT16
    word_order: WordOrder = WordOrder.BIG
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    deadband: float = Field(default=0.0, ge=0.0)
    valid_range: tuple[float, float] | None = None
    """Engineering values outside [min, max] are marked invalid (out of range)."""
    kind: PointKindName | None = None
    """Defaults to binary for coils and discrete inputs, analog otherwise."""
    writable: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModbusPoint:
        bit = self.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE)
        if bit and self.type not in (DataType.BOOL, DataType.UINT16):
            raise ValueError(f"a {self.function.value} point holds one bit: type must be 'bool'")
        if not bit and self.type is DataType.BOOL:
            raise ValueError("type 'bool' is only for coil and discrete points")
        if self.writable and self.function not in (RegisterFunction.COIL, RegisterFunction.HOLDING):
            raise ValueError("only coil and holding points can be writable")
        if self.valid_range is not None and self.valid_range[0] > self.valid_range[1]:
            raise ValueError("valid_range must be [min, max] with min <= max")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + self.type.registers - 1 > 65535:
            raise ValueError("point runs past register 65535")
        return self

    @property
    def point_kind(self) -> PointKindName:
        if self.kind is not None:
            return self.kind
        if self.function in (RegisterFunction.COIL, RegisterFunction.DISCRETE):
            return PointKindName.BINARY
        return PointKindName.ANALOG


class _IedCommon(_Model):
    id: _ID
    description: str = ""
    poll_period_ms: int = Field(default=1000, ge=5, le=3_600_000)
    timeout_ms: int = Field(default=1000, ge=10, le=60_000)
    retries: int = Field(default=2, ge=0, le=10)
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)
    enabled: bool = True


class ModbusTcpIed(_IedCommon):
    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    max_block_registers: int = Field(default=125, ge=1, le=125)
    max_block_bits: int = Field(default=2000, ge=1, le=2000)
    gap_tolerance: int = Field(default=8, ge=0, le=124)
    """Unused registers a block read may span to join two neighbouring points."""
    command_link: bool = True
    """Open a second connection for writes, so a trip never waits behind a read in flight."""
    points: list[ModbusPoint] = Field(default_factory=list)


class ModbusRtuIed(_IedCommon):
    protocol: Literal["modbus_rtu"]
    serial_port: str
    baudrate: int = Field(default=19200, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=1, le=247)
    inter_request_delay_ms: float = Field(default=5.0, ge=0, le=10_000)
    max_block_registers: int = Field(default=125, ge=1, le=125)
    max_block_bits: int = Field(default=2000, ge=1, le=2000)
    gap_tolerance: int = Field(default=8, ge=0, le=124)
    points: list[ModbusPoint] = Field(default_factory=list)


class Iec61850Fc(enum.Enum):
    ST = "ST"
    MX = "MX"
    CO = "CO"
    SP = "SP"
    CF = "CF"


class Iec61850Point(_Model):
    id: _ID
    reference: str = Field(min_length=3, pattern=r"^[A-Za-z0-9_]+/[A-Za-z0-9_.$]+$")
    """Object reference, e.g. 'BAY045LD0/MMXU1.A.phsA.cVal.mag.f'."""
    fc: Iec61850Fc = Iec61850Fc.MX
    kind: PointKindName = PointKindName.ANALOG
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0
    deadband: float = Field(default=0.0, ge=0.0)
    valid_range: tuple[float, float] | None = None
    control: bool = False
    """A controllable object (e.g. CSWI1.Pos), operated with select-before-operate."""

    @property
    def point_kind(self) -> PointKindName:
        return self.kind


class Iec61850Ied(_IedCommon):
    protocol: Literal["iec61850"]
    host: str
    port: int = Field(default=102, ge=1, le=65535)
    report_control_blocks: list[str] = Field(default_factory=list)
    """RCB references to enable; points in their data sets arrive by report, not by polling."""
    points: list[Iec61850Point] = Field(default_factory=list)


IedConfig = Annotated[ModbusTcpIed | ModbusRtuIed | Iec61850Ied, Field(discriminator="protocol")]


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


class AgentConfig(_Model):
    id: _ID
    type: AgentType
    attributes: dict[str, Any] = Field(default_factory=dict)
    points: dict[str, _ID] = Field(default_factory=dict)
    """Measurement or command name of the agent → point id in the process image."""
    connection_rules: list[ConnectionRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_attributes(self) -> AgentConfig:
        model = AGENT_ATTRIBUTE_MODELS.get(self.type)
        if model is not None:
            model.model_validate(self.attributes)
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


# --------------------------------------------------------------------------- uplink


COMMAND_NAMES = ("breaker/select", "breaker/operate", "breaker/cancel", "agent/request")
"""Commands a SCADA host may send on `<base>/cmd/<command>` (gateway/commands.py)."""


class CommandsConfig(_Model):
    """Remote control by SCADA over the uplink: off unless the site file turns it on."""

    enabled: bool = False
    key_file: Path | None = None
    """Shared HMAC-SHA256 secret (at least 32 bytes, not readable by group or others)."""
    max_age_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """A command's `time` may differ from the gateway's clock by at most this (age or skew)."""
    select_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    allowed: list[Literal["breaker/select", "breaker/operate", "breaker/cancel", "agent/request"]] | None = None
    """Command names accepted; absent means all of COMMAND_NAMES."""

    @model_validator(mode="after")
    def _check_key(self) -> CommandsConfig:
        if self.enabled and self.key_file is None:
            raise ValueError("enabled commands need key_file (the shared HMAC-SHA256 secret)")
        return self


class UplinkConfig(_Model):
    broker_host: str
    broker_port: int = Field(default=8883, ge=1, le=65535)
    transport: Literal["tls", "tcp"] = "tls"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: _ID | None = None
    topic_prefix: str = Field(default="stima", pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    qos: Literal[0, 1] = 1
    max_inflight: int = Field(default=100, ge=1, le=65535)
    integrity_period_s: float = Field(default=60.0, ge=1.0, le=86400)
    max_batch: int = Field(default=500, ge=1, le=10_000)
    """Point changes gathered into one telemetry message at most."""
    batch_window_ms: float = Field(default=5.0, ge=0.0, le=10_000)
    spool_max_messages: int = Field(default=1_000_000, ge=1000)
    commands: CommandsConfig = CommandsConfig()

    @model_validator(mode="after")
    def _check_tls(self) -> UplinkConfig:
        if self.transport == "tls":
            missing = [n for n in ("ca_file", "cert_file", "key_file") if getattr(self, n) is None]
            if missing:
                raise ValueError(
                    "transport 'tls' needs ca_file, cert_file and key_file "
                    f"(missing: {', '.join(missing)}); set transport = 'tcp' only on a trusted network"
                )
        return self


class AmiConfig(_Model):
    """The local broker where data concentrators publish smart-meter readings."""

    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=1883, ge=1, le=65535)
    topic: str = "ami/+/readings"


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
    simulation: dict[str, Any] = Field(default_factory=dict)
    """Electrical data for the hardware-in-the-loop simulator; validated by `hil`, ignored here."""

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


def reference_problems(data: dict[str, Any]) -> list[ConfigProblem]:
    """Cross-references between sections: unique ids, and every reference names something real.

    Works on the raw document so that these problems are reported together with type errors.
    """
    out: list[ConfigProblem] = []
    ieds = _items(data, "ieds")
    agents = _items(data, "agents")
    groups = _items(data, "meter_groups")
    for dup in _dupes(_ids(ieds)):
        out.append(ConfigProblem("ieds", "IED id is used more than once", dup))
    points = [(n, i, p) for n, i in enumerate(ieds) for p in _items(i, "points")]
    for dup in _dupes([p["id"] for _, _, p in points if isinstance(p.get("id"), str)]):
        out.append(ConfigProblem("ieds[].points", "point id is used more than once", dup))
    for dup in _dupes(_ids(agents) + _ids(groups)):
        out.append(ConfigProblem("agents", "agent id is used more than once", dup))
    known_points = {p.get("id") for _, _, p in points}
    known_agents = set(_ids(agents)) | set(_ids(groups))
    for n, agent in enumerate(agents):
        where = f"agents[{n}:{agent.get('id', '?')}]"
        agent_points = agent.get("points")
        if isinstance(agent_points, dict):
            for name, pid in agent_points.items():
                if pid not in known_points:
                    out.append(ConfigProblem(f"{where}.points.{name}", "is not a point of any IED", pid))
        for k, rule in enumerate(_items(agent, "connection_rules")):
            target = rule.get("target_id")
            if target is not None and target not in known_agents:
                out.append(ConfigProblem(f"{where}.connection_rules[{k}].target_id", "is not an agent id", target))
    for n, group in enumerate(groups):
        xfmr = group.get("connected_transformer")
        if xfmr is not None and xfmr not in known_agents:
            out.append(ConfigProblem(f"meter_groups[{n}:{group.get('id', '?')}].connected_transformer",
                                     "is not an agent id", xfmr))
    for n, scheme in enumerate(_items(data, "protection")):
        breaker = scheme.get("breaker")
        if breaker is not None and breaker not in known_agents:
            out.append(ConfigProblem(f"protection[{n}].breaker", "is not an agent id", breaker))
    rtu: dict[str, dict[str, Any]] = {}
    for n, ied in enumerate(ieds):
        if ied.get("protocol") != "modbus_rtu" or not isinstance(ied.get("serial_port"), str):
            continue
        first = rtu.setdefault(ied["serial_port"], ied)
        line = [(x.get("baudrate", 19200), x.get("parity", "E"), x.get("stopbits", 1)) for x in (first, ied)]
        if first is not ied and line[0] != line[1]:
            out.append(ConfigProblem(f"ieds[{n}:{ied.get('id', '?')}]",
                                     f"shares serial line {ied['serial_port']} with {first.get('id')} "
                                     "but its baudrate/parity/stopbits differ"))
    return out


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
        problems.append(ConfigProblem("history.interval_s", "must be ≥ 10 s (shorter only in a site with a "
                                      "[simulation] section)", site.history.interval_s))
    known_points = {p.id for ied in site.ieds for p in ied.points}
    for n, scheme in enumerate(site.protection):
        for pid in scheme.referenced_points():
            if pid not in known_points:
                problems.append(ConfigProblem(f"protection[{n}:{scheme.breaker}]",
                                              "reads or writes a point that no IED has", pid))
    if problems:
        raise ConfigError(source, problems)
    return site


def load(path: str | Path) -> SiteConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read the file: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"not UTF-8 text: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"not valid TOML: {exc}")]) from None
    return validate(data, str(path))

