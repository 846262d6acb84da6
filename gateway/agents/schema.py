"""Site-file schema for agent attributes, one model per agent type (use-case names).

Every attribute has a sensible default so a site file states only what differs. Control
settings (thresholds, delays, bands) sit beside the use case's descriptive attributes; their
defaults come from the grid reference sheet (OpenDSS / IEEE 1547 / C57.91 / C84.1 values).
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class AgentType(enum.StrEnum):
    """The agent types the gateway's own code names: switching, protection, the simulator and the
    views treat breakers, lines, transformers and the substation specially. A site entry's `type`
    is a plain string checked against the registry (`gateway.agents.registry`), so a new type
    needs no member here; members compare equal to their names."""

    POWER_LINE = "power_line"
    TRANSFORMER = "transformer"
    SMART_METER = "smart_meter"
    CIRCUIT_BREAKER = "circuit_breaker"
    SUBSTATION = "substation"
    CAPACITOR_BANK = "capacitor_bank"
    RENEWABLE_ENERGY = "renewable_energy"


class _Attrs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    location: str = ""
    installation_date: str = ""


Coordinate = tuple[
    Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False)],
    Annotated[float, Field(ge=-180.0, le=180.0, allow_inf_nan=False)],
]
"""GPS position [latitude, longitude] in degrees (WGS 84), as the use case writes it."""


# --------------------------------------------------------------------------- power line


class LineImpedance(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    r_ohm_per_km: float = Field(default=0.306, ge=0)
    x_ohm_per_km: float = Field(default=0.3, ge=0)
    r0_ohm_per_km: float = Field(default=0.55, ge=0)
    x0_ohm_per_km: float = Field(default=1.2, ge=0)


class PowerLineAttributes(_Attrs):
    line_type: Literal["overhead", "underground", "high_voltage", "medium_voltage", "low_voltage"] = "overhead"
    voltage_rating: float = Field(default=11.0, gt=0, description="kV")
    conductor_type: str = "ACSR"
    length: float = Field(default=5000.0, gt=0, description="m")
    ampacity: float = Field(default=400.0, gt=0, description="A")
    coordinates: list[Coordinate] = Field(default_factory=list)
    phase_configuration: Literal["single_phase", "three_phase"] = "three_phase"
    impedance: LineImpedance = LineImpedance()
    temperature_rating: float = Field(default=75.0, description="°C")
    condition_score: float = Field(default=100.0, ge=0, le=100)
    sag_level: float = 0.0
    # control settings
    loaded_percent: float = Field(default=80.0, gt=0, le=100)
    """Above this share of ampacity the line is Loaded (left again 2 % below it)."""
    overload_persistence_s: float = Field(default=300.0, ge=0)
    """Current above ampacity for this long makes the line Overloaded (use case: 5 minutes)."""
    emergency_percent: float = Field(default=150.0, gt=100)
    """Above this share of ampacity, or at full thermal level, the line is in Emergency."""
    thermal_time_constant_s: float = Field(default=600.0, gt=0)
    fault_current_a: float | None = Field(default=None, gt=0)
    """Current that means a fault even before protection reports (default 4 × ampacity)."""


# --------------------------------------------------------------------------- transformer


class TransformerAttributes(_Attrs):
    transformer_type: Literal["pole_mounted", "pad_mounted", "substation", "distribution"] = "distribution"
    coordinates: Coordinate | None = None
    primary_voltage: float = Field(default=11.0, gt=0, description="kV")
    secondary_voltage: float = Field(default=415.0, gt=0, description="V, line-to-line")
    rated_capacity: float = Field(default=1000.0, gt=0, description="kVA")
    impedance_percent: float = Field(default=5.0, gt=0, le=30)
    cooling_type: Literal["ONAN", "ONAF", "OFAF", "ODAF", "oil_filled", "dry_type"] = "ONAN"
    # tap changer
    tap_position: int = 0
    tap_min: int = -16
    tap_max: int = 16
    tap_step_percent: float = Field(default=0.625, gt=0, le=5)
    regulation_enabled: bool = True
    voltage_setpoint_v: float = Field(default=120.0, gt=100, lt=140, description="on the 120 V base")
    bandwidth_v: float = Field(default=2.0, gt=0, le=10)
    time_delay_s: float = Field(default=30.0, ge=0)
    inter_tap_delay_s: float = Field(default=2.0, ge=0)
    ldc_r_v: float = Field(default=0.0, description="line-drop compensation R, volts")
    ldc_x_v: float = Field(default=0.0, description="line-drop compensation X, volts")
    ct_primary_a: float | None = Field(default=None, gt=0)
    """CT rated primary current for LDC (default: secondary rated current)."""
    cvr_enabled: bool = False
    cvr_reduction_percent: float = Field(default=2.5, ge=0, le=5)
    cvr_floor_v: float = Field(default=114.0, ge=100, le=126)
    # thermal (C57.91 clause 7)
    rated_top_oil_rise_c: float = Field(default=55.0, gt=0)
    rated_hot_spot_rise_c: float = Field(default=25.0, gt=0)
    loss_ratio: float = Field(default=4.5, gt=0)
    top_oil_time_constant_min: float | None = Field(default=None, gt=0)
    winding_time_constant_min: float = Field(default=5.0, gt=0)
    hot_spot_alarm_c: float = Field(default=120.0)
    hot_spot_critical_c: float = Field(default=140.0)
    top_oil_alarm_c: float = Field(default=95.0)
    high_load_percent: float = Field(default=80.0, gt=0)
    capacity_notice_percent: float = Field(default=90.0, gt=0)
    load_hysteresis_percent: float = Field(default=2.0, ge=0, le=20)
    normal_insulation_life_h: float = Field(default=180_000.0, gt=0)
    aging_alarm_factor: float = Field(default=2.0, gt=0)
    """Predictive maintenance: ask for it when a day's equivalent aging factor F_EQA exceeds this."""
    # asset data for the health model (docs/maintenance.md)
    maintenance_interval_h: float | None = Field(default=None, gt=0)
    """Operating hours between major maintenance (the use case's unit: 90 000 h)."""
    operating_hours_at_commissioning: float | None = Field(default=None, ge=0)
    """Hours in service before the gateway's history began, when no `operating_hours` point counts them."""
    normal_top_oil_max_c: float | None = Field(default=None, gt=0, lt=150)
    """The unit's normal operating maximum of top oil at its usual load (the use case's: 75 °C)."""
    oil_preservation: Literal["sealed", "free_breathing"] = "sealed"
    """Sealed (nitrogen blanket, membrane: O2/N2 ≤ 0.2) or free-breathing: which C57.104 norms apply."""
    prior_loss_of_life_percent: float = Field(default=0.0, ge=0, le=1000)
    """C57.91 loss of life before the gateway's history began (from the asset record)."""

    @model_validator(mode="after")
    def _check(self) -> TransformerAttributes:
        if not self.tap_min <= self.tap_position <= self.tap_max:
            raise ValueError(
                f"tap_position {self.tap_position} outside [tap_min {self.tap_min}, tap_max {self.tap_max}]"
            )
        if self.hot_spot_alarm_c >= self.hot_spot_critical_c:
            raise ValueError("hot_spot_alarm_c must be below hot_spot_critical_c")
        return self


