"""Running a study: its settings, where it starts from, its samplers, limits and progress.

A study searches one session node. Its settings (space, objective, pruning, sampler) and
starting point (model, data, eval split, node, dense accuracy) are stored as study user
attributes when it is created; every worker that joins, on this machine or another, reads
them from there and refuses to join with different ones. Every trial stores its record
(rcc.session.trial_compress) and measurements as trial user attributes.

Limits: ``trials`` (what this worker runs), ``timeout`` (seconds), ``patience`` (stop once
that many finished trials in a row, study-wide, brought nothing onto the front: for
pareto, none of them is on the current front; for min-size, none is the best feasible).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rcc.compression.plan import CompressionPlan, plan_from_dict, plan_to_dict, resolve_plan
from rcc.errors import RccError
from rcc.session.metric_keys import modern_split
from rcc.search.objective import SAMPLERS, ObjectiveConfig, SearchContext, make_objective
from rcc.search.pruning import PruningConfig
from rcc.search.space import (
    SearchError, SearchSpace, SpaceConfig, build_space, params_from_plan, params_from_sensitivity,
    space_config_from_dict,
)
from rcc.search.trials import TrialRow, load_study, rows_of

SETTINGS_ATTR = "rcc/settings"
SOURCE_ATTR = "rcc/source"
DENSE_ATTR = "rcc/dense_accuracy"
DENSE_SIZE_ATTR = "rcc/dense_size"


@dataclass(frozen=True)
class StudySettings:
    """Everything that defines what a study searches and how; the same for all its workers."""

    space: SpaceConfig = field(default_factory=SpaceConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int = 8  # TPE: random trials before modelling; NSGA-II: population size

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SearchError(f"sampler {self.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SearchError(f"seed {self.seed!r} is invalid; allowed: an integer")
        if isinstance(self.startup_trials, bool) or not isinstance(self.startup_trials, int) \
                or self.startup_trials < 2:
            raise SearchError(f"startup trials {self.startup_trials!r} is invalid; allowed: an integer ≥ 2")

    def as_dict(self) -> dict:
        return {"space": self.space.as_dict(), "objective": self.objective.as_dict(),
                "pruning": self.pruning.as_dict(), "sampler": self.sampler, "seed": self.seed,
                "startup_trials": self.startup_trials}


def settings_from_dict(data: Mapping) -> StudySettings:
    known = {"space", "objective", "pruning", "sampler", "seed", "startup_trials"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SearchError(f"study setting {unknown[0]!r} is unknown; allowed: {', '.join(sorted(known))}")
    return StudySettings(space=space_config_from_dict(data.get("space", {})),
                         objective=ObjectiveConfig(**data.get("objective", {})),
                         pruning=PruningConfig(**data.get("pruning", {})),
                         sampler=data.get("sampler", "tpe"), seed=data.get("seed", 0),
                         startup_trials=data.get("startup_trials", 8))


@dataclass(frozen=True)
class Limits:
    trials: int | None = 20  # trials this search runs (split among its workers)
    timeout: float | None = None  # seconds
    patience: int | None = None

    def __post_init__(self) -> None:
        if self.trials is not None and (isinstance(self.trials, bool) or not isinstance(self.trials, int)
                                        or self.trials < 1):
            raise SearchError(f"trials {self.trials!r} is invalid; allowed: an integer ≥ 1")
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise SearchError(f"timeout {self.timeout!r} is invalid; allowed: seconds > 0")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise SearchError(f"patience {self.patience!r} is invalid; allowed: an integer ≥ 1")
        if self.trials is None and self.timeout is None and self.patience is None:
            raise SearchError("the search has no limit; allowed: trials, a timeout or patience (or several)")


@dataclass(frozen=True)
class SearchSource:
    """What the session gives a search: the model spec, the data and the node to start from."""

    session: str
    model: str
    data: str
    eval_split: str
    node: int
    plan: CompressionPlan

    def as_dict(self) -> dict:
        return {"session": self.session, "model": self.model, "data": self.data, "eval_split": self.eval_split,
                "node": self.node, "plan": plan_to_dict(self.plan)}


@dataclass(frozen=True)
class SearchProgress:
    """A trial just finished: ``done`` of ``total`` for this search, the trial, and the best so far."""

    done: int
    total: int | None
    row: TrialRow
    best: str


ProgressFn = Callable[[SearchProgress], None]


def read_source(session_dir: str | Path) -> SearchSource:
    """The session's model, data, eval split, head node and plan, read without its write lock."""
    from rcc.session.session import Session

    with Session.open(session_dir, read_only=True) as session:
        if session.head is None:
            raise SearchError(f"session {str(session_dir)!r} has no model yet; allowed: a session with a node")
        return SearchSource(session=str(Path(session_dir).resolve()), model=session.setting("model"),
                            data=session.setting("data"), eval_split=session.eval_split,
                            node=session.head, plan=session.plan)


