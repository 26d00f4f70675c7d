"""Sensitivity scan: compress one layer (or one group) at a time and measure what it costs.

For every unit u (a layer, or the layers of one block or kind) on the same starting model:
  1. snapshot u; apply the setting to u alone through the engine's stages (DARE pruning at
     sparsity s, then Nullu at rank r = max(1, round(f · min(m, n)))), calibrated as the cascade
     calibrates (Wanda norms, whitened SVD);
  2. probe the model: metric drop = metric(dense) − metric(u compressed), and prediction drift
     = mean_i KL(p_dense,i ‖ p_u,i) of the task's predictive distributions (continuous, ≥ 0);
  3. record size saved = stored(u, dense) − stored(u, compressed); restore u.
A rank that does not store fewer numbers than the dense matrix (r(m + n) ≥ mn), or a layer
that cannot be factorised (a bare x @ W parameter), is truncated in place as a dense rank-r
matrix: the scan still measures what losing that part of the spectrum costs, and reports
size saved 0 for it. The layer's **score** is its drift (higher = more sensitive); the drop
moves in steps of 1/n and is often 0 for single layers of a robust model.
Proxies (``rcc.analysis.proxies``) are computed for each unit and their Spearman ρ against
the measured drop and drift is reported.
With a structured pattern (``channel``, ``head``) a unit is one group (rcc.compression.groups):
the MLP or attention whose leader is selected loses ``sparsity`` of its hidden units or heads
(the layers become narrower, as the DARE stage does it) and the scan measures that; proxies,
which compare weights entry by entry, do not apply to shapes that changed and are left out.

A scan of a session node is stored in the session as ``analysis/sensitivity-<node>.json``;
``load_sensitivity`` reads it back as layer name → score.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import reduce
from pathlib import Path

import torch

from rcc.analysis.errors import AnalysisError
from rcc.analysis.json_io import write_json_atomic
from rcc.analysis.probe import Probe
from rcc.analysis.proxies import PROXIES, ProxyTerms, layer_proxy_terms
from rcc.analysis.statistics import spearman
from rcc.compression.calibration import CalibrationData, InputStats, collect_input_stats
from rcc.compression.layers import (
    LayerSnapshot, LowRankLinear, dense_weight, factorise, is_quantized_layer, layer_form, layer_module,
    set_dense_weight, stored_parameters, unfuse,
)
from rcc.compression.groups import is_structured, structured_groups
from rcc.compression.plan_rules import (
    LEADER_KIND, STRUCTURED_PATTERNS, LayerPlan, RankSpec,
)
from rcc.eval.encode import CancelCheck, check_cancel
from rcc.eval.per_example import prediction_kl, primary_from_outcomes
from rcc.models.adapter import VLModel
from rcc.schema.layers import LayerInfo
from rcc.schema.names import PRUNE_METHODS, STRUCTURED_METHODS

GROUPINGS = ("layer", "block", "kind")
ANALYSIS_DIR = "analysis"
SCORE = "drift"
FORMAT_VERSION = 1
UnitProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ScanSetting:
    """What is done to each unit: pruning at ``sparsity`` with ``method``, then rank ``rank``·min(m, n)."""

    rank: float | None = None
    sparsity: float = 0.0
    method: str = "magnitude"
    whiten: bool = True
    seed: int = 0
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, (int, float))
                                      or not 0 < self.rank <= 1):
            raise AnalysisError(f"rank fraction {self.rank!r} is out of range; allowed: 0 < rank ≤ 1 "
                                f"(of each layer's full rank min(m, n))")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0 <= self.sparsity < 1:
            raise AnalysisError(f"sparsity {self.sparsity!r} is out of range; allowed: 0 ≤ sparsity < 1")
        if self.method not in PRUNE_METHODS:
            raise AnalysisError(f"method {self.method!r} is unknown; allowed: {', '.join(PRUNE_METHODS)}")
        if self.rank is None and self.sparsity == 0:
            raise AnalysisError("the setting compresses nothing; allowed: a rank fraction, a sparsity > 0, or both")
        if self.pattern not in ("unstructured", *STRUCTURED_PATTERNS):
            raise AnalysisError(f"pattern {self.pattern!r} is not scanned; allowed: unstructured, "
                                f"{', '.join(STRUCTURED_PATTERNS)}")
        if is_structured(self.pattern) and (self.sparsity == 0 or self.rank is not None
                                            or self.method not in STRUCTURED_METHODS):
            raise AnalysisError(f"pattern {self.pattern} scans removed units alone; allowed: a sparsity > 0, no "
                                f"rank, method {' or '.join(STRUCTURED_METHODS)}")

    def rank_for(self, layer: LayerInfo) -> int | None:
        """r = max(1, round(f · min(m, n))), or None without a rank."""
        return None if self.rank is None else max(1, round(self.rank * min(layer.shape)))

    def describe(self) -> str:
        parts = []
        if is_structured(self.pattern):
            unit = "hidden units" if self.pattern == "channel" else "heads"
            parts.append(f"{self.sparsity:.0%} of the {unit} removed ({self.method})")
        elif self.sparsity:
            parts.append(f"sparsity {self.sparsity:.0%} ({self.method})")
        if self.rank is not None:
            parts.append(f"rank {self.rank:.0%} ({'whitened' if self.whiten else 'plain'} SVD)")
        return ", then ".join(parts)


@dataclass(frozen=True)
class UnitSensitivity:
    """What compressing one unit alone did."""

    name: str
    layers: tuple[str, ...]
    tower: str
    block: int | None
    kind: str | None
    params_before: int
    params_after: int
    metric: float
    metric_drop: float
    drift: float
    proxies: dict[str, float | None]
    factorised: int  # layers of the unit stored as factors (the rest: masked or truncated in place)
    seconds: float

    @property
    def saved(self) -> int:
        return self.params_before - self.params_after


@dataclass(frozen=True)
class SensitivityResult:
    """A whole scan: the setting, the dense baseline, every unit, and the proxies' rank correlations."""

    model: str
    data: str
    split: str
    task: str
    setting: ScanSetting
    group_by: str
    baseline: float
    units: tuple[UnitSensitivity, ...]
    correlations: dict[str, dict[str, float | None]]  # proxy → {"metric_drop": ρ, "drift": ρ}
    seconds: float
    node: int | None = None
    extra: dict = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        """Layer name → its unit's score (drift); every layer of a group gets the group's score."""
        return {layer: unit.drift for unit in self.units for layer in unit.layers}

    def ranked(self) -> list[UnitSensitivity]:
        """Units from most to least sensitive (drift, then drop)."""
        return sorted(self.units, key=lambda u: (u.drift, u.metric_drop), reverse=True)

    def as_dict(self) -> dict:
        return {"version": FORMAT_VERSION, "score": SCORE, **asdict(self),
                "units": [{**asdict(u), "layers": list(u.layers), "saved": u.saved} for u in self.units]}


