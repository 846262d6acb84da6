"""`load_site`: the one way a site file becomes a configuration the daemon may run.

`stima config validate`, the daemon's start and a reload all call it, so a file refused by one
is refused by all three with the same words. It runs in two stages:

1. the schema and the references between sections (`gateway.config.validate_document`); a
   document that does not fit the schema stops here, with every problem of the document;
2. once the document fits, what only the whole site can say: points an agent names
   exist with the kind and unit the agent expects and, for commands, are writable; one
   protection scheme per breaker; the command key readable; no two IEDs on one
   address and unit; no two points of an IED on the same registers; no inverted ranges; the
   IEC 60870-5-104 map can be built. These are reported together with the reference problems
   of the first stage.

Each problem names the key (`ConfigProblem.path`), what was expected and what was found; the
`ConfigError` names the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gateway.agents.registry import SPECS
from gateway.agents.schema import AgentType
from gateway.agents.vocabulary import POINT_NAMES
from gateway.config import ConfigError, ConfigProblem, SiteConfig, read_document, validate_document
from gateway.contract.settings import (
    Iec61850Ied,
    Iec61850Point,
    ModbusPoint,
    ModbusRtuIed,
    ModbusTcpIed,
    RegisterFunction,
)


def load_site(path: str | Path) -> SiteConfig:
    """The site file at `path`, validated completely; ConfigError lists every problem found."""
    path = Path(path)
    site, problems = validate_document(read_document(path), str(path))
    problems += site_problems(site, path.parent)
    if problems:
        raise ConfigError(str(path), problems)
    return site


def site_problems(site: SiteConfig, base_dir: Path) -> list[ConfigProblem]:
    """Everything wrong with a schema-valid site (relative file names are under `base_dir`)."""
    return [
        *agent_point_problems(site),
        *protection_problems(site),
        *key_file_problems(site, base_dir),
        *ied_address_problems(site),
        *register_overlap_problems(site),
        *range_problems(site),
        *iec104_problems(site),
    ]


def _where(n: int, item_id: str) -> str:
    return f"[{n}:{item_id}]"


def _writable(point: ModbusPoint | Iec61850Point) -> bool:
    return point.writable if isinstance(point, ModbusPoint) else point.control


def agent_point_problems(site: SiteConfig) -> list[ConfigProblem]:
    """Each agent's point names are ones its type uses, mapped to points of the right kind, unit and direction."""
    points = {p.id: p for ied in site.ieds for p in ied.points}
    out: list[ConfigProblem] = []
    for n, agent in enumerate(site.agents):
        vocabulary = POINT_NAMES[agent.type]
        for name, pid in agent.points.items():
            key = f"agents{_where(n, agent.id)}.points.{name}"
            spec = vocabulary.get(name)
            if spec is None:
                known = ", ".join(sorted(vocabulary)) or "none"
                out.append(
                    ConfigProblem(
                        key,
                        f"is not a point name a {agent.type} agent reads or writes (expected one of: {known})",
                        name,
                    )
                )
                continue
            point = points.get(pid)
            if point is None:
                continue  # named in the references stage: "is not a point of any IED"
            kind = point.point_kind.value
            if kind not in spec.kinds:
                out.append(ConfigProblem(key, f"must name {spec.describe()}: {pid} is {kind}", pid))
            elif point.unit and spec.units and point.unit not in spec.units:
                out.append(ConfigProblem(key, f"must name {spec.describe()}: {pid} is in {point.unit!r}", pid))
            if spec.command and not _writable(point):
                what = "writable = true" if isinstance(point, ModbusPoint) else "control = true"
                out.append(ConfigProblem(key, f"is a command: {pid} must be one the gateway can write ({what})", pid))
    return out


def protection_problems(site: SiteConfig) -> list[ConfigProblem]:
    """One protection scheme per breaker, and each on a circuit breaker agent."""
    out: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    types = {a.id: a.type for a in site.agents}
    for n, scheme in enumerate(site.protection):
        key = f"protection{_where(n, scheme.breaker)}.breaker"
        if scheme.breaker in seen:
            out.append(
                ConfigProblem(
                    key,
                    f"a breaker has one protection scheme: protection[{seen[scheme.breaker]}] already protects it",
                    scheme.breaker,
                )
            )
        seen.setdefault(scheme.breaker, n)
        kind = types.get(scheme.breaker)
        if kind is not None and kind != AgentType.CIRCUIT_BREAKER:
            out.append(ConfigProblem(key, f"must name a circuit_breaker agent, not a {kind}", scheme.breaker))
    return out