def existing_settings(storage, study: str) -> StudySettings | None:
    """The settings a study was created with; None when the storage holds no such study (or no storage yet)."""
    try:
        loaded = load_study(storage, study)
    except RccError:  # no storage yet, or no such study in it
        return None
    data = loaded.user_attrs.get(SETTINGS_ATTR)
    return settings_from_dict(data) if isinstance(data, Mapping) else None


def _check_same(study_name: str, stored: Mapping, wanted: Mapping, what: str) -> None:
    def flat(d, prefix=""):
        for key, value in d.items():
            if isinstance(value, Mapping):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value
    old, new = dict(flat(stored)), dict(flat(wanted))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise SearchError(f"study {study_name!r} was created with {what} {key} = {old.get(key)!r}, not "
                              f"{new.get(key)!r}; allowed: the same {what} (leave the option out to join it), "
                              f"or a new study name")


def open_study(storage, name: str, settings: StudySettings, source: SearchSource, sampler=None, pruner=None):
    """Create the study (recording its settings and source), or join it when they match; returns (study, created)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    created = False
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=settings.objective.directions,
                                    sampler=sampler, pruner=pruner)
        study.set_user_attr(SETTINGS_ATTR, settings.as_dict())
        study.set_user_attr(SOURCE_ATTR, {k: v for k, v in source.as_dict().items() if k != "session"})
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = load_study(storage, name, sampler=sampler, pruner=pruner)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:  # a racing creator has not written them yet
        for _ in range(50):
            time.sleep(0.1)
            stored = load_study(storage, name).user_attrs.get(SETTINGS_ATTR)
            if stored is not None:
                break
        else:
            raise SearchError(f"study {name!r} was not made by `rcc-tui search` (it has no rcc settings); "
                              f"allowed: a new study name")
    _check_same(name, stored, settings.as_dict(), "setting")
    mine = {k: v for k, v in source.as_dict().items() if k not in ("session", "node", "plan")}
    theirs = {k: v for k, v in study.user_attrs.get(SOURCE_ATTR, {}).items() if k not in ("node", "plan")}
    if "eval_split" in theirs:  # a study made before the data roles names digits' val "calib"
        theirs["eval_split"] = modern_split(theirs.get("data"), theirs["eval_split"])
    _check_same(name, theirs, mine, "source")
    return study, created


def study_source(study, session_dir: str | Path) -> SearchSource:
    """The source recorded by the study (its node and base plan), with this machine's session path."""
    data = study.user_attrs.get(SOURCE_ATTR)
    if not isinstance(data, Mapping):
        raise SearchError(f"study {study.study_name!r} has no recorded source; allowed: studies made by "
                          f"`rcc-tui search`")
    return SearchSource(session=str(Path(session_dir).resolve()), model=data["model"], data=data["data"],
                        eval_split=modern_split(data["data"], data["eval_split"]), node=int(data["node"]),
                        plan=plan_from_dict(data["plan"]))


