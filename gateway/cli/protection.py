"""`stima protection test|curve|settings`: commissioning checks of a breaker's protection settings.

`test` and `curve` are offline: they read the site file and run the protection core in-process
on a simulated injection (`test --live` also plays the injection into the simulator's relay).
`settings export|diff` read the running settings from the daemon; `settings check` is offline.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from gateway.cli import add_common, config_path, runtime_dir, table
from gateway.protection.core import ElementKind, operate_time_s, thermal_trip_time_s
from gateway.protection.sequence import (
    InjectionState,
    SequenceError,
    SequenceEvent,
    compare,
    describe_scheme,
    integrating_elements,
    load_sequence,
    parse_sequence,
    play,
    state_inputs,
)
from gateway.protection.settings_files import (
    SettingsFileError,
    check_against_site,
    diff,
    digest,
    export_text,
)
from gateway.protection.settings_files import read as read_settings
from gateway.protection.settings import (
    CURVES_BY_NAME,
    ELEMENT_FIELDS,
    Frequency81,
    InverseTime51,
    Overcurrent50,
    Overvoltage59,
    ProtectionScheme,
    Thermal49,
    Undervoltage27,
)

CURVE_TABLE_M = (1.1, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0)
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_SCALE = {
    "current": {"": 1.0, "a": 1.0, "ka": 1000.0},
    "voltage": {"": 1.0, "kv": 1.0, "v": 0.001},
    "frequency": {"": 1.0, "hz": 1.0},
}


class UsageError(Exception):
    """A command-line value or a breaker/element that the site file does not have."""


def parse_quantity(text: str, kind: str) -> tuple[float, str]:
    """'2400A', '2.4kA' -> A; '7.7kV', '0.7pu' -> kV or pu; '48.5Hz' -> Hz."""
    match = _QUANTITY.match(text)
    if not match:
        raise UsageError(f"{text!r} is not a {kind} (examples: 2400A, 2.4kA, 7.7kV, 0.7pu, 48.5Hz)")
    value, unit = float(match.group(1)), match.group(2).lower()
    if kind == "voltage" and unit == "pu":
        return value, "pu"
    scale = _SCALE[kind].get(unit)
    if scale is None:
        raise UsageError(
            f"{text!r}: unit {match.group(2)!r} is not a {kind} unit (use {', '.join(u for u in _SCALE[kind] if u)})"
        )
    return value * scale, ""


# ------------------------------------------------------------------ setup


def _site_scheme(args: argparse.Namespace) -> ProtectionScheme:
    from gateway.config import load

    site = load(config_path(args))
    for scheme in site.protection:
        if scheme.breaker == args.breaker:
            return scheme
    have = ", ".join(s.breaker for s in site.protection) or "none"
    raise UsageError(f"{args.breaker} has no protection scheme in {config_path(args)} (have: {have})")


def _element(scheme: ProtectionScheme, name: str) -> Any:
    if name not in ELEMENT_FIELDS:
        raise UsageError(f"unknown element {name!r}; expected one of {', '.join(ELEMENT_FIELDS)}")
    element = getattr(scheme.elements, ELEMENT_FIELDS[name][0])
    if element is None:
        have = ", ".join(n for n, _, _ in scheme.configured_elements())
        raise UsageError(f"{scheme.breaker} has no {name} element (configured: {have})")
    return element


def _single_element_scheme(scheme: ProtectionScheme, name: str, fast: bool) -> ProtectionScheme:
    """The breaker's scheme with only `name` (no 79, no 50BF), on its fast curve if asked."""
    element = _element(scheme, name)
    if isinstance(element, InverseTime51) and fast:
        element = element.model_copy(
            update={"curve": element.fast_curve or element.curve, "tms": element.fast_tms or element.tms}
        )
    if isinstance(element, Overcurrent50):
        element = element.model_copy(update={"fast_only": False})
    data = {
        "breaker": scheme.breaker,
        "nominal_voltage_kv": scheme.nominal_voltage_kv,
        "elements": {name: element.model_dump()},
    }
    return ProtectionScheme.model_validate(data)


