"""The site file's sections an adapter reads: its IED (by `protocol`), the uplink, AMI, IEC 104.

These are the wire schemas of the adapters: the settings of one link, validated where the site
file is read (`gateway.config` builds `SiteConfig` from them) and handed to the adapter as they
are. An IED section is picked by its `protocol` (`IedConfig`, a discriminated union), so an
adapter's own settings travel in one typed object. Nothing here imports the rest of the project.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
"""An id in the site file: a letter or digit, then letters, digits, `_`, `.`, `-`; at most 64."""


class SettingsModel(BaseModel):
    """A section of the site file: unknown keys refused, frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- identity


class SiteIdentity(SettingsModel):
    region: Identifier
    substation_id: Identifier
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


class ModbusPoint(SettingsModel):
    id: Identifier
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


class _IedCommon(SettingsModel):
    id: Identifier
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


class Iec61850Point(SettingsModel):
    id: Identifier
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


# --------------------------------------------------------------------------- uplink


class CommandsConfig(SettingsModel):
    """Remote control by SCADA over the uplink: off unless the site file turns it on."""

    enabled: bool = False
    scheme: Literal["ed25519", "hmac"] = "ed25519"
    """`ed25519`: every SCADA host or operator signs with its own key; the gateway holds only their
    public keys, each with a role (`stima keys …`). `hmac`: a secret shared with SCADA, a
    compatibility mode that must be chosen explicitly."""
    key_file: Path | None = None
    """The `hmac` scheme's shared secret (at least 32 bytes, not readable by group or others)."""
    max_age_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """A command's `time` may differ from the gateway's clock by at most this (age or skew)."""
    select_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    allowed: (
        list[
            Literal[
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
            ]
        ]
        | None
    ) = None
    """Command names accepted; absent means all of COMMAND_NAMES."""
    role: Literal["operator", "engineer"] = "operator"
    """The role of an `hmac` command (an Ed25519 command carries its key's role)."""

    @model_validator(mode="after")
    def _check_key(self) -> CommandsConfig:
        if self.scheme == "hmac" and self.enabled and self.key_file is None:
            raise ValueError("scheme 'hmac' needs key_file (the shared HMAC-SHA256 secret)")
        if self.scheme == "ed25519" and self.key_file is not None:
            raise ValueError(
                "key_file is the shared secret of scheme 'hmac', a compatibility mode: set "
                "scheme = 'hmac' to use it, or drop key_file and add each SCADA host's public "
                "key with `stima keys add`"
            )
        return self


class SparkplugConfig(SettingsModel):
    """Sparkplug B 3.0 identities (docs/mqtt.md, Sparkplug B payloads)."""

    group_id: Identifier | None = None
    """Default: the site's region."""
    edge_node_id: Identifier | None = None
    """Default: the substation id."""
    primary_host_id: Identifier | None = None
    """When set, the gateway publishes only while this host application's STATE says online."""


class UplinkConfig(SettingsModel):
    broker_host: str
    broker_port: int = Field(default=8883, ge=1, le=65535)
    transport: Literal["tls", "tcp"] = "tls"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: Identifier | None = None
    topic_prefix: str = Field(default="stima", pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    qos: Literal[0, 1] = 1
    max_inflight: int = Field(default=100, ge=1, le=65535)
    integrity_period_s: float = Field(default=60.0, ge=1.0, le=86400)
    max_batch: int = Field(default=500, ge=1, le=10_000)
    """Point changes gathered into one telemetry message at most."""
    batch_window_ms: float = Field(default=5.0, ge=0.0, le=10_000)
    telemetry_format: Literal["samples", "columns"] = "samples"
    """`samples`: one map per sample; `columns`: point indices of the birth and arrays of values
    (docs/mqtt.md), several times cheaper per value for the gateway and the host."""
    spool_max_messages: int = Field(default=1_000_000, ge=1000)
    payload: Literal["msgpack", "sparkplug_b"] = "msgpack"
    """msgpack in Stima's namespace (default), or Sparkplug B 3.0 protobuf in spBv1.0/…"""
    sparkplug: SparkplugConfig = SparkplugConfig()
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
        if self.payload == "sparkplug_b" and self.telemetry_format == "columns":
            raise ValueError(
                "telemetry_format 'columns' is Stima's msgpack form; with payload 'sparkplug_b' "
                "telemetry travels as Sparkplug metrics: leave telemetry_format at 'samples'"
            )
        return self


# --------------------------------------------------------------------------- AMI


class AmiConfig(SettingsModel):
    """The local broker where data concentrators publish smart-meter readings."""

    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=1883, ge=1, le=65535)
    topic: str = "ami/+/readings"
    dr_event_topic: str = "ami/+/dr/events"
    """Demand-response events to the data concentrators (`+`: the concentrator id)."""
    dr_confirm_topic: str = "ami/+/dr/confirmations"
    """The concentrators' confirmations, per meter, of the events they received."""
    weather_topic: str | None = None
    """The weather service's forecast for this substation (irradiance and temperature, JSON,
    retained; docs/ami.md#weather), e.g. `weather/SUB-007/forecast`: solar output is planned on it."""

    @field_validator("weather_topic")
    @classmethod
    def _no_wildcards(cls, topic: str | None) -> str | None:
        if topic is not None and (not topic or "+" in topic or "#" in topic):
            raise ValueError(f"expected one topic without wildcards, found {topic!r}")
        return topic


