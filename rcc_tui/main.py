"""The ``rcc-tui`` console script: the app's commands (open, new, serve, and no command at all) composed
with the headless commands of ``rcc.cli``.

It lives in the app package so that the engine (``rcc``) never imports the app or Textual; Textual
itself is imported only when an app command runs, so ``rcc-tui --help`` and the headless commands
never load it.

    python -m rcc_tui.main COMMAND ...     # the same as rcc-tui COMMAND ...
"""

from __future__ import annotations

import argparse
import os
import sys

from rcc.cli import main as headless
from rcc_tui.cli import add_parsers, run_default


def build_parser() -> argparse.ArgumentParser:
    """Every ``rcc-tui`` command: the app's first, then the headless ones."""
    return headless.build_parser(add_parsers)


def main(argv: list[str] | None = None) -> int:
    """``rcc-tui`` with ``argv``; no command opens the workbench app on the demo session (``run_default``)."""
    return headless.main(argv, build_parser(), default_run=run_default)


def entry() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())


if __name__ == "__main__":
    entry()