def expected_time_s(
    scheme: ProtectionScheme, name: str, value: float, fast: bool = False, preload_a: float = 0.0
) -> float:
    """Operate time from the setting's formula; inf when the element does not operate."""
    e = _element(scheme, name)
    if isinstance(e, InverseTime51):
        curve = CURVES_BY_NAME[(e.fast_curve or e.curve) if fast else e.curve]
        tms = (e.fast_tms or e.tms) if fast else e.tms
        m = value / e.pickup_a
        if not m > e.start_factor:
            return math.inf
        return max(e.min_time_s, operate_time_s(curve, tms, min(m, e.m_max))) + e.add_delay_s
    if isinstance(e, Overcurrent50):
        return e.delay_s if value > e.pickup_a else math.inf
    if isinstance(e, Thermal49):
        return thermal_trip_time_s(value, preload_a, e.k_factor * e.base_current_a, e.tau_s)
    pu = value / scheme.nominal_voltage_kv
    if isinstance(e, Undervoltage27):
        return e.delay_s if pu < e.pickup_pu else math.inf
    if isinstance(e, Overvoltage59):
        return e.delay_s if pu > e.pickup_pu else math.inf
    assert isinstance(e, Frequency81)
    under = name == "81U"
    return e.delay_s if (value < e.pickup_hz if under else value > e.pickup_hz) else math.inf


def simulate(
    scheme: ProtectionScheme,
    name: str,
    value: float,
    *,
    fast: bool = False,
    preload_a: float = 0.0,
    step_s: float | None = None,
    backend: str = "auto",
    limit_s: float | None = None,
) -> tuple[float, float, str]:
    """Inject `value` on the element's input from t = 0 and run the core until it trips.

    Returns (operate time or inf, sample period used, backend name)."""
    from gateway.protection.engine import ProtectionEngine, ProtectionEvent

    single = _single_element_scheme(scheme, name, fast)
    engine = ProtectionEngine([single], backend=backend)
    expected = expected_time_s(scheme, name, value, fast, preload_a)
    if step_s is None:
        step_s = 0.001 if not math.isfinite(expected) else min(max(expected / 5000.0, 0.0002), 0.05)
    if limit_s is None:
        limit_s = 3.0 * expected + 1.0 if math.isfinite(expected) else 60.0
    kind = ELEMENT_FIELDS[name][1]
    nominal = {
        "ia": 0.0,
        "ib": 0.0,
        "ic": 0.0,
        "in": 0.0,
        "closed": 1.0,
        "voltage_kv": scheme.nominal_voltage_kv,
        "frequency_hz": 50.0,
    }
    if kind in (ElementKind.UF81, ElementKind.OF81):
        f81 = single.elements.uf81 or single.elements.of81
        assert f81 is not None
        nominal["frequency_hz"] = 60.0 if f81.pickup_hz > 55.0 else 50.0
    inputs = {n: single.point(n) for n in single.input_names()}
    target = {
        ElementKind.N50: "in",
        ElementKind.N51: "in",
        ElementKind.UV27: "voltage_kv",
        ElementKind.OV59: "voltage_kv",
        ElementKind.UF81: "frequency_hz",
        ElementKind.OF81: "frequency_hz",
    }.get(kind)
    targets = [target] if target else ["ia", "ib", "ic"]
    t0 = 0.0
    if kind == ElementKind.TH49 and preload_a > 0.0:
        th = single.elements.th49
        assert th is not None
        for n in ("ia", "ib", "ic"):
            nominal[n] = preload_a
        t0 = 40.0 * th.tau_s  # theta within e^-40 of the pre-load level
    for n, point in inputs.items():
        engine.on_sample(point, nominal[n], True, 0.0)
    engine.step(t0)
    k = 0
    while k * step_s <= limit_s:
        now = t0 + k * step_s
        actions = []
        for n in targets:
            actions += engine.on_sample(inputs[n], value, True, now) if k == 0 else []
        if k:
            actions = engine.step(now)
        for a in actions:
            if isinstance(a, ProtectionEvent) and a.kind == "trip":
                return now - t0, step_s, engine.backend_name
        k += 1
    return math.inf, step_s, engine.backend_name


# ------------------------------------------------------------------ commands