def sensitivity_from_dict(data: dict) -> SensitivityResult:
    """Read back ``SensitivityResult.as_dict()``; anything malformed raises AnalysisError."""
    try:
        if data.get("version") != FORMAT_VERSION:
            raise AnalysisError(f"sensitivity format {data.get('version')!r} is not supported; "
                                f"allowed: {FORMAT_VERSION}")
        units = tuple(UnitSensitivity(
            name=u["name"], layers=tuple(u["layers"]), tower=u["tower"], block=u["block"], kind=u["kind"],
            params_before=int(u["params_before"]), params_after=int(u["params_after"]),
            metric=float(u["metric"]), metric_drop=float(u["metric_drop"]), drift=float(u["drift"]),
            proxies=dict(u["proxies"]), factorised=int(u["factorised"]), seconds=float(u["seconds"]),
        ) for u in data["units"])
        return SensitivityResult(
            model=data["model"], data=data["data"], split=data["split"], task=data["task"],
            setting=ScanSetting(**data["setting"]), group_by=data["group_by"], baseline=float(data["baseline"]),
            units=units, correlations=dict(data["correlations"]), seconds=float(data["seconds"]),
            node=data.get("node"), extra=dict(data.get("extra", {})))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise AnalysisError(f"sensitivity data is malformed ({type(error).__name__}: {error}); "
                            f"allowed: a file written by `rcc-tui analyze sensitivity`") from None


