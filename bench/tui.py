"""bench/tui: how fast the workbench app answers. One command, a table, bench/results/tui.json.

    python -m bench.tui [--model open_clip:ViT-B-32] [--presses 50] [--runs 3]

Both figures are measured end to end on a real terminal: the app is started as a subprocess on a
pseudo-terminal of 120×40 cells (``pty``), exactly as a person starts it, and the clock runs on
this side of the terminal.

- **Time to first frame**: from spawning ``rcc-tui new --session TMP`` (rcc-mini on digits) to the
  first bytes of the first painted frame (the tab bar's "Compress" label). Python start-up and every
  import the app needs before painting are included; loading the model is not (it happens after the
  first paint, in a worker). Goal: ≤ 1 s.
- **Key-press-to-screen latency**: from writing a cursor key (down / up in the layer tree) to the
  terminal receiving the redrawn screen that shows the new cursor target ("block N of vision" in
  the editor's header), first with the app idle, then while a cascade runs on ``--model``
  (default the ViT-B-32 architecture, random weights). Its evaluation is slow on CPU (~15 s per
  pass on 2 cores), so the cascade compresses only ``--layers`` layers (default 2): the app's
  worker is busy with calibration, pruning and evaluation for the whole measurement, which is
  what matters for latency. Goal: median and worst ≤ 100 ms.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import shutil
import signal
import statistics
import struct
import sys
import tempfile
import termios
import time
from pathlib import Path

COLUMNS, ROWS = 120, 40
FIRST_FRAME_MARKER = b"Compress"
GOAL_FIRST_FRAME = 1.0
GOAL_LATENCY = 0.1


class Terminal:
    """A subprocess on a pseudo-terminal, with everything it wrote kept in ``output``."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.started = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:  # the child: size the terminal, then become the app
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
            os.execvpe(argv[0], argv, env or os.environ.copy())
        self.pid, self.fd = pid, fd
        self.output = bytearray()

    def read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False once the app closed the terminal."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 1 << 16)
        except OSError:
            return False
        self.output += chunk
        return bool(chunk)

    def wait_for(self, marker: bytes, timeout: float, start: int = 0) -> float | None:
        """perf_counter time when ``marker`` first appears at or after ``start``, None on timeout."""
        deadline = time.perf_counter() + timeout
        while marker not in self.output[start:]:
            left = deadline - time.perf_counter()
            if left <= 0 or not self.read(min(left, 0.05)):
                return None
        return time.perf_counter()

    def press(self, key: bytes) -> int:
        """Send a key; returns where its answer starts in ``output``."""
        self.read(0)  # take in what came before, so the answer is searched only after the key
        mark = len(self.output)
        os.write(self.fd, key)
        return mark

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def app_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rcc.cli.main", *args]


