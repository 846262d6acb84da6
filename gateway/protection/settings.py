"""Site-file schema for protection schemes: one `[[protection]]` entry per breaker.

Validated once at load; every range error names the key path and what was expected. The
engine turns a scheme into the flat settings of the core (`to_core`).

Example (TOML)::

    [[protection]]
    breaker = "CB-045"
    trip = { point = "CB-045.trip_cmd", value = true }
    close = { point = "CB-045.close_cmd", value = true }
    nominal_voltage_kv = 11.0
    [protection.elements.51P]
    curve = "iec_si"
    pickup_a = 480.0
    tms = 0.15
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.protection.core import (
    CURVE_CONSTANTS,
    Curve,
    ElementKind,
    ElementSettings,
    RelaySettings,
    ResetMode,
)

CurveName = Literal["iec_si", "iec_vi", "iec_ei", "iec_lti", "ieee_mi", "ieee_vi", "ieee_ei"]
CURVES_BY_NAME: dict[str, Curve] = {
    "iec_si": Curve.IEC_SI,
    "iec_vi": Curve.IEC_VI,
    "iec_ei": Curve.IEC_EI,
    "iec_lti": Curve.IEC_LTI,
    "ieee_mi": Curve.IEEE_MI,
    "ieee_vi": Curve.IEEE_VI,
    "ieee_ei": Curve.IEEE_EI,
}
RESET_BY_NAME = {"instant": ResetMode.INSTANT, "definite": ResetMode.DEFINITE, "dependent": ResetMode.DEPENDENT}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class CommandTarget(_Strict):
    """A write that operates a breaker: a coil (`true`) or a 61850 position (false = open)."""

    point: str = Field(min_length=1)
    value: bool | int | float = True


class SchemePoints(_Strict):
    """Point ids the scheme reads; each defaults to "<breaker>.<name>"."""

    ia: str | None = None
    ib: str | None = None
    ic: str | None = None
    in_: str | None = Field(default=None, alias="in")
    closed: str | None = None
    voltage_kv: str | None = None
    frequency_hz: str | None = None


class Overcurrent50(_Strict):
    """50P / 50N instantaneous or definite-time overcurrent."""

    pickup_a: float = Field(gt=0)
    delay_s: float = Field(default=0.0, ge=0, le=60)
    dropout_ratio: float = Field(default=0.95, gt=0.5, lt=1.0)
    fast_only: bool = False
    """Active only while the 79 selects the fast curve (fuse saving)."""
    reclose: bool = True


class InverseTime51(_Strict):
    """51P / 51N inverse-time overcurrent (IEC 60255-151 / IEEE C37.112)."""

    curve: CurveName
    pickup_a: float = Field(gt=0)
    tms: float = Field(gt=0, le=15)
    """TMS (IEC) or time dial (IEEE): multiplies the whole curve."""
    fast_curve: CurveName | None = None
    fast_tms: float | None = Field(default=None, gt=0, le=15)
    start_factor: float = Field(default=1.0, ge=1.0, le=1.1)
    dropout_ratio: float = Field(default=0.95, gt=0.5, lt=1.0)
    min_time_s: float = Field(default=0.0, ge=0, le=10)
    add_delay_s: float = Field(default=0.0, ge=0, le=60)
    m_max: float = Field(default=20.0, gt=1.1, le=100)
    reset: Literal["instant", "definite", "dependent"] | None = None
    """Default: dependent for IEEE curves, instant for IEC curves."""
    reset_delay_s: float = Field(default=0.0, ge=0, le=60)
    reclose: bool = True

    @model_validator(mode="after")
    def _dependent_needs_ieee(self) -> InverseTime51:
        if self.reset == "dependent":
            for name in (self.curve, self.fast_curve or self.curve):
                if CURVE_CONSTANTS[CURVES_BY_NAME[name]].reset_tr <= 0.0:
                    raise ValueError(
                        f"reset = 'dependent' needs an IEEE curve, {name!r} has no "
                        "dependent reset (use 'instant' or 'definite')"
                    )
        if self.m_max <= self.start_factor:
            raise ValueError(f"m_max ({self.m_max}) must exceed start_factor ({self.start_factor})")
        return self

    def reset_mode(self) -> ResetMode:
        if self.reset is not None:
            return RESET_BY_NAME[self.reset]
        ieee = (
            CURVE_CONSTANTS[CURVES_BY_NAME[self.curve]].reset_tr > 0.0
            and CURVE_CONSTANTS[CURVES_BY_NAME[self.fast_curve or self.curve]].reset_tr > 0.0
        )
        return ResetMode.DEPENDENT if ieee else ResetMode.INSTANT


class Undervoltage27(_Strict):
    pickup_pu: float = Field(gt=0, lt=1.0)
    delay_s: float = Field(ge=0, le=600)
    dropout_ratio: float = Field(default=1.03, gt=1.0, le=1.2)
    reclose: bool = False


class Overvoltage59(_Strict):
    pickup_pu: float = Field(gt=1.0, le=2.0)
    delay_s: float = Field(ge=0, le=600)
    dropout_ratio: float = Field(default=0.97, ge=0.8, lt=1.0)
    reclose: bool = False


class Frequency81(_Strict):
    pickup_hz: float = Field(gt=40, lt=70)
    delay_s: float = Field(ge=0, le=600)
    hysteresis_hz: float = Field(default=0.05, gt=0, le=2)
    block_below_pu: float = Field(default=0.5, ge=0, lt=1)
    """Blocked while the voltage is below this (frequency measurement unreliable)."""
    reclose: bool = False


class Thermal49(_Strict):
    """IEC 60255-149 thermal replica: trips when theta = (I / k I_B)^2 integrated reaches 1."""

    base_current_a: float = Field(gt=0)
    k_factor: float = Field(default=1.05, ge=1.0, le=1.5)
    tau_s: float = Field(gt=0)
    cooling_tau_s: float | None = Field(default=None, gt=0)
    dropout_ratio: float = Field(default=0.97, gt=0.5, lt=1.0)
    reset_theta: float = Field(default=0.9, gt=0, lt=1.0)
    reclose: bool = False


class BreakerFailure50BF(_Strict):
    current_a: float = Field(gt=0)
    """Current detector pickup (typically 0.2 x rated current)."""
    retrip_s: float = Field(default=0.0, ge=0, le=1)
    backup_s: float = Field(default=0.15, gt=0, le=2)
    backup_trip: list[CommandTarget] = Field(default_factory=list)
    """Writes of the back-up trip (upstream breaker); empty: the breaker's own trip point."""

    @model_validator(mode="after")
    def _order(self) -> BreakerFailure50BF:
        if self.backup_s <= self.retrip_s:
            raise ValueError(f"backup_s ({self.backup_s}) must exceed retrip_s ({self.retrip_s})")
        return self