def key_file_problems(site: SiteConfig, base_dir: Path) -> list[ConfigProblem]:
    """The shared command secret, when the hmac scheme is on, is readable, long enough and private.

    TLS certificates and keys are read by the uplink, HMI and IEC 104 adapters' own checks at
    start and reload (a site file is often validated before its certificates are installed).
    """
    from gateway.commands import key_path, read_key

    cfg = site.uplink.commands
    secret = key_path(cfg, base_dir)
    if not cfg.enabled or cfg.scheme != "hmac" or secret is None:
        return []
    try:
        read_key(secret)
    except ValueError as exc:
        return [ConfigProblem("uplink.commands.key_file", str(exc), str(cfg.key_file))]
    return []


def ied_address_problems(site: SiteConfig) -> list[ConfigProblem]:
    """No two enabled IEDs answer at the same address (host and port, or serial line) and unit."""
    out: list[ConfigProblem] = []
    first: dict[tuple[object, ...], str] = {}
    for n, ied in enumerate(site.ieds):
        if not ied.enabled:
            continue
        if isinstance(ied, ModbusTcpIed):
            address: tuple[object, ...] = ("tcp", ied.host, ied.port, ied.unit_id)
            shown = f"{ied.host}:{ied.port} unit {ied.unit_id}"
        elif isinstance(ied, ModbusRtuIed):
            address, shown = ("rtu", ied.serial_port, ied.unit_id), f"{ied.serial_port} unit {ied.unit_id}"
        else:
            address, shown = ("iec61850", ied.host, ied.port), f"{ied.host}:{ied.port}"
        other = first.setdefault(address, ied.id)
        if other != ied.id:
            out.append(
                ConfigProblem(
                    f"ieds{_where(n, ied.id)}",
                    f"has the address of IED {other} ({shown}): each IED needs its own address and unit",
                )
            )
    return out


_TABLES = {
    RegisterFunction.HOLDING: "holding registers",
    RegisterFunction.INPUT: "input registers",
    RegisterFunction.COIL: "coils",
    RegisterFunction.DISCRETE: "discrete inputs",
}


def register_overlap_problems(site: SiteConfig) -> list[ConfigProblem]:
    """No two points of a Modbus IED occupy the same register (or bit) of one table."""
    out: list[ConfigProblem] = []
    for n, ied in enumerate(site.ieds):
        if isinstance(ied, Iec61850Ied):
            continue
        spans = sorted(
            (p.function.value, p.address, p.address + p.type.registers - 1, k, p) for k, p in enumerate(ied.points)
        )
        for (fa, _, end_a, _, a), (fb, start_b, _, k, b) in zip(spans, spans[1:], strict=False):
            if fa == fb and start_b <= end_a:
                out.append(
                    ConfigProblem(
                        f"ieds{_where(n, ied.id)}.points{_where(k, b.id)}.address",
                        f"overlaps point {a.id} ({_TABLES[a.function]} {a.address}.."
                        f"{a.address + a.type.registers - 1}): each register belongs to one point",
                        b.address,
                    )
                )
    return out


def _inverted(pairs: Iterable[tuple[str, float | None, float | None]]) -> list[ConfigProblem]:
    return [
        ConfigProblem(key, f"is an inverted range: minimum {low} above maximum {high}", [low, high])
        for key, low, high in pairs
        if low is not None and high is not None and low > high
    ]


_ATTRIBUTE_RANGES: dict[str, list[tuple[str, str]]] = {
    AgentType.TRANSFORMER: [("tap_min", "tap_max")],
    AgentType.RENEWABLE_ENERGY: [("enter_service_v_min_pu", "enter_service_v_max_pu")],
}


def range_problems(site: SiteConfig) -> list[ConfigProblem]:
    """Every [min, max] pair the schema does not order itself is in order."""
    pairs: list[tuple[str, float | None, float | None]] = []
    for n, ied in enumerate(site.ieds):
        points: list[ModbusPoint | Iec61850Point] = list(ied.points)
        for k, p in enumerate(points):
            if p.valid_range is not None:
                pairs.append((f"ieds{_where(n, ied.id)}.points{_where(k, p.id)}.valid_range", *p.valid_range))
    for n, agent in enumerate(site.agents):
        ranges = _ATTRIBUTE_RANGES.get(agent.type, [])
        if not ranges:
            continue
        attrs = SPECS[agent.type].attributes.model_validate(agent.attributes)  # defaults filled
        for low, high in ranges:
            pairs.append((f"agents{_where(n, agent.id)}.attributes.{low}", getattr(attrs, low), getattr(attrs, high)))
    return _inverted(pairs)


def iec104_problems(site: SiteConfig) -> list[ConfigProblem]:
    """The IEC 60870-5-104 point map can be built from the site (when the outstation is enabled)."""
    if not site.iec104.enabled:
        return []
    from gateway.iec104 import MapError, build_map

    try:
        build_map(site)
    except MapError as exc:
        return [ConfigProblem("iec104", str(exc))]
    return []