def _describe(scheme: ProtectionScheme, name: str, fast: bool) -> str:
    e = _element(scheme, name)
    if isinstance(e, InverseTime51):
        curve = (e.fast_curve or e.curve) if fast else e.curve
        tms = (e.fast_tms or e.tms) if fast else e.tms
        label = "TMS" if curve.startswith("iec") else "TD"
        return f"{curve.upper()}, pickup {e.pickup_a:g} A, {label} {tms:g}" + (" (fast curve)" if fast else "")
    if isinstance(e, Overcurrent50):
        return f"pickup {e.pickup_a:g} A, delay {e.delay_s:g} s"
    if isinstance(e, Thermal49):
        return f"k I_B = {e.k_factor * e.base_current_a:g} A, tau {e.tau_s:g} s"
    if isinstance(e, Undervoltage27 | Overvoltage59):
        return f"pickup {e.pickup_pu:g} pu of {scheme.nominal_voltage_kv:g} kV, delay {e.delay_s:g} s"
    assert isinstance(e, Frequency81)
    return f"pickup {e.pickup_hz:g} Hz, delay {e.delay_s:g} s"


def _fmt_time(t: float) -> str:
    return "does not operate" if not math.isfinite(t) else f"{t:.4f} s"


def _grouped(events: list[SequenceEvent]) -> list[tuple[str, SequenceEvent]]:
    """Per-phase events of one instant shown as one line: ('51P pickup ABC', first event)."""
    out: list[tuple[str, SequenceEvent]] = []
    open_groups: dict[tuple[str, str], int] = {}
    instant: float | None = None
    for e in events:
        if e.time_s != instant:
            instant, open_groups = e.time_s, {}
        key = (e.kind, e.element)
        if e.phase and key in open_groups:
            k = open_groups[key]
            out[k] = (out[k][0] + e.phase, out[k][1])
            continue
        if e.phase:
            open_groups[key] = len(out)
        out.append((e.label(), e))
    return out


def _sequence_states(args: argparse.Namespace) -> list[InjectionState]:
    if args.seq and args.seq_file:
        raise UsageError("give the sequence with --seq or --seq-file, not both")
    try:
        return load_sequence(Path(args.seq_file)) if args.seq_file else parse_sequence(args.seq, "--seq")
    except SequenceError as exc:
        raise UsageError(str(exc)) from None


