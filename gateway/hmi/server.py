"""The HMI's web server (aiohttp) on the daemon's own event loop.

Pages and assets from the package (nothing from the internet), a read-only REST API
(`openapi.json`), a WebSocket stream of changes, the GeoJSON export, and the few writes an
operator may make: acknowledge an alarm; select, operate and cancel a switching device through
the switching authority (select-before-operate; a refusal comes back with its interlock code and
message). Every write needs a live session of a role that allows it and its CSRF token; every
answer carries the security headers (gateway/hmi/security.py).

Heavy work stays off the event loop that protection shares: password hashing and database
queries run in threads; the live state is built at most once per STATE_PERIOD_S, and only while
someone watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fnmatch
import json
import logging
import math
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from gateway.config import HmiConfig
from gateway.hmi import security
from gateway.hmi.users import UserDirectory, UsersFileError, hash_password, verify_password
from gateway.hmi.view import View
from gateway.switching.model import Kind, Operation, Origin, Role, Via

log = logging.getLogger("stima.hmi")

STATIC_DIR = Path(__file__).with_name("static")
OPENAPI_FILE = Path(__file__).with_name("openapi.json")
SESSION_COOKIE = "stima_session"
LOGIN_COOKIE = "stima_login"
STATE_PERIOD_S = 1.0
"""The diagram's live state is rebuilt and its changes sent at most this often."""
POINTS_PERIOD_S = 0.25
MAX_BODY_BYTES = 64 * 1024
MAX_ALARMS_SENT = 500
RECENT_ACKNOWLEDGEMENTS = 20
MAX_HISTORY_POINTS = 2000
"""A trend gets at most this many buckets (longer windows are merged server-side)."""
CLIENT_QUEUE = 64
"""Messages waiting for one stream client; a client that falls further behind is closed."""
PUBLIC_PATHS = frozenset({"/", "/index.html", "/api/session", "/api/login", "/favicon.ico"})
RECORD_FILES = {
    ".cfg": "text/plain; charset=utf-8",
    ".dat": "application/octet-stream",
    ".hdr": "text/plain; charset=utf-8",
    ".json": "application/json",
}
"""The files of a disturbance record (COMTRADE configuration, data and header; the summary)."""
RECORD_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to check an unknown user's password against: the same work either way."""
    return hash_password(secrets.token_hex(16))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SESSION: contextvars.ContextVar[security.Session] = contextvars.ContextVar("stima_hmi_session")
"""The session of the request being served (set by the guard, read by the handlers)."""


def session_of(_request: web.Request) -> security.Session:
    return _SESSION.get()


_F = TypeVar("_F", bound=Callable[..., Any])


def needs(role: Role) -> Callable[[_F], _F]:
    """The role a route needs (viewer when not marked)."""

    def mark(fn: _F) -> _F:
        fn._stima_role = role  # type: ignore[attr-defined]
        return fn

    return mark


