"""``rcc-tui serve``: the workbench in a browser, drivable only by whoever holds the printed URL.

textual-serve runs the app as a process per WebSocket and reads and writes files as the
user, so the page and the socket are guarded like Jupyter's:

- a random token, printed in the URL at start, is required for the page (``/?token=…``) and
  the socket (``/ws/<token>``: textual.js appends its own query to the socket URL);
- the Host of every request must name the served address (a DNS-rebinding page gets a 403),
  and an Origin, when the browser sends one, must be that same address (another site's page
  cannot open the socket);
- a non-loopback ``--host`` needs ``--allow-remote`` (then any Host, still same-origin);
- all connections share one session: a tab opens it (the first one creates it), and while a
  tab has it, another tab is told so and closed, instead of a new ~91 MB session per tab;
- the page loads nothing from outside the machine (rcc_tui/serve_page: the web font that
  textual-serve's page fetches from the internet is served from textual-serve's own copy).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcc.errors import RccError

PAGE_DIR = Path(__file__).parent / "serve_page"
TAKEOVER_WAIT_SECONDS = 5.0  # a reloaded tab's old socket closes just before the new one opens


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve anywhere


@dataclass(frozen=True)
class ServeAccess:
    """Who may use the served app: the token, and the Host / Origin values that name this server."""

    host: str
    port: int
    token: str
    allow_remote: bool = False

    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{shown}:{self.port}/?token={self.token}"

    def allowed_hosts(self) -> set[str]:
        names = {self.host.lower()}
        if is_loopback(self.host):
            names |= {"127.0.0.1", "localhost", "[::1]"}
        names |= {f"[{name}]" for name in list(names) if ":" in name and not name.startswith("[")}
        return {f"{name}:{self.port}" for name in names} | ({*names} if self.port == 80 else set())

    def host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        return self.allow_remote or host.lower() in self.allowed_hosts()

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """No Origin (not a browser's cross-site request) or exactly this server's own."""
        if origin is None:
            return True
        return bool(host) and self.host_ok(host) and origin.lower() == f"http://{host.lower()}"

    def token_ok(self, given: str | None) -> bool:
        return bool(given) and secrets.compare_digest(given.encode(), self.token.encode())


def check_bind(host: str, port: int, allow_remote: bool) -> None:
    """Refuse a port out of range, and a non-loopback address unless ``allow_remote``."""
    if not 0 < port < 65536:
        raise RccError(f"port {port} is out of range; allowed: 1 to 65535")
    if not host.strip():
        raise RccError(f"host {host!r} is empty; allowed: 127.0.0.1 (default), localhost, or an address "
                       f"with --allow-remote")
    if not is_loopback(host) and not allow_remote:
        raise RccError(f"host {host!r} is not a loopback address: anyone who can reach it and has the URL "
                       f"could drive the app as you; allowed: 127.0.0.1, localhost, ::1, or --allow-remote")


def session_command(session_dir: str | Path, python: str | None = None) -> str:
    """What a connection runs: open the served session, or create it if no tab has yet."""
    from rcc.session.session import is_session

    python = shlex.quote(python or sys.executable)
    directory = shlex.quote(str(session_dir))
    if is_session(session_dir):
        return f"{python} -m rcc_tui.main open {directory}"
    return f"{python} -m rcc_tui.main new --session {directory}"


def make_server(access: ServeAccess, command: Callable[[], str], title: str = "rcc-tui", announce=print):
    """A textual-serve ``Server`` guarded by ``access``; each connection runs ``command()``."""
    import aiohttp_jinja2
    import jinja2
    from aiohttp import web
    from textual_serve.app_service import AppService
    from textual_serve.server import Server

    class GuardedServer(Server):
        def __init__(self) -> None:
            super().__init__(command(), host=access.host, port=access.port, title=title,
                             templates_path=PAGE_DIR)
            self.active: asyncio.Task | None = None  # the connection that has the session

        async def _make_app(self) -> web.Application:
            app = web.Application(middlewares=[self.guard])
            aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path))
            app.add_routes([
                web.get("/", self.handle_index, name="index"),
                web.get("/ws/{token}", self.handle_websocket, name="websocket"),
                web.get("/download/{key}", self.handle_download, name="download"),
                web.static("/static", self.statics_path, show_index=False, name="static"),
            ])
            app.on_startup.append(self.on_startup)
            app.on_shutdown.append(self.on_shutdown)
            return app

        @web.middleware
        async def guard(self, request: web.Request, handler):
            host, origin = request.headers.get("Host"), request.headers.get("Origin")
            if not access.host_ok(host):
                raise web.HTTPForbidden(text=f"rcc-tui serve: Host {host!r} is not this server's address\n")
            if not access.origin_ok(origin, host):
                raise web.HTTPForbidden(text=f"rcc-tui serve: requests from origin {origin!r} are refused\n")
            route = request.match_info.route.name
            if route == "index" and not access.token_ok(request.query.get("token")):
                raise web.HTTPForbidden(text="rcc-tui serve: open the URL printed at start (it carries the token)\n")
            if route == "websocket" and not access.token_ok(request.match_info.get("token")):
                raise web.HTTPForbidden(text="rcc-tui serve: wrong token\n")
            response = await handler(request)
            response.headers.setdefault("Referrer-Policy", "no-referrer")  # the token stays out of Referer
            return response

        async def on_startup(self, app: web.Application) -> None:
            announce(f"rcc-tui: serving on {access.url()} (ctrl+c stops)")

        @aiohttp_jinja2.template("app_index.html")
        async def handle_index(self, request: web.Request) -> dict[str, Any]:
            font_size = request.query.get("fontsize", "16")
            return {
                "font_size": int(font_size) if font_size.isdigit() and 6 <= int(font_size) <= 64 else 16,
                # Same origin as the page: the Host was checked against the served address.
                "app_websocket_url": f"ws://{request.host}/ws/{access.token}",
                "config": {"static": {"url": "/static/"}},
                "application": {"name": self.title},
            }

        async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
            previous = self.active
            if previous is not None and not previous.done():
                try:  # a reload: the old socket is closing, its app quitting
                    await asyncio.wait_for(asyncio.shield(previous), TAKEOVER_WAIT_SECONDS)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - only its end matters here
                    pass
            if self.active is not None and not self.active.done():
                websocket = web.WebSocketResponse()
                await websocket.prepare(request)
                await websocket.send_bytes(b"\r\nrcc-tui: this session is open in another browser tab; "
                                           b"close that tab (or quit the app there), then reload this one.\r\n")
                await websocket.close()
                return websocket
            self.active = asyncio.current_task()
            return await self._serve_socket(request)

        async def _serve_socket(self, request: web.Request) -> web.WebSocketResponse:
            websocket = web.WebSocketResponse(heartbeat=15)
            width = _bounded(request.query.get("width"), 80)
            height = _bounded(request.query.get("height"), 24)
            service: AppService | None = None
            try:
                await websocket.prepare(request)
                service = AppService(command(), write_bytes=websocket.send_bytes, write_str=websocket.send_str,
                                     close=websocket.close, download_manager=self.download_manager,
                                     debug=self.debug)
                await service.start(width, height)
                await self._process_messages(websocket, service)
            except asyncio.CancelledError:
                await websocket.close()
            except Exception as error:  # noqa: BLE001 - a broken socket ends this connection only
                announce(f"rcc-tui: connection ended: {error}")
            finally:
                if service is not None:
                    await service.stop()
            return websocket

    return GuardedServer()


def _bounded(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() and 1 <= int(value) <= 1000 else default


def new_token() -> str:
    return secrets.token_urlsafe(24)
