"""Simulated DER inverters as SunSpec devices over Modbus TCP, their register image built by pysunspec2.

A real PV or battery inverter is reached through the SunSpec information models: the marker
`SunS` at register 40000, then models one after another, each `ID, L, <L registers>`, ended by
`0xFFFF, 0`. These devices carry

- model 1 (common: manufacturer, model, serial number, device address);
- model 701 (DER AC measurements: W, Var, VA, PF, A, LLV, LNV, Hz, energy, status, throttling);
- model 702 (DER capacity: ratings and the settings derived from them);
- model 704 (DER AC controls: `WMaxLimPct` active-power limit, `WSet` active-power set-point);
- model 713 (DER storage capacity: `WHRtg`, `WHAvail`, `SoC`, `SoH`) on a battery.

These are the IEEE 1547-2018 "DER" models (the 70x family) that SunSpec publishes to replace
the legacy 10x/12x models; storage set-points go through 704's `WSet` (positive: discharge into
the grid, negative: charge), the storage capacity through 713, rather than through the legacy
model 124. pysunspec2 holds the model definitions and does every encoding and decoding
(`sunspec2.device`), so the image is what a SunSpec client expects by construction.

Scale factors are constants of these devices (a real inverter's usually are too: read them once
at commissioning) so that a site file can give the gateway's ordinary Modbus points a fixed
`scale`: `SCALE_FACTORS` lists them, `address()` says where a point is.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sunspec2.device as ss

BASE_ADDRESS = 40000
"""Holding register of the `SunS` marker (the usual base; SunSpec also allows 0 and 50000)."""
SUNS_MARKER = (0x5375, 0x6E53)
END_MODEL = (0xFFFF, 0)
PV_MODELS = (1, 701, 702, 704)
STORAGE_MODELS = (1, 701, 702, 704, 713)
NOMINAL_AC_V = 400.0
"""The inverter's own AC terminals (behind its step-up transformer), line to line."""

SCALE_FACTORS: dict[int, dict[str, int]] = {
    701: {
        "A_SF": 0,
        "V_SF": -1,
        "Hz_SF": -2,
        "W_SF": 2,
        "PF_SF": -3,
        "VA_SF": 2,
        "Var_SF": 2,
        "TotWh_SF": 3,
        "TotVarh_SF": 3,
        "Tmp_SF": 0,
    },
    702: {"W_SF": 2, "PF_SF": -3, "VA_SF": 2, "Var_SF": 2, "V_SF": -1, "A_SF": 0, "S_SF": 0},
    704: {"PF_SF": -3, "WMaxLimPct_SF": -1, "WSet_SF": 0, "WSetPct_SF": -1, "VarSet_SF": 0, "VarSetPct_SF": -1},
    713: {"WH_SF": 3, "Pct_SF": -1},
}
"""Per model, its scale factors: W in 100 W, Var in 100 var, LLV in 0.1 V, WMaxLimPct and SoC in
0.1 %, WSet in W, energy in kWh."""

WRITABLE: frozenset[tuple[int, str]] = frozenset(
    {
        (704, "WMaxLimPctEna"),
        (704, "WMaxLimPct"),
        (704, "WSetEna"),
        (704, "WSetMod"),
        (704, "WSet"),
        (704, "VarSetEna"),
        (704, "VarSet"),
    }
)
"""Points this simulated device acts on when written; other writable points are accepted and kept."""


class SunSpecWriteRefused(ValueError):
    """A write the device refuses (a read-only register, an out-of-range set-point)."""


@dataclass(frozen=True, slots=True)
class DerRatings:
    rated_kw: float
    rated_kva: float
    storage_kwh: float | None = None
    max_charge_kw: float | None = None


def _models(storage: bool) -> tuple[int, ...]:
    return STORAGE_MODELS if storage else PV_MODELS


def _model_length(model_id: int) -> int:
    return len(ss.Model(model_id).get_mb()) // 2


def address(model_id: int, point: str, *, storage: bool = False) -> int:
    """Holding-register address of `point` of `model_id` in a PV (or storage) device's image."""
    at = BASE_ADDRESS + 2
    for mid in _models(storage):
        model = ss.Model(mid)
        if mid == model_id:
            found = model.points.get(point)
            if found is None:
                raise KeyError(f"model {model_id} has no point {point!r}")
            return at + int(found.offset)
        at += len(model.get_mb()) // 2
    raise KeyError(f"model {model_id} is not in this device")