def app_env(sessions: Path) -> dict[str, str]:
    return {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor", "RCC_SESSIONS_DIR": str(sessions),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def first_frame_seconds(work: Path, runs: int) -> list[float]:
    times = []
    for i in range(runs):
        term = Terminal(app_command("new", "--session", str(work / f"first-frame-{i}"), "--device", "cpu"),
                        app_env(work))
        seen = term.wait_for(FIRST_FRAME_MARKER, 30)
        term.kill()  # the model is still loading in its worker; nothing to keep
        if seen is None:
            raise RuntimeError("the app painted no frame within 30 s:\n" + term.output[-2000:].decode(errors="replace"))
        times.append(seen - term.started)
        print(f"first frame {i + 1}/{runs}: {times[-1]:.3f} s", flush=True)
    return times


def prepare_session(directory: Path, model: str, layers: int) -> list[str]:
    """A session on ``model`` whose plan prunes the first ``layers`` MLP layers of the vision tower to 50%."""
    from rcc.session import ops as O
    from rcc.session.session import Session

    start = time.perf_counter()
    with Session.create(directory, model=model, data="digits", device="cpu") as session:
        names = [layer.name for layer in session.model.layers() if layer.tower == "vision"
                 and layer.kind in ("mlp_in", "mlp_out")][:layers]
        session.apply(O.EditLayers(layers=tuple(names), settings={"sparsity": 0.5}))
    print(f"session on {model} ready in {time.perf_counter() - start:.1f} s; plan: {', '.join(names)}", flush=True)
    return names


def cursor_latencies(term: Terminal, presses: int, blocks: int, timeout: float = 5.0) -> tuple[list[float], int]:
    """Move the tree cursor over the vision blocks and time each answer; returns (latencies, timeouts).

    The cursor starts on the vision tower (expanded): down goes to block 0, 1, …, then back up.
    """
    latencies, timeouts = [], 0
    position = -1  # -1: the tower row
    direction = 1
    for _ in range(presses):
        if position + direction >= blocks or (direction < 0 and position + direction < 0):
            direction = -direction
        position += direction
        mark = term.press(b"\x1b[B" if direction > 0 else b"\x1b[A")
        sent = time.perf_counter()
        seen = term.wait_for(f"block {position} of vision".encode(), timeout, mark)
        if seen is None:
            timeouts += 1
        else:
            latencies.append(seen - sent)
        time.sleep(0.05)  # a brisk typist, not a flood
    return latencies, timeouts


def latencies(work: Path, presses: int):
    """Cursor latencies idle, then while a cascade runs: (idle, timeouts, busy, timeouts, finished early)."""
    term = Terminal(app_command("open", str(work / "cascade-session"), "--device", "cpu"), app_env(work))
    try:
        if term.wait_for(b"ready", 180) is None:
            raise RuntimeError("the session did not open:\n" + term.output[-2000:].decode(errors="replace"))
        time.sleep(0.5)
        mark = term.press(b"\r")  # expand the vision tower
        term.wait_for(b"block 0", 5, mark)
        idle, idle_timeouts = cursor_latencies(term, presses, blocks=10)

        term.press(b"\x1b[D")  # left: the cursor back on the vision tower, the cascade's targets
        time.sleep(0.3)
        mark = term.press(b"c")
        if term.wait_for(b"x cancels", 30, mark) is None:
            raise RuntimeError("the cascade did not start:\n" + term.output[-3000:].decode(errors="replace"))
        time.sleep(2.0)  # into calibration / the first evaluation
        started = len(term.output)
        busy, busy_timeouts = cursor_latencies(term, presses, blocks=10)
        finished_early = b"done:" in term.output[started:]
    finally:
        term.kill()  # the cascade is abandoned mid-way; the whole work directory goes next
    return idle, idle_timeouts, busy, busy_timeouts, finished_early


def summary(values: list[float]) -> tuple[float, float]:
    return (statistics.median(values), max(values)) if values else (float("nan"), float("nan"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="open_clip:ViT-B-32", help="model of the cascade (default ViT-B-32)")
    parser.add_argument("--layers", type=int, default=2, help="layers the cascade compresses (default 2)")
    parser.add_argument("--presses", type=int, default=50, help="key presses per latency measurement")
    parser.add_argument("--runs", type=int, default=3, help="launches for the time to first frame")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="rcc-bench-tui-"))
    try:
        first = first_frame_seconds(work, args.runs)
        layers = prepare_session(work / "cascade-session", args.model, args.layers)
        idle, idle_timeouts, busy, busy_timeouts, finished_early = latencies(work, args.presses)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ["time to first frame (rcc-tui new, rcc-mini)", *summary(first), len(first), "≤ 1 s"],
        ["key → screen, idle", *summary(idle), len(idle), "≤ 0.1 s"],
        [f"key → screen, cascade running ({args.model})", *summary(busy), len(busy), "≤ 0.1 s"],
    ]
    from bench.report import report

    report("tui", ["measure", "median s", "worst s", "n", "goal"], rows, extra={
        "terminal": f"{COLUMNS}×{ROWS} pty", "cascade_model": args.model, "cascade_layers": layers,
        "timeouts": {"idle": idle_timeouts, "running": busy_timeouts},
        "cascade_finished_during_measurement": finished_early,
        "first_frame_seconds": first, "idle_latency_seconds": idle, "running_latency_seconds": busy,
        "method": "subprocess on a pseudo-terminal; first frame = first 'Compress' byte after spawn; latency = "
                  "key written → 'block N of vision' received",
    })
    ok = (summary(first)[1] <= GOAL_FIRST_FRAME and summary(busy)[1] <= GOAL_LATENCY
          and not busy_timeouts and not finished_early)
    print("goals met" if ok else "goals NOT met (see the table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
