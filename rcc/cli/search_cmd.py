"""``rcc-tui search``: Optuna search of per-layer sparsity and rank; ``search apply`` makes a trial a node.

    rcc-tui search SESSION --study NAME [--storage URL] [--workers N] [--trials N] [--timeout S] ...
    rcc-tui search apply SESSION --study NAME --trial N [--storage URL]
    rcc-tui search trials SESSION --study NAME [--storage URL] [--json OUT]

Options that define a study (space, objective, pruning, sampler) are stored with it when it
is created; leave them out to join an existing study (from another terminal or machine),
or repeat them unchanged.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from rcc.errors import RccError

ACTIONS = ("apply", "trials")


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "search", help="search per-layer sparsity / rank with Optuna; apply a trial as a node",
        description="Search compression plans for a session with Optuna: every trial compresses a fresh copy of the "
                    "model at the session's head node (the session itself is only read) and measures its size and "
                    "eval-split accuracy. Trials are stored in SESSION/search.db, or in --storage (any Optuna RDB "
                    "URL: run the same command on several machines to share one study). `search apply SESSION "
                    "--study NAME --trial N` makes a trial a node of the session; `search trials` lists a study.",
        usage="rcc-tui search [apply|trials] SESSION [--study NAME] [options]",
    )
    parser.add_argument("words", nargs="+", metavar="[apply|trials] SESSION",
                        help="a session directory, after `apply` or `trials` for those actions")
    parser.add_argument("--study", default="search", metavar="NAME",
                        help="study name (created if new; default: search)")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna RDB URL (sqlite:///PATH, postgresql://USER@HOST:PORT/DB, ...) or a .db path; "
                             "default: SESSION/search.db. Give passwords via PGPASSWORD / ~/.pgpass, not the URL")
    parser.add_argument("--trial", type=int, default=None, metavar="N", help="apply: the trial number")
    parser.add_argument("--json", metavar="OUT", help="also write the trials and the front as JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")

    run_group = parser.add_argument_group("limits and workers (per command)")
    run_group.add_argument("--workers", type=int, default=1, metavar="N",
                           help="worker processes on this machine joining the study (default 1: in this process)")
    run_group.add_argument("--trials", type=int, default=None, metavar="N",
                           help="trials this command runs, split among its workers (default 20 unless --timeout "
                                "or --patience is given)")
    run_group.add_argument("--timeout", type=float, default=None, metavar="S", help="stop starting trials after S s")
    run_group.add_argument("--patience", type=int, default=None, metavar="N",
                           help="stop once N finished trials in a row brought nothing onto the front")
    run_group.add_argument("--sensitivity", metavar="FILE.json", default=None,
                           help="layer name → score (higher: more sensitive), or a scan from `rcc-tui analyze "
                                "sensitivity`; seeds a trial that compresses sensitive layers less (default: the "
                                "session's scan of the searched node, if any)")

    study_group = parser.add_argument_group("study settings (stored with the study)")
    study_group.add_argument("--objective", choices=("pareto", "min-size"), default=None,
                             help="pareto: size vs accuracy (default); min-size: smallest with accuracy ≥ "
                                  "threshold × dense")
    study_group.add_argument("--threshold", type=float, default=None, help="min-size: fraction of the dense "
                                                                           "accuracy to keep (default 0.95)")
    study_group.add_argument("--size", choices=("params", "bytes"), default=None,
                             help="size objective: stored values (default) or bytes of the compressed export")
    study_group.add_argument("--space", choices=("global", "group", "layer"), default=None,
                             help="global level × per-group multipliers (default), one value per group, or per layer")
    study_group.add_argument("--group-by", default=None, metavar="KEYS",
                             help="comma list of tower, block, kind (default: block)")
    study_group.add_argument("--tower", action="append", default=None, metavar="T",
                             help="search only this tower's layers (repeatable)")
    study_group.add_argument("--kind", action="append", default=None, metavar="K",
                             help="search only layers of this kind (repeatable)")
    study_group.add_argument("--sparsity", default=None, metavar="LOW:HIGH[:STEP]",
                             help="sparsity bounds (default 0:0.9:0.05), or 'none'")
    study_group.add_argument("--rank", default=None, metavar="LOW:HIGH[:STEP]",
                             help="bounds of the fraction of full rank kept (e.g. 0.1:1:0.05); default none")
    study_group.add_argument("--bits", action="store_const", const=True, default=None,
                             help="also choose int8 or float weights per layer (--space layer) or per group "
                                  "(adds the quant stage to each trial's pipeline)")
    study_group.add_argument("--multiplier", default=None, metavar="LOW:HIGH[:STEP]",
                             help="global space: per-group multiplier bounds (default 0.5:1.5:0.1), or 'none'")
    study_group.add_argument("--method", choices=("magnitude", "wanda", "dare"), default=None,
                             help="pruning method of the searched layers (default: the session plan's)")
    study_group.add_argument("--pattern", default=None, metavar="P",
                             help="pattern of the searched layers: unstructured, row, channel (MLP hidden units of "
                                  "each mlp_in's group) or head (attention heads of each attn_q's group); "
                                  "default: the session plan's")
    study_group.add_argument("--stages", default=None, metavar="LIST",
                             help="each trial's pipeline, comma list of dare, nullu, alphaedit, quant "
                                  "(default: dare, and quant with --bits)")
    study_group.add_argument("--calib-per-class", type=int, default=None, metavar="N",
                             help="calibration images per class (default 16)")
    study_group.add_argument("--no-whiten", action="store_const", const=True, default=None,
                             help="plain SVD instead of activation-aware SVD")
    study_group.add_argument("--preserve", action="store_const", const=True, default=None,
                             help="AlphaEdit corrections confined to the null space of preserved inputs")
    study_group.add_argument("--sampler", choices=("tpe", "nsga2"), default=None, help="default tpe")
    study_group.add_argument("--seed", type=int, default=None, help="sampler seed (default 0)")
    study_group.add_argument("--startup", type=int, default=None, metavar="N",
                             help="TPE random start trials / NSGA-II population (default 8)")
    study_group.add_argument("--rungs", default=None, metavar="FRACTIONS",
                             help="growing eval subsets for pruning, e.g. 0.25,0.5,1 (default)")
    study_group.add_argument("--no-pruning", action="store_const", const=True, default=None,
                             help="measure every trial on the whole eval split")
    study_group.add_argument("--floor", type=float, default=None,
                             help="pareto: also prune trials clearly below FLOOR × dense accuracy (default 0)")
    parser.set_defaults(run=run)


def parse_bounds(text: str, what: str):
    """``LOW:HIGH[:STEP]`` → Bounds; ``none`` → None."""
    from rcc.search.space import Bounds

    if text.strip().lower() == "none":
        return None
    parts = text.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (2, 3):
        raise RccError(f"{what} {text!r} is not understood; allowed: LOW:HIGH or LOW:HIGH:STEP (e.g. 0:0.9:0.05), "
                       f"or none")
    return Bounds(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None)


def _words(text: str | None) -> list[str] | None:
    return None if text is None else [w.strip() for w in text.split(",") if w.strip()]


def build_settings(args: argparse.Namespace, base):
    """The study settings: ``base`` (stored or default) with the options given on the command line."""
    space, objective, pruning = base.space, base.objective, base.pruning
    space_changes = {}
    if args.space is not None:
        space_changes["level"] = args.space
    if args.group_by is not None:
        space_changes["group_by"] = tuple(_words(args.group_by))
    if args.tower is not None:
        space_changes["towers"] = tuple(w for item in args.tower for w in _words(item))
    if args.kind is not None:
        space_changes["kinds"] = tuple(w for item in args.kind for w in _words(item))
    for name in ("sparsity", "rank", "multiplier"):
        if getattr(args, name) is not None:
            space_changes[name] = parse_bounds(getattr(args, name), name)
    if args.method is not None:
        space_changes["method"] = args.method
    if args.bits:
        space_changes["bits"] = True
    if args.pattern is not None:
        space_changes["pattern"] = args.pattern
    objective_changes = {}
    for option, key in (("objective", "mode"), ("threshold", "threshold"), ("size", "size"),
                        ("calib_per_class", "calib_per_class")):
        if getattr(args, option) is not None:
            objective_changes[key] = getattr(args, option)
    if args.stages is not None:
        objective_changes["stages"] = tuple(_words(args.stages))
    elif args.bits and "quant" not in objective.stages:
        objective_changes["stages"] = (*objective.stages, "quant")
    if args.no_whiten:
        objective_changes["whiten"] = False
    if args.preserve:
        objective_changes["preserve"] = True
    pruning_changes = {}
    if args.rungs is not None:
        try:
            pruning_changes["rungs"] = tuple(float(w) for w in _words(args.rungs))
        except ValueError:
            raise RccError(f"rungs {args.rungs!r} are not numbers; allowed: fractions such as 0.25,0.5,1") from None
    if args.no_pruning:
        pruning_changes["enabled"] = False
    if args.floor is not None:
        pruning_changes["floor"] = args.floor
    top = {}
    for option, key in (("sampler", "sampler"), ("seed", "seed"), ("startup", "startup_trials")):
        if getattr(args, option) is not None:
            top[key] = getattr(args, option)
    return replace(base, space=replace(space, **space_changes), objective=replace(objective, **objective_changes),
                   pruning=replace(pruning, **pruning_changes), **top)


def _session_word(args: argparse.Namespace) -> tuple[str, str]:
    words = args.words
    if words[0] in ACTIONS:
        if len(words) != 2:
            raise RccError(f"search {words[0]} takes one session; allowed: rcc-tui search {words[0]} SESSION "
                           f"--study NAME")
        return words[0], words[1]
    if len(words) != 1:
        raise RccError(f"search takes one session, got {' '.join(words)!r}; allowed: rcc-tui search [apply|trials] "
                       f"SESSION --study NAME")
    return "search", words[0]


def run(args: argparse.Namespace) -> int:
    action, session = _session_word(args)
    if action == "apply":
        return run_apply(args, session)
    if action == "trials":
        return run_trials(args, session)
    return run_search_command(args, session)


def _row_cells(row, dense_params: float | None = None) -> list:
    kept = "–" if row.params is None or not dense_params else f"{row.params / dense_params:.1%}"
    size = None if row.size is None else round(row.size)
    return [row.number, row.state, size, kept, None if row.removed is None else round(row.removed, 4),
            row.accuracy, "yes" if row.on_front else "", row.origin, row.note]


def _columns(split: str) -> list[str]:
    """The trial table's header; accuracy is measured on the eval split, and says so."""
    return ["trial", "state", "size", "of dense", "removed", f"{split} accuracy", "front", "origin", "note"]