def dumps(obj: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, default=str, separators=(",", ":"))
    except ValueError:  # a NaN or infinity somewhere: JSON has none
        return json.dumps(_finite(obj), default=str, separators=(",", ":"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def problem(status: int, message: str, **extra: Any) -> web.Response:
    return reply({"ok": False, "error": message, **extra}, status)


class Hmi:
    """One HMI: its sessions, users, live stream and web application."""

    def __init__(
        self,
        cfg: HmiConfig,
        *,
        base_dir: Path,
        gateway: Callable[[], Any],
        store: Any,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.base_dir = base_dir
        self._gateway = gateway
        self.store = store
        self.monotonic = monotonic
        self.wall = wall
        users_file = cfg.users_file if cfg.users_file.is_absolute() else base_dir / cfg.users_file
        self.users = UserDirectory(users_file)
        self.sessions = security.SessionBook(cfg.session_idle_s, cfg.session_max_s)
        self.limiter = security.LoginLimiter(cfg.login_failures, cfg.login_window_s)
        self._hashing = asyncio.Semaphore(1)
        self.headers = security.security_headers(cfg.https)
        self.origin_scheme = "https" if cfg.https else "http"
        self.stream = Stream(self)
        self._view: View | None = None
        self._view_of: Any = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ------------------------------------------------------------------ plumbing

    def gateway(self) -> Any:
        gw = self._gateway()
        if gw is None:
            raise web.HTTPServiceUnavailable(
                text=dumps({"ok": False, "error": "the gateway is starting"}), content_type="application/json"
            )
        return gw

    def view(self) -> View:
        gw = self.gateway()
        if self._view is None or self._view_of is not gw:
            self._view, self._view_of = View(gw), gw
        return self._view

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.on_response_prepare.append(self._add_headers)
        r = app.router
        r.add_get("/", self.page)
        r.add_get("/index.html", self.page)
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/session", self.session_info)
        r.add_post("/api/login", self.login)
        r.add_post("/api/logout", self.logout)
        r.add_get("/api/openapi.json", self.openapi)
        r.add_get("/api/status", self.status)
        r.add_get("/api/points", self.points)
        r.add_get("/api/points/{id}", self.point)
        r.add_get("/api/points/{id}/history", self.history)
        r.add_get("/api/agents", self.agents)
        r.add_get("/api/agents/{id}", self.agent)
        r.add_get("/api/devices/{id}", self.device)
        r.add_get("/api/alarms", self.alarms)
        r.add_post("/api/alarms/{id}/acknowledge", self.acknowledge)
        r.add_get("/api/events", self.events)
        r.add_get("/api/topology", self.topology)
        r.add_get("/api/diagram", self.diagram)
        r.add_get("/api/state", self.state)
        r.add_get("/api/sequences", self.sequences)
        r.add_get("/api/faults", self.faults)
        r.add_get("/api/records", self.records)
        r.add_get("/api/records/{id}/{file}", self.record_file)
        r.add_get("/topology.geojson", self.geojson)
        r.add_get("/api/stream", self.stream.handle)
        r.add_post("/api/control/select", self.select)
        r.add_post("/api/control/operate", self.operate)
        r.add_post("/api/control/cancel", self.cancel)
        app.on_shutdown.append(lambda _app: self.stream.close_all())
        return app

    async def start(self) -> None:
        try:
            self.users.refresh()
        except UsersFileError as exc:
            log.error("HMI users file unusable: nobody can log in until it is fixed", extra={"error": str(exc)})
        ctx = None
        if self.cfg.https:
            assert self.cfg.cert_file is not None and self.cfg.key_file is not None
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(self._path(self.cfg.cert_file), self._path(self.cfg.key_file))
        elif not _loopback(self.cfg.address):
            log.warning(
                "HMI SERVES PLAIN HTTP ON A NETWORK ADDRESS: passwords cross the network in clear",
                extra={"address": self.cfg.address},
            )
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.address, self.cfg.port, ssl_context=ctx, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.cfg.port
        log.info(
            "HMI listening",
            extra={
                "address": self.cfg.address,
                "port": self.port,
                "https": self.cfg.https,
                "users_file": str(self.users.path),
            },
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self.stream.close_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), 5.0)
            self._runner = None

    def _path(self, p: Path) -> str:
        return str(p if p.is_absolute() else self.base_dir / p)

    async def _add_headers(self, _request: web.Request, response: web.StreamResponse) -> None:
        for k, v in self.headers.items():
            response.headers.setdefault(k, v)

    def _expected_origin(self, request: web.Request) -> str:
        return f"{self.origin_scheme}://{request.host}"

    def cross_site(self, request: web.Request) -> bool:
        """A request a page of another site made the browser send."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != self._expected_origin(request):
            return True
        return request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none")

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Sessions, roles and CSRF for every route that is not public."""
        path = request.path
        unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
        if unsafe and self.cross_site(request):
            log.warning("HMI cross-site write refused", extra={"path": path, "origin": request.headers.get("Origin")})
            return problem(403, "cross-site request refused")
        if path in PUBLIC_PATHS or path.startswith("/static/"):
            return await handler(request)
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE), self.monotonic(), touch=path != "/api/stream")
        if session is None:
            return problem(401, "login needed (no session, or it expired)")
        if not self._still_valid(session):
            return problem(401, "login needed (the user was removed or given another role)")
        needed = getattr(handler, "_stima_role", Role.VIEWER)
        if session.role < needed:
            return problem(403, f"{path} needs the {needed.label} role; {session.user} is {session.role.label}")
        if unsafe and not security.same_token(session.csrf, request.headers.get("X-CSRF-Token")):
            log.warning("HMI write without its CSRF token refused", extra={"path": path, "user": session.user})
            return problem(403, "missing or wrong CSRF token (X-CSRF-Token)")
        token = _SESSION.set(session)
        try:
            return await handler(request)
        finally:
            _SESSION.reset(token)

    # ------------------------------------------------------------------ pages

    async def page(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = STATIC_DIR / name
        if "/" in name or name.startswith(".") or not path.is_file() or path.suffix not in STATIC_TYPES:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": STATIC_TYPES[path.suffix] + "; charset=utf-8"})

    async def openapi(self, _request: web.Request) -> web.StreamResponse:
        return web.FileResponse(OPENAPI_FILE, headers={"Content-Type": "application/json"})

    # ------------------------------------------------------------------ sessions

    def _login_cookie(self, response: web.StreamResponse, token: str) -> None:
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=self.cfg.https, path="/api")

    async def session_info(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE), self.monotonic(), touch=False)
        if session is None:
            token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
            response = reply({"authenticated": False, "login_csrf": token})
            self._login_cookie(response, token)
            return response
        gw = self._gateway()
        return reply(
            {
                "authenticated": True,
                "user": session.user,
                "role": session.role.label,
                "csrf": session.csrf,
                "expires_in_s": round(self.sessions.expires_at(session) - self.monotonic(), 1),
                "substation": None if gw is None else gw.site.site.substation_id,
            }
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not security.same_token(expected, request.headers.get("X-CSRF-Token")):
            return problem(403, "missing or wrong login CSRF token (GET /api/session first)")
        body = await _body(request)
        user = body.get("user")
        password = body.get("password")
        if (
            not isinstance(user, str)
            or not isinstance(password, str)
            or not user
            or len(user) > 64
            or len(password) > 1024
        ):
            return problem(400, 'expected {"user": "…", "password": "…"}')
        address = request.remote or "?"
        now = self.monotonic()
        wait = self.limiter.retry_after(address, user, now)
        if wait > 0:
            log.warning("HMI login refused: too many failures", extra={"user": user, "address": address})
            return web.Response(
                text=dumps(
                    {
                        "ok": False,
                        "error": f"too many failed logins: try again in {math.ceil(wait)} s",
                        "retry_after_s": math.ceil(wait),
                    }
                ),
                status=429,
                content_type="application/json",
                headers={"Retry-After": str(math.ceil(wait))},
            )
        try:
            known = self.users.refresh().get(user)
        except UsersFileError as exc:
            log.error("HMI users file unusable", extra={"error": str(exc)})
            return problem(503, "the users file cannot be read: see the daemon's log")
        async with self._hashing:  # one hash at a time: a burst of logins cannot starve the daemon
            ok = await asyncio.to_thread(verify_password, known.password_hash if known else _dummy_hash(), password)
        if not ok or known is None:
            self.limiter.failed(address, user, self.monotonic())
            self._audit("hmi.login_failed", user, {"address": address})
            return problem(401, "wrong user name or password")
        self.limiter.succeeded(address, user)
        session = self.sessions.create(known.name, known.role, self.monotonic())
        self._audit("hmi.login", known.name, {"address": address, "role": known.role.label})
        response = reply({"ok": True, "user": known.name, "role": known.role.label, "csrf": session.csrf})
        response.set_cookie(
            SESSION_COOKIE, session.id, httponly=True, samesite="Strict", secure=self.cfg.https, path="/"
        )
        response.del_cookie(LOGIN_COOKIE, path="/api")
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = session_of(request)
        self.sessions.end(session.id)
        self._audit("hmi.logout", session.user, {})
        response = reply({"ok": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    def _audit(self, kind: str, user: str, record: dict[str, Any]) -> None:
        try:
            self.store.append_event(self.wall(), f"hmi:{user}"[:128], kind, record)
        except Exception:
            log.exception("HMI audit could not be written")
        log.info("HMI %s", kind, extra={"user": user, **record})

    def _still_valid(self, session: security.Session) -> bool:
        """The session's user is still in the users file with the same role (read again when it
        changed); otherwise every session of that user ends."""
        try:
            known = self.users.refresh().get(session.user)
        except UsersFileError:
            known = self.users.get(session.user)  # an unreadable file keeps the users last read
        if known is None or known.role != session.role:
            ended = self.sessions.end_user(session.user)
            log.warning(
                "HMI sessions ended: the user was removed or given another role",
                extra={"user": session.user, "sessions": ended},
            )
            return False
        return True

    def user_sessions_check(self) -> None:
        """End the sessions of users removed from the users file, or whose role changed."""
        try:
            users = self.users.refresh()
        except UsersFileError:
            return
        for name in self.sessions.users():
            known = users.get(name)
            if known is None or self.sessions.roles_of(name) != {known.role}:
                ended = self.sessions.end_user(name)
                log.warning(
                    "HMI sessions ended: the user was removed or given another role",
                    extra={"user": name, "sessions": ended},
                )

    # ------------------------------------------------------------------ reads

    async def status(self, _request: web.Request) -> web.StreamResponse:
        return reply(self.gateway().status())

    async def points(self, request: web.Request) -> web.StreamResponse:
        pattern = request.query.get("pattern", "*")
        source = request.query.get("source")
        image = self.gateway().image
        return reply(
            [
                p.as_dict()
                for p in image.points.values()
                if fnmatch.fnmatchcase(p.point_id, pattern) and (source is None or p.source == source)
            ]
        )

    async def point(self, request: web.Request) -> web.StreamResponse:
        image = self.gateway().image
        pid = request.match_info["id"]
        if pid not in image:
            return problem(404, f"no point {pid!r}")
        return reply(image[pid].as_dict())

    async def history(self, request: web.Request) -> web.StreamResponse:
        gw = self.gateway()
        pid = request.match_info["id"]
        if pid not in gw.image:
            return problem(404, f"no point {pid!r}")
        now = self.wall()
        try:
            until = float(request.query.get("until", now))
            since = float(request.query.get("since", until - 3600.0))
        except ValueError:
            return problem(400, "since and until are wall-clock seconds (numbers)")
        if not (math.isfinite(since) and math.isfinite(until)) or since > until:
            return problem(400, "since must come before until")
        rows = await asyncio.to_thread(self.store.history, pid, since, until, 100_000)
        return reply(
            {
                "point": pid,
                "since": since,
                "until": until,
                "unit": gw.image[pid].unit,
                "buckets": merge_buckets(rows, MAX_HISTORY_POINTS),
                "live": gw.image[pid].as_dict(),
            }
        )

    async def agents(self, _request: web.Request) -> web.StreamResponse:
        return reply(self.gateway().agents.runtime.list_agents())

    async def agent(self, request: web.Request) -> web.StreamResponse:
        gw = self.gateway()
        aid = request.match_info["id"]
        try:
            shown = gw.agents.runtime.show(aid)
        except Exception:
            return problem(404, f"no agent {aid!r}")
        cfg = next((a for a in gw.site.agents if a.id == aid), None)
        if cfg is not None:
            shown["configured"] = self.view().configured.get(aid, {})
            shown["points"] = {name: gw.image[pid].as_dict() for name, pid in cfg.points.items() if pid in gw.image}
        groups = self.view().groups_of.get(aid)
        if groups:  # a transformer's meters: counts by state per group, never meter by meter
            states = gw.agents.runtime.meter_states()
            shown["meters"] = {gid: {"count": n, "states": states.get(gid, {})} for gid, n in groups}
        shown["events"] = await asyncio.to_thread(self.store.events, 0.0, math.inf, aid, 50)
        return reply(shown)

    async def device(self, request: web.Request) -> web.StreamResponse:
        try:
            return reply(self.gateway().device_status(request.match_info["id"]))
        except KeyError as exc:
            return problem(404, str(exc).strip("'\""))

    async def alarms(self, _request: web.Request) -> web.StreamResponse:
        """The active alarms (gateway/alarms.py: in the list until both cleared and acknowledged)
        and the latest acknowledgements from the event log (who and when, also of alarms gone)."""
        gw = self.gateway()
        acknowledged = await asyncio.to_thread(
            self.store.events, 0.0, math.inf, None, RECENT_ACKNOWLEDGEMENTS, ("alarm.acknowledged",)
        )
        return reply({**_alarms(gw), "acknowledged": acknowledged[::-1]})

    async def events(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            since = float(q.get("since", 0.0))
            until = float(q.get("until", math.inf))
            limit = max(1, min(int(q.get("limit", 200)), 5000))
        except ValueError:
            return problem(400, "since and until are wall-clock seconds, limit a whole number")
        kinds = tuple(k for k in q.get("kind", "").split(",") if k)[:20]
        rows = await asyncio.to_thread(self.store.events, since, until, q.get("source") or None, limit, kinds)
        return reply(rows)

    async def topology(self, _request: web.Request) -> web.StreamResponse:
        from gateway.agents.topology import Topology

        gw = self.gateway()
        return reply({"graph": Topology.from_site(gw.site).to_dict(), "network": gw.switching.network_view()})

    async def diagram(self, _request: web.Request) -> web.StreamResponse:
        return reply(self.view().diagram_dict())

    async def state(self, _request: web.Request) -> web.StreamResponse:
        return reply(self.view().state())

    async def sequences(self, _request: web.Request) -> web.StreamResponse:
        return reply(self.gateway().switching.sequences())

    async def faults(self, _request: web.Request) -> web.StreamResponse:
        return reply(self.gateway().switching.fault_records())

    async def records(self, request: web.Request) -> web.StreamResponse:
        """Disturbance records (COMTRADE) on disk, newest first, each with its files' links."""
        recording = getattr(self.gateway(), "recording", None)
        if recording is None:
            return reply([])
        breaker = request.query.get("breaker") or None
        try:
            since = float(request.query["since"]) if "since" in request.query else None
            limit = max(1, min(int(request.query.get("limit", 100)), 1000))
        except ValueError:
            return problem(400, "since is wall-clock seconds, limit a whole number")
        rows = await asyncio.to_thread(recording.list, breaker, since)
        out = []
        for summary in reversed(rows[-limit:]):
            rid = str(summary["record_id"])
            files = [f for f in summary.get("files", []) if isinstance(f, str) and Path(f).suffix in RECORD_FILES]
            out.append({**summary, "links": {Path(f).suffix[1:]: f"/api/records/{rid}/{f}" for f in files}})
        return reply(out)

    async def record_file(self, request: web.Request) -> web.StreamResponse:
        """One file of a record, as a download: only a record's own file names, only from the records directory."""
        recording = getattr(self.gateway(), "recording", None)
        if recording is None:
            return problem(404, "this gateway keeps no disturbance records")
        rid, name = request.match_info["id"], request.match_info["file"]
        suffix = Path(name).suffix
        if not RECORD_ID.fullmatch(rid) or name != rid + suffix or suffix not in RECORD_FILES:
            return problem(400, f"expected /api/records/<record id>/<record id>{{{','.join(RECORD_FILES)}}}")
        directory = Path(recording.directory)
        path = directory / name
        if not await asyncio.to_thread(lambda: path.is_file() and path.resolve().parent == directory.resolve()):
            return problem(404, f"no file {name!r} in the disturbance records")
        return web.FileResponse(
            path,
            headers={"Content-Type": RECORD_FILES[suffix], "Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def geojson(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text=dumps(self.view().geojson()), content_type="application/geo+json")

    # ------------------------------------------------------------------ writes

    @needs(Role.OPERATOR)
    async def acknowledge(self, request: web.Request) -> web.StreamResponse:
        session = session_of(request)
        try:
            origin = Origin(via=Via.HMI, who=f"hmi:{session.user}", role=session.role)
            alarm = self.gateway().acknowledge_alarm(request.match_info["id"], origin)
        except KeyError as exc:
            return problem(404, str(exc).strip("'\""))
        return reply({"ok": True, "alarm": alarm})

    def _operation(self, request: web.Request, body: dict[str, Any], select_id: str | None = None) -> Operation:
        session = session_of(request)
        device, action = body.get("device"), body.get("action")
        if not isinstance(device, str) or not 0 < len(device) <= 64 or action not in ("open", "close"):
            raise web.HTTPBadRequest(
                text=dumps({"ok": False, "error": 'expected {"device": "<id>", "action": "open" | "close"}'}),
                content_type="application/json",
            )
        origin = Origin(via=Via.HMI, who=f"hmi:{session.user}", role=session.role)
        return Operation(
            kind=Kind.OPEN if action == "open" else Kind.CLOSE,
            target=device,
            origin=origin,
            select_id=select_id,
            reason=f"{action} from the HMI by {session.user}",
        )

    @needs(Role.OPERATOR)
    async def select(self, request: web.Request) -> web.StreamResponse:
        from gateway.switching.authority import Refused

        body = await _body(request)
        op = self._operation(request, body)
        gw = self.gateway()
        try:
            sel = gw.switching.select(op)
        except Refused as exc:
            return reply({"ok": False, "stage": "select", **exc.as_dict()}, 409)
        return reply(
            {
                "ok": True,
                "select_id": sel.select_id,
                "device": sel.target,
                "action": sel.action,
                "expires_in_s": round(sel.expires_at - sel.selected_at, 3),
            }
        )

    @needs(Role.OPERATOR)
    async def operate(self, request: web.Request) -> web.StreamResponse:
        from gateway.switching.authority import Refused

        body = await _body(request)
        select_id = body.get("select_id")
        if not isinstance(select_id, str) or not select_id:
            return problem(400, "operate names the select it follows (select_id): select first")
        op = self._operation(request, body, select_id)
        try:
            accepted = self.gateway().switching.operate(op)
        except Refused as exc:
            return reply({"ok": False, "stage": "operate", **exc.as_dict()}, 409)
        return reply(
            {
                "ok": True,
                "op_id": accepted.op_id,
                "device": op.target,
                "action": op.action,
                "overridden": [r.as_dict() for r in accepted.overridden],
            }
        )

    @needs(Role.OPERATOR)
    async def cancel(self, request: web.Request) -> web.StreamResponse:
        from gateway.switching.authority import Refused

        body = await _body(request)
        select_id = body.get("select_id")
        if not isinstance(select_id, str) or not select_id:
            return problem(400, 'expected {"select_id": "…"}')
        session = session_of(request)
        origin = Origin(via=Via.HMI, who=f"hmi:{session.user}", role=session.role)
        try:
            sel = self.gateway().switching.cancel(select_id, origin)
        except Refused as exc:
            return reply({"ok": False, "stage": "cancel", **exc.as_dict()}, 409)
        return reply({"ok": True, "select_id": sel.select_id, "device": sel.target})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=dumps({"ok": False, "error": "the body is not JSON"}), content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=dumps({"ok": False, "error": "the body is a JSON object"}), content_type="application/json"
        )
    return body


def merge_buckets(rows: list[dict[str, Any]], at_most: int) -> list[dict[str, Any]]:
    """At most `at_most` buckets: neighbours merged (min of minima, max of maxima, mean weighted
    by samples, last of the last)."""
    if len(rows) <= at_most:
        return rows
    per = math.ceil(len(rows) / at_most)
    out = []
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        n = sum(r["n"] for r in chunk)
        means = [(r["mean"], r["n"]) for r in chunk if r["mean"] is not None]
        weight = sum(w for _, w in means)
        out.append(
            {
                "point_id": chunk[0]["point_id"],
                "bucket_start": chunk[0]["bucket_start"],
                "interval_s": sum(r["interval_s"] for r in chunk),
                "min": min((r["min"] for r in chunk if r["min"] is not None), default=None),
                "max": max((r["max"] for r in chunk if r["max"] is not None), default=None),
                "mean": sum(m * w for m, w in means) / weight if weight else None,
                "last": chunk[-1]["last"],
                "n": n,
                "good_fraction": sum(r["good_fraction"] * r["n"] for r in chunk) / n if n else 0.0,
            }
        )
    return out


def _loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- the live stream


class Client:
    def __init__(self, ws: web.WebSocketResponse, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(CLIENT_QUEUE)
        self.patterns: list[str] = []

    def send(self, message: str) -> bool:
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            return False

    def wants(self, point_id: str) -> bool:
        return any(fnmatch.fnmatchcase(point_id, p) for p in self.patterns)


class Stream:
    """The WebSocket stream: a snapshot, then changes (diagram state, points asked for, alarms,
    new events). One builder for every client, running only while clients are connected."""

    def __init__(self, hmi: Hmi) -> None:
        self.hmi = hmi
        self.clients: set[Client] = set()
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, Any] = {}
        self._alarms_mark: Any = None
        self._event_seq = 0
        self._changed_points: dict[str, Any] = {}
        self._subscribed_to: Any = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hmi = self.hmi
        if hmi.cross_site(request) or request.headers.get("Origin") is None:
            return problem(403, "the stream is for pages of this HMI (Origin)")
        if len(self.clients) >= hmi.cfg.max_clients:
            return problem(503, f"{hmi.cfg.max_clients} live streams already open")
        gw = hmi.gateway()
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=16 * 1024)
        await ws.prepare(request)
        client = Client(ws, session_of(request).id)
        self.clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        try:
            view = hmi.view()
            self._ensure_running(gw)
            client.send(dumps({"type": "snapshot", "state": view.state(), "alarms": _alarms(gw)}))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    patterns = data.get("points", [])
                    if isinstance(patterns, list) and all(isinstance(p, str) and len(p) <= 128 for p in patterns):
                        client.patterns = patterns[:200]
                        gw = hmi.gateway()
                        client.send(
                            dumps(
                                {
                                    "type": "points",
                                    "points": [
                                        p.as_dict() for p in gw.image.points.values() if client.wants(p.point_id)
                                    ][:5000],
                                }
                            )
                        )
                except (ValueError, AttributeError):
                    continue
        finally:
            self.clients.discard(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
        return ws

    async def _sender(self, client: Client) -> None:
        while True:
            message = await client.queue.get()
            if message is None:
                return
            try:
                await client.ws.send_str(message)
            except (ConnectionError, RuntimeError):
                return

    def _ensure_running(self, gw: Any) -> None:
        self._subscribe(gw)
        if self._task is None or self._task.done():
            self._last = {}
            self._alarms_mark = _alarms_mark(gw)
            self._event_seq = self.hmi.store.last_event_seq()
            self._task = asyncio.create_task(self._run(), name="hmi-stream")

    def _subscribe(self, gw: Any) -> None:
        if self._subscribed_to is gw:
            return
        if self._subscribed_to is not None:
            with contextlib.suppress(Exception):
                self._subscribed_to.image.unsubscribe_all(self._on_point)
        gw.image.subscribe_all(self._on_point)
        self._subscribed_to = gw

    def _on_point(self, point: Any, _update: Any) -> None:
        if self.clients:
            self._changed_points[point.point_id] = point

    async def _run(self) -> None:
        """Send changes while someone listens; stop when the last client leaves."""
        next_state = 0.0
        try:
            while self.clients:
                await asyncio.sleep(POINTS_PERIOD_S)
                try:
                    gw = self.hmi._gateway()
                    if gw is None:
                        continue
                    if gw is not self._subscribed_to:  # a reload: pages fetch the new diagram
                        self._subscribe(gw)
                        self._last = {}
                        self._broadcast(dumps({"type": "reload"}))
                    self._send_points()
                    self._expire_sessions()
                    now = time.monotonic()
                    if now >= next_state:
                        next_state = now + STATE_PERIOD_S
                        await self._send_state(gw)
                        await self._send_events()
                        self.hmi.user_sessions_check()
                except Exception:
                    log.exception("HMI stream step failed")
        finally:
            if self._subscribed_to is not None:
                with contextlib.suppress(Exception):
                    self._subscribed_to.image.unsubscribe_all(self._on_point)
                self._subscribed_to = None
            self._changed_points.clear()

    def _broadcast(self, message: str) -> None:
        for client in list(self.clients):
            if not client.send(message):
                self._drop(client, "too slow")

    def _drop(self, client: Client, why: str) -> None:
        self.clients.discard(client)
        log.warning("HMI stream client dropped", extra={"why": why})
        asyncio.ensure_future(client.ws.close(code=4408 if why == "too slow" else 4401, message=why.encode()))

    def _send_points(self) -> None:
        if not self._changed_points:
            return
        changed, self._changed_points = list(self._changed_points.values()), {}
        for client in list(self.clients):
            if not client.patterns:
                continue
            mine = [p.as_dict() for p in changed if client.wants(p.point_id)]
            if mine and not client.send(dumps({"type": "points", "points": mine[:5000]})):
                self._drop(client, "too slow")

    async def _send_state(self, gw: Any) -> None:
        state = await self.hmi.view().state_async()
        changes: dict[str, Any] = {}
        for part in ("sections", "devices", "elements", "buses"):
            before = self._last.get(part, {})
            diff = {k: v for k, v in state[part].items() if before.get(k) != v}
            if diff:
                changes[part] = diff
        self._last = state
        if changes:
            self._broadcast(dumps({"type": "state", "time": state["time"], "changes": changes}))
        mark = _alarms_mark(gw)
        if mark != self._alarms_mark:
            self._alarms_mark = mark
            self._broadcast(dumps({"type": "alarms", **_alarms(gw)}))

    async def _send_events(self) -> None:
        rows = await asyncio.to_thread(self.hmi.store.events_after, self._event_seq, 200)
        if rows:
            self._event_seq = rows[-1]["seq"]
            self._broadcast(dumps({"type": "events", "events": rows}))

    def _expire_sessions(self) -> None:
        now = self.hmi.monotonic()
        for client in list(self.clients):
            if self.hmi.sessions.get(client.session_id, now, touch=False) is None:
                self._drop(client, "session expired")

    async def close_all(self) -> None:
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await client.ws.close(code=1001, message=b"server stopping")
        self.clients.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def _alarms(gw: Any) -> dict[str, Any]:
    """The active list as pages and tools get it: newest first, at most MAX_ALARMS_SENT."""
    active = gw.alarms.active()
    return {
        "active": [a.as_dict() for a in active[::-1][:MAX_ALARMS_SENT]],
        "count": len(active),
        "unacknowledged": sum(1 for a in active if a.acknowledged is None),
    }


def _alarms_mark(gw: Any) -> tuple[tuple[str, float | None, float | None], ...]:
    """What changes when an alarm is raised, cleared or acknowledged."""
    return tuple((a.id, a.cleared, a.acknowledged) for a in gw.alarms.active())
