"""``rcc-tui open|new|serve`` and ``rcc-tui`` alone: the commands that start the app.

``open`` takes a session's name (as ``rcc-tui session ls`` prints it), its path, or nothing (then
it offers the latest session). ``rcc-tui`` alone offers to reopen the latest demo session before
creating a new one. Quitting prints the session's path and the command that reopens it.

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
    open_.add_argument("session", metavar="SESSION", nargs="?", default=None,
                       help="a session's name from `rcc-tui session ls`, or its directory (default: the latest "
                            "session, after asking)")
    _app_options(open_)
    open_.set_defaults(run=run_open)

    new = sub.add_parser("new", help="create a session and open it in the workbench app",
                         description="Create a session (the model loaded and evaluated as its root node) and open "
                                     "it in the interactive workbench.")
    new.add_argument("--model", default=DEFAULT_MODEL, metavar="SPEC", help=MODEL_HELP)
    new.add_argument("--data", default=DEFAULT_DATA, metavar="SPEC", help=DATA_HELP)
    new.add_argument("--session", default=None, metavar="DIR",
                     help="a new or empty directory (default: a new one under the sessions home: "
                          "$RCC_SESSIONS_DIR, else sessions/ in the data home, $RCC_DATA_HOME or "
                          "~/.local/share/rcc-tui)")
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
    if app.opened_directory:
        print(farewell(app.opened_directory))
    return int(app.return_code or 0)


def farewell(directory: str) -> str:
    """What quitting prints: where the session is, and how to open it again."""
    from pathlib import Path

    from rcc.services.sessions import reopen_command

    return f"rcc-tui: session {directory}\nreopen it with: {reopen_command(Path(directory))}"


def ask(question: str) -> bool | None:
    """Ask ``question`` [Y/n] on the terminal; None when there is no terminal to ask on."""
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    try:
        answer = input(f"{question} [Y/n] ").strip().lower()
    except EOFError:
        return None
    return answer in ("", "y", "yes")


def run_open(args: argparse.Namespace) -> int:
    from rcc.errors import RccError
    from rcc.services.sessions import find_session, latest_session, sessions_home

    if args.session is not None:
        directory = find_session(args.session)
    else:
        latest = latest_session()
        if latest is None:
            raise RccError(f"no session to open in {sessions_home()}; allowed: rcc-tui open NAME|PATH, or "
                           f"`rcc-tui new` to make one")
        answer = ask(f"Open the latest session, {latest.describe()}?")
        if answer is None:
            raise RccError(f"no session given and no terminal to ask on; allowed: rcc-tui open NAME|PATH "
                           f"(the latest is {latest.name!r})")
        if not answer:
            return 0
        directory = latest.path
    return _run_app(str(directory), False, DEFAULT_MODEL, DEFAULT_DATA, args.device, args.theme, args.keymap)


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
    """``rcc-tui`` with no command: the latest demo session (after asking), else a new one on rcc-mini and digits."""
    from rcc.services.sessions import latest_session

    latest = latest_session(demo_only=True)
    if latest is not None and ask(f"Reopen the latest demo session, {latest.describe()}? (n starts a new one)"):
        return _run_app(str(latest.path), False, DEFAULT_MODEL, DEFAULT_DATA, "auto", None, None)
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
        from rcc.services.sessions import new_session_dir

        args.session = str(new_session_dir())
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