# -- the scan ---------------------------------------------------------------------------------

def scan_units(layers: Sequence[LayerInfo], group_by: str = "layer") -> list[tuple[str, list[LayerInfo]]]:
    """The units of a scan, in model order: each layer, or layers grouped by (tower, block) or (tower, kind)."""
    if group_by not in GROUPINGS:
        raise AnalysisError(f"grouping {group_by!r} is unknown; allowed: {', '.join(GROUPINGS)}")
    if group_by == "layer":
        return [(layer.name, [layer]) for layer in layers]
    units: dict[str, list[LayerInfo]] = {}
    for layer in layers:
        if group_by == "block":
            key = f"{layer.tower} block {layer.block}" if layer.block is not None else layer.name
        else:
            key = f"{layer.tower} {layer.kind}"
        units.setdefault(key, []).append(layer)
    return list(units.items())


def structured_units(inventory: Sequence[LayerInfo], chosen: Sequence[LayerInfo],
                     pattern: str) -> tuple[list[tuple[str, list[LayerInfo]]], list[LayerInfo]]:
    """(units, every layer they touch): one unit per ``pattern`` group whose leader is among ``chosen``."""
    names = {layer.name for layer in chosen}
    index = {layer.name: layer for layer in inventory}
    groups = [g for g in structured_groups(inventory) if g.kind == pattern and g.leader in names]
    if not groups:
        raise AnalysisError(f"no {pattern} group among the {len(chosen)} selected layers; allowed: layers that "
                            f"include some {LEADER_KIND[pattern]} of a block with its partners")
    units = [(g.leader, [index[name] for name in g.members]) for g in groups]
    touched = [layer for layer in inventory if any(layer.name in g.members for g in groups)]
    return units, touched


def select_layers(model: VLModel, names: Sequence[str] | None = None, towers: Sequence[str] | None = None,
                  kinds: Sequence[str] | None = None) -> list[LayerInfo]:
    """Inventory layers by name (exact) and/or tower and kind; all layers when nothing is given."""
    import difflib

    inventory = model.layers()
    known = {layer.name for layer in inventory}
    for name in names or ():
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"a name from the {len(known)}-layer inventory"
            raise AnalysisError(f"layer {name!r} is not in model {model.spec!r}; allowed: {hint}")
    chosen = [layer for layer in inventory
              if (not names or layer.name in names) and (not towers or layer.tower in towers)
              and (not kinds or layer.kind in kinds)]
    if not chosen:
        raise AnalysisError(f"no layer matches names={list(names or [])} towers={list(towers or [])} "
                            f"kinds={list(kinds or [])}; allowed: filters that select at least one layer")
    return chosen


def scan_sensitivity(
    model: VLModel, setting: ScanSetting, probe: Probe, calibration: CalibrationData | None = None,
    layers: Sequence[LayerInfo] | None = None, group_by: str = "layer", progress: UnitProgress | None = None,
    cancel: CancelCheck | None = None, data: str = "", split: str = "",
) -> SensitivityResult:
    """Scan ``layers`` (default: all) of ``model``; the model is exactly as before when it returns.

    Without ``calibration`` the scan is data-free, as the stages are then: plain SVD, Wanda
    falls back to magnitude, and the ``wanda_mass`` / ``output_error`` proxies are absent.
    """
    start = time.perf_counter()
    module = model.module
    chosen = list(layers) if layers is not None else model.layers()
    # Int8 layers are final (no stage changes them): there is nothing to measure on them.
    chosen = [layer for layer in chosen if not is_quantized_layer(module, layer)]
    if not chosen:
        raise AnalysisError("every layer to scan holds int8 values, which no stage changes; allowed: a node "
                            "with float layers (check out the node before the quant stage)")
    if is_structured(setting.pattern):
        units, chosen = structured_units(model.layers(), chosen, setting.pattern)
    else:
        units = scan_units(chosen, group_by)
    before = LayerSnapshot(module, chosen)  # also brings back fused attention split by unfuse
    try:
        unfuse(module, chosen)
        index = model.layer_index
        stats = (collect_input_stats(model, [index[layer.name] for layer in chosen], calibration, gram=True,
                                     cancel=cancel) if calibration is not None else {})
        reference = probe(model)
        baseline = primary_from_outcomes(reference)
        results = []
        for i, (name, members) in enumerate(units):
            check_cancel(cancel)
            if progress:
                progress(i, len(units), name)
            results.append(_measure_unit(model, name, [m.name for m in members], setting, stats, probe,
                                         reference, baseline))
        if progress:
            progress(len(units), len(units), "done")
    finally:
        before.restore(module)
    return SensitivityResult(model=model.spec, data=data, split=split, task=reference.task, setting=setting,
                             group_by=group_by, baseline=baseline, units=tuple(results),
                             correlations=proxy_correlations(results), seconds=time.perf_counter() - start,
                             extra={"examples": reference.n})