# --------------------------------------------------------------------------- smart meter


class SmartMeterAttributes(_Attrs):
    """Per-group meter settings (meters themselves come from `[[meter_groups]]`)."""

    phase_type: Literal["single_phase", "three_phase"] = "single_phase"
    billing_cycle: Literal["monthly", "bi-monthly"] = "monthly"
    tariff_plan: Literal["TOU", "flat_rate", "tiered"] = "flat_rate"
    net_metering: bool = False
    low_voltage_pu: float = Field(default=0.95, gt=0, lt=1)
    outage_voltage_pu: float = Field(default=0.5, gt=0, lt=1)
    high_voltage_pu: float = Field(default=1.06, gt=1)
    thd_limit_pct: float = Field(default=8.0, gt=0)
    high_consumption_ratio: float = Field(default=2.5, gt=1)
    """Demand above this multiple of the meter's typical demand is High_Consumption."""


# --------------------------------------------------------------------------- circuit breaker


SwitchingFunction = Literal["breaker", "recloser", "load_break_switch"]


class CircuitBreakerAttributes(_Attrs):
    """A switching device: a station or feeder breaker, a pole-mounted recloser, or a
    load-break switch (sectionaliser or tie)."""

    function: SwitchingFunction = "breaker"
    """A load-break switch breaks load current only, never fault current."""
    breaker_type: Literal["vacuum", "SF6", "oil", "air_blast", "MCB", "MCCB"] = "vacuum"
    rated_voltage: float = Field(default=12.0, gt=0, description="kV")
    rated_current: float = Field(default=630.0, gt=0, description="A")
    interrupting_capacity: float = Field(default=25.0, gt=0, description="kA")
    """Default 25 kA; for a load-break switch, its rated current (rated_current / 1000 kA)."""
    normally_open: bool = False
    """An open point in the normal configuration (a tie)."""
    fpi_pickup_a: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Fault-passage indicator pickup (A): the indicator latches above this current."""
    allow_parallel: bool = False
    """A tie that the site allows to close with both sides energised (closed-loop operation)."""
    external_source: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)*$",
    )
    """A tie whose far side is a feeder of another substation, by its name there ('SUB-006/LINE-061')."""
    external_capacity_kva: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """What the other substation has declared this tie may carry into this one (kVA); the limit of
    the far side in every power-flow estimate, until the neighbour answers for itself."""
    coordination_group: str = ""
    coordinates: Coordinate | None = None
    operating_mechanism: Literal["spring", "solenoid", "motor"] = "spring"
    maintenance_interval: float = Field(default=365.0, gt=0, description="days")
    condition_score: float = Field(default=100.0, ge=0, le=100)
    protected_line: str = ""
    high_current_percent: float = Field(default=90.0, gt=0)
    """Closed_High_Current above this share of rated current (or on a protection pickup)."""
    max_trips_in_period: int = Field(default=3, ge=1)
    trip_count_period_s: float = Field(default=3600.0, gt=0)
    interrupt_time_s: float = Field(default=0.05, gt=0)
    """Arcing time used for contact wear (I²t) per interruption."""
    contact_wear_limit_ka2s: float = Field(default=500.0, gt=0)
    maintenance_operations: int = Field(default=2000, ge=1)
    position_confirm_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """A position change within this time of an operation the gateway knows of (its command, a
    protection trip or reclose, a switching operation it was told about) is that operation;
    any other change is a position discrepancy."""

    @model_validator(mode="before")
    @classmethod
    def _load_break_switch_rating(cls, data: object) -> object:
        """A load-break switch interrupts no more than its rated current unless told otherwise."""
        if (
            isinstance(data, dict)
            and data.get("function") == "load_break_switch"
            and "interrupting_capacity" not in data
        ):
            rated = data.get("rated_current", 630.0)
            if isinstance(rated, int | float) and not isinstance(rated, bool) and rated > 0:
                return {**data, "interrupting_capacity": float(rated) / 1000.0}
        return data


# --------------------------------------------------------------------------- substation


class SubstationAttributes(_Attrs):
    substation_type: Literal["transmission", "distribution", "collector"] = "distribution"
    coordinates: Coordinate | None = None
    primary_voltage: float = Field(default=66.0, gt=0, description="kV")
    secondary_voltage: float = Field(default=11.0, gt=0, description="kV")
    rated_capacity: float = Field(default=20.0, gt=0, description="MVA")
    num_transformers: int = Field(default=1, ge=0)
    num_feeders: int = Field(default=0, ge=0)
    voltage_control_mode: Literal["manual", "automatic", "remote"] = "automatic"
    reactive_power_capability: float = Field(default=0.0, ge=0, description="MVAR")
    SCADA_connected: bool = True
    high_load_percent: float = Field(default=90.0, gt=0)
    emergency_load_percent: float = Field(default=100.0, gt=0)
    shed_target_percent: float = Field(default=90.0, gt=0)
    load_persistence_s: float = Field(default=60.0, ge=0)
    """Load must stay above a threshold this long to count (fault currents are not load)."""
    forecast_window_s: float = Field(default=1800.0, gt=0)
    """Load history used for the short-horizon forecast (linear trend)."""
    forecast_lead_s: float = Field(default=3600.0, ge=0)
    """Act (High_Load: transfer request, shedding plan, CVR, var support) when the gateway's load
    forecast crosses `high_load_percent` within this long."""
    peak_actions: Literal["immediate", "ordered"] = "immediate"
    """immediate: on High_Load the agent turns CVR and maximum var support on at once; ordered:
    the gateway's peak manager (`[peak]` in the site file) takes the actions one at a time, least
    customer impact first, each measured (set by the site file when `[peak]` is on)."""
    forecast_horizon_s: float = Field(default=3600.0, gt=0)
    voltage_band_pu: tuple[float, float] = (0.975, 1.05)
    feeder_priority: list[str] = Field(default_factory=list)
    """Feeders (line ids) from most to least critical; load shedding starts at the end."""
    momentary_interruption_threshold_s: float = Field(default=300.0, gt=0)
    """Reliability: interruptions restored within this time are momentary (IEEE 1366: 5 min)."""


# --------------------------------------------------------------------------- capacitor bank


class CapacitorBankAttributes(_Attrs):
    rated_capacity: float = Field(default=1.2, gt=0, description="MVAR")
    voltage_level: float = Field(default=11.0, gt=0, description="kV")
    num_steps: int = Field(default=4, ge=1, le=32)
    control_mode: Literal["voltage", "time", "temperature", "var", "manual"] = "voltage"
    switching_device: Literal["breaker", "contactor", "vacuum_switch"] = "vacuum_switch"
    connected_bus: str = ""
    coordinates: Coordinate | None = None
    maintenance_interval: float = Field(default=365.0, gt=0, description="days")
    condition_score: float = Field(default=100.0, ge=0, le=100)
    voltage_setpoint_v: float = Field(default=121.0, gt=100, lt=140, description="on the 120 V base")
    bandwidth_v: float = Field(default=6.0, gt=0)
    """V_off − V_on on the 120 V base (project default 118/124 V)."""
    on_delay_s: float = Field(default=30.0, ge=0)
    off_delay_s: float = Field(default=30.0, ge=0)
    discharge_time_s: float = Field(default=300.0, ge=0)
    """A step just opened may not close again for this long (capacitor discharge)."""
    max_daily_operations: int = Field(default=4, ge=1, validate_default=True)
    """Step commands per local calendar day, every mode and the voltage override together."""
    switching_timeout_s: float = Field(default=10.0, gt=0)
    excessive_switching_count: int = Field(default=3, ge=1)
    excessive_switching_window_s: float = Field(default=3600.0, gt=0)
    deadband_widening_factor: float = Field(default=1.5, gt=1)
    # var mode
    var_on_kvar: float | None = Field(
        default=None, allow_inf_nan=False, description="kvar drawn from the source (lagging positive)"
    )
    """Var mode: close the next step while the source supplies more than this (default 2/3 of one step)."""
    var_off_kvar: float | None = Field(
        default=None,
        allow_inf_nan=False,
        validate_default=True,
        description="kvar drawn from the source (leading negative)",
    )
    """Var mode: open the last step while the source supplies less than this (default −1/3 of one step)."""
    # time mode
    schedule_on: str = Field(default="07:00", description="HH:MM local time (UTC + utc_offset_h)")
    """Time mode: steps come in, one per ON delay, from this time of day."""
    schedule_off: str = Field(default="22:00", validate_default=True, description="HH:MM local time")
    """Time mode: steps go out, one per OFF delay, from this time of day (may be past midnight)."""
    utc_offset_h: float = Field(default=0.0, ge=-12, le=14, description="hours, local time − UTC")
    """Fixed offset of the schedule's local time and of the daily operation counter's day (no daylight saving)."""
    # temperature mode
    temp_on_c: float = Field(default=30.0, ge=-60, le=70, description="°C ambient")
    """Temperature mode: close steps while the ambient temperature is above this (air-conditioning load)."""
    temp_off_c: float = Field(default=25.0, ge=-60, le=70, validate_default=True, description="°C ambient")
    """Temperature mode: open steps while the ambient temperature is below this."""
    # voltage override (every automatic mode)
    voltage_override: bool = True
    """Open a step above `override_max_v`, close one below `override_min_v`, whatever the mode says."""
    override_min_v: float = Field(default=115.0, gt=60, lt=180, description="on the 120 V base")
    override_max_v: float = Field(default=126.0, gt=60, lt=180, validate_default=True, description="on the 120 V base")

    @property
    def step_kvar(self) -> float:
        """Reactive power of one step (kvar)."""
        return self.rated_capacity * 1000.0 / self.num_steps

    @property
    def var_on_threshold_kvar(self) -> float:
        return self.var_on_kvar if self.var_on_kvar is not None else self.step_kvar * 2.0 / 3.0

    @property
    def var_off_threshold_kvar(self) -> float:
        return self.var_off_kvar if self.var_off_kvar is not None else -self.step_kvar / 3.0

    @field_validator("schedule_on", "schedule_off")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        if not _HH_MM.fullmatch(value):
            raise ValueError(f"expected a 24-hour local time 'HH:MM' (e.g. '07:30'), found {value!r}")
        return value

    @field_validator("schedule_off")
    @classmethod
    def _schedule_differs(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("schedule_on") == value:
            raise ValueError(f"schedule_off equals schedule_on ({value}): the bank would never know whether to be in")
        return value

    @field_validator("var_off_kvar")
    @classmethod
    def _var_band(cls, value: float | None, info: ValidationInfo) -> float | None:
        d = info.data
        if not {"rated_capacity", "num_steps", "var_on_kvar"} <= d.keys():
            return value  # an earlier field is already wrong and reported
        step = d["rated_capacity"] * 1000.0 / d["num_steps"]
        on = d["var_on_kvar"] if d["var_on_kvar"] is not None else step * 2.0 / 3.0
        off = value if value is not None else -step / 3.0
        if on - off < step * (1.0 - 1e-9):
            raise ValueError(
                f"var_on_kvar − var_off_kvar = {on:.1f} − ({off:.1f}) = {on - off:.1f} kvar is less than "
                f"one step ({step:.1f} kvar): closing a step would bring the source below var_off_kvar "
                "and the bank would hunt; widen the band to at least one step"
            )
        return value

    @field_validator("temp_off_c")
    @classmethod
    def _temperature_band(cls, value: float, info: ValidationInfo) -> float:
        on = info.data.get("temp_on_c")
        if on is not None and not value < on:
            raise ValueError(f"temp_off_c ({value} °C) must be below temp_on_c ({on} °C) for hysteresis")
        return value

    @field_validator("override_max_v")
    @classmethod
    def _override_band(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("override_min_v")
        if low is not None and not value > low:
            raise ValueError(f"override_max_v ({value} V) must be above override_min_v ({low} V)")
        return value

    @field_validator("max_daily_operations")
    @classmethod
    def _enough_for_schedule(cls, value: int, info: ValidationInfo) -> int:
        steps = info.data.get("num_steps")
        if info.data.get("control_mode") == "time" and steps is not None and value < 2 * steps:
            raise ValueError(
                f"time mode brings {steps} step(s) in and out every day: max_daily_operations must be "
                f"at least {2 * steps}, found {value}"
            )
        return value


_HH_MM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


# --------------------------------------------------------------------------- renewable energy


class RenewableEnergyAttributes(_Attrs):
    resource_type: Literal["solar_pv", "wind_turbine", "battery_storage", "microgrid"] = "solar_pv"
    rated_capacity: float = Field(default=500.0, gt=0, description="kW")
    rated_apparent_power_kva: float | None = Field(default=None, gt=0)
    coordinates: Coordinate | None = None
    connected_meter: str = ""
    connected_transformer: str = ""
    reactive_power_mode: Literal["fixed", "volt-var", "volt-watt", "volt-var+volt-watt"] = "volt-var+volt-watt"
    ieee1547_category: Literal["A", "B"] = "B"
    v_ref_pu: float = Field(default=1.0, ge=0.95, le=1.05)
    fixed_power_factor: float = Field(default=1.0, gt=0, le=1)
    enter_service_delay_s: float = Field(default=300.0, ge=0)
    enter_service_v_min_pu: float = 0.917
    enter_service_v_max_pu: float = 1.05
    min_generation_kw: float | None = Field(default=None, ge=0)
    """Below this output the unit is in Standby (default 1 % of rating)."""
    q_update_deadband_kvar: float | None = Field(default=None, ge=0)
    # storage (resource_type battery_storage)
    energy_capacity_kwh: float | None = Field(default=None, gt=0)
    """Usable energy of a battery at 100 % state of charge."""
    max_charge_kw: float | None = Field(default=None, gt=0)
    """Largest charging power (default: rated_capacity)."""
    soc_min_pct: float = Field(default=10.0, ge=0, lt=100)
    """Reserve kept for the site: the battery stops discharging here."""
    soc_max_pct: float = Field(default=95.0, gt=0, le=100)
    """The battery stops charging here."""

    @model_validator(mode="after")
    def _check_storage(self) -> RenewableEnergyAttributes:
        if self.soc_min_pct >= self.soc_max_pct:
            raise ValueError(f"soc_min_pct ({self.soc_min_pct}) must be below soc_max_pct ({self.soc_max_pct})")
        if self.resource_type == "battery_storage" and self.energy_capacity_kwh is None:
            raise ValueError("a battery_storage needs energy_capacity_kwh")
        return self
