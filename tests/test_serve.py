"""``rcc-tui serve`` against a real server on 127.0.0.1: token, Host and Origin checks, one session.

The server runs as its own process (``python -m rcc_tui.main serve``); requests are made with
aiohttp's client, which lets a test send the Host and Origin headers a hostile page (or a
DNS-rebinding one) would.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from rcc_tui.main import main
from rcc_tui.serve import ServeAccess, check_bind, session_command

REPO = Path(__file__).resolve().parents[1]
# Stands in for the app where a test checks the server, not the app: answers like a Textual web
# app (the prelude line), writes one frame, and quits when textual-serve sends the quit packet.
FAKE_APP = r'''
import os, sys
out = sys.stdout.buffer
out.write(b"__GANGLION__\n")
frame = b"fake app frame"
out.write(b"D" + len(frame).to_bytes(4, "big") + frame)
out.flush()
while True:
    data = os.read(0, 65536)
    if not data or b"quit" in data:
        break
'''


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Served:
    """A ``rcc-tui serve`` process and the URL it printed."""

    def __init__(self, tmp_path: Path, *args: str):
        self.port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "rcc_tui.main", "serve", "--port", str(self.port),
                                         *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, cwd=tmp_path)
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            assert line, f"serve ended: {self.lines}"
            self.lines.append(line.rstrip())
            found = re.search(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
            if found:
                self.token = found.group(2)
                self.origin = f"http://127.0.0.1:{self.port}"
                return self._until_listening(deadline)
        raise AssertionError(f"no URL printed: {self.lines}")

    def _until_listening(self, deadline: float) -> None:
        # The URL is printed while the server starts; the socket listens a moment later.
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the server never listened")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    server = Served(tmp, "--session", str(tmp / "session"), "--command", f"{sys.executable} -c '{FAKE_APP}'")
    yield server
    server.stop()


async def _get(url: str, headers: dict | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(url, headers=headers or {}) as response:
        return response.status, (await response.read()).decode(errors="replace")


async def _ws_status(served: Served, token: str, headers: dict) -> int:
    async with aiohttp.ClientSession() as client:
        try:
            async with client.ws_connect(f"ws://127.0.0.1:{served.port}/ws/{token}?width=80&height=24",
                                         headers=headers):
                return 101
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status


def test_the_page_needs_the_token_and_this_server_as_host_and_origin(served):
    base = f"http://127.0.0.1:{served.port}"
    good = f"{base}/?token={served.token}"
    status, page = asyncio.run(_get(good))
    assert status == 200
    assert f"ws://127.0.0.1:{served.port}/ws/{served.token}" in page
    assert "googleapis" not in page and not re.search(r"(href|src)=\"https?://", page)  # nothing from outside
    assert "/static/fonts/RobotoMono" in page
    assert asyncio.run(_get(f"{base}/"))[0] == 403
    assert asyncio.run(_get(f"{base}/?token=wrong"))[0] == 403
    assert asyncio.run(_get(f"{base}/?token={served.token[:-1]}"))[0] == 403
    # DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends its own name as Host.
    assert asyncio.run(_get(good, {"Host": f"evil.example:{served.port}"}))[0] == 403
    assert asyncio.run(_get(good, {"Host": "127.0.0.1:1"}))[0] == 403
    assert asyncio.run(_get(good, {"Origin": "http://evil.example"}))[0] == 403
    assert asyncio.run(_get(good, {"Host": f"localhost:{served.port}", "Origin": f"http://localhost:{served.port}"}))[0] == 200
    # The font the page uses is served from this machine.
    status, _ = asyncio.run(_get(f"{base}/static/fonts/RobotoMono-VariableFont_wght.ttf"))
    assert status == 200


def test_the_socket_needs_the_token_and_a_same_origin_page(served):
    same = {"Origin": served.origin}
    assert asyncio.run(_ws_status(served, "wrong", same)) == 403
    assert asyncio.run(_ws_status(served, served.token, {"Origin": "http://evil.example"})) == 403
    assert asyncio.run(_ws_status(served, served.token, {"Origin": "null"})) == 403
    assert asyncio.run(_ws_status(served, served.token, {"Origin": served.origin,
                                                         "Host": f"evil.example:{served.port}"})) == 403
    assert asyncio.run(_ws_status(served, served.token, same)) == 101


def test_tabs_share_one_session_one_at_a_time(served):
    async def scenario():
        url = f"ws://127.0.0.1:{served.port}/ws/{served.token}?width=80&height=24"
        async with aiohttp.ClientSession() as client:
            first = await client.ws_connect(url, headers={"Origin": served.origin})
            frame = await asyncio.wait_for(first.receive(), 60)
            second = await client.ws_connect(url, headers={"Origin": served.origin})
            refused = await asyncio.wait_for(second.receive(), 60)  # after the takeover wait
            await first.close()
            third = await client.ws_connect(url, headers={"Origin": served.origin})
            again = await asyncio.wait_for(third.receive(), 60)
            await third.close()
            return frame.data, refused.data, again.data

    frame, refused, again = asyncio.run(scenario())
    assert frame == b"fake app frame"
    assert b"open in another browser tab" in refused
    assert again == b"fake app frame"  # once the first tab closed, the next one gets the session


def test_each_connection_opens_the_served_session(tmp_path):
    directory = tmp_path / "s"
    assert session_command(directory, python="py").endswith(f"-m rcc_tui.main new --session {directory}")
    directory.mkdir()
    (directory / "session.db").touch()
    assert session_command(directory, python="py") == f"py -m rcc_tui.main open {directory}"


def test_hosts_and_origins_that_name_this_server():
    access = ServeAccess(host="127.0.0.1", port=8000, token="t")
    assert access.host_ok("127.0.0.1:8000") and access.host_ok("localhost:8000") and access.host_ok("[::1]:8000")
    assert not access.host_ok("127.0.0.1") and not access.host_ok("evil:8000") and not access.host_ok(None)
    assert access.origin_ok(None, "127.0.0.1:8000")
    assert access.origin_ok("http://localhost:8000", "localhost:8000")
    assert not access.origin_ok("http://localhost:8000", "127.0.0.1:8000")  # not the page's own origin
    assert not access.origin_ok("https://127.0.0.1:8000", "127.0.0.1:8000")
    remote = ServeAccess(host="0.0.0.0", port=8000, token="t", allow_remote=True)
    assert remote.host_ok("box.lan:8000") and remote.origin_ok("http://box.lan:8000", "box.lan:8000")
    assert not remote.origin_ok("http://evil.example", "box.lan:8000")
    assert not access.token_ok("") and not access.token_ok(None) and access.token_ok("t")


def test_a_public_host_needs_allow_remote_and_warns(monkeypatch, capsys, tmp_path):
    for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
        with pytest.raises(Exception) as refused:
            check_bind(host, 8000, allow_remote=False)
        assert host in str(refused.value) and "--allow-remote" in str(refused.value)
    check_bind("localhost", 8000, allow_remote=False)
    check_bind("::1", 8000, allow_remote=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'0.0.0.0'" in err and "--allow-remote" in err
    assert main(["serve", "--port", "70000"]) == 2
    assert "70000" in capsys.readouterr().err

    served = []

    class FakeServer:
        def serve(self):
            served.append(True)

    monkeypatch.setattr("rcc_tui.serve.make_server", lambda access, command, **kw: served.append(
        (access, command())) or FakeServer())
    assert main(["serve", "--host", "0.0.0.0", "--allow-remote", "--session", str(tmp_path / "s")]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "'0.0.0.0'" in captured.err
    access, command = served[0]
    assert access.allow_remote and access.host == "0.0.0.0" and len(access.token) >= 32
    assert command.endswith(f"new --session {tmp_path / 's'}")
    (tmp_path / "file").write_text("x")
    assert main(["serve", "--session", str(tmp_path / "file" / "s")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_the_real_app_is_served_to_a_tab_with_the_token(tmp_path, tiny_spec):
    """No stand-in: the default command opens the served session in the workbench app over the socket."""
    from rcc.session.session import Session

    Session.create(tmp_path / "session", model=tiny_spec, device="cpu").close()
    server = Served(tmp_path, "--session", str(tmp_path / "session"))
    try:
        async def first_frames() -> bytes:
            url = f"ws://127.0.0.1:{server.port}/ws/{server.token}?width=100&height=30"
            seen = b""
            async with aiohttp.ClientSession() as client:
                socket_ = await client.ws_connect(url, headers={"Origin": server.origin})
                deadline = time.monotonic() + 120
                while b"rcc-tui" not in seen and time.monotonic() < deadline:
                    message = await asyncio.wait_for(socket_.receive(), 120)
                    if message.type == aiohttp.WSMsgType.BINARY:
                        seen += message.data
                    elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                        break
                await socket_.close()
            return seen

        frames = asyncio.run(first_frames())
        assert b"rcc-tui" in frames, frames[-500:]
    finally:
        server.stop()