def cmd_test_sequence(args: argparse.Namespace) -> int:
    """Play a sequence of states on both backends and show what each did, side by side."""
    try:
        scheme = _site_scheme(args)
        states = _sequence_states(args)
        if args.element is not None:
            scheme = _single_element_scheme(scheme, args.element, args.fast)
        elif args.fast:
            raise UsageError("--fast selects one 51 element's fast curve: give --element 51P or 51N with it")
        sample_s = args.step if args.step is not None else 0.001
        runs = []
        backends = ["native", "reference"] if args.backend == "auto" else [args.backend]
        for backend in backends:
            try:
                runs.append(
                    play(
                        scheme,
                        states,
                        backend=backend,
                        sample_s=sample_s,
                        element=args.element,
                        breaker_fails=args.breaker_fails,
                    )
                )
            except RuntimeError as exc:  # the native core is not built
                print(f"stima protection test: {exc}")
        if not runs:
            return 2
        live = _live(args, scheme, states, runs[0].trip_s) if args.live else None
    except (UsageError, SequenceError) as exc:
        print(f"stima protection test: {exc}")
        return 2
    problems = compare(runs[0], runs[1]) if len(runs) == 2 else []
    live_ok = live is None or live.get("agree", False)
    what = f"{args.element} alone" if args.element else f"the whole scheme ({describe_scheme(scheme)})"
    if args.json:
        print(
            json.dumps(
                {
                    "breaker": scheme.breaker,
                    "tested": what,
                    "states": [s.as_dict() for s in states],
                    "runs": [r.as_dict() for r in runs],
                    "agree": not problems,
                    "differences": problems,
                    "live": live,
                },
                indent=2,
            )
        )
        return 0 if not problems and live_ok else 1

    print(f"{scheme.breaker}: {what}; sample period {sample_s * 1000:g} ms")
    start = 0.0
    rows = []
    for k, state in enumerate(states, start=1):
        v = state_inputs(scheme, state, args.element in ("50N", "51N"))
        rows.append(
            (
                k,
                f"{start:.3f}",
                f"{state.duration_s:g}",
                f"{v['ia']:g}",
                f"{v['in']:g}",
                f"{v['voltage_kv']:.4g}",
                f"{v['frequency_hz']:g}",
            )
        )
        start += state.duration_s
    print(table(rows, ["STATE", "START_S", "DURATION_S", "I_A", "IN_A", "V_KV", "F_HZ"]))
    print()
    columns = [_grouped(r.events) for r in runs]
    event_rows = []
    for k in range(max(len(c) for c in columns)):
        cells = [c[k] if k < len(c) else None for c in columns]
        label = next(cell[0] for cell in cells if cell is not None)
        first = next(cell[1] for cell in cells if cell is not None)
        event_rows.append((label, first.state, *[f"{cell[1].time_s:.4f}" if cell else "-" for cell in cells]))
    print(
        table(event_rows, ["EVENT", "STATE", *[f"{r.backend.upper()}_S" for r in runs]])
        if event_rows
        else "no pickup, no trip"
    )
    integrating = integrating_elements(scheme)
    if integrating:
        print()
        int_rows = []
        for k in range(len(states)):
            for name in integrating:
                shown = [
                    f"{100 * r.integrated[k][name]:.2f} %" if name != "49" else f"theta {r.integrated[k][name]:.4f}"
                    for r in runs
                ]
                int_rows.append((k + 1, name, *shown))
        print("integrated at the end of each state (51: share of the operate time; 49: thermal level)")
        print(table(int_rows, ["STATE", "ELEMENT", *[r.backend.upper() for r in runs]]))
    print()
    for r in runs:
        trip = r.trip_s
        print(f"trip time ({r.backend}): " + ("no trip" if trip is None else f"{trip:.4f} s from the start"))
    if len(runs) == 2:
        print(
            "the C core and the Python reference agree"
            if not problems
            else "MISMATCH between the C core and the Python reference:\n  " + "\n  ".join(problems)
        )
    if live is not None:
        print(_live_text(live))
    return 0 if not problems and live_ok else 1


def _relay_poll_s(args: argparse.Namespace, scheme: ProtectionScheme) -> float:
    """Poll period of the IED that serves the bay's phase current (0 when reported, not polled)."""
    from gateway.config import load

    point = scheme.point("ia")
    for ied in load(config_path(args)).ieds:
        if any(p.id == point for p in ied.points):
            return ied.poll_period_ms / 1000.0
    return 0.0


def _daemon_runs(args: argparse.Namespace, scheme: ProtectionScheme) -> None:
    """The daemon is up and runs `scheme` as the site file has it: else the live trip time
    would be compared with a prediction for other settings (or nothing would trip)."""
    from gateway.control import ControlError, DaemonNotRunning, call

    try:
        running = call(runtime_dir(args), "protection.settings")
    except DaemonNotRunning as exc:
        raise UsageError(f"--live needs the running daemon, which trips the breaker: {exc}") from None
    except ControlError as exc:
        raise UsageError(f"--live: the daemon refused to give its protection settings: {exc}") from None
    theirs = next((d for d in running["schemes"] if d.get("breaker") == scheme.breaker), None)
    if theirs is None or digest([ProtectionScheme.model_validate(theirs)]) != digest([scheme]):
        raise UsageError(
            f"the daemon runs other protection settings for {scheme.breaker} than {config_path(args)}"
            f" (see stima protection settings diff {config_path(args)}): the comparison would "
            "be meaningless"
        )