class Reclose79(_Strict):
    shots: int = Field(ge=1, le=4)
    """Reclosures before lockout (trips to lockout = shots + 1)."""
    dead_times_s: list[float]
    trip_curves: list[Literal["fast", "delayed"]] | None = None
    """Curve per trip of a sequence; default: first trip fast, the rest delayed."""
    reclaim_s: float = Field(default=30.0, gt=0, le=600)
    """After a reclose, the sequence resets once this long has passed with no element of the
    breaker picked up (a pickup restarts it): a fault present through it trips the next shot."""
    high_current_lockout_a: float | None = Field(default=None, gt=0)
    close_onto_fault_s: float | None = Field(default=None, ge=0, le=600)
    """A trip this soon after a manual close locks out; default: the reclaim time."""

    @model_validator(mode="after")
    def _lengths(self) -> Reclose79:
        if len(self.dead_times_s) != self.shots:
            raise ValueError(f"dead_times_s has {len(self.dead_times_s)} entries, expected one per shot ({self.shots})")
        for n, t in enumerate(self.dead_times_s):
            if not 0.05 <= t <= 600:
                raise ValueError(f"dead_times_s[{n}] = {t} s, expected 0.05..600 s")
        if self.trip_curves is not None and len(self.trip_curves) > self.shots + 1:
            raise ValueError(
                f"trip_curves has {len(self.trip_curves)} entries, at most "
                f"shots + 1 = {self.shots + 1} trips happen in a sequence"
            )
        return self

    def fast_mask(self) -> int:
        curves = self.trip_curves if self.trip_curves is not None else ["fast"]
        return sum(1 << n for n, c in enumerate(curves) if c == "fast")