def _measure_unit(model: VLModel, name: str, names: list[str], setting: ScanSetting,
                  stats: dict[str, InputStats], probe: Probe, reference, baseline: float) -> UnitSensitivity:
    began = time.perf_counter()
    module = model.module
    index = model.layer_index
    members = [index[n] for n in names]
    snapshot = LayerSnapshot(module, members)
    dense = {n: dense_weight(module, index[n]).detach().clone() for n in names}
    params_before = sum(stored_parameters(module, layer) for layer in members)
    try:
        factorised = apply_setting(model, names, setting, stats, dense)
        outcomes = probe(model)
        index = model.layer_index
        after = {n: dense_weight(module, index[n]).detach().clone() for n in names}
        params_after = sum(stored_parameters(module, index[n]) for n in names)
    finally:
        snapshot.restore(module)
    if is_structured(setting.pattern):  # shapes changed: entry-by-entry proxies compare nothing
        proxies: dict[str, float | None] = {proxy: None for proxy in PROXIES}
    else:
        terms = [layer_proxy_terms(dense[n], after[n], setting.rank_for(layer),
                                   stats[n].sq_norms if n in stats else None, stats[n].gram if n in stats else None)
                 for n, layer in zip(names, members)]
        proxies = reduce(ProxyTerms.__add__, terms).values()
    first = members[0]
    metric = primary_from_outcomes(outcomes)
    return UnitSensitivity(
        name=name, layers=tuple(names), tower=first.tower,
        block=first.block if all(m.block == first.block for m in members) else None,
        kind=first.kind if all(m.kind == first.kind for m in members) else None,
        params_before=params_before, params_after=params_after, metric=metric, metric_drop=baseline - metric,
        drift=prediction_kl(reference, outcomes), proxies=proxies, factorised=factorised,
        seconds=time.perf_counter() - began)


def apply_setting(model: VLModel, names: Sequence[str], setting: ScanSetting, stats: dict[str, InputStats],
                  dense: dict[str, torch.Tensor]) -> int:
    """Compress the named layers in place as the setting says; returns how many were factorised."""
    from rcc.compression import nullu
    from rcc.compression.lowrank_stage import run_lowrank_stage
    from rcc.compression.prune_stage import run_prune_stage
    from rcc.compression.stage_context import StageContext, StageOptions

    module = model.module
    options = StageOptions(whiten=setting.whiten)

    def context(plans: dict[str, LayerPlan]) -> StageContext:
        return StageContext(model=model, plans=plans, stats=stats, preserved={}, dense=dense, seed=setting.seed,
                            options=options)

    if is_structured(setting.pattern):  # names: the group, its leader first
        plans = {n: LayerPlan() for n in names}
        plans[names[0]] = LayerPlan(sparsity=setting.sparsity, method=setting.method, pattern=setting.pattern)
        run_prune_stage(context(plans), 1.0)
        return 0
    if setting.sparsity > 0:
        run_prune_stage(context({n: LayerPlan(sparsity=setting.sparsity, method=setting.method) for n in names}),
                        1.0)
    if setting.rank is None:
        return _factorised(model, names)
    index = model.layer_index
    ranks = {n: setting.rank_for(index[n]) for n in names}
    factorisable = [n for n in names if layer_module(module, index[n]) is not None
                    and nullu.factorised_saves(*index[n].shape, ranks[n])]
    if factorisable:
        run_lowrank_stage(context({n: LayerPlan(sparsity=setting.sparsity, method=setting.method,
                                                rank=RankSpec("fixed", ranks[n])) for n in factorisable}), 1.0)
    for n in names:
        if n not in factorisable:
            _truncate_in_place(model, index[n], ranks[n], stats.get(n), setting)
    return _factorised(model, names)