def _live(
    args: argparse.Namespace, scheme: ProtectionScheme, states: list[InjectionState], expected_s: float | None
) -> dict[str, Any]:
    """Play `states` on the simulator's relay of the breaker; the daemon's protection, polling it
    through the real protocols, trips the simulated breaker; compare the trip time measured at
    the breaker with `expected_s` from the core offline."""
    import time

    from hil.control import DEFAULT_SOCKET, ControlError, request

    if args.element is not None:
        raise UsageError("--live tests the whole scheme as the daemon runs it: leave out --element")
    if args.breaker_fails:
        raise UsageError(
            "--live: the simulator's breaker opens on a trip; --breaker-fails is offline only "
            "(stima-hil inject failure CB-... --mode stuck makes it fail)"
        )
    _daemon_runs(args, scheme)
    socket_path = args.hil_socket or DEFAULT_SOCKET
    payload = []
    for state in states:
        values = state_inputs(scheme, state, False)
        payload.append({"duration_s": state.duration_s, **values})
    total = sum(s.duration_s for s in states)
    try:
        request(socket_path, {"op": "inject", "breaker": scheme.breaker, "states": payload})
        deadline = time.monotonic() + total + 30.0
        while True:
            status = request(socket_path, {"op": "injection"})
            if not status.get("running", True) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except ControlError as exc:
        raise UsageError(f"--live: {exc}") from None
    poll_s = _relay_poll_s(args, scheme)
    tolerance = poll_s + args.live_tolerance
    measured = status.get("trip_s")
    agree = not status.get("running") and (
        (measured is None and expected_s is None)
        or (measured is not None and expected_s is not None and abs(measured - expected_s) <= tolerance)
    )
    return {
        "breaker": scheme.breaker,
        "measured_trip_s": measured,
        "expected_trip_s": expected_s,
        "difference_s": None if measured is None or expected_s is None else measured - expected_s,
        "tolerance_s": tolerance,
        "relay_poll_s": poll_s,
        "finished": not status.get("running"),
        "commands": status.get("commands", []),
        "state_starts_s": status.get("state_starts_s", []),
        "agree": agree,
    }


def _live_text(live: dict[str, Any]) -> str:
    lines = [f"live on the simulator ({live['breaker']}'s relay polled every {live['relay_poll_s'] * 1000:g} ms):"]
    if not live["finished"]:
        lines.append("  the sequence did not finish in time")
    for c in live["commands"]:
        lines.append(f"  {c['kind']} command at the breaker: {c['time_s']:.4f} s (state {c['state']})")
    measured, expected = live["measured_trip_s"], live["expected_trip_s"]
    lines.append(
        f"  trip time: measured {_fmt_time(measured if measured is not None else math.inf)}, "
        f"core {_fmt_time(expected if expected is not None else math.inf)}"
        + (f", difference {1000 * live['difference_s']:+.1f} ms" if live["difference_s"] is not None else "")
    )
    lines.append(
        f"  {'within' if live['agree'] else 'OUTSIDE'} {1000 * live['tolerance_s']:g} ms "
        "(one poll period and the transport allowance)"
    )
    return "\n".join(lines)


