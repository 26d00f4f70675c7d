"""The headless commands of ``rcc-tui``: parse, dispatch to one command module, turn user errors into exit 2.

The console script itself is ``rcc_tui.main``: it adds the app's commands (open, new, serve, and
``rcc-tui`` alone) to this parser, so the engine never imports the app or Textual.
``python -m rcc.cli.main`` runs the headless commands only.

Heavy libraries (torch, transformers, open_clip) are imported inside the commands, so
``rcc-tui --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from rcc.cli import (compress_cmd, eval_cmd, export_cmd, layers_cmd, plan_cmd, replay_cmd, search_cmd, session_cmd,
                     train_cmd, train_demo_cmd, analyze_cmd)

COMMANDS = (eval_cmd, layers_cmd, plan_cmd, compress_cmd, session_cmd, replay_cmd, export_cmd, train_cmd,
            train_demo_cmd, search_cmd, analyze_cmd)
EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage is one ``--help`` away), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(add_front_parsers: Callable[[object], None] | None = None) -> argparse.ArgumentParser:
    """The ``rcc-tui`` parser; ``add_front_parsers(sub)`` registers commands listed before the headless ones."""
    parser = OneLineParser(
        prog="rcc-tui",
        description="Compress vision-language models with Recursive Cascade Compression "
                    "(DARE → Nullu → AlphaEdit).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    if add_front_parsers is not None:  # the app's commands (rcc_tui.main): what most people type
        add_front_parsers(sub)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None,
         default_run: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Run one command of ``parser`` (default: the headless commands); ``default_run`` runs when none is given."""
    from rcc.errors import RccError

    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if default_run is None:
            parser.error("no command given; allowed: one of the commands `--help` lists")
        args.run = default_run
    try:
        check_outputs(args)
        return int(args.run(args) or 0)
    except RccError as exc:
        print(f"rcc-tui: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("rcc-tui: interrupted", file=sys.stderr)
        return 130


def check_outputs(args: argparse.Namespace) -> None:
    """Every command's ``--json`` report file (and an output folder it adds files to) is checked
    before the command does any work; commands check their other outputs themselves, first."""
    from rcc.output_paths import check_output_dir, check_output_file

    report = getattr(args, "json", None)
    if isinstance(report, str):
        check_output_file(report, "--json report")
    if getattr(args, "out_folder", False) and isinstance(getattr(args, "out", None), str):
        check_output_dir(args.out, "--out folder", force=True)


def one_line(text: str) -> str:
    """An error message as the one line the CLI promises (library messages may span several)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def entry() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())


if __name__ == "__main__":
    entry()
