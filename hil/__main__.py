"""`stima-hil`: run the simulated substation, and inject events into a running one.

stima-hil serve --config SITE.toml [--config NEIGHBOUR.toml ...] [--speed 1.0] [--seed 0] [--meters N] [--control PATH]
stima-hil inject fault LINE-045 --distance 2300m --type 3ph [--transient] [--impedance 0.5]
stima-hil inject commloss IED-CB-045 --for 30s
stima-hil inject loadstep XFMR-101 --factor 1.3
stima-hil inject temp XFMR-101 --delta 25 --over 600s
stima-hil inject failure SW-045-1 --mode stuck|slow|none [--delay 5s]
stima-hil inject local SW-045-1 [--remote]
stima-hil inject operate SW-045-1 open|close
stima-hil inject external TIE-046-061 --dead|--live
stima-hil inject ramp SUB-007 --rate 0.5MW/h [--from 28.5MW] [--ambient 35]
stima-hil inject clear
stima-hil status [--json]
stima-hil scenario run NAME [--json] [--seed N]
stima-hil scenario list
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from hil.control import (
    DEFAULT_SOCKET,
    ControlError,
    UnitError,
    parse_distance_m,
    parse_duration_s,
    parse_factor,
    parse_temperature_delta_c,
    request,
)

log = logging.getLogger("hil")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stima-hil", description="Stima hardware-in-the-loop simulator")
    parser.add_argument(
        "--control",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"control socket of the running simulator (default {DEFAULT_SOCKET})",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--control",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"control socket of the running simulator (default {DEFAULT_SOCKET})",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", parents=[common], help="serve every IED of a site file from the simulated substation"
    )
    serve.add_argument(
        "--config",
        required=True,
        type=Path,
        action="append",
        help="site file (TOML); give it once per substation to serve neighbouring substations "
        "from one model (their shared ties joined)",
    )
    serve.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per real second; 0 = as fast as possible (default 1)",
    )
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--meters", type=int, default=None, help="smart meters in the AMI feed (default: the site's)")
    serve.add_argument("--step", default="10ms", help="simulated time per model step (default 10ms)")
    serve.add_argument(
        "--ami-interval", default="15min", help="simulated time between two readings of every meter (default 15min)"
    )
    serve.add_argument("--ami-batch", type=int, default=1000, help="meters per AMI message (default 1000)")
    serve.add_argument("--no-ami", action="store_true", help="do not publish smart-meter readings")
    serve.add_argument(
        "--bind", default=None, help="listen on this address instead of each IED's configured host (e.g. 0.0.0.0)"
    )
    serve.add_argument("--duration", default=None, help="stop after this much simulated time (e.g. 10min)")
    serve.add_argument("--log-level", default="INFO")

    inject = sub.add_parser("inject", parents=[common], help="inject an event into the running simulator")
    kinds = inject.add_subparsers(dest="kind", required=True)
    fault = kinds.add_parser("fault", parents=[common], help="a short circuit on a line")
    fault.add_argument("line")
    fault.add_argument("--distance", required=True, help="from the line's breaker, e.g. 2300m or 2.3km")
    fault.add_argument("--type", default="3ph", help="3ph, ll (2ph), llg (2ph-g) or slg (1ph) (default 3ph)")
    fault.add_argument("--transient", action="store_true", help="clears by itself once the line is dead")
    fault.add_argument("--impedance", default="0", help="fault impedance in ohms (default 0)")
    commloss = kinds.add_parser("commloss", parents=[common], help="an IED stops answering for a while")
    commloss.add_argument("ied")
    commloss.add_argument("--for", dest="duration", required=True, help="e.g. 30s or 5min")
    loadstep = kinds.add_parser("loadstep", parents=[common], help="scale the load behind an element")
    loadstep.add_argument("target")
    loadstep.add_argument("--factor", required=True, help="e.g. 1.3 or 130%%")
    temp = kinds.add_parser("temp", parents=[common], help="ramp a transformer's temperature")
    temp.add_argument("transformer")
    temp.add_argument("--delta", required=True, help="degrees C, e.g. 25")
    temp.add_argument("--over", default="0s", help="ramp duration, e.g. 600s or 10min (default: a step)")
    failure = kinds.add_parser("failure", parents=[common], help="a switching device fails to operate")
    failure.add_argument("device")
    failure.add_argument(
        "--mode",
        required=True,
        choices=("stuck", "slow", "none"),
        help="stuck: never moves; slow: moves after --delay; none: healthy again",
    )
    failure.add_argument("--delay", default=None, help="for --mode slow: time before it moves, e.g. 5s")
    local = kinds.add_parser(
        "local", parents=[common], help="put a switching device in local control (it refuses remote commands)"
    )
    local.add_argument("device")
    local.add_argument("--remote", action="store_true", help="back to remote control")
    operate = kinds.add_parser("operate", parents=[common], help="open or close a switching device by hand")
    operate.add_argument("device")
    operate.add_argument("action", choices=("open", "close"))
    external = kinds.add_parser(
        "external", parents=[common], help="the neighbouring feeder behind an external tie goes dead or comes back"
    )
    external.add_argument("tie")
    state = external.add_mutually_exclusive_group(required=True)
    state.add_argument("--dead", action="store_true")
    state.add_argument("--live", action="store_true")
    ramp = kinds.add_parser(
        "ramp", parents=[common], help="the demand behind a substation rises along a ramp (simulated time)"
    )
    ramp.add_argument("substation")
    ramp.add_argument("--rate", required=True, help="e.g. 0.5MW/h, 500kW/h or -200kW/h")
    ramp.add_argument("--from", dest="start", default=None, help="its total load now, e.g. 28.5MW (default: as is)")
    ramp.add_argument("--ambient", default=None, help="ambient temperature held at its transformers, e.g. 35")
    kinds.add_parser("clear", parents=[common], help="clear every fault")
    age = kinds.add_parser(
        "age", parents=[common], help="age a transformer months in seconds and write its monitors' log (CSV)"
    )
    age.add_argument("transformer")
    age.add_argument("--months", type=float, required=True)
    age.add_argument("--log", required=True, help="CSV file for `stima history import`")
    bypass = kinds.add_parser("bypass", parents=[common], help="a meter registers only part of its consumption")
    bypass.add_argument("meter")
    bypass.add_argument(
        "--registered", default="0%", help="share it registers: 0%% (a full bypass) .. 100%% (repaired)"
    )

    status = sub.add_parser(
        "status", parents=[common], help="breakers, faults and simulated time of the running simulator"
    )
    status.add_argument("--json", action="store_true")

    scenario = sub.add_parser("scenario", help="run a use-case scenario against the real daemon(s), with checks")
    scenario_sub = scenario.add_subparsers(dest="scenario_command", required=True)
    srun = scenario_sub.add_parser(
        "run", help="run one scenario: timeline, result table; exit 0 when every check passes"
    )
    srun.add_argument("name", help="scenario name (stima-hil scenario list)")
    srun.add_argument(
        "--json", action="store_true", help="one JSON object: scenario, passed, checks, timeline, figures"
    )
    srun.add_argument("--seed", type=int, default=0, help="simulator seed (loads, noise)")
    scenario_sub.add_parser("list", help="the scenarios there are")
    return parser


def parse_power_kw(text: str) -> float:
    """`28.5MW`, `500kW` or plain kW → kW."""
    raw = str(text).strip().lower().replace(" ", "")
    for suffix, factor in (("mw", 1000.0), ("kw", 1.0), ("", 1.0)):
        if raw.endswith(suffix):
            try:
                value = float(raw[: len(raw) - len(suffix)] if suffix else raw) * factor
            except ValueError:
                break
            if value != value or value in (float("inf"), float("-inf")):
                break
            return value
    raise UnitError(f"bad power {text!r}: expected e.g. 28.5MW or 500kW")


def parse_rate_kw_per_h(text: str) -> float:
    """`0.5MW/h`, `500kW/h` (per hour of simulated time) → kW/h."""
    raw = str(text).strip().lower().replace(" ", "")
    if not raw.endswith("/h"):
        raise UnitError(f"bad rate {text!r}: expected a power per hour, e.g. 0.5MW/h or 500kW/h")
    try:
        return parse_power_kw(raw[:-2])
    except UnitError:
        raise UnitError(f"bad rate {text!r}: expected a power per hour, e.g. 0.5MW/h or 500kW/h") from None


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """Turn `inject ...` arguments into a control request; UnitError on bad input."""
    if args.kind == "fault":
        try:
            impedance = float(str(args.impedance).lower().removesuffix("ohm").strip())
        except ValueError:
            raise UnitError(f"bad impedance {args.impedance!r}: expected ohms, e.g. 0.5") from None
        if not impedance >= 0 or impedance == float("inf"):
            raise UnitError(f"bad impedance {args.impedance!r}: must be a finite number >= 0")
        return {
            "op": "fault",
            "line": args.line,
            "distance_m": parse_distance_m(args.distance),
            "kind": args.type,
            "transient": args.transient,
            "impedance_ohm": impedance,
        }
    if args.kind == "commloss":
        return {"op": "commloss", "ied": args.ied, "duration_s": parse_duration_s(args.duration)}
    if args.kind == "loadstep":
        return {"op": "loadstep", "target": args.target, "factor": parse_factor(args.factor)}
    if args.kind == "temp":
        over = 0.0 if str(args.over).strip() in ("0", "0s") else parse_duration_s(args.over)
        return {
            "op": "temp",
            "transformer": args.transformer,
            "delta_c": parse_temperature_delta_c(args.delta),
            "duration_s": over,
        }
    if args.kind == "failure":
        if args.mode == "slow" and args.delay is None:
            raise UnitError("--mode slow needs --delay, e.g. --delay 5s")
        if args.mode != "slow" and args.delay is not None:
            raise UnitError(f"--delay is only for --mode slow (found --mode {args.mode})")
        return {
            "op": "failure",
            "device": args.device,
            "mode": args.mode,
            "delay_s": parse_duration_s(args.delay) if args.delay is not None else 0.0,
        }
    if args.kind == "local":
        return {"op": "local", "device": args.device, "on": not args.remote}
    if args.kind == "operate":
        return {"op": "operate", "device": args.device, "action": args.action}
    if args.kind == "external":
        return {"op": "external", "tie": args.tie, "live": bool(args.live)}
    if args.kind == "ramp":
        out: dict[str, Any] = {
            "op": "ramp",
            "substation": args.substation,
            "rate_kw_per_h": parse_rate_kw_per_h(args.rate),
        }
        if args.start is not None:
            out["start_kw"] = parse_power_kw(args.start)
        if args.ambient is not None:
            out["ambient_c"] = parse_temperature_delta_c(args.ambient)
        return out
    if args.kind == "clear":
        return {"op": "clear"}
    if args.kind == "age":
        if not 0 < args.months <= 120:
            raise UnitError(f"bad --months {args.months!r}: expected 0 < months ≤ 120")
        return {
            "op": "age",
            "transformer": args.transformer,
            "months": args.months,
            "path": str(Path(args.log).resolve()),
        }
    if args.kind == "bypass":
        raw = str(args.registered).strip()
        try:
            share = float(raw.rstrip("%")) / (100.0 if raw.endswith("%") else 1.0)
        except ValueError:
            raise UnitError(f"bad --registered {raw!r}: expected a share such as 0%, 20% or 0.2") from None
        if not 0.0 <= share <= 1.0:
            raise UnitError(f"bad --registered {raw!r}: must be between 0% and 100%")
        return {"op": "bypass", "meter": args.meter, "registered": share}
    raise UnitError(f"unknown injection {args.kind!r}")


def _print_status(status: dict[str, Any]) -> None:
    print(
        f"{status.get('substation_id')}  sim time {status.get('sim_time_s', 0):.2f} s  "
        f"speed {status.get('speed')}  steps {status.get('steps')}  mean step {status.get('mean_step_ms')} ms"
    )
    devices = status.get("devices") or {}
    for breaker, state in sorted((status.get("breakers") or {}).items()):
        d = devices.get(breaker) or {}
        extra = []
        if d.get("fpi"):
            extra.append("FPI")
        if d.get("local"):
            extra.append("local")
        if d.get("failure"):
            extra.append(f"failure={d['failure'].get('mode')}")
        if d.get("direction") == "reverse":
            extra.append("fed backwards")
        if d:
            extra.append(f"{d.get('current_a', 0.0):.0f} A")
        print(f"  breaker {breaker:<12} {state:<7} {' '.join(extra)}".rstrip())
    for section, sec in sorted((status.get("sections") or {}).items()):
        via = f" from {sec.get('source')} through {sec.get('fed_through')}" if sec.get("energised") else ""
        print(f"  section {section:<12} {'live' if sec.get('energised') else 'dead'}{via}")
    for loop in status.get("parallel_loops") or []:
        if loop.get("energised"):
            print(
                f"  PARALLEL: {loop.get('closing')} closes a loop through {', '.join(loop.get('devices', [])[1:])}"
                " (not modelled: it carries no current)"
            )
    faults = status.get("faults") or []
    if not faults:
        print("  faults: none")
    for f in faults:
        if isinstance(f, dict) and "line_id" in f:
            state = "energised" if f.get("energised") else "de-energised"
            print(
                f"  fault {f.get('fault_id')}: {f.get('kind')} on {f['line_id']} at {f.get('distance_m', 0):.0f} m"
                f"{' transient' if f.get('transient') else ''}, {f.get('fault_current_a', 0):.0f} A, {state},"
                f" cleared by {f.get('breaker_id')}"
            )
        else:
            print(f"  fault: {json.dumps(f)}")
    for ied, remaining in (status.get("commloss") or {}).items():
        print(f"  commloss {ied}: {remaining:.1f} s left")
    for ep in status.get("endpoints") or []:
        flag = "listening" if ep.get("listening") else "closed"
        silent = f" silent={','.join(ep['silent'])}" if ep.get("silent") else ""
        print(f"  modbus {ep['endpoint']:<28} {flag}{silent}  requests {ep['requests']}  writes {ep['writes']}")
    for child in status.get("iec61850") or []:
        print(f"  iec61850 {child['ied']} port {child['port']} {'running' if child['running'] else 'stopped'}")
    ami = status.get("ami")
    if ami:
        print(f"  ami: {ami.get('meters')} meters, {ami.get('messages')} messages, {ami.get('readings')} readings")


async def _serve(args: argparse.Namespace) -> int:
    from gateway import config
    from hil.control import ControlServer
    from hil.runtime import HilRuntime, RuntimeOptions, build_model

    from hil.grid.multisite import merge_sites

    paths = list(args.config)
    sites = [config.load(p) for p in paths]
    site, joined = merge_sites(sites, [str(p) for p in paths])
    for tie in joined:
        log.info(
            "tie %s joins %s (owned by %s)", tie.device, " and ".join(f"{s}/{line}" for s, line in tie.ends), tie.owner
        )
    options = RuntimeOptions(
        step_s=parse_duration_s(args.step),
        speed=args.speed,
        seed=args.seed,
        meters=args.meters,
        ami_interval_s=parse_duration_s(args.ami_interval),
        ami_batch_size=args.ami_batch,
        ami=not args.no_ami,
        bind_host=args.bind,
    )
    duration = parse_duration_s(args.duration) if args.duration else None
    model = build_model(site, seed=args.seed, meters=args.meters)
    runtime = HilRuntime(site, model, options, site_path=paths[0], sites=list(zip(sites, paths, strict=True)))
    control = ControlServer(runtime, args.control)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runtime.request_stop)
    await control.start()
    try:
        await runtime.run(duration)
    finally:
        await control.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "scenario":
        from hil.scenarios import main as scenario_main

        return scenario_main(args)
    if args.command == "serve":
        logging.basicConfig(
            level=getattr(logging, str(args.log_level).upper(), logging.INFO),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        from gateway.config import ConfigError

        try:
            return asyncio.run(_serve(args))
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        except (UnitError, ValueError) as exc:
            print(f"stima-hil: {exc}", file=sys.stderr)
            return 2
        except ImportError as exc:
            print(f"stima-hil: the electrical model is not available: {exc}", file=sys.stderr)
            return 1
        except (RuntimeError, OSError) as exc:
            print(f"stima-hil: {exc}", file=sys.stderr)
            return 1
    try:
        if args.command == "status":
            status = request(args.control, {"op": "status"})
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
            return 0
        result = request(args.control, build_request(args))
        print(json.dumps(result))
        return 0
    except UnitError as exc:
        print(f"stima-hil: {exc}", file=sys.stderr)
        return 2
    except ControlError as exc:
        print(f"stima-hil: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
