"""``rcc.Cascade``: the RCC pipeline as the method describes it — stages, a threshold, run on a model and data.

    cascade = rcc.Cascade(threshold=0.95, stages=[rcc.DARE(sparsity=0.5, method="wanda"),
                                                  rcc.Nullu(rank="auto", budget=0.6), rcc.AlphaEdit()])
    report = cascade.run(model, data="digits")

``run`` calibrates on the data's train split and checks (and backs off) every stage on its eval
split, exactly as the session op ``run_cascade`` does (``rcc.session.flows.cascade_on``): a model
loaded with ``rcc.load(..., session=PATH)`` records the run as ``set_plan`` + ``run_cascade`` ops,
so it replays headlessly and opens in the app.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from rcc.api.stages import STAGE_TYPES, STAGES_ALLOWED, Quant, Stage
from rcc.compression.plan import CompressionPlan, filtered_rules, plan_from_dict, plan_to_dict
from rcc.compression.plan_rules import context, normalize_settings
from rcc.errors import RccError


@dataclass(frozen=True)
class CascadeReport:
    """What a cascade run did: every attempt, the metrics (named by their split) and the sizes.

    ``sizes`` are what the compressed export stores: ``size/params`` (numbers kept), ``size/bytes``
    (values, packed masks, factors) and ``size/total`` (every parameter, as loaded in memory).
    """

    eval_split: str
    threshold: float
    dense_metric: float
    final_metric: float
    removed_fraction: float  # of the selected layers' parameters
    attempts: tuple[dict, ...]
    skipped: tuple[dict, ...]
    sizes: dict[str, float]
    seconds: float
    node: int | None = None  # the session node the run made, when recorded

    @property
    def metrics(self) -> dict[str, float]:
        """``{"val/dense": …, "val/primary": …}``: the eval split's primary metric before and after."""
        return {f"{self.eval_split}/dense": self.dense_metric, f"{self.eval_split}/primary": self.final_metric}

    @property
    def accepted(self) -> tuple[dict, ...]:
        return tuple(a for a in self.attempts if a["accepted"])


@dataclass(frozen=True)
class Cascade:
    """Stages in order, each checked against ``threshold`` × the dense metric and backed off.

    ``towers`` / ``kinds`` limit which layers the stages' settings reach (None: every layer);
    ``plan`` (a CompressionPlan or its JSON form) is the starting plan, which the stages'
    settings then extend as one more rule. ``seed`` seeds calibration sampling and DARE's drops.
    ``allocation`` (``uniform`` or ``global``) decides how ``pattern="channel"`` / ``"head"``
    removals are shared among a tower's MLPs / attentions (``rcc.compression.unit_allocation``).
    """

    stages: Sequence[Stage] = field(default_factory=tuple)
    threshold: float = 0.95
    towers: str | Sequence[str] | None = None
    kinds: str | Sequence[str] | None = None
    plan: CompressionPlan | Mapping | None = None
    max_attempts: int = 3
    schedule: str = "linear"
    steps: int = 1
    calib_per_class: int = 16
    seed: int = 0
    allocation: str = "uniform"  # channel / head patterns: each group its planned share, or "global" per tower

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if not stages:
            raise RccError(f"a cascade needs at least one stage; allowed: {STAGES_ALLOWED}")
        for stage in stages:
            if not isinstance(stage, STAGE_TYPES):
                raise RccError(f"stage {stage!r} is not a stage; allowed: {STAGES_ALLOWED}")
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise RccError(f"stages {names} repeat a stage; allowed: each of dare, nullu, alphaedit, quant at most once")
        object.__setattr__(self, "stages", stages)
        self.op()  # threshold, attempts, schedule, steps and sizes checked by the op's own rules

    def op(self):
        """The ``run_cascade`` op this cascade runs (a session records exactly this)."""
        from rcc.session.ops import RunCascade

        by_name = {stage.name: stage for stage in self.stages}
        quant = by_name.get("quant", Quant())
        return RunCascade(stages=tuple(by_name), threshold=self.threshold, max_attempts=self.max_attempts,
                          schedule=self.schedule, steps=self.steps, calib_per_class=self.calib_per_class,
                          whiten=by_name["nullu"].whiten if "nullu" in by_name else True,
                          preserve=by_name["alphaedit"].preserve if "alphaedit" in by_name else False,
                          allocation=self.allocation, quant_method=quant.method,
                          smooth_alpha=quant.smooth_alpha, quant_embeddings=quant.embeddings)

    def compression_plan(self, model=None) -> CompressionPlan:
        """The plan the stages describe (on top of ``plan``); ``model`` lets ranks skip matrices used as x @ W."""
        base = self.plan if isinstance(self.plan, CompressionPlan) else plan_from_dict(dict(self.plan or {}))
        settings: dict = {}
        for stage in self.stages:
            with context(f"rcc.{type(stage).__name__}"):
                settings.update(normalize_settings(stage.settings()))
        budgets = [stage.budget for stage in self.stages if getattr(stage, "budget", None) is not None]
        budget = budgets[0] if budgets else base.budget
        if not settings or settings == {"correction": False}:
            rules, overrides = (), {}
        else:
            rules, overrides = filtered_rules(settings, self.towers, self.kinds,
                                              None if model is None else model.layers())
        plan = replace(base, rules=base.rules + rules, overrides={**overrides, **base.overrides},
                       budget=budget, seed=self.seed if self.plan is None else base.seed)
        return plan_from_dict(plan_to_dict(plan))  # one more pass through every check

    def run(self, model, data: str | None = None, progress=None, cancel=None) -> CascadeReport:
        """Compress ``model`` in place on ``data`` (default: the session's data, else ``digits``); see the
        module docstring. ``progress`` receives ``rcc.session.progress.OpProgress`` records."""
        from rcc.api.binding import session_of

        plan = self.compression_plan(model)
        session = session_of(model, data)
        if session is not None:
            return _run_recorded(session, plan, self.op(), progress, cancel)
        return _run_unrecorded(model, data, plan, self.op(), progress, cancel)


def _report(result: dict, eval_split: str, sizes: dict, node: int | None) -> CascadeReport:
    return CascadeReport(eval_split=eval_split, threshold=result["threshold"], dense_metric=result["dense_metric"],
                         final_metric=result["final_metric"], removed_fraction=result["removed_fraction"],
                         attempts=tuple(result["attempts"]), skipped=tuple(result["skipped"]),
                         sizes={k: v for k, v in sizes.items() if k.startswith("size/")},
                         seconds=result["seconds"], node=node)


def _run_recorded(session, plan: CompressionPlan, op, progress, cancel) -> CascadeReport:
    from rcc.session.ops import SetPlan

    session.apply(SetPlan(plan=plan_to_dict(plan)))
    outcome = session.apply(op, progress, cancel)
    return _report(outcome.result, session.eval_split, outcome.metrics, outcome.new_node)


def _run_unrecorded(model, data: str, plan: CompressionPlan, op, progress, cancel) -> CascadeReport:
    from rcc.api.binding import workspace_for
    from rcc.session.flows import cascade_on
    from rcc.compression.stored_size import size_metrics

    workspace = workspace_for(model, data)
    result = cascade_on(workspace, plan, op, progress, cancel)
    return _report(result.as_dict(), workspace.eval_split, size_metrics(model), None)