def sampler_seed(seed: int, worker: int, first: bool) -> int:
    """A worker's sampler seed, recorded with every trial it runs.

    The first worker of the command that created the study uses the study seed itself, so
    a one-process search is reproducible. Every other worker derives one from the seed, the
    host, the process and its index: workers on other machines must not draw the same
    random start (a study shared by processes is not reproducible trial by trial anyway).
    """
    if first:
        return seed
    text = f"{seed}|{socket.gethostname()}|{os.getpid()}|{worker}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def make_sampler(settings: StudySettings, seed: int):
    """TPE (multivariate, ``startup_trials`` random ones first) or NSGA-II (population ``startup_trials``)."""
    import optuna

    kwargs = {}
    if settings.objective.mode == "min-size" and not hasattr(optuna.trial.Trial, "set_constraint"):
        # Optuna < 5 learns constraints only through constraints_func (the objective stores the value).
        kwargs["constraints_func"] = lambda trial: (trial.user_attrs.get("constraint", 0.0),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=settings.startup_trials, seed=seed, **kwargs)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup_trials, multivariate=True,
                                          **kwargs)


def make_pruner(settings: StudySettings):
    """min-size: prune once the optimistic shortfall (reported per rung) is positive; pareto: see pruning.py."""
    import optuna

    if settings.objective.mode == "min-size" and settings.pruning.enabled:
        return optuna.pruners.ThresholdPruner(upper=0.0)
    return optuna.pruners.NopPruner()


def load_context(source: SearchSource, settings: StudySettings, device: str = "auto", worker: int = 0,
                 seed: int = 0, dense_accuracy: float | None = None,
                 cancel: Callable[[], bool] | None = None) -> SearchContext:
    """Load the model at the source node (an independent copy), the eval split and calibration data.

    Trials are measured on the eval split (``val``) and calibrated on train; a source naming any
    other eval split (a session made before the data roles) is refused. ``cancel`` is checked
    between the dense evaluation's batches, the longest wait before a first trial.
    """
    from rcc.compression.calibration_sets import calibration_sets
    from rcc.data.registry import load_dataset
    from rcc.data.roles import eval_split_of
    from rcc.eval.suite import default_task, primary_metric, run_eval
    from rcc.session.session import Session

    with Session.open(source.session, read_only=True, device=device) as session:
        model = session.model_at(source.node)
    space = build_space(settings.space, model.layers(), source.plan)
    eval_data = load_dataset(source.data, eval_split_of(source.data, source.eval_split))
    calibration, preserved = calibration_sets(source.data, per_class=settings.objective.calib_per_class,
                                              seed=source.plan.seed)
    task = default_task(model, eval_data)
    if dense_accuracy is None:
        dense_accuracy = primary_metric(run_eval(model, eval_data, task=task, cancel=cancel))
    return SearchContext(model=model, space=space, objective=settings.objective, pruning=settings.pruning,
                         eval_data=eval_data, calibration=calibration, preserved=preserved,
                         dense_accuracy=float(dense_accuracy), node=source.node, task=task, worker=worker,
                         sampler_seed=seed)


def _selects_in_space(space: SearchSpace, plan: CompressionPlan) -> bool:
    resolved = resolve_plan(plan, space.inventory)
    return any(resolved[layer.name].sparsity > 0 or resolved[layer.name].rank is not None for layer in space.layers)


def seed_study(study, space: SearchSpace, plan: CompressionPlan, sensitivity: Mapping[str, float] | None) -> int:
    """Enqueue the current plan (when it compresses a searched layer) and a sensitivity-shaped point."""
    count = 0
    if _selects_in_space(space, plan):
        study.enqueue_trial(params_from_plan(space, plan), user_attrs={"origin": "current plan"}, skip_if_exists=True)
        count += 1
    if sensitivity:
        level = params_from_plan(space, plan) if _selects_in_space(space, plan) else {}
        levels = {f: level[f] for f in ("sparsity", "rank") if f in level}
        study.enqueue_trial(params_from_sensitivity(space, sensitivity, levels or None),
                            user_attrs={"origin": "sensitivity"}, skip_if_exists=True)
        count += 1
    return count


