"""Recipes (the op log alone, no weights) and replay: re-execute a log into a new session.

Recipe JSON::

    {"format": "rcc-recipe", "version": 1,
     "ops": [{"op": "load_model", ...}, ...],
     "nodes": {"1": {"val/primary": 0.97, ...}, ...}}   # recorded metrics, to compare against

Metric keys name their split (``rcc.session.metric_keys``); a recipe written before the data
roles (``eval/primary``, digits' ``calib``) has its keys renamed to the split they measured.

Replay validates every op before running any, confines the recipe's paths to the data
roots, applies the ops in order into a fresh session (node ids come out the same, since
ops run in the same order) and compares each node's metrics with the recorded ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rcc.errors import RccError
from rcc.session import ops as O
from rcc.session.metric_keys import legacy_eval_split, modern_metrics
from rcc.session.progress import ProgressFn
from rcc.session.recipe_paths import confine_data_spec, confine_model_spec, export_name

RECIPE_FORMAT = "rcc-recipe"
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    ops: tuple[O.Op, ...]
    recorded: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricRow:
    node: int
    key: str
    recorded: float | None
    replayed: float | None

    @property
    def difference(self) -> float:
        if self.recorded is None or self.replayed is None:
            return math.inf
        return abs(self.recorded - self.replayed)


@dataclass(frozen=True)
class ReplayReport:
    session: Path
    rows: tuple[MetricRow, ...]
    ops: int

    def mismatches(self, tolerance: float) -> list[MetricRow]:
        return [row for row in self.rows if not row.difference <= tolerance]


def recipe_of(session) -> dict:
    """The session's op log and node metrics as a recipe dict (no weights)."""
    nodes = {str(node.id): node.metrics for node in session.nodes()}
    return {"format": RECIPE_FORMAT, "version": RECIPE_VERSION,
            "ops": [{"op": record.kind, **{k: v for k, v in record.body.items() if k != "op"}}
                    for record in session.ops()],
            "nodes": nodes}


def write_recipe(session, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recipe_of(session), indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise RccError(f"cannot write recipe {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def parse_recipe(data: object, source: str = "recipe") -> Recipe:
    """A checked Recipe from its JSON form: every op validated before anything runs."""
    if not isinstance(data, dict) or data.get("format") != RECIPE_FORMAT:
        raise RccError(f"{source} is not an rcc recipe; allowed: JSON with \"format\": \"{RECIPE_FORMAT}\"")
    if data.get("version") != RECIPE_VERSION:
        raise RccError(f"{source} has version {data.get('version')!r}; allowed: {RECIPE_VERSION}")
    unknown = sorted(set(data) - {"format", "version", "ops", "nodes"})
    if unknown:
        raise RccError(f"{source}: key {unknown[0]!r} is unknown; allowed: format, version, ops, nodes")
    raw_ops = data.get("ops")
    if not isinstance(raw_ops, list) or not raw_ops:
        raise RccError(f"{source}: ops must be a non-empty list of operations")
    ops = []
    for i, raw in enumerate(raw_ops):
        try:
            ops.append(O.op_from_dict(raw))
        except RccError as exc:
            raise RccError(f"{source}: ops[{i}]: {exc}") from exc
    if not ops[0].starts_session or any(op.starts_session for op in ops[1:]):
        raise RccError(f"{source}: the first op, and only the first, must be load_model")
    recorded: dict[int, dict[str, float]] = {}
    first = ops[0]
    measured = legacy_eval_split(first.data, first.eval_split)
    for key, metrics in (data.get("nodes") or {}).items():
        if not str(key).isdigit() or not isinstance(metrics, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
            raise RccError(f"{source}: nodes[{key!r}] must map a node id to {{metric: number}}")
        recorded[int(key)] = modern_metrics({k: float(v) for k, v in metrics.items()}, first.data, measured)
    return Recipe(tuple(ops), recorded)


def load_recipe(source: str | Path) -> Recipe:
    """A recipe from a JSON file, or from a session directory's op log."""
    from rcc.session.session import Session, is_session

    source = Path(source)
    if is_session(source):
        with Session.open(source, read_only=True) as session:
            return parse_recipe(recipe_of(session), f"session {str(source)!r}")
    if not source.is_file():
        raise RccError(f"{str(source)!r} is neither a session directory nor a recipe file")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError (a binary file)
        raise RccError(f"recipe {str(source)!r} cannot be read as JSON: {exc}") from exc
    return parse_recipe(data, f"recipe {str(source)!r}")


def confine(recipe: Recipe, roots: list[Path]) -> Recipe:
    """The recipe with its paths resolved under ``roots`` (refused if any escapes them)."""
    roots = [Path(r).expanduser().resolve() for r in roots]
    out = []
    for op in recipe.ops:
        if isinstance(op, O.LoadModel):
            op = replace(op, model=confine_model_spec(op.model, roots), data=confine_data_spec(op.data, roots))
        elif isinstance(op, O.Export):
            op = replace(op, out=export_name(op.out))
        elif isinstance(op, O.ApplyTrial) and not op.record:
            # Without its stored record the op would read a study storage the recipe names.
            raise RccError(f"recipe op apply_trial (study {op.study!r}, trial {op.trial}) carries no trial record; "
                           f"allowed: apply_trial ops as rcc writes them, with their record")
        out.append(op)
    return replace(recipe, ops=tuple(out))


def replay(recipe: Recipe, out: str | Path, roots: list[Path], device: str = "auto",
           progress: ProgressFn | None = None, on_op: Callable[[int, O.Op], None] | None = None) -> ReplayReport:
    """Apply the recipe's ops into a new session at ``out``; compare every node's metrics."""
    from rcc.session.session import Session

    recipe = confine(recipe, roots)
    first, rest = recipe.ops[0], recipe.ops[1:]
    if on_op:
        on_op(0, first)
    session = Session.create(out, model=first.model, data=first.data, eval_split=first.eval_split,
                             test_split=first.test_split, device=device, progress=progress)
    try:
        for i, op in enumerate(rest, start=1):
            if on_op:
                on_op(i, op)
            session.apply(op, progress=progress)
        replayed = {node.id: node.metrics for node in session.nodes()}
    finally:
        session.close()
    rows = []
    for node in sorted(set(recipe.recorded) | set(replayed)):
        before, after = recipe.recorded.get(node, {}), replayed.get(node, {})
        for key in sorted(set(before) | set(after)):
            rows.append(MetricRow(node, key, before.get(key), after.get(key)))
    return ReplayReport(Path(out), tuple(rows), len(recipe.ops))