class Elements(_Strict):
    p50: Overcurrent50 | None = Field(default=None, alias="50P")
    n50: Overcurrent50 | None = Field(default=None, alias="50N")
    p51: InverseTime51 | None = Field(default=None, alias="51P")
    n51: InverseTime51 | None = Field(default=None, alias="51N")
    uv27: Undervoltage27 | None = Field(default=None, alias="27")
    ov59: Overvoltage59 | None = Field(default=None, alias="59")
    uf81: Frequency81 | None = Field(default=None, alias="81U")
    of81: Frequency81 | None = Field(default=None, alias="81O")
    th49: Thermal49 | None = Field(default=None, alias="49")


ELEMENT_FIELDS: dict[str, tuple[str, ElementKind]] = {
    "50P": ("p50", ElementKind.P50),
    "50N": ("n50", ElementKind.N50),
    "51P": ("p51", ElementKind.P51),
    "51N": ("n51", ElementKind.N51),
    "27": ("uv27", ElementKind.UV27),
    "59": ("ov59", ElementKind.OV59),
    "81U": ("uf81", ElementKind.UF81),
    "81O": ("of81", ElementKind.OF81),
    "49": ("th49", ElementKind.TH49),
}


class ProtectionScheme(BaseModel):
    """Protection of one breaker: its elements, 79 auto-reclose and 50BF breaker failure."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    breaker: str = Field(min_length=1)
    trip: CommandTarget | None = None
    """Write that opens the breaker; default "<breaker>.trip_cmd" = true."""
    close: CommandTarget | None = None
    """Write that closes the breaker; default "<breaker>.close_cmd" = true."""
    nominal_voltage_kv: float = Field(default=11.0, gt=0, le=1000)
    points: SchemePoints = SchemePoints()
    elements: Elements = Elements()
    reclose: Reclose79 | None = None
    breaker_failure: BreakerFailure50BF | None = None

    @model_validator(mode="after")
    def _needs_an_element(self) -> ProtectionScheme:
        if not any(getattr(self.elements, f) is not None for f, _ in ELEMENT_FIELDS.values()):
            raise ValueError(
                f"protection scheme of {self.breaker} has no element; expected at "
                f"least one of {', '.join(ELEMENT_FIELDS)} under 'elements'"
            )
        for name in ("50P", "50N"):
            element = getattr(self.elements, ELEMENT_FIELDS[name][0])
            if element is not None and element.fast_only and self.reclose is None:
                raise ValueError(
                    f"elements.{name}.fast_only needs a 'reclose' section (the 79 "
                    "selects the fast trips); without one the element never operates"
                )
        return self

    def trip_target(self) -> CommandTarget:
        return self.trip or CommandTarget(point=f"{self.breaker}.trip_cmd", value=True)

    def close_target(self) -> CommandTarget:
        return self.close or CommandTarget(point=f"{self.breaker}.close_cmd", value=True)

    def backup_targets(self) -> list[CommandTarget]:
        bf = self.breaker_failure
        return list(bf.backup_trip) if bf is not None and bf.backup_trip else [self.trip_target()]

    def point(self, name: str) -> str:
        """Point id of input `name` (ia, ib, ic, in, closed, voltage_kv, frequency_hz)."""
        explicit = getattr(self.points, "in_" if name == "in" else name)
        return explicit or f"{self.breaker}.{name}"

    def configured_elements(self) -> Iterator[tuple[str, ElementKind, BaseModel]]:
        for name, (attr, kind) in ELEMENT_FIELDS.items():
            value = getattr(self.elements, attr)
            if value is not None:
                yield name, kind, value

    def input_names(self) -> list[str]:
        """Inputs this scheme reads: phase currents and position always, the rest as needed."""
        names = ["ia", "ib", "ic", "closed"]
        e = self.elements
        if e.n50 is not None or e.n51 is not None:
            names.append("in")
        if e.uv27 or e.ov59 or (e.uf81 and e.uf81.block_below_pu > 0) or (e.of81 and e.of81.block_below_pu > 0):
            names.append("voltage_kv")
        if e.uf81 is not None or e.of81 is not None:
            names.append("frequency_hz")
        return names

    def referenced_points(self) -> Iterator[str]:
        """Every point id the scheme reads or writes (each once)."""
        ids = [self.point(name) for name in self.input_names()]
        ids += [self.trip_target().point, self.close_target().point]
        if self.breaker_failure is not None:
            ids += [target.point for target in self.breaker_failure.backup_trip]
        yield from dict.fromkeys(ids)

    # ---------------------------------------------------------------- core settings

    def relay_settings(self) -> RelaySettings:
        ar, bf = self.reclose, self.breaker_failure
        dead = [0.0, 0.0, 0.0, 0.0]
        if ar is not None:
            dead[: len(ar.dead_times_s)] = ar.dead_times_s
        reclaim = ar.reclaim_s if ar is not None else 0.0
        cof = ar.close_onto_fault_s if ar is not None and ar.close_onto_fault_s is not None else reclaim
        return RelaySettings(
            nominal_kv=self.nominal_voltage_kv,
            shots=ar.shots if ar is not None else 0,
            dead_time_s=(dead[0], dead[1], dead[2], dead[3]),
            fast_mask=ar.fast_mask() if ar is not None else 0,
            reclaim_s=reclaim,
            high_current_lockout_a=(ar.high_current_lockout_a or 0.0) if ar is not None else 0.0,
            close_onto_fault_s=cof,
            bf_enabled=bf is not None,
            bf_current_a=bf.current_a if bf is not None else 0.0,
            bf_retrip_s=bf.retrip_s if bf is not None else 0.0,
            bf_backup_s=bf.backup_s if bf is not None else 0.0,
        )

    def element_settings(self, relay: int) -> list[tuple[str, ElementSettings]]:
        out: list[tuple[str, ElementSettings]] = []
        for name, kind, s in self.configured_elements():
            if isinstance(s, Overcurrent50):
                es = ElementSettings(
                    relay=relay,
                    kind=kind,
                    pickup=s.pickup_a,
                    dropout_ratio=s.dropout_ratio,
                    delay_s=s.delay_s,
                    reclose=s.reclose,
                    fast_only=s.fast_only,
                )
            elif isinstance(s, InverseTime51):
                curve = CURVES_BY_NAME[s.curve]
                es = ElementSettings(
                    relay=relay,
                    kind=kind,
                    pickup=s.pickup_a,
                    dropout_ratio=s.dropout_ratio,
                    delay_s=s.add_delay_s,
                    reclose=s.reclose,
                    curve=curve,
                    fast_curve=CURVES_BY_NAME[s.fast_curve] if s.fast_curve else curve,
                    tms=s.tms,
                    fast_tms=s.fast_tms if s.fast_tms is not None else s.tms,
                    start_factor=s.start_factor,
                    min_time_s=s.min_time_s,
                    m_max=s.m_max,
                    reset_mode=s.reset_mode(),
                    reset_delay_s=s.reset_delay_s,
                )
            elif isinstance(s, Undervoltage27 | Overvoltage59):
                es = ElementSettings(
                    relay=relay,
                    kind=kind,
                    pickup=s.pickup_pu,
                    dropout_ratio=s.dropout_ratio,
                    delay_s=s.delay_s,
                    reclose=s.reclose,
                )
            elif isinstance(s, Frequency81):
                es = ElementSettings(
                    relay=relay,
                    kind=kind,
                    pickup=s.pickup_hz,
                    dropout_ratio=s.hysteresis_hz,
                    delay_s=s.delay_s,
                    reclose=s.reclose,
                    block_below_pu=s.block_below_pu,
                )
            else:
                assert isinstance(s, Thermal49)
                es = ElementSettings(
                    relay=relay,
                    kind=kind,
                    pickup=s.k_factor * s.base_current_a,
                    dropout_ratio=s.dropout_ratio,
                    reclose=s.reclose,
                    tau_s=s.tau_s,
                    cooling_tau_s=s.cooling_tau_s or s.tau_s,
                    reset_theta=s.reset_theta,
                )
            out.append((name, es))
        return out
