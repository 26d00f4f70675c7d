"""How the suite shares the cores: pytest-xdist (pyproject's addopts ``-n auto --dist loadgroup``).

- Workers: one per CPU this process may use (its affinity mask, and the cgroup's CPU quota in a
  container), at most ``MAX_WORKERS`` (each worker holds its own models in memory);
  ``PYTEST_XDIST_AUTO_NUM_WORKERS=N`` or ``-n N`` overrides, ``-n 0`` runs in this process.
- Each worker computes on one thread (OMP/MKL set before torch is imported, and
  ``torch.set_num_threads(1)``), so N workers never oversubscribe N cores; the processes a test
  starts inherit that environment.
- A test that uses a module- or class-scoped fixture runs in the worker that runs the rest of its
  module (an ``xdist_group`` named after the module is added), so that fixture — usually a session,
  a study or a trained model — is built once per run; other tests are spread one by one.
- Tests that share anything outside their tmp paths (a server, a fixed port, a file in the
  repository) carry ``@pytest.mark.xdist_group("NAME")`` themselves; an explicit group wins.
- Modules that hold a test marked ``slow`` are handed out first (``--no-loadscope-reorder`` keeps
  this order), so the long ones start at once and the quick ones fill the gaps at the end.
- ``built_once``: a read-only template (the demo session) built once per run for all workers.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

MAX_WORKERS = 8
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in a worker; None otherwise

if WORKER:
    # Before torch is imported (the test modules import it): its thread pools read these once.
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, "1")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, count)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    explicit = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if explicit and explicit.isdigit():
        return int(explicit)
    return min(usable_cpus(), MAX_WORKERS)


def pytest_configure(config: pytest.Config) -> None:
    if WORKER:
        import torch

        torch.set_num_threads(1)


def _uses_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(definition.scope in ("module", "class", "package")
               for definitions in info.name2fixturedefs.values() for definition in definitions)


@pytest.hookimpl(tryfirst=True)  # before xdist turns the xdist_group marks into scheduling groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.iter_markers("xdist_group")) and _uses_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    # Slow modules first, each module's tests in their own order (a stable sort of whole modules).
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_modules)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``name``, made by ``build(path)`` once per test run and shared by every worker (read-only).

    Under xdist the workers' temporary folders share a parent for this run only; a file lock there
    lets the first worker build while the others wait. Without xdist it is built in this run's own
    temporary folder. A build that fails leaves nothing behind, so the next worker tries again.
    """
    if not WORKER:
        path = tmp_path_factory.getbasetemp() / name
        if not path.exists():
            build(path)
        return path
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent
    path = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not path.exists():
            partial = root / f"{name}.partial-{WORKER}"
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            partial.rename(path)
    return path