def _factorised(model: VLModel, names: Sequence[str]) -> int:
    index = model.layer_index
    return sum(layer_form(model.module, index[n]) == "factorised" for n in names)


@torch.no_grad()
def _truncate_in_place(model: VLModel, layer: LayerInfo, rank: int, stats: InputStats | None,
                       setting: ScanSetting) -> None:
    """Replace W by its rank-r approximation: kept dense (the Nullu stage's factors, multiplied out), or,
    for a layer factorised already at a rank above r, refactorised at r."""
    from rcc.compression import nullu
    from rcc.compression.stage_context import StageOptions

    weight = dense_weight(model.module, layer).detach()
    child = layer_module(model.module, layer)
    current = child.rank if isinstance(child, LowRankLinear) else min(layer.shape)
    if rank >= current:
        return
    gram = stats.gram if (setting.whiten and stats is not None) else None
    if gram is not None:
        up, down = nullu.whitened_svd_factors(weight, gram.to(weight.device), rank,
                                              StageOptions().whitening_eps, seed=setting.seed)
    else:
        up, down = nullu.svd_factors(weight, rank, StageOptions().svd_method, seed=setting.seed)
    if isinstance(child, LowRankLinear):
        factorise(model.module, layer, up, down)
    else:
        set_dense_weight(model.module, layer, up @ down)


def proxy_correlations(units: Sequence[UnitSensitivity]) -> dict[str, dict[str, float | None]]:
    """Spearman ρ of each proxy against the measured drop and drift, over units where it applies."""
    out = {}
    for proxy in PROXIES:
        pairs = [(u.proxies.get(proxy), u) for u in units if u.proxies.get(proxy) is not None]
        values = [p for p, _ in pairs]
        out[proxy] = {"metric_drop": spearman(values, [u.metric_drop for _, u in pairs]) if pairs else None,
                      "drift": spearman(values, [u.drift for _, u in pairs]) if pairs else None}
    return out


# -- storage in a session ---------------------------------------------------------------------

def sensitivity_path(session_dir: str | Path, node: int) -> Path:
    """Where a session keeps the scan of ``node``: ``<session>/analysis/sensitivity-<node>.json``."""
    return Path(session_dir) / ANALYSIS_DIR / f"sensitivity-{int(node)}.json"


def save_sensitivity(result: SensitivityResult, path: str | Path) -> Path:
    return write_json_atomic(path, result.as_dict())


def read_sensitivity(path: str | Path) -> SensitivityResult:
    """A scan written by ``save_sensitivity``; a missing or malformed file raises AnalysisError."""
    where = Path(path)
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnalysisError(f"sensitivity file {str(where)!r} does not exist; allowed: a file written by "
                            f"`rcc-tui analyze sensitivity`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnalysisError(f"sensitivity file {str(where)!r} cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise AnalysisError(f"sensitivity file {str(where)!r} is not a JSON object")
    return sensitivity_from_dict(data)


def load_sensitivity(session_dir: str | Path, node: int) -> dict[str, float] | None:
    """Layer name → sensitivity score (drift; higher = more sensitive) of ``node``, or None if never scanned."""
    path = sensitivity_path(session_dir, node)
    if not path.is_file():
        return None
    return read_sensitivity(path).scores()


def nearest_sensitivity(session_dir: str | Path, chain: Sequence[int]) -> SensitivityResult | None:
    """The stored scan of the first node of ``chain`` (a node, then its ancestors) that has one, or None.

    ``result.node`` says which node it is: a scan of an ancestor describes the model before the
    changes since, so a caller that shows it must say where it comes from.
    """
    for node in chain:
        path = sensitivity_path(session_dir, node)
        if path.is_file():
            result = read_sensitivity(path)
            return result if result.node == node else replace(result, node=node)
    return None