def run_search_command(args: argparse.Namespace, session: str) -> int:
    from rcc.cli.common import stderr, stdout, table, write_json
    from rcc.search.space import SearchError
    from rcc.search.storage import resolve_url
    from rcc.search.study import Limits
    from rcc.services.search import plan_study, run_study
    from rcc.session.session import is_session

    if args.workers < 1:  # before a study is created or joined
        raise SearchError(f"workers {args.workers} is invalid; allowed: an integer ≥ 1")
    resolve_url(args.storage, session)  # a malformed URL is refused before anything else
    if not is_session(session):
        raise RccError(f"{session!r} is not a session; allowed: a directory made by `rcc-tui new` or "
                       f"`rcc-tui session new`")
    start = plan_study(session, args.study, args.storage, adjust=lambda base: build_settings(args, base),
                       sensitivity_file=args.sensitivity)
    settings, split = start.settings, start.eval_split
    trials = args.trials if args.trials is not None else (None if args.timeout or args.patience else 20)
    limits = Limits(trials=trials, timeout=args.timeout, patience=args.patience)
    console = stderr()
    if start.sensitivity_source and not args.sensitivity:
        console.print(f"seeding from the sensitivity scan {start.sensitivity_source}", highlight=False, markup=False)
    console.print(f"{'joining' if start.joining else 'creating'} study {args.study!r}: {settings.objective.mode}, "
                  f"{settings.space.level} space, {settings.sampler}, {args.workers} worker(s)", highlight=False)

    def progress(event) -> None:
        row = event.row
        total = f" of {event.total}" if event.total else ""
        measured = ("" if row.size is None else f"{row.size:,.0f} stored") + (
            "" if row.accuracy is None else f", {split} accuracy {row.accuracy:.4f}")
        console.print(f"trial {event.done}{total} (#{row.number}) {row.state.lower()}: {measured}"
                      f"{' — ' + row.note if row.note else ''} · {event.best}", highlight=False, markup=False,
                      soft_wrap=True)

    report = run_study(session, start, limits, storage=args.storage, workers=args.workers, device=args.device,
                       progress=progress)
    dense = _dense_params(report)
    title = (f"{'Pareto front' if settings.objective.mode == 'pareto' else 'feasible front (smallest first)'} of "
             f"study {report.study} ({report.storage}); dense accuracy {report.dense_accuracy:.4f} on {split}")
    stdout().print(table(title, _columns(split), [_row_cells(row, dense) for row in report.front]))
    counts = {state: sum(r.state == state for r in report.rows) for state in ("COMPLETE", "PRUNED", "FAIL")}
    stdout().print(f"{report.ran} trials run in {report.seconds:.1f} s; the study holds {len(report.rows)} "
                   f"({counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed). "
                   f"Apply one: rcc-tui search apply {session} --study {report.study} --trial N"
                   f"{' --storage URL' if args.storage else ''}")
    write_json(args.json, report.as_dict())
    return 0