class SunSpecImage:
    """One inverter's SunSpec register image: values in, words out; written words in, set-points out."""

    def __init__(self, ratings: DerRatings, *, unit_id: int, serial: str, model_name: str) -> None:
        self.ratings = ratings
        self.storage = ratings.storage_kwh is not None
        self.device = ss.Device()
        self.models: dict[int, Any] = {}
        for mid in _models(self.storage):
            model = ss.Model(mid)
            model.points["ID"].value = mid
            model.points["L"].value = len(model.get_mb()) // 2 - 2
            for name, sf in SCALE_FACTORS.get(mid, {}).items():
                model.points[name].value = sf
            self.device.add_model(model)
            self.models[mid] = model
        common = self.models[1].points
        common["Mn"].value = "Stima HIL"
        common["Md"].value = model_name[:32]
        common["Vr"].value = "1.0"
        common["SN"].value = serial[:32]
        common["DA"].value = unit_id
        self._set(
            702,
            WMaxRtg=ratings.rated_kw * 1e3,
            VAMaxRtg=ratings.rated_kva * 1e3,
            VarMaxInjRtg=0.44 * ratings.rated_kva * 1e3,
            VarMaxAbsRtg=0.44 * ratings.rated_kva * 1e3,
            VNomRtg=NOMINAL_AC_V,
            VMaxRtg=1.1 * NOMINAL_AC_V,
            VMinRtg=0.88 * NOMINAL_AC_V,
            WMax=ratings.rated_kw * 1e3,
            VAMax=ratings.rated_kva * 1e3,
            VNom=NOMINAL_AC_V,
            AMaxRtg=ratings.rated_kva * 1e3 / (math.sqrt(3) * NOMINAL_AC_V),
        )
        self.models[702].points["NorOpCatRtg"].value = 1  # category B
        if self.storage:
            charge = ratings.max_charge_kw or ratings.rated_kw
            self._set(
                702,
                WChaRteMaxRtg=charge * 1e3,
                WDisChaRteMaxRtg=ratings.rated_kw * 1e3,
                WChaRteMax=charge * 1e3,
                WDisChaRteMax=ratings.rated_kw * 1e3,
            )
            assert ratings.storage_kwh is not None
            self._set(713, WHRtg=ratings.storage_kwh * 1e3, SoH=100.0)
        self.models[701].points["ACType"].value = 3  # three phase, three wire... 1: single, 2: split, 3: three
        # controls as a commissioning engineer leaves them: the limit enabled at 100 %, a battery
        # following its set-point (0 W: idle), reactive power set-point off
        ctl = self.models[704].points
        ctl["WMaxLimPctEna"].value = 1
        self._set(704, WMaxLimPct=100.0)
        ctl["WSetEna"].value = 1 if self.storage else 0
        ctl["WSetMod"].value = 1  # the set-point is in W
        self._set(704, WSet=0.0)
        ctl["VarSetEna"].value = 0
        self.words_cache: list[int] | None = None

    def _set(self, model_id: int, **values: float) -> None:
        points = self.models[model_id].points
        for name, value in values.items():
            points[name].cvalue = value

    def length(self) -> int:
        """Registers from BASE_ADDRESS to the end model inclusive."""
        return 2 + sum(len(m.get_mb()) // 2 for m in self.models.values()) + 2

    # ------------------------------------------------------------------ values → registers

    def update(
        self,
        *,
        p_kw: float,
        q_kvar: float,
        voltage_pu: float,
        frequency_hz: float,
        connected: bool,
        energy_kwh: float,
        limit_pct: float,
        throttled: bool,
        ambient_c: float,
        soc_pct: float | None = None,
    ) -> None:
        """Set the measurements from the model (powers as the grid sees them: + injection)."""
        s_kva = math.hypot(p_kw, q_kvar)
        v_ll = voltage_pu * NOMINAL_AC_V
        current_a = s_kva * 1e3 / (math.sqrt(3) * v_ll) if v_ll > 1.0 else 0.0
        pf = p_kw / s_kva if s_kva > 1e-6 else 1.0
        pts = self.models[701].points
        pts["St"].value = 1 if connected else 0  # ON / OFF
        pts["InvSt"].value = (4 if throttled else 3) if connected and abs(p_kw) > 0.0 else (1 if connected else 0)
        pts["ConnSt"].value = 1 if connected else 0
        self._set(
            701,
            W=p_kw * 1e3,
            Var=q_kvar * 1e3,
            VA=s_kva * 1e3,
            PF=pf,
            A=current_a,
            LLV=v_ll,
            LNV=v_ll / math.sqrt(3),
            Hz=frequency_hz,
            TmpAmb=ambient_c,
            TmpCab=ambient_c + 5.0,
        )
        pts["TotWhInj"].value = int(max(energy_kwh, 0.0))
        pts["ThrotPct"].value = int(round(min(max(limit_pct, 0.0), 100.0)))
        if self.storage and soc_pct is not None:
            assert self.ratings.storage_kwh is not None
            self._set(713, SoC=soc_pct, WHAvail=self.ratings.storage_kwh * 1e3 * soc_pct / 100.0)
            self.models[713].points["Sta"].value = 1  # 1: OK (a battery in service)

    def words(self) -> list[int]:
        """The whole image from BASE_ADDRESS, as 16-bit words."""
        data = bytearray()
        data += struct.pack(">HH", *SUNS_MARKER)
        data += self.device.get_mb()
        data += struct.pack(">HH", *END_MODEL)
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

    # ------------------------------------------------------------------ written registers → set-points

    def _locate(self, register: int) -> tuple[int, int, int]:
        """(model id, the model's first register, its length in registers) holding `register`."""
        at = BASE_ADDRESS + 2
        for mid, model in self.models.items():
            length = len(model.get_mb()) // 2
            if at <= register < at + length:
                return mid, at, length
            at += length
        raise SunSpecWriteRefused(f"register {register} is not in a model of this device")

    def write(self, address: int, words: Sequence[int]) -> dict[tuple[int, str], float | int]:
        """Apply a write of `words` at `address`; returns the changed points (model id, name) →
        new value in engineering units (scale factors applied). Refuses a write that touches a
        read-only point."""
        if not words:
            return {}
        mid, start, length = self._locate(address)
        end = address + len(words)
        if end > start + length:
            raise SunSpecWriteRefused(f"write of {len(words)} registers at {address} runs past model {mid}")
        model = self.models[mid]
        data = bytearray(model.get_mb())
        for k, word in enumerate(words):
            off = (address - start + k) * 2
            data[off : off + 2] = int(word & 0xFFFF).to_bytes(2, "big")
        probe = ss.Model(mid)
        probe.set_mb(bytes(data))
        changed: dict[tuple[int, str], float | int] = {}
        for name, point in model.points.items():
            off = int(point.offset)
            if off + point.len <= address - start or off >= end - start:
                continue
            access = point.pdef.get("access", "R")
            new = probe.points[name].value
            if new != point.value:
                if access != "RW":
                    raise SunSpecWriteRefused(f"model {mid} point {name} is read-only")
                changed[(mid, name)] = new
        for (m, name), raw in changed.items():
            model.points[name].value = raw
            scaled = model.points[name].cvalue
            changed[(m, name)] = scaled if scaled is not None else raw
        return changed

    def setting(self, model_id: int, name: str) -> float | int | None:
        """A point's present value in engineering units (None when not implemented)."""
        point = self.models[model_id].points[name]
        value = point.cvalue
        return value if value is not None else None


# --------------------------------------------------------------------------- served by a Modbus endpoint


class SunSpecMap:
    """One SunSpec IED behind a `hil.modbus_servers.ModbusEndpoint`: the image as its holding
    registers, refreshed from the DER's model values; writes decoded by pysunspec2 and handed on
    as the DER's set-points (`<der>.p_limit_pct`, `<der>.p_setpoint_kw`, `<der>.q_setpoint_kvar`)."""

    def __init__(self, ied: Any, der_id: str, image: SunSpecImage, values: Any) -> None:
        from gateway.contract.settings import RegisterFunction

        self.ied = ied
        self.der_id = der_id
        self.image = image
        self._values = values
        """Callable → the DER's model values by name (`GridModel.agent_values`)."""
        self.tables = {RegisterFunction.HOLDING: None}
        self._last: list[int] | None = None
        self._key: tuple[Any, ...] | None = None

    def sim_device(self, action: Any) -> Any:
        from pymodbus.simulator import DataType as SimType
        from pymodbus.simulator import SimData, SimDevice

        return SimDevice(
            self.ied.unit_id,
            simdata=(
                [SimData(0, count=1, values=False, datatype=SimType.BITS)],
                [SimData(0, count=1, values=False, datatype=SimType.BITS)],
                [SimData(BASE_ADDRESS, count=self.image.length(), values=0, datatype=SimType.REGISTERS)],
                [SimData(0, datatype=SimType.INVALID)],
            ),
            action=action,
        )

    def refresh(self) -> bool:
        """Re-encode the image when a value changed at the registers' resolution (pysunspec2's
        encoding costs milliseconds: not at every model step)."""
        v = self._values()
        key = (
            round(float(v["active_power_kw"]), 1),
            round(float(v["reactive_power_kvar"]), 1),
            round(float(v["voltage_pu"]), 4),
            round(float(v.get("frequency_hz", 50.0)), 2),
            bool(v["connected"]),
            int(float(v.get("energy_kwh", 0.0))),
            round(float(v["p_limit_pct"]), 1),
            round(float(v.get("ambient_temp_c", 25.0))),
            None if v.get("soc_pct") is None else round(float(v["soc_pct"]), 1),
        )
        if key == self._key:
            return False
        self._key = key
        self.image.update(
            p_kw=float(v["active_power_kw"]),
            q_kvar=float(v["reactive_power_kvar"]),
            voltage_pu=float(v["voltage_pu"]),
            frequency_hz=float(v.get("frequency_hz", 50.0)),
            connected=bool(v["connected"]),
            energy_kwh=float(v.get("energy_kwh", 0.0)),
            limit_pct=float(v["p_limit_pct"]),
            throttled=float(v["p_limit_pct"]) < 100.0,
            ambient_c=float(v.get("ambient_temp_c", 25.0)),
            soc_pct=v.get("soc_pct"),
        )
        return True

    def changed_words(self, _values: dict[str, Any]) -> list[tuple[int, int, list[int]]]:
        if not self.refresh() and self._last is not None:
            return []
        words = self.image.words()
        if words == self._last:
            return []
        self._last = words
        return [(3, BASE_ADDRESS, words)]

    def forget(self) -> None:
        self._last = None
        self._key = None

    def decode_write(
        self,
        function_code: int,
        address: int,
        written: Sequence[int] | Sequence[bool],
        current: Sequence[int],
        start_address: int,
    ) -> Any:
        from pymodbus.constants import ExcCodes

        if function_code not in (6, 16, 23):
            return ExcCodes.ILLEGAL_ADDRESS
        try:
            changed = self.image.write(address, [int(w) for w in written])
        except SunSpecWriteRefused:
            return ExcCodes.ILLEGAL_ADDRESS
        hits: list[tuple[str, float | int | bool]] = []
        setting = self.image.setting
        for (mid, name), value in changed.items():
            if mid != 704 or (mid, name) not in WRITABLE:
                continue
            if name in ("WMaxLimPct", "WMaxLimPctEna"):
                enabled = bool(setting(704, "WMaxLimPctEna"))
                pct = float(setting(704, "WMaxLimPct") or 100.0) if enabled else 100.0
                if not 0.0 <= pct <= 100.0:
                    return ExcCodes.ILLEGAL_VALUE
                hits.append((f"{self.der_id}.p_limit_pct", pct))
            elif name in ("WSet", "WSetEna", "WSetMod") and self.image.storage:
                enabled = bool(setting(704, "WSetEna"))
                hits.append(
                    (f"{self.der_id}.p_setpoint_kw", float(setting(704, "WSet") or 0.0) / 1e3 if enabled else 0.0)
                )
            elif name in ("VarSet", "VarSetEna"):
                enabled = bool(setting(704, "VarSetEna"))
                hits.append(
                    (f"{self.der_id}.q_setpoint_kvar", float(setting(704, "VarSet") or 0.0) / 1e3 if enabled else 0.0)
                )
            del value
        return hits


def sunspec_maps(site: Any, model: Any) -> dict[str, SunSpecMap]:
    """The SunSpec IEDs `[simulation] sunspec` names (IED id → DER id), as register maps."""
    from gateway.agents.schema import AgentType, RenewableEnergyAttributes
    from gateway.contract.settings import ModbusTcpIed

    named = dict((site.simulation or {}).get("sunspec") or {})
    out: dict[str, SunSpecMap] = {}
    ieds = {i.id: i for i in site.ieds}
    agents = {a.id: a for a in site.agents}
    for ied_id, der_id in named.items():
        ied = ieds.get(ied_id)
        if not isinstance(ied, ModbusTcpIed):
            raise ValueError(f"simulation.sunspec.{ied_id}: not a Modbus TCP IED of the site")
        agent = agents.get(der_id)
        if agent is None or agent.type != AgentType.RENEWABLE_ENERGY:
            raise ValueError(f"simulation.sunspec.{ied_id}: {der_id!r} is not a renewable_energy agent")
        attrs = RenewableEnergyAttributes.model_validate(agent.attributes)
        storage = attrs.energy_capacity_kwh if attrs.resource_type == "battery_storage" else None
        ratings = DerRatings(
            attrs.rated_capacity,
            attrs.rated_apparent_power_kva or attrs.rated_capacity * 1.1,
            storage,
            attrs.max_charge_kw,
        )
        image = SunSpecImage(
            ratings,
            unit_id=ied.unit_id,
            serial=f"{der_id}-{ied.unit_id:03d}",
            model_name=("BESS-" if storage else "PV-") + f"{attrs.rated_capacity:g}kW",
        )

        def values(der: str = der_id) -> dict[str, Any]:
            out_v = dict(model.agent_values(der))
            out_v.setdefault("frequency_hz", getattr(model, "_frequency_hz", 50.0))
            return out_v

        out[ied_id] = SunSpecMap(ied, der_id, image, values)
    return out
