"""The architecture's rules: the engine (rcc/) never imports Textual (importing every rcc module leaves
textual unloaded), the import contracts hold, and ruff finds nothing."""

import subprocess
import sys
from pathlib import Path


def test_no_rcc_module_imports_textual():
    script = (
        "import importlib, pkgutil, sys, rcc\n"
        "names = [m.name for m in pkgutil.walk_packages(rcc.__path__, 'rcc.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'textual' or m.startswith('textual.'))\n"
        "print(len(names), loaded[:3])\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(result.stdout.split()[0])
    assert count > 60  # every engine module was imported, not an empty walk


ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold():
    # .importlinter: the engine never imports the app or Textual; no cycles between packages.
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports; "
                             "raise SystemExit(lint_imports())"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_ruff_finds_nothing():
    # The [tool.ruff] rules of pyproject.toml, so `python -m pytest` alone is what CI checks.
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