def front_rows(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    """The front as a table shows it: pareto → non-dominated trials; min-size → feasible ones among them."""
    front = [row for row in rows if row.on_front and (mode == "pareto" or row.feasible)]
    return sorted(front, key=lambda row: (row.size or 0.0, -(row.accuracy or 0.0)))


def best_text(rows: list[TrialRow], mode: str) -> str:
    """One line on the best so far: the front's extremes, or the smallest feasible trial."""
    front = front_rows(rows, mode)
    if not front:
        return "no feasible trial yet" if mode == "min-size" else "no completed trial yet"
    if mode == "min-size":
        best = front[0]
        return f"best: trial {best.number}, {best.size:,.0f} stored at accuracy {best.accuracy:.4f}"
    small, accurate = front[0], front[-1]
    return (f"front: {len(front)} trials, smallest #{small.number} {small.size:,.0f} @ {small.accuracy:.4f}, "
            f"most accurate #{accurate.number} {accurate.size:,.0f} @ {accurate.accuracy:.4f}")


def last_improvement(rows: list[TrialRow], mode: str) -> int:
    """The newest trial number that is on the front now (min-size: the best feasible trial); −1 if none."""
    front = front_rows(rows, mode)
    if mode == "min-size":
        return front[0].number if front else -1
    return max((row.number for row in front), default=-1)


def patience_exhausted(rows: list[TrialRow], mode: str, patience: int) -> bool:
    finished = [row for row in rows if row.state in ("COMPLETE", "PRUNED")]
    newest = last_improvement(rows, mode)
    return sum(row.number > newest for row in finished) >= patience


def run_worker(study, ctx: SearchContext, settings: StudySettings, limits: Limits, trials: int | None,
               progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None) -> int:
    """Run trials of ``study`` in this process until a limit or ``cancel()``; returns how many finished here.

    A cancel during a trial raises ``rcc.errors.Cancelled`` (that trial is recorded FAIL);
    between trials it just stops.
    """
    from optuna.trial import TrialState

    finished = 0
    mode, measure = settings.objective.mode, settings.objective.size

    def after_trial(study, frozen) -> None:
        nonlocal finished
        if frozen.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            return
        finished += 1
        rows = rows_of(study.get_trials(deepcopy=False), mode, measure)
        row = next(r for r in rows if r.number == frozen.number)
        if progress:
            progress(SearchProgress(done=finished, total=trials, row=row, best=best_text(rows, mode)))
        if limits.patience is not None and patience_exhausted(rows, mode, limits.patience):
            study.stop()
        if cancel is not None and cancel():
            study.stop()

    study.optimize(make_objective(ctx, study, cancel), n_trials=trials, timeout=limits.timeout, callbacks=[after_trial],
                   gc_after_trial=False, show_progress_bar=False)
    return finished


@dataclass(frozen=True)
class SearchReport:
    study: str
    storage: str  # display form (no password)
    settings: StudySettings
    dense_accuracy: float
    dense_size: dict  # size/params, size/bytes, size/total of the model the search starts from
    rows: tuple[TrialRow, ...]
    front: tuple[TrialRow, ...]
    ran: int  # trials finished while this search ran (all its workers)
    seconds: float

    def as_dict(self) -> dict:
        return {"study": self.study, "storage": self.storage, "settings": self.settings.as_dict(),
                "dense_accuracy": self.dense_accuracy, "dense_size": self.dense_size, "ran": self.ran,
                "seconds": self.seconds, "trials": [asdict(r) for r in self.rows],
                "front": [r.number for r in self.front]}
