"""Entry point of ``rcc-tui``: parse, dispatch to one command module, turn user errors into exit 2.

``rcc-tui`` alone opens the workbench app on a new rcc-mini session (rcc_tui.cli).

Heavy libraries (torch, transformers, open_clip) are imported inside the commands, so
``rcc-tui --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from rcc.cli import (compress_cmd, eval_cmd, export_cmd, layers_cmd, plan_cmd, replay_cmd, search_cmd, session_cmd,
                     train_cmd, train_demo_cmd, analyze_cmd)

COMMANDS = (eval_cmd, layers_cmd, plan_cmd, compress_cmd, session_cmd, replay_cmd, export_cmd, train_cmd,
            train_demo_cmd, search_cmd, analyze_cmd)
EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage is one ``--help`` away), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="rcc-tui",
        description="Compress vision-language models with Recursive Cascade Compression "
                    "(DARE → Nullu → AlphaEdit).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    # The app commands (open, new, serve) first: they are what most people type. rcc_tui.cli
    # imports Textual only when one of them runs, so the engine stays free of it.
    from rcc_tui.cli import add_parsers as add_app_parsers

    add_app_parsers(sub)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rcc.errors import RccError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # No command: the workbench app on a new session (rcc-mini on digits).
        from rcc_tui.cli import run_default

        args.run = run_default
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