def cmd_test(args: argparse.Namespace) -> int:
    if args.seq is not None or args.seq_file is not None:
        return cmd_test_sequence(args)
    if args.live:
        print("stima protection test: --live plays a sequence: give --seq or --seq-file")
        return 2
    try:
        if args.element is None:
            raise UsageError("give --element (or a sequence with --seq or --seq-file to test the whole scheme)")
        scheme = _site_scheme(args)
        e = _element(scheme, args.element)
        if isinstance(e, Undervoltage27 | Overvoltage59):
            if args.voltage is None:
                raise UsageError(f"{args.element} needs --voltage (e.g. 7.7kV or 0.7pu)")
            value, unit = parse_quantity(args.voltage, "voltage")
            if unit == "pu":
                value *= scheme.nominal_voltage_kv
            shown = f"V = {value:g} kV ({value / scheme.nominal_voltage_kv:.3f} pu)"
        elif isinstance(e, Frequency81):
            if args.frequency is None:
                raise UsageError(f"{args.element} needs --frequency (e.g. 48.2Hz)")
            value, _ = parse_quantity(args.frequency, "frequency")
            shown = f"f = {value:g} Hz"
        else:
            if args.current is None:
                raise UsageError(f"{args.element} needs --current (e.g. 2400A)")
            value, _ = parse_quantity(args.current, "current")
            shown = f"I = {value:g} A"
            if isinstance(e, InverseTime51):
                shown += f", M = {value / e.pickup_a:.4g}"
        preload = parse_quantity(args.preload, "current")[0] if args.preload else 0.0
        expected = expected_time_s(scheme, args.element, value, args.fast, preload)
        actual, step_s, backend = simulate(
            scheme, args.element, value, fast=args.fast, preload_a=preload, step_s=args.step, backend=args.backend
        )
    except UsageError as exc:
        print(f"stima protection test: {exc}")
        return 2
    agree = (not math.isfinite(expected) and not math.isfinite(actual)) or (
        math.isfinite(expected) and math.isfinite(actual) and abs(actual - expected) <= step_s + 1e-9
    )
    result = {
        "breaker": scheme.breaker,
        "element": args.element,
        "setting": _describe(scheme, args.element, args.fast),
        "injected": value,
        "expected_s": expected if math.isfinite(expected) else None,
        "core_s": actual if math.isfinite(actual) else None,
        "step_s": step_s,
        "backend": backend,
        "agree": agree,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lines = [
            f"{scheme.breaker} {args.element} ({result['setting']}): {shown}"
            + (f", pre-load {preload:g} A" if preload else ""),
            f"  expected operate time (formula):  {_fmt_time(expected)}",
            f"  core ({backend}) on injection:   {_fmt_time(actual)}  (sample period {step_s * 1000:g} ms)",
        ]
        if math.isfinite(expected) and math.isfinite(actual):
            lines.append(
                f"  difference: {1000 * (actual - expected):+.3f} ms "
                f"({'within' if agree else 'OUTSIDE'} one sample period)"
            )
        elif not agree:
            lines.append("  MISMATCH between formula and core")
        print("\n".join(lines))
    return 0 if agree else 1


def curve_rows(scheme: ProtectionScheme, name: str, fast: bool, preload_a: float) -> list[dict[str, float | None]]:
    e = _element(scheme, name)
    if isinstance(e, InverseTime51):
        base = e.pickup_a
    elif isinstance(e, Thermal49):
        base = e.k_factor * e.base_current_a
    else:
        raise UsageError(f"{name} is a definite-time element ({_describe(scheme, name, fast)}): no curve")
    rows = []
    for m in CURVE_TABLE_M:
        t = expected_time_s(scheme, name, m * base, fast, preload_a)
        rows.append({"m": m, "current_a": m * base, "time_s": t if math.isfinite(t) else None})
    return rows


def cmd_curve(args: argparse.Namespace) -> int:

    try:
        scheme = _site_scheme(args)
        preload = parse_quantity(args.preload, "current")[0] if args.preload else 0.0
        rows = curve_rows(scheme, args.element, args.fast, preload)
    except UsageError as exc:
        print(f"stima protection curve: {exc}")
        return 2
    title = f"{scheme.breaker} {args.element} ({_describe(scheme, args.element, args.fast)})"
    if args.json:
        print(
            json.dumps({"breaker": scheme.breaker, "element": args.element, "setting": title, "rows": rows}, indent=2)
        )
    else:
        print(title)
        print(
            table(
                [(r["m"], f"{r['current_a']:.1f}", "-" if r["time_s"] is None else f"{r['time_s']:.4f}") for r in rows],
                ["M", "CURRENT_A", "OPERATE_TIME_S"],
            )
        )
    if args.plot:
        return _plot(scheme, args.element, args.fast, preload, Path(args.plot), title)
    return 0


def _plot(scheme: ProtectionScheme, name: str, fast: bool, preload: float, path: Path, title: str) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "stima protection curve: --plot needs matplotlib, which is not installed "
            "(pip install 'stima[plot]'); the table above is complete without it"
        )
        return 1
    e = _element(scheme, name)
    m_max = e.m_max * 1.5 if isinstance(e, InverseTime51) else 10.0
    base = e.pickup_a if isinstance(e, InverseTime51) else e.k_factor * e.base_current_a
    ms = [1.02 * (m_max / 1.02) ** (i / 400) for i in range(401)]
    ts = [expected_time_s(scheme, name, m * base, fast, preload) for m in ms]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.loglog([m * base for m in ms], [t if math.isfinite(t) else float("nan") for t in ts])
    ax.set_xlabel("current (A)")
    ax.set_ylabel("operate time (s)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        print(f"stima protection curve: cannot write {path}: {exc}")
        return 1
    finally:
        plt.close(fig)
    print(f"curve written to {path}")
    return 0


# ------------------------------------------------------------------ settings as files


def _running_settings(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.control import call

    running: dict[str, Any] = call(runtime_dir(args), "protection.settings")
    return running


def _running_schemes(running: dict[str, Any]) -> list[ProtectionScheme]:
    return [ProtectionScheme.model_validate(d) for d in running["schemes"]]


def _only_breaker(schemes: list[ProtectionScheme], breaker: str | None) -> list[ProtectionScheme]:
    if breaker is None:
        return schemes
    chosen = [s for s in schemes if s.breaker == breaker]
    if not chosen:
        raise UsageError(
            f"no protection scheme for {breaker} (have: {', '.join(s.breaker for s in schemes) or 'none'})"
        )
    return chosen


def cmd_settings_export(args: argparse.Namespace) -> int:
    """The running settings as a settings file (to review, edit and check)."""
    import time

    try:
        running = _running_settings(args)
        schemes = _only_breaker(_running_schemes(running), args.breaker)
    except UsageError as exc:
        print(f"stima protection settings export: {exc}")
        return 2
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = export_text(
        schemes,
        f"protection settings of {running['site']}, running in stima-gatewayd "
        f"(site file {running['config']}), exported {stamp}",
    )
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            print(f"stima protection settings export: cannot write {args.out}: {exc.strerror or exc}")
            return 2
        print(f"{len(schemes)} scheme(s) written to {args.out}; settings digest {digest(schemes)}")
    else:
        print(text, end="")
    return 0


def _value(v: Any) -> str:
    return "(absent)" if v is None else json.dumps(v)


def cmd_settings_diff(args: argparse.Namespace) -> int:
    """The running settings against a file: exit 0 when they are the same, 1 when not."""
    try:
        proposed = _only_breaker(read_settings(Path(args.file)), args.breaker)
        running = _only_breaker(_running_schemes(_running_settings(args)), args.breaker)
    except (UsageError, SettingsFileError) as exc:
        print(f"stima protection settings diff: {exc}")
        return 2
    changes = diff(running, proposed)
    result = {
        "running_digest": digest(running),
        "file_digest": digest(proposed),
        "changes": [c.as_dict() for c in changes],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 1 if changes else 0

    print(f"running  {result['running_digest']}\n{args.file}  {result['file_digest']}")
    if not changes:
        print("no difference: the file holds the running settings")
        return 0
    rows = []
    for c in changes:
        if not c.key:
            rows.append(
                (
                    c.breaker,
                    "(whole scheme)",
                    "(absent)" if c.old is None else "present",
                    "(absent)" if c.new is None else "present",
                )
            )
        else:
            rows.append((c.breaker, c.key, _value(c.old), _value(c.new)))
    print(table(rows, ["BREAKER", "SETTING", "RUNNING", "FILE"]))
    print(f"{len(changes)} difference(s)")
    return 1


def cmd_settings_check(args: argparse.Namespace) -> int:
    """A settings file against the site file it is meant for, before it goes in and is reloaded."""
    import tomllib

    site_path = config_path(args)
    try:
        proposed = read_settings(Path(args.file))
        site_data = tomllib.loads(site_path.read_text())
    except SettingsFileError as exc:
        problems = exc.problems
        proposed = []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        print(f"stima protection settings check: cannot read the site file {site_path}: {exc}")
        return 2
    else:
        problems = check_against_site(proposed, site_data, f"{site_path} with the settings of {args.file}")
    result = {
        "file": args.file,
        "site_file": str(site_path),
        "schemes": [s.breaker for s in proposed],
        "digest": digest(proposed) if proposed else None,
        "problems": problems,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    elif problems:
        print(f"{args.file}: {len(problems)} problem(s); not fit to load:")
        print("\n".join(f"  {p}" for p in problems))
    else:
        print(
            f"{args.file}: {len(proposed)} scheme(s) ({', '.join(result['schemes'])}) fit {site_path}; "
            f"both protection cores accept them\nsettings digest {result['digest']}"
        )
    return 1 if problems else 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    prot = subparsers.add_parser("protection", help="protection settings: test an element, show its curve")
    sub = prot.add_subparsers(dest="protection_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("breaker", metavar="BREAKER", help="breaker id, e.g. CB-045")
        p.add_argument(
            "--element",
            required=required,
            choices=list(ELEMENT_FIELDS),
            metavar="ELEMENT",
            help=f"one of {', '.join(ELEMENT_FIELDS)}"
            + ("" if required else " (a sequence without it: the whole scheme)"),
        )
        p.add_argument(
            "--config", "-c", type=Path, default=None, help="site file (default: $STIMA_CONFIG or /etc/stima/site.toml)"
        )
        p.add_argument("--fast", action="store_true", help="51: use the fast (first-trip) curve")
        p.add_argument("--preload", default=None, help="49: steady pre-load current (hot start), e.g. 400A")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    test = sub.add_parser(
        "test",
        help="expected operate time from the formula vs the core on a simulated injection, or a sequence of states",
    )
    common(test, required=False)
    test.add_argument("--current", help="injected current, e.g. 2400A or 2.4kA")
    test.add_argument("--voltage", help="27/59: injected voltage, e.g. 7.7kV or 0.7pu")
    test.add_argument("--frequency", help="81U/81O: injected frequency, e.g. 48.2Hz")
    test.add_argument(
        "--seq",
        metavar="STATES",
        help="a sequence of states, e.g. '1s 300A; 2s 2400A; 1s 800A; "
        "2s 0A' (a state: duration, then any of current, In=current, voltage, frequency)",
    )
    test.add_argument(
        "--seq-file",
        metavar="FILE",
        help="the sequence from a file: one state per line as in "
        "--seq, or CSV with duration_s,current_a,neutral_a,voltage_kv,frequency_hz",
    )
    test.add_argument(
        "--breaker-fails",
        action="store_true",
        help="the simulated breaker does not open on a trip: the 50BF retrip and backup trip",
    )
    test.add_argument(
        "--live",
        action="store_true",
        help="also play the sequence on the running simulator's "
        "relay, through the daemon, and compare the measured trip time",
    )
    test.add_argument(
        "--hil-socket", type=Path, default=None, help="the simulator's control socket (default: .run/hil.sock)"
    )
    test.add_argument(
        "--runtime-dir",
        type=Path,
        default=None,
        help="--live: the daemon's runtime directory (default: the site file's runtime_dir)",
    )
    test.add_argument(
        "--live-tolerance",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="--live: allowed difference beyond one poll period of the relay (default 0.1 s)",
    )
    test.add_argument("--step", type=float, default=None, help="sample period of the simulation (s)")
    test.add_argument("--backend", choices=["auto", "native", "reference"], default="auto")
    test.set_defaults(func=cmd_test)

    curve = sub.add_parser("curve", help="operate time vs multiple of pickup (table, optional PNG)")
    common(curve)
    curve.add_argument("--plot", metavar="FILE", help="write the curve as a PNG (needs matplotlib)")
    curve.set_defaults(func=cmd_curve)

    settings = sub.add_parser(
        "settings", help="the running settings as a file: export, diff against a file, check a file before a reload"
    )
    settings_sub = settings.add_subparsers(dest="settings_command", required=True, metavar="ACTION")
    export = settings_sub.add_parser("export", help="the daemon's running protection settings, in full, as TOML")
    export.add_argument("--out", metavar="FILE", help="write to FILE (default: standard output)")
    export.add_argument("--breaker", help="only this breaker's scheme")
    add_common(export)
    export.set_defaults(func=cmd_settings_export)
    dif = settings_sub.add_parser(
        "diff", help="every setting where a file differs from the running ones (exit 1 when any)"
    )
    dif.add_argument("file", metavar="FILE", help="settings file (or a site file)")
    dif.add_argument("--breaker", help="only this breaker's scheme")
    add_common(dif)
    dif.set_defaults(func=cmd_settings_diff)
    chk = settings_sub.add_parser(
        "check",
        help="would the site file load with these settings, and would both "
        "protection cores take them (exit 1 when not)",
    )
    chk.add_argument("file", metavar="FILE", help="settings file (checked against the site file of --config)")
    add_common(chk)
    chk.set_defaults(func=cmd_settings_check)
