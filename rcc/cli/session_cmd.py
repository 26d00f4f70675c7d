"""``rcc-tui session new|ls|show|log|graph|apply|gc|repair|export-recipe``: sessions, headless."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from rcc.cli.common import DATA_HELP, MODEL_HELP


def add_parser(sub) -> None:
    parser = sub.add_parser("session", help="create, inspect and maintain sessions (history graph, op log)",
                            description="Sessions hold every op, node and metric of a workbench session.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    new = actions.add_parser("new", help="create a session with its model loaded as the root node")
    new.add_argument("session", metavar="DIR", help="a new or empty directory")
    new.add_argument("--model", default="rcc-mini", metavar="SPEC", help=MODEL_HELP)
    new.add_argument("--data", default="digits", metavar="SPEC", help=DATA_HELP)
    new.add_argument("--eval-split", default=None,
                     help="split checked after each stage: always val, the eval split (calibration reads train, "
                          "reports read test); accepted for old scripts")
    new.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    new.set_defaults(run=run_new)

    ls = actions.add_parser("ls", help="list the sessions under a directory")
    ls.add_argument("root", nargs="?", default=None, metavar="DIR", help="default: the sessions home")
    ls.set_defaults(run=run_ls)

    for name, helptext, func in (("show", "model, data, head and size of a session", run_show),
                                 ("log", "the op log", run_log),
                                 ("graph", "the history graph as text lanes, newest on top", run_graph)):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("session", metavar="SESSION")
        action.set_defaults(run=func)

    apply = actions.add_parser("apply", help="apply operations (JSON) to a session, as the app would")
    apply.add_argument("session", metavar="SESSION")
    apply.add_argument("ops", metavar="OP_JSON", nargs="+",
                       help='an op object (e.g. \'{"op": "evaluate", "split": "test"}\') or a file holding '
                            'one op or a list of ops')
    apply.add_argument("--device", default="auto")
    apply.set_defaults(run=run_apply)

    gc = actions.add_parser("gc", help="delete stored tensors that no node references")
    gc.add_argument("session", metavar="SESSION")
    gc.set_defaults(run=run_gc)

    repair = actions.add_parser("repair", help="rebuild a damaged or lost session database from its journal and store",
                                description="Rebuilds session.db from session.journal (every commit, as JSON lines) "
                                            "when SQLite cannot read it or it lacks commits; the damaged file is kept "
                                            "beside it. Then hashes every blob and names the nodes that cannot be "
                                            "checked out (a blob missing or corrupt).")
    repair.add_argument("session", metavar="SESSION")
    repair.add_argument("--force", action="store_true", help="rebuild even if the database looks intact")
    repair.set_defaults(run=run_repair)

    recipe = actions.add_parser("export-recipe", help="write the op log alone (no weights) as a recipe")
    recipe.add_argument("session", metavar="SESSION")
    recipe.add_argument("recipe", metavar="RECIPE.json")
    recipe.set_defaults(run=run_export_recipe)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _metric(node) -> str:
    """The node's eval metric with the split it was measured on: ``val 0.9722``."""
    value = node.eval_metric
    return "–" if value is None else f"{node.eval_split} {value:.4f}"


def _split_rows(session) -> list[list]:
    """One row per data role: the split it reads and its size, then how the splits were made."""
    splits = session.splits()
    items = splits.get("items", {})

    def sized(split: str) -> str:
        return f"{split} ({items[split]:,} items)" if split in items else split

    return [["calibration reads", sized("train")], ["eval split", sized(session.eval_split)],
            ["test split", sized(session.test_split)], ["splits", splits.get("layout", "–")]]


