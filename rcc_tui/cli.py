"""``rcc-tui open|new|serve`` and ``rcc-tui`` alone: the commands that start the app.

Textual is imported only when an app command runs, so ``rcc-tui --help`` and the headless
commands never load it (and rcc/ stays free of Textual).
"""

from __future__ import annotations

import argparse

DEFAULT_MODEL = "rcc-mini"
DEFAULT_DATA = "digits"


def _app_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--theme", default=None, metavar="NAME",
                        help="rcc-dark, rcc-light, rcc-ansi or a user theme (default: $TEXTUAL_THEME, else rcc-dark)")
    parser.add_argument("--keymap", default=None, metavar="TOML",
                        help="key bindings to override, binding id = \"keys\" (default: the user keymap file)")


def add_parsers(sub) -> None:
    """Register ``open``, ``new`` and ``serve`` on the ``rcc-tui`` subcommand parser."""
    from rcc.cli.common import DATA_HELP, MODEL_HELP

    open_ = sub.add_parser("open", help="open a session in the workbench app",
                           description="Open an existing session (made by `rcc-tui new` or `rcc-tui session new`) "
                                       "in the interactive workbench, at its current node.")
    open_.add_argument("session", metavar="SESSION", help="the session directory")
    _app_options(open_)
    open_.set_defaults(run=run_open)

    new = sub.add_parser("new", help="create a session and open it in the workbench app",
                         description="Create a session (the model loaded and evaluated as its root node) and open "
                                     "it in the interactive workbench.")
    new.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help=MODEL_HELP)
    new.add_argument("--data", default=DEFAULT_DATA, metavar="SPEC", help=DATA_HELP)
    new.add_argument("--session", default=None, metavar="DIR",
                     help="a new or empty directory (default: a new one under the sessions home, "
                          "$RCC_SESSIONS_DIR or ~/.local/share/rcc-tui/sessions)")
    _app_options(new)
    new.set_defaults(run=run_new)

    serve = sub.add_parser("serve", help="serve the workbench in a web browser (textual-serve)",
                           description="Serve the workbench app over HTTP with textual-serve, on 127.0.0.1 unless "
                                       "--host and --allow-remote say otherwise. The URL printed at start carries "
                                       "a random token that the page and its socket require; requests naming "
                                       "another host or coming from another site's page are refused. Every "
                                       "browser tab works on the same session (one tab at a time).")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a --host other than a loopback address (anyone who can reach it and has the URL "
                            "can drive the app as you)")
    serve.add_argument("--session", default=None, metavar="DIR",
                       help="the session the tabs work on: an existing session, or a new or empty directory that "
                            "the first tab creates it in (default: a new one under the sessions home)")
    serve.add_argument("--command", dest="serve_command", default=None, metavar="CMD",
                       help="the command each connection runs instead (default: open --session with this Python)")
    serve.set_defaults(run=run_serve)


def _run_app(session_dir: str | None, new: bool, model: str, data: str, device: str, theme: str | None,
             keymap: str | None) -> int:
    from rcc_tui.app import RccApp

    app = RccApp(session_dir=session_dir, new=new, model=model, data=data, device=device, theme=theme,
                 keymap_path=keymap)
    app.run()
    return int(app.return_code or 0)


def run_open(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rcc.errors import RccError

    if not (Path(args.session) / "session.db").is_file():
        raise RccError(f"{args.session!r} is not a session; allowed: a directory made by `rcc-tui new` "
                       f"(it holds session.db)")
    return _run_app(args.session, False, DEFAULT_MODEL, DEFAULT_DATA, args.device, args.theme, args.keymap)


def run_new(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rcc.errors import RccError

    if args.session is not None:
        directory = Path(args.session)
        if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
            raise RccError(f"session directory {args.session!r} exists and is not empty; allowed: a new or empty "
                           f"directory (or `rcc-tui open` it if it is a session)")
    return _run_app(args.session, True, args.model, args.data, args.device, args.theme, args.keymap)


def run_default(args: argparse.Namespace | None = None) -> int:
    """``rcc-tui`` with no command: a new session on the rcc-mini demo and digits."""
    return _run_app(None, True, DEFAULT_MODEL, DEFAULT_DATA, "auto", None, None)


def run_serve(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from rcc.errors import RccError
    from rcc.output_paths import check_output_dir
    from rcc.session.session import is_session
    from rcc_tui.serve import ServeAccess, check_bind, is_loopback, make_server, new_token, session_command

    check_bind(args.host, args.port, args.allow_remote)
    if args.session is not None and not is_session(args.session):
        check_output_dir(args.session, "--session")  # a new or empty directory: the first tab creates it there
    if args.session is None:
        from rcc_tui.screens.main_screen import default_session_dir

        args.session = default_session_dir()
    session = str(Path(args.session).resolve())
    if not is_loopback(args.host):
        print(f"rcc-tui: warning: serving on {args.host!r}, not this machine only: anyone who can reach it and "
              f"has the URL (its token) can drive the app and read and write files as you", file=sys.stderr)
    access = ServeAccess(host=args.host, port=args.port, token=new_token(), allow_remote=args.allow_remote)
    command = (lambda: args.serve_command) if args.serve_command else (lambda: session_command(session))
    print(f"rcc-tui: session {session}", flush=True)
    try:
        make_server(access, command, announce=lambda line: print(line, flush=True)).serve()
    except OSError as exc:  # the port is taken, the address is not this machine's
        raise RccError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}; allowed: a free port "
                       f"on an address of this machine") from exc
    return 0
