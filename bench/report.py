"""What every benchmark ends with: a printed table and a JSON file under bench/results/."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass(frozen=True)
class PairedTiming:
    """Two callables timed alternately: medians of wall seconds, and medians of the per-pair ratios
    first / second of wall time and of this process's CPU time (all its threads)."""

    first: float
    second: float
    wall_ratio: float
    cpu_ratio: float


def paired_seconds(first: Callable[[], object], second: Callable[[], object], repeats: int,
                   warmup: int = 1) -> PairedTiming:
    """Time ``first`` and ``second`` alternately (A, B, A, B, …), ``repeats`` pairs after ``warmup``.

    A machine that slows down for a while slows both neighbours, so on a shared machine the ratio
    of neighbours is steadier than the ratio of two medians taken minutes apart; the CPU-time ratio
    also leaves out the time other processes held the cores (it is the work done, not the wait).
    """
    for _ in range(warmup):
        first()
        second()
    wall: dict[int, list[float]] = {0: [], 1: []}
    cpu: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(repeats):
        for side, fn in enumerate((first, second)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[side].append(time.perf_counter() - start)
            cpu[side].append(time.process_time() - start_cpu)
    return PairedTiming(statistics.median(wall[0]), statistics.median(wall[1]),
                        statistics.median(x / y for x, y in zip(wall[0], wall[1])),
                        statistics.median(x / y for x, y in zip(cpu[0], cpu[1])))


def machine() -> dict:
    return {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report(name: str, columns: list[str], rows: list[list[object]], extra: dict | None = None) -> Path:
    """Print ``rows`` as a table and write them (plus machine facts) to bench/results/NAME.json."""
    table = Table(title=name, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    Console().print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "columns": columns, "rows": rows, **(extra or {})}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path