def run_new(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout
    from rcc.session.session import Session

    with Session.create(args.session, model=args.model, data=args.data, eval_split=args.eval_split,
                        device=args.device) as session:
        root = session.nodes()[0]
        stdout().print(f"session {args.session}: node {root.id} {root.summary}, "
                       f"{_metric(root)} (the eval split), {root.params:,} parameters; {session.splits()['layout']}")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout, table
    from rcc.services.sessions import list_sessions, sessions_home

    root = Path(args.root) if args.root else sessions_home()
    rows = [[entry.name, entry.model, entry.data, entry.nodes, entry.head,
             entry.head_eval_text(), entry.head_params,
             _when(entry.last_change) if entry.last_change is not None else "–"] for entry in list_sessions(root)]
    stdout().print(table(f"sessions in {root}", ["session", "model", "data", "nodes", "head", "eval", "params",
                                                 "last change"], rows))
    stdout().print("open one: rcc-tui open NAME", highlight=False)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout, table
    from rcc.session.session import Session

    with Session.open(args.session, read_only=True) as session:
        nodes = session.nodes()
        head = next((n for n in nodes if n.id == session.head), None)
        rows = [["model", session.setting("model")], ["data", session.setting("data")], *_split_rows(session),
                ["nodes", len(nodes)], ["ops", len(session.ops())],
                ["head", f"node {session.head}" if head else "–"],
                ["head metrics", ", ".join(f"{k} {v:.4g}" for k, v in sorted(head.metrics.items())) if head else "–"],
                ["plan", json.dumps(json.loads(session.setting("plan") or "{}"), sort_keys=True)],
                ["disk", _disk(session.disk_usage())]]
        stdout().print(table(f"session {args.session}", ["", "value"], rows))
    return 0


def _disk(usage) -> str:
    if not usage.shared:
        return f"{usage.total / 2**20:.1f} MiB"
    return (f"{usage.total / 2**20:.1f} MiB, of which {usage.shared / 2**20:.1f} MiB are blobs linked with the data "
            f"home's shared store (stored once for all sessions; its own: {usage.own / 2**20:.1f} MiB)")


def run_log(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout, table
    from rcc.session.session import Session

    with Session.open(args.session, read_only=True) as session:
        rows = [[record.seq, _when(record.created), record.kind,
                 json.dumps({k: v for k, v in record.body.items() if k != "op"}, sort_keys=True),
                 record.node_before, record.node_after, f"{record.seconds:.1f}"] for record in session.ops()]
        stdout().print(table(f"op log of {args.session}", ["#", "when", "op", "parameters", "from", "to", "s"], rows))
    return 0


def run_graph(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout
    from rcc.session.lanes import graph_rows
    from rcc.session.session import Session

    with Session.open(args.session, read_only=True) as session:
        rows = graph_rows(session.nodes(), session.head)
    width = max((len(row.prefix) for row in rows), default=0)
    out = stdout()
    for row in rows:
        node = row.node
        label = f" [{node.label}]" if node.label else ""
        out.print(f"{row.prefix.ljust(width)} {node.id:>3}{label} {node.op_kind:<12} {_metric(node)}  "
                  f"{node.params:>12,} params  {node.summary}", markup=False, highlight=False)
    return 0


def _read_ops(items: list[str]) -> list:
    from rcc.errors import RccError
    from rcc.session.ops import op_from_dict

    ops = []
    for item in items:
        text = item
        if not item.lstrip().startswith(("{", "[")):
            try:
                text = Path(item).read_text(encoding="utf-8")
            except OSError as exc:
                raise RccError(f"op {item!r} is neither JSON nor a readable file: {exc.strerror or exc}") from exc
            except UnicodeDecodeError as exc:
                raise RccError(f"op file {item!r} is a binary file; allowed: a JSON op or a list of ops") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RccError(f"op {item[:60]!r} is not valid JSON: {exc}") from exc
        entries = data if isinstance(data, list) else [data]
        if not entries:
            raise RccError(f"op {item[:60]!r} is an empty list; allowed: one op or a non-empty list of ops")
        ops.extend(op_from_dict(entry) for entry in entries)
    return ops


def run_apply(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout
    from rcc.services.outcomes import describe_outcome
    from rcc.services.search import with_trial_record
    from rcc.session.session import Session

    # Every op checked (a trial's record read from its study) before the session is even opened.
    ops = [with_trial_record(op, args.session) for op in _read_ops(args.ops)]
    # The model loads with the first op that needs it (so a checkout can leave a corrupt head).
    with Session.open(args.session, device=args.device, load=False) as session:
        for op in ops:
            outcome = session.apply(op)
            made = f"node {outcome.new_node}" if outcome.new_node else f"head node {outcome.node_after}"
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(outcome.metrics.items()))
            out = stdout()
            out.print(f"#{outcome.seq} {op.kind}: {made} ({outcome.seconds:.1f} s){'; ' + metrics if metrics else ''}",
                      highlight=False, markup=False)
            text = describe_outcome(outcome, session.nodes())
            for line in ((text.headline,) if outcome.unchanged else ()) + text.details:
                out.print(f"  {line}", highlight=False, markup=False)
            for warning in text.warnings:
                print(f"rcc-tui: warning: {warning}", file=sys.stderr)
    return 0


def run_gc(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout
    from rcc.session.session import Session

    with Session.open(args.session, load=False) as session:
        report = session.gc()
    shared = (f"; {report.shared_removed} blobs of the shared store no session uses"
              if report.shared_removed else "")
    stdout().print(f"removed {report.removed} unreferenced blobs{shared} ({report.freed_bytes / 2**20:.1f} MiB freed); "
                   f"kept {report.kept}")
    return 0


def run_repair(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout
    from rcc.session.repair import repair

    report = repair(args.session, force=args.force)
    out = stdout()
    if not report.rebuilt:
        out.print(f"session {args.session}: {report.reason}; nothing to repair (--force rebuilds anyway)")
        return 0
    kept = f"; the damaged one is kept as {report.kept_as.name}" if report.kept_as else ""
    out.print(f"session {args.session}: database rebuilt from the journal ({report.reason}): {report.ops} ops, "
              f"{report.nodes} nodes{kept}", markup=False, highlight=False)
    for problem in report.journal_problems:
        out.print(f"  journal: {problem}", markup=False, highlight=False)
    for node, problem in report.broken_nodes.items():
        out.print(f"  cannot be rebuilt: node {node}: {problem}", markup=False, highlight=False)
    if not report.broken_nodes:
        out.print("  every node's blobs are in the store and match their hashes", markup=False, highlight=False)
    return 0


def run_export_recipe(args: argparse.Namespace) -> int:
    from rcc.cli.common import stdout
    from rcc.output_paths import check_output_file
    from rcc.session.replay import write_recipe
    from rcc.session.session import Session

    check_output_file(args.recipe, "recipe file")
    with Session.open(args.session, read_only=True) as session:
        path = write_recipe(session, args.recipe)
        count = len(session.ops())
    stdout().print(f"wrote {count} ops to {path}")
    return 0