def _dense_params(report) -> float | None:
    return report.dense_size.get("size/params")


def run_trials(args: argparse.Namespace, session: str) -> int:
    from rcc.cli.common import stdout, table, write_json
    from rcc.search.storage import display_url, resolve_url
    from rcc.search.trials import list_trials, study_info

    url = resolve_url(args.storage, session)
    rows = list_trials(url, args.study)
    info = study_info(url, args.study)
    dense = info.dense_size.get("size/params")
    split = info.eval_split
    accuracy = "–" if info.dense_accuracy is None else f"{info.dense_accuracy:.4f} on {split}"
    stdout().print(table(f"trials of study {args.study} ({display_url(url)}; {info.mode}); dense accuracy {accuracy}",
                         _columns(split), [_row_cells(row, dense) for row in rows]))
    if args.json:
        from dataclasses import asdict

        write_json(args.json, {"study": args.study, "trials": [asdict(row) for row in rows]})
    return 0


def run_apply(args: argparse.Namespace, session: str) -> int:
    from rcc.cli.common import stdout
    from rcc.services.search import apply_trial
    from rcc.session.session import Session

    if args.trial is None:
        raise RccError("search apply needs --trial N; allowed: a COMPLETE trial number from `rcc-tui search trials`")
    # Opened without its model: a trial that cannot be read is refused before the model loads.
    with Session.open(session, device=args.device, load=False) as opened:
        applied = apply_trial(opened, args.study, args.trial, storage=args.storage)
        split, metric = opened.eval_split, applied.outcome.metrics.get(opened.eval_key)
    outcome = applied.outcome
    stdout().print(f"#{outcome.seq} apply_trial: node {outcome.new_node} from trial {args.trial} of {args.study}: "
                   f"eval on {split} {metric:.4f} (the trial measured {applied.measured:.4f}), "
                   f"{int(outcome.metrics.get('size/params', 0)):,} stored values")
    return 0
