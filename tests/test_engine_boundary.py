"""The engine (rcc/) never imports Textual: importing every rcc module leaves textual unloaded."""

import subprocess
import sys


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
