"""The site file's `[simulation]` table: electrical data the gateway itself never needs.

Everything has a default, so an empty table (or none) gives a working model: a 250 MVA,
X/R 10 source at the station bus, loads at 60 % of each transformer's rating at the daily
peak, and a clear-sky sun. Element data (line lengths and impedances, transformer ratings…)
comes from the agents' attributes; this table holds what only a simulator needs.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class LoadProfileName(enum.Enum):
    RESIDENTIAL = "residential"
    COMMERCIAL = "commercial"
    INDUSTRIAL = "industrial"
    FLAT = "flat"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoadSettings(_Model):
    """The load behind one transformer, meter group or line (a line's lumped load at its end)."""

    peak_kw: float | None = Field(default=None, ge=0)
    """Demand at the profile's daily peak (default: 60 % of the transformer's rating)."""
    power_factor: float = Field(default=0.95, gt=0, le=1)
    profile: LoadProfileName | None = None
    """Daily shape (default: the meter group's type, else residential)."""
    hourly: list[float] | None = Field(default=None, min_length=24, max_length=24)
    """Own 24-value shape (hour 0..23, fraction of peak) instead of a named profile."""


class IrradianceSettings(_Model):
    peak_w_m2: float = Field(default=1000.0, ge=0, le=1500)
    sunrise_h: float = Field(default=6.0, ge=0, lt=24)
    sunset_h: float = Field(default=18.0, gt=0, le=24)
    cloud_noise_pct: float = Field(default=0.0, ge=0, le=100)
    """Random dimming, in % of clear-sky irradiance (0 = clear sky)."""
    hourly: list[float] | None = Field(default=None, min_length=24, max_length=24)
    """Own 24-value profile in W/m² instead of the clear-sky bell."""

    @model_validator(mode="after")
    def _check(self) -> IrradianceSettings:
        if self.sunset_h <= self.sunrise_h:
            raise ValueError(f"sunset_h ({self.sunset_h}) must be after sunrise_h ({self.sunrise_h})")
        return self


class ExternalSourceSettings(_Model):
    """The far side of an external tie: a neighbouring substation's feeder, as an ideal source
    behind its fault level."""

    sc_mva: float = Field(default=150.0, gt=0)
    """Three-phase short-circuit power at the tie."""
    x_r: float = Field(default=8.0, gt=0)
    z0_z1: float = Field(default=1.0, gt=0)
    voltage_pu: float = Field(default=1.0, gt=0.5, lt=1.5)


class LoadModelSettings(_Model):
    """Voltage dependence of one load class, about the nominal voltage V0 = 1 pu.

    Exponential: P = P0·(V/V0)^np, Q = Q0·(V/V0)^nq. ZIP: P = P0·(Z·(V/V0)² + I·(V/V0) + P), the
    three shares summing to 1 (the same for Q with `zip_q`). Near V0 a ZIP load's CVR factor
    (ΔP/P)/(ΔV/V) is 2Z + I; an exponential load's is np at every voltage.
    """

    np: float | None = Field(default=None, ge=0, le=5)
    nq: float | None = Field(default=None, ge=0, le=10)
    zip_p: tuple[float, float, float] | None = None
    zip_q: tuple[float, float, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> LoadModelSettings:
        for name, exp, zip_ in (("p", self.np, self.zip_p), ("q", self.nq, self.zip_q)):
            if (exp is None) == (zip_ is None):
                raise ValueError(
                    f"give either n{name} (exponential) or zip_{name} (ZIP shares), not "
                    f"{'both' if exp is not None else 'neither'}"
                )
            if zip_ is not None and (min(zip_) < 0 or abs(sum(zip_) - 1.0) > 1e-6):
                raise ValueError(f"zip_{name} shares must be >= 0 and sum to 1, found {list(zip_)}")
        return self

    def components(self) -> list[tuple[float, float, float, float]]:
        """(share of P0, exponent of P, share of Q0, exponent of Q) terms adding up to the load."""
        p = [(1.0, self.np)] if self.np is not None else list(zip(self.zip_p or (), (2.0, 1.0, 0.0)))
        q = [(1.0, self.nq)] if self.nq is not None else list(zip(self.zip_q or (), (2.0, 1.0, 0.0)))
        out = [(share, exp, 0.0, 0.0) for share, exp in p if share > 0]
        out += [(0.0, 0.0, share, exp) for share, exp in q if share > 0]
        return out


DEFAULT_LOAD_MODELS: dict[str, LoadModelSettings] = {
    # np: the CVR factor the grid reference quotes for demand (0.7-0.8, §6.4), higher where
    # resistive loads dominate (homes), lower where motors and drives hold their power (shops,
    # offices, plants). nq: reactive power as a constant impedance (magnetising current and
    # capacitors) - not in the reference; a common planning assumption.
    "residential": LoadModelSettings(np=0.8, nq=2.0),
    "commercial": LoadModelSettings(np=0.7, nq=2.0),
    "industrial": LoadModelSettings(np=0.7, nq=2.0),
    "flat": LoadModelSettings(np=0.8, nq=2.0),
}


class SourceSettings(_Model):
    """The grid behind one substation (the `[simulation]` keys of its own site file)."""

    nominal_kv: float | None = Field(default=None, gt=0)
    source_sc_mva: float = Field(default=250.0, gt=0)
    source_x_r: float = Field(default=10.0, gt=0)
    source_z0_z1: float = Field(default=1.0, gt=0)
    source_voltage_pu: float = Field(default=1.02, gt=0.5, lt=1.5)


class StorageSettings(_Model):
    soc_pct: float = Field(default=50.0, ge=0, le=100)
    """State of charge at start."""
    efficiency_pct: float = Field(default=95.0, gt=50, le=100)
    """One-way (charge or discharge) efficiency."""


class DemandResponseSettings(_Model):
    responders_pct: float = Field(default=90.0, ge=0, le=100)
    """Share of enrolled (non-critical) meters that follow an event; the rest do not, drawn from
    the seed per meter (the same meters every event of a run)."""


class AgeingSettings(_Model):
    """A transformer's condition (hil/grid/ageing.py): which profile it follows and where it stands."""

    profile: str
    """scenario-3 (the use case's ageing unit) or healthy (its twin)."""
    operating_hours: float = Field(default=0.0, ge=0)
    """The monitor's hour counter at simulated time 0."""
    age_months: float = Field(default=0.0, ge=0, le=600)
    """How far along its profile the unit is at simulated time 0."""
    fan_on_c: float = Field(default=60.0, gt=0, lt=150)
    fan_off_c: float = Field(default=52.0, gt=0, lt=150)
    onan_rise_factor: float = Field(default=1.25, ge=1.0, le=3.0)
    """Top-oil rise with the fans off against with them on, at the same load."""

    @model_validator(mode="after")
    def _check(self) -> AgeingSettings:
        if self.fan_off_c >= self.fan_on_c:
            raise ValueError(f"fan_off_c ({self.fan_off_c}) must be below fan_on_c ({self.fan_on_c})")
        return self


class SimulationSettings(_Model):
    nominal_kv: float | None = Field(default=None, gt=0)
    """Station bus voltage, line to line (default: the substation's `secondary_voltage`, else 11)."""
    frequency_hz: float = Field(default=50.0, gt=0)
    frequency_noise_hz: float = Field(default=0.01, ge=0, le=1)
    source_sc_mva: float = Field(default=250.0, gt=0)
    """Three-phase short-circuit power of the grid at the station bus."""
    source_x_r: float = Field(default=10.0, gt=0)
    source_z0_z1: float = Field(default=1.0, gt=0)
    """Zero- to positive-sequence source impedance (≈1 behind a Dyn transformer, solidly earthed)."""
    source_voltage_pu: float = Field(default=1.02, gt=0.5, lt=1.5)
    base_mva: float = Field(default=10.0, gt=0)
    start_hour: float = Field(default=12.0, ge=0, lt=24)
    """Time of day at simulated time 0."""
    ambient_temp_c: float = Field(default=25.0, ge=-50, le=60)
    ambient_swing_c: float = Field(default=0.0, ge=0, le=30)
    """Half the daily ambient swing (coolest at 05:00, warmest at 17:00)."""
    breaker_opening_time_ms: float = Field(default=0.0, ge=0, le=1000)
    """Trip command to open contacts (0 for fast benchmarks; 50 ms is a real 3-cycle breaker)."""
    breaker_closing_time_ms: float = Field(default=0.0, ge=0, le=2000)
    tap_change_time_s: float = Field(default=0.0, ge=0, le=60)
    """Time per tap step of a tap changer moving to its setpoint (0 = at once)."""
    solve_period_s: float = Field(default=0.5, gt=0, le=3600)
    """Re-solve at least this often as loads drift; any switching or command re-solves at once."""
    load_noise_pct: float = Field(default=2.0, ge=0, le=50)
    noise_period_s: float = Field(default=60.0, gt=0)
    """Load noise changes smoothly, one new random value per load per period."""
    unbalance_pct: float = Field(default=2.0, ge=0, le=30)
    """Phase current unbalance of the feeders (phase a above, c below the mean)."""
    der_enter_service_delay: bool = True
    """After an outage, inverters wait their `enter_service_delay_s` (IEEE 1547) before reconnecting."""
    transformer_x_r: float = Field(default=5.0, gt=0)
    line_load_percent: float = Field(default=35.0, ge=0, le=100)
    """A line with nothing modelled downstream carries a lumped load of this share of its ampacity."""
    loads: dict[str, LoadSettings] = Field(default_factory=dict)
    """Per transformer, meter group or line id."""
    positions_m: dict[str, float] = Field(default_factory=dict)
    """Element id → distance along its supplying line (default: spread evenly, the last at the end)."""
    external_sources: dict[str, ExternalSourceSettings] = Field(default_factory=dict)
    """External tie id → the source behind it (default: 150 MVA, X/R 8, 1.0 pu)."""
    fpi_reset_delay_s: float = Field(default=10.0, ge=0, le=86_400)
    """A fault-passage indicator resets by itself once voltage has been present this long."""
    capacitor_steps: dict[str, int] = Field(default_factory=dict)
    """Capacitor bank id → steps in service at start (default 0)."""
    irradiance: IrradianceSettings = IrradianceSettings()
    ageing: dict[str, AgeingSettings] = Field(default_factory=dict)
    """Transformer id → its condition (thermal drift, efficiency, fans, dissolved gases)."""
    seed: int | None = None
    """Overrides the seed given on the command line."""
    tolerance_pu: float = Field(default=1e-8, gt=0, le=1e-3)
    load_models: dict[str, LoadModelSettings] = Field(default_factory=dict)
    """Voltage dependence per load class (residential, commercial, industrial, flat); classes not
    given keep `DEFAULT_LOAD_MODELS`. `{ np = 0, nq = 0 }` makes a class constant power."""
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    """Substation id → the grid behind it, when one model holds several substations (filled from
    each site file's own source keys); a substation not listed uses the keys above."""
    sunspec: dict[str, str] = Field(default_factory=dict)
    """IED id → the renewable_energy agent it is the inverter of, served as a SunSpec device."""
    storage: dict[str, StorageSettings] = Field(default_factory=dict)
    """Battery (renewable_energy agent with resource_type battery_storage) id → its start state."""
    demand_response: DemandResponseSettings = DemandResponseSettings()

    @model_validator(mode="after")
    def _check_classes(self) -> SimulationSettings:
        unknown = sorted(set(self.load_models) - set(DEFAULT_LOAD_MODELS))
        if unknown:
            raise ValueError(
                f"load_models: unknown load class {', '.join(unknown)}; expected {', '.join(DEFAULT_LOAD_MODELS)}"
            )
        return self

    def load_model(self, load_class: str) -> LoadModelSettings:
        return self.load_models.get(load_class) or DEFAULT_LOAD_MODELS.get(load_class) or DEFAULT_LOAD_MODELS["flat"]

    def source(self, substation_id: str) -> SourceSettings:
        given = self.sources.get(substation_id)
        if given is not None:
            return given
        return SourceSettings(
            nominal_kv=self.nominal_kv,
            source_sc_mva=self.source_sc_mva,
            source_x_r=self.source_x_r,
            source_z0_z1=self.source_z0_z1,
            source_voltage_pu=self.source_voltage_pu,
        )


def load_settings(raw: dict[str, Any] | None) -> SimulationSettings:
    """Validate the `[simulation]` table, naming the key, the value found and what was expected."""
    try:
        return SimulationSettings.model_validate(raw or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = "simulation." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "simulation"
            problems.append(f"{where}: {err['msg']} (found {err.get('input')!r})")
        raise ValueError("invalid [simulation] table:\n  " + "\n  ".join(problems)) from None