# --------------------------------------------------------------------------- IEC 104 outstation


class Iec104PointOverride(SettingsModel):
    """One monitored point's entry in the IEC 104 map, where the generated one will not do."""

    id: Identifier
    """The point id (as in `ieds[].points[].id`)."""
    ioa: int | None = Field(default=None, ge=1, le=16_777_215)
    type: (
        Literal["M_ME_NC_1", "M_ME_TF_1", "M_SP_NA_1", "M_SP_TB_1", "M_DP_NA_1", "M_DP_TB_1", "M_IT_NA_1", "M_IT_TB_1"]
        | None
    ) = None
    deadband: float | None = Field(default=None, ge=0.0)
    """Analog dead-band for spontaneous transmission (engineering units); default the point's own."""
    exclude: bool = False


class Iec104CommandOverride(SettingsModel):
    target: Identifier
    """A switching device (double command) or `<agent>.<set-point name>` (set-point command)."""
    ioa: int = Field(ge=1, le=16_777_215)


class Iec104RedundancyGroup(SettingsModel):
    name: Identifier
    masters: list[str] = Field(min_length=1, max_length=8)
    """IP addresses of the masters of this group: one is active (STARTDT) at a time, the others
    stand by and take over the group's event queue."""


class Iec104Tls(SettingsModel):
    """TLS per IEC 62351-3: the outstation's certificate and the CA that signed the masters'."""

    ca_file: Path
    cert_file: Path
    key_file: Path


class Iec104Config(SettingsModel):
    """The IEC 60870-5-104 outstation (controlled station) for utility SCADA masters (docs/iec104.md)."""

    enabled: bool = False
    bind: str = "0.0.0.0"
    port: int = Field(default=2404, ge=1, le=65535)
    common_address: int = Field(default=1, ge=1, le=65534)
    masters: list[str] = Field(default_factory=list)
    """IP addresses allowed to connect; empty: any (the network's firewall decides)."""
    max_connections: int = Field(default=2, ge=1, le=8)
    redundancy_groups: list[Iec104RedundancyGroup] = Field(default_factory=list, max_length=2)
    """Empty: every connection is its own group (each master gets every event). Else up to two groups."""
    role: Literal["operator", "engineer"] = "operator"
    """The role of a command from a master (overrides it may make: docs/switching.md)."""
    clock_sync: Literal["accept", "refuse"] = "accept"
    """C_CS_NA_1: confirmed and logged (the gateway's clock stays NTP's), or refused."""
    time_tags: bool = True
    """Generated types carry CP56Time2a (M_ME_TF_1, M_SP_TB_1, M_DP_TB_1, M_IT_TB_1)."""
    monitor_ioa_start: int = Field(default=1001, ge=1, le=16_000_000)
    command_ioa_start: int = Field(default=5001, ge=1, le=16_000_000)
    setpoint_ioa_start: int = Field(default=6001, ge=1, le=16_000_000)
    points: list[Iec104PointOverride] = Field(default_factory=list)
    commands: list[Iec104CommandOverride] = Field(default_factory=list)
    k: int = Field(default=12, ge=1, le=32767)
    w: int = Field(default=8, ge=1, le=32767)
    t0_s: int = Field(default=30, ge=1, le=255)
    t1_s: int = Field(default=15, ge=1, le=255)
    t2_s: int = Field(default=10, ge=1, le=255)
    t3_s: int = Field(default=20, ge=1, le=172_800)
    tls: Iec104Tls | None = None
    command_timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)
    """How long a master's command may wait for the gateway's answer before it is refused."""
    command_max_delay_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    """A time-tagged command (C_DC_TA_1, C_SE_TC_1) whose time tag is further than this from the
    gateway's clock is refused (IEC 60870-5-104 §9: maximum delay in command direction); 0: not checked."""

    @model_validator(mode="after")
    def _check(self) -> Iec104Config:
        if self.w > self.k:
            raise ValueError(
                f"w ({self.w}) must not exceed k ({self.k}): the master acknowledges before "
                "the outstation's window is full (IEC 60870-5-104 recommends w = 2/3 k)"
            )
        if not self.t2_s < self.t1_s:
            raise ValueError(f"t2_s ({self.t2_s}) must be less than t1_s ({self.t1_s})")
        return self
