"""The control socket's operations: what `stima` asks the running daemon.

Each operation checks its arguments, refers to the running configuration (`Gateway`) of the
server at the time of the call (a reload may have replaced it), and goes through the same
authority as every other road: breaker and switching commands through the switching service,
keys and maintenance audited. Which role each operation needs is stated in `register`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from gateway import control
from gateway.contract.clock import Clock
from gateway.control import ControlServer
from gateway.contract.points import Point, PointUpdate
from gateway.storage import Store
from gateway.switching.model import Origin, Role, Via

if TYPE_CHECKING:
    from gateway.server import Server
    from gateway.wiring import Gateway

log = logging.getLogger("stima.daemon")

T = TypeVar("T")


class ControlOperations:
    """The operations of one server's control socket, bound to whichever configuration it runs."""

    def __init__(self, server: Server) -> None:
        self.server = server

    @property
    def store(self) -> Store:
        return self.server.store

    @property
    def clock(self) -> Clock:
        return self.server.clock

    @property
    def config_path(self) -> Path:
        return self.server.config_path

    def register(self, c: ControlServer) -> None:
        """Every operation with the role it needs: viewers read, operators switch, engineers
        change settings (no settings operation on the socket yet)."""
        viewer, operator, engineer = Role.VIEWER, Role.OPERATOR, Role.ENGINEER
        c.register("status", self._op_status, viewer)
        c.register("points.list", self._op_points_list, viewer)
        c.register("points.read", self._op_points_read, viewer)
        c.register_stream("points.watch", self._op_points_watch, viewer)
        c.register("agents.list", lambda: self._gw().agents.runtime.list_agents(), viewer)
        c.register("agents.show", lambda id: self._gw().agents.runtime.show(id), viewer)
        c.register(
            "agents.request",
            lambda id, request, **args: self._switching_refusal(
                lambda: self._gw().agents.request(id, request, origin=_local_origin(), **args)
            ),
            operator,
        )
        c.register("reliability", self._op_reliability, viewer)
        c.register("events", self._op_events, viewer)
        c.register("points.history", self._op_points_history, viewer)
        c.register("protection.latency", self._op_protection_latency, viewer)
        c.register("protection.gaps", self._op_protection_gaps, viewer)
        c.register("protection.settings", self._op_protection_settings, viewer)
        c.register("breaker.operate", self._op_breaker_operate, operator)
        c.register("breaker.select", self._op_breaker_select, operator)
        c.register("breaker.operate_selected", self._op_breaker_operate_selected, operator)
        c.register("breaker.cancel", self._op_breaker_cancel, operator)
        c.register("breaker.status", self._op_breaker_status, viewer)
        c.register("switching.list", lambda: self._gw().switching.sequences(), viewer)
        c.register("switching.show", self._op_switching_show, viewer)
        c.register("switching.validate", self._op_switching_validate, viewer)
        c.register("switching.network", lambda: self._gw().switching.network_view(), viewer)
        c.register("switching.submit", self._op_switching_submit, operator)
        c.register("switching.approve", lambda id: self._switching_call("approve", id), operator)
        c.register("switching.abort", lambda id: self._switching_call("abort", id), operator)
        c.register("faults.list", lambda: self._gw().switching.fault_records(), viewer)
        c.register("faults.clear", self._op_faults_clear, operator)
        c.register("tags.add", self._op_tags_add, operator)
        c.register("tags.remove", self._op_tags_remove, operator)
        c.register("peak.status", lambda: None if self._gw().peak is None else self._gw().peak.status(), viewer)
        c.register(
            "transfer.status", lambda: None if self._gw().exchange is None else self._gw().exchange.status(), viewer
        )
        c.register("transfer.request", self._op_transfer_request, operator)
        c.register("transfer.quote", self._op_transfer_quote, operator)
        c.register(
            "events.page",
            lambda since=0.0, until=None, after_seq=0, limit=1000: self.store.events_page(
                float(since), float("inf") if until is None else float(until), int(after_seq), min(int(limit), 10_000)
            ),
            viewer,
        )
        c.register("records.list", lambda breaker=None, since=None: self._gw().recording.list(breaker, since), viewer)
        c.register("records.get", lambda id: self._gw().recording.get(str(id)), viewer)
        c.register("iec104.map", self._op_iec104_map, viewer)
        c.register("alarms.list", lambda: [a.as_dict() for a in self._gw().alarms.active()], viewer)
        c.register("alarms.ack", lambda id: self._gw().acknowledge_alarm(str(id), _local_origin()), operator)
        c.register("keys.list", self._op_keys_list, viewer)
        c.register("keys.add", self._op_keys_add, engineer)
        c.register("keys.revoke", self._op_keys_revoke, engineer)
        c.register("maintenance.list", lambda: self._maintenance().work_orders(), viewer)
        c.register("maintenance.show", lambda id: self._maintenance().show(str(id)), viewer)
        c.register("maintenance.evaluate", self._op_maintenance_evaluate, operator)
        c.register(
            "maintenance.accept",
            lambda id, external_id=None: self._maintenance_command(
                "accept", work_order=id, **({"external_id": external_id} if external_id else {})
            ),
            operator,
        )
        c.register(
            "maintenance.reschedule",
            lambda id, start: self._maintenance_command("reschedule", work_order=id, start=float(start)),
            operator,
        )
        c.register(
            "maintenance.close",
            lambda id, note="": self._maintenance_command("close", work_order=id, note=str(note)[:500]),
            operator,
        )
        c.register("history.import", self._op_history_import, engineer)

    def _op_keys_list(self) -> list[dict[str, Any]]:
        now = self.clock.wall()
        out = []
        for entry in self._gw().keys.entries():
            row = entry.as_dict()
            row["state"] = (
                "revoked"
                if entry.revoked is not None
                else "expired"
                if entry.expires is not None and now >= entry.expires
                else "valid"
            )
            out.append(row)
        return out

    def _op_keys_add(self, name: str, public_key: str, role: str, expires: float | None = None) -> dict[str, Any]:
        """Trust a SCADA host's or an operator's Ed25519 public key with a role (engineer only; audited)."""
        from gateway.keys import parse_public_key
        from gateway.switching.model import Role as SwitchingRole

        gw = self._gw()
        entry = gw.keys.add(
            str(name),
            parse_public_key(str(public_key)),
            SwitchingRole.parse(str(role)),
            expires=None if expires is None else float(expires),
            who=_local_origin().who,
            now=self.clock.wall(),
        )
        self._save_keys(gw)
        return entry.as_dict()

    def _op_keys_revoke(self, name: str, reason: str) -> dict[str, Any]:
        gw = self._gw()
        entry = gw.keys.revoke(str(name), who=_local_origin().who, reason=str(reason), now=self.clock.wall())
        self._save_keys(gw)
        return entry.as_dict()

    def _save_keys(self, gw: Gateway) -> None:
        from gateway.keys import SNAPSHOT_KEY

        now = self.clock.wall()
        self.store.save_snapshot(SNAPSHOT_KEY, gw.keys.snapshot(), now)
        for kind, record in gw.keys.take_audit():
            self.store.append_event(now, "keys", kind, record)
            log.warning(kind.replace(".", " "), extra={"key": record.get("key"), "origin": record.get("origin")})

    def _op_iec104_map(self) -> list[dict[str, Any]]:
        """The IEC 104 information object addresses of this site (as the outstation serves them)."""
        gw = self._gw()
        if gw.iec104 is None:
            raise KeyError("the IEC 104 outstation is not enabled in the site file (iec104.enabled)")
        described: list[dict[str, Any]] = gw.iec104.map.describe()
        return described

    def _maintenance(self) -> Any:
        svc = self._gw().maintenance_service
        if svc is None:
            raise RuntimeError("maintenance is off in the site file ([maintenance] enabled = false)")
        return svc

    async def _op_maintenance_evaluate(self, transformer: str | None = None) -> list[dict[str, Any]]:
        """Evaluate the monitored transformers' health now (and make work orders of what they ask)."""
        return await self._gw().maintenance_evaluate(transformer)

    def _maintenance_command(self, action: str, **args: Any) -> dict[str, Any]:
        from gateway.maintenance.workorder import WorkOrderError

        try:
            return dict(self._maintenance().command(action, args, _local_origin().who).to_dict())
        except WorkOrderError as exc:
            raise ValueError(str(exc)) from None

    async def _op_history_import(self, path: str) -> dict[str, Any]:
        """Buckets of another historian (or an IED's own log) into the history, from a CSV file on
        this machine: point_id, bucket_start, interval_s, mean[, min, max, last, n]."""
        gw = self._gw()
        svc = gw.maintenance_service
        known = set(gw.image.points)
        if svc is not None:
            return dict(await asyncio.to_thread(svc.import_history, str(path), known))
        from gateway.history import parse_import

        rows = await asyncio.to_thread(lambda: parse_import(Path(path).read_text(encoding="utf-8"), str(path), known))
        await asyncio.to_thread(self.store.append_history, rows)
        return {"rows": len(rows), "points": sorted({r.point_id for r in rows})}

    def _gw(self) -> Gateway:
        gw = self.server.gateway
        if gw is None:
            raise RuntimeError("the gateway is starting")
        return gw

    def _op_status(self) -> dict[str, Any]:
        status = self._gw().status()
        hmi = self.server.hmi
        status["hmi"] = (
            None
            if hmi is None
            else {
                "address": hmi.cfg.address,
                "port": hmi.port,
                "https": hmi.cfg.https,
                "sessions": len(hmi.sessions),
                "streams": len(hmi.stream.clients),
            }
        )
        server = self.server
        status.update(
            {
                "state": "running",
                "pid": os.getpid(),
                "config": str(self.config_path),
                "reloads": server.reloads,
                "reload_failures": server.reload_failures,
                "last_reload": server.reload_status(),
            }
        )
        return status

    def _op_reliability(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """IEEE 1366 indices for a wall-clock period (default: since the daemon started)."""
        offset = self.clock.wall() - self.clock.monotonic()
        result = dict(
            self._gw().agents.runtime.reliability(
                None if since is None else since - offset, None if until is None else until - offset
            )
        )
        for key in ("since", "until"):
            if isinstance(result.get(key), float):
                result[key] += offset
        return result

    def _op_events(self, since: float = 0.0, source: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self.store.events(since=since, source=source, limit=min(int(limit), 10_000))

    def _op_protection_latency(self) -> dict[str, list[float]]:
        bridge = self._gw().protection
        if bridge is None:
            return {"queue": [], "wire": []}
        return {"queue": list(bridge.queue_latencies_s), "wire": list(bridge.wire_latencies_s)}

    def _op_protection_settings(self) -> dict[str, Any]:
        """The protection settings the running engine holds (after any reload), in full."""
        from gateway.protection.settings_files import digest, dump

        bridge = self._gw().protection
        schemes = list(bridge.engine.schemes.values()) if bridge is not None else []
        return {
            "site": self._gw().site.site.substation_id,
            "config": str(self.config_path),
            "backend": bridge.engine.backend_name if bridge is not None else None,
            "schemes": [dump(s) for s in schemes],
            "digest": digest(schemes),
        }

    async def _op_protection_gaps(self, window_s: float = 5.0) -> dict[str, Any]:
        """The longest interval between two protection evaluations over the next `window_s`
        (1-60 s) of normal running: the yardstick for a reload's gap (status.last_reload)."""
        window_s = min(max(float(window_s), 1.0), 60.0)
        bridge = self._gw().protection
        if bridge is None:
            raise KeyError("no protection scheme in the site file")
        engine = bridge.engine
        engine.watch_gaps()
        try:
            await asyncio.sleep(window_s)
        finally:
            engine.watch_gaps(False)
        return {"window_s": window_s, "longest_gap_s": engine.longest_gap_s}

    def _op_breaker_operate(
        self, breaker: str, action: str, authorised: bool = False, reason: str | None = None, override: Any = None
    ) -> dict[str, Any]:
        """Select and operate in one request (commissioning, tests): the same authority, interlocks
        and audit as any other road."""
        args: dict[str, Any] = {"breaker": breaker, "action": action, "authorised": authorised}
        if reason is not None:
            args["reason"] = reason
        if override is not None:
            args["override"] = override
        origin = _local_origin()
        selected = self._gw().commands.local("breaker/select", args, origin)
        return self._gw().commands.local("breaker/operate", {**args, "select_id": selected["select_id"]}, origin)

    # The origin of a local command is the unix user on the other end of the control socket,
    # from its peer credentials: a client cannot claim another operator's select.

    def _op_breaker_select(
        self, breaker: str, action: str, authorised: bool = False, reason: str | None = None, override: Any = None
    ) -> dict[str, Any]:
        return self._gw().commands.local(
            "breaker/select",
            _args(breaker=breaker, action=action, authorised=authorised, reason=reason, override=override),
            _local_origin(),
        )

    def _op_breaker_operate_selected(
        self,
        breaker: str,
        action: str,
        select_id: str,
        authorised: bool = False,
        reason: str | None = None,
        override: Any = None,
    ) -> dict[str, Any]:
        return self._gw().commands.local(
            "breaker/operate",
            _args(
                breaker=breaker,
                action=action,
                select_id=select_id,
                authorised=authorised,
                reason=reason,
                override=override,
            ),
            _local_origin(),
        )

    def _op_breaker_cancel(self, select_id: str) -> dict[str, Any]:
        return self._gw().commands.local("breaker/cancel", {"select_id": select_id}, _local_origin())

    def _op_breaker_status(self, breaker: str) -> dict[str, Any]:
        return self._gw().commands.breaker_status(breaker)

    def _op_transfer_request(
        self, tie: str, part: str, load_kw: float | None = None, window_s: float = 3600.0
    ) -> dict[str, Any]:
        """An operator asks the neighbour beyond `tie` to take the part beyond `part` (its
        measured load unless given); the exchange then runs as the peak manager's would."""
        from gateway.switching.exchange import part_load_kw
        from gateway.switching.transfer import TransferError

        gw = self._gw()
        if gw.exchange is None:
            raise ValueError(
                "no load transfer with neighbours here (no external tie, or no neighbour key in [coordination])"
            )
        if part not in gw.switching.network.devices:
            raise ValueError(f"{part!r} is not a switching device of this site")
        kw = part_load_kw(gw.switching, part) if load_kw is None else float(load_kw)
        try:
            xid = gw.exchange.request(str(tie), part, kw, window_s=float(window_s))
        except TransferError as exc:
            raise ValueError(f"refused: {exc}") from None
        who = _local_origin().who
        self.store.append_event(
            self.clock.wall(),
            f"transfer:{xid}",
            "transfer.request",
            {"tie": tie, "part": part, "load_kw": kw, "by": who},
        )
        return {"xid": xid, "tie": tie, "part": part, "load_kw": round(kw, 1)}

    def _op_transfer_quote(self, tie: str, window_start: float, window_end: float, kva: float) -> dict[str, Any]:
        """Ask the neighbour beyond `tie` what it could carry in a future window (a quote: nothing
        switched, nothing reserved); its answer shows in `transfer.status` under `quotes`."""
        from gateway.switching.transfer import TransferError

        gw = self._gw()
        if gw.exchange is None:
            raise ValueError(
                "no coordination with neighbours here (no external tie, or no neighbour key in [coordination])"
            )
        try:
            xid = gw.exchange.ask_quote(str(tie), float(window_start), float(window_end), float(kva))
        except TransferError as exc:
            raise ValueError(f"refused: {exc}") from None
        return {
            "xid": xid,
            "tie": tie,
            "window_start": float(window_start),
            "window_end": float(window_end),
            "kva": float(kva),
        }

    def _op_switching_show(self, id: str) -> dict[str, Any]:
        return self._gw().switching.runner.get(id).to_dict()

    def _parse_sequence(self, text: str, name: str) -> Any:
        from gateway.switching.sequences import parse

        if not isinstance(text, str) or len(text) > 256 * 1024:
            raise ValueError("a sequence document is text of 256 KiB at most")
        return parse(text, str(name)[:200], created_by=_local_origin().who, now_wall=self.clock.wall())

    def _op_switching_validate(self, text: str, name: str = "sequence") -> dict[str, Any]:
        seq = self._parse_sequence(text, name)
        problems = self._gw().switching.validate_sequence(seq)
        return {
            "name": seq.name,
            "valid": not problems,
            "problems": problems,
            "steps": [s.to_dict() for s in seq.steps],
        }

    def _op_switching_submit(self, text: str, name: str = "sequence", run: bool = False) -> dict[str, Any]:
        seq = self._parse_sequence(text, name)
        return self._switching_refusal(
            lambda: self._gw().switching.submit_sequence(seq, _local_origin(), run=bool(run)).to_dict()
        )

    def _switching_call(self, what: str, seq_id: str) -> dict[str, Any]:
        gw = self._gw()
        fn = gw.switching.approve if what == "approve" else gw.switching.abort
        return self._switching_refusal(lambda: fn(seq_id, _local_origin()).to_dict())

    def _op_faults_clear(self, id: str, reason: str) -> dict[str, Any]:
        return self._switching_refusal(
            lambda: self._gw().switching.clear_fault(id, _local_origin(), str(reason)).to_dict()
        )

    def _op_tags_add(self, target: str, reason: str) -> dict[str, Any]:
        gw = self._gw()

        def add() -> dict[str, Any]:
            tag = gw.switching.authority.add_tag(target, _local_origin(), str(reason), self.clock.monotonic())
            gw.switching.tick()
            return {"target": tag.target, "who": tag.who, "reason": tag.reason, "time": tag.time}

        return self._switching_refusal(add)

    def _op_tags_remove(self, target: str, reason: str) -> dict[str, Any]:
        gw = self._gw()

        def remove() -> dict[str, Any]:
            n = gw.switching.authority.remove_tags(target, _local_origin(), str(reason))
            gw.switching.tick()
            return {"target": target, "removed": n}

        return self._switching_refusal(remove)

    @staticmethod
    def _switching_refusal(fn: Callable[[], T]) -> T:
        """Refusals of the switching authority go back as errors that name their reason code."""
        from gateway.switching.authority import Refused

        try:
            return fn()
        except Refused as exc:
            raise PermissionError(f"refused ({exc.interlock or exc.reason}): {exc.message}") from None

    def _op_points_list(self, pattern: str = "*", source: str | None = None) -> list[dict[str, Any]]:
        return [
            p.as_dict()
            for p in self._gw().image.points.values()
            if fnmatch.fnmatchcase(p.point_id, pattern) and (source is None or p.source == source)
        ]

    def _op_points_history(
        self, id: str, since: float = 0.0, until: float | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        rows = self.store.history(
            id, since=float(since), until=math.inf if until is None else float(until), limit=min(int(limit), 100_000)
        )
        if not rows and id not in self._gw().image:
            raise KeyError(f"no such point: {id}")
        return rows

    def _op_points_read(self, ids: list[str]) -> list[dict[str, Any]]:
        image = self._gw().image
        missing = [i for i in ids if i not in image]
        if missing:
            raise KeyError(f"no such point(s): {', '.join(missing)}")
        return [image[i].as_dict() for i in ids]

    async def _op_points_watch(self, pattern: str = "*", max_rate_hz: float = 10.0) -> AsyncIterator[dict[str, Any]]:
        gw = self._gw()
        changed: dict[str, Point] = {}
        wake = asyncio.Event()

        def listener(point: Point, _update: PointUpdate) -> None:
            if fnmatch.fnmatchcase(point.point_id, pattern):
                changed[point.point_id] = point
                wake.set()

        gw.image.subscribe_all(listener)
        try:
            for point in gw.image.points.values():
                if fnmatch.fnmatchcase(point.point_id, pattern):
                    yield point.as_dict()
            while gw is self.server.gateway:
                await wake.wait()
                wake.clear()
                batch, changed = list(changed.values()), {}
                for point in batch:
                    yield point.as_dict()
                await asyncio.sleep(1.0 / max(max_rate_hz, 0.1))
        finally:
            gw.image.unsubscribe_all(listener)


def _local_origin() -> Origin:
    """Who is calling on the control socket: the peer's unix user, with the role of its groups."""
    user = control.peer_user()
    who = "local:" + ("".join(c for c in user if c.isalnum() or c in "._-")[:64] or "unknown")
    return Origin(via=Via.LOCAL, who=who, role=control.peer_identity().role)


def _args(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}
