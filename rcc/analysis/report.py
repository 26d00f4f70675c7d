"""Markdown sections and PNG plots (matplotlib, Agg) for every analysis result.

Each ``*_section`` writes its plots into ``out_dir`` and returns Markdown that links them by
relative path, so a folder of sections reads as one report on GitHub or locally. Figures are
made with ``matplotlib.figure.Figure`` (the Agg canvas), never pyplot: no global backend
state, safe from worker threads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from rcc.analysis.ablation import AblationResult
from rcc.analysis.compare import ModelsComparison
from rcc.analysis.errors import AnalysisError
from rcc.analysis.profile import RunProfile
from rcc.analysis.proxies import PROXIES
from rcc.analysis.sensitivity import SensitivityResult
from rcc.analysis.subspace import SubspaceResult

KIND_COLOURS = {"attn_q": "#4e79a7", "attn_k": "#a0cbe8", "attn_v": "#f28e2b", "attn_out": "#ffbe7d",
                "mlp_in": "#59a14f", "mlp_out": "#8cd17d", "projection": "#e15759", None: "#9d9d9d"}
DPI = 110


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one of l / r per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(columns) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _short(name: str) -> str:
    """Layer names without the long common prefixes, for plot labels."""
    for prefix, short in (("text.transformer.encoder.layer.", "text."), ("visual.transformer.resblocks.", "visual."),
                          ("text.transformer.", "text."), ("attention.self.", "attn."),
                          ("attention.output.dense", "attn_out"), ("intermediate.dense", "mlp_in"),
                          ("output.dense", "mlp_out")):
        name = name.replace(prefix, short)
    return name


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
    except OSError as error:
        raise AnalysisError(f"cannot write plot {str(path)!r}: {error.strerror or error}") from None
    return path.name


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# -- sensitivity ------------------------------------------------------------------------------

def plot_sensitivity(result: SensitivityResult, path: Path) -> str:
    """Drift per unit (log scale, model order), coloured by layer kind; metric drop marked where nonzero."""
    units = list(result.units)
    fig = _figure(8, max(3.0, 0.22 * len(units) + 1.2))
    ax = fig.add_subplot()
    floor = min((u.drift for u in units if u.drift > 0), default=1e-9) / 2
    values = [max(u.drift, floor) for u in units]
    ys = range(len(units))[::-1]
    ax.barh(list(ys), values, color=[KIND_COLOURS.get(u.kind, KIND_COLOURS[None]) for u in units])
    ax.set_yticks(list(ys), [_short(u.name) for u in units], fontsize=7)
    ax.set_xscale("log")
    ax.margins(y=0.01)
    ax.set_xlabel("prediction drift: mean KL(dense ‖ compressed), nats (log scale)")
    ax.set_title(f"{result.model}: one unit at a time, {result.setting.describe()}", fontsize=9)
    for y, unit, value in zip(ys, units, values):
        if abs(unit.metric_drop) > 1e-12:
            ax.annotate(f"{-unit.metric_drop:+.3f}", (value, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=6)
    from matplotlib.patches import Patch

    kinds = [k for k in KIND_COLOURS if k is not None and any(u.kind == k for u in units)]
    ax.legend(handles=[Patch(color=KIND_COLOURS[k], label=k) for k in kinds], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_proxies(result: SensitivityResult, path: Path) -> str:
    """Each proxy against the measured drift (log–log), with Spearman ρ in the panel title."""
    fig = _figure(8, 6)
    axes = fig.subplots(2, 2).ravel()
    for ax, proxy in zip(axes, PROXIES):
        pairs = [(u.proxies.get(proxy), u.drift, u.kind) for u in result.units if u.proxies.get(proxy) is not None]
        rho = result.correlations.get(proxy, {}).get("drift")
        ax.set_title(f"{proxy}: ρ = {rho:.2f}" if rho is not None else f"{proxy}: ρ undefined", fontsize=9)
        if not pairs:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
            continue
        positive = min((d for _, d, _ in pairs if d > 0), default=1e-9) / 2
        ax.scatter([p for p, _, _ in pairs], [max(d, positive) for _, d, _ in pairs], s=14,
                   c=[KIND_COLOURS.get(k, KIND_COLOURS[None]) for _, _, k in pairs])
        ax.set_yscale("log")
        ax.set_xlabel(proxy, fontsize=8)
        ax.set_ylabel("drift (nats)", fontsize=8)
    return _save(fig, path)


def sensitivity_section(result: SensitivityResult, out_dir: str | Path, stem: str = "sensitivity",
                        title: str | None = None) -> str:
    out = Path(out_dir)
    bars = plot_sensitivity(result, out / f"{stem}.png")
    scatter = plot_proxies(result, out / f"{stem}-proxies.png")
    ranked = result.ranked()
    rows = [[i + 1, u.name, u.kind or "–", u.drift, u.metric_drop, u.saved,
             *(u.proxies.get(p) for p in PROXIES)] for i, u in enumerate(ranked)]
    correlations = [[p, result.correlations[p]["drift"], result.correlations[p]["metric_drop"]] for p in PROXIES]
    factorised = sum(u.factorised for u in result.units)
    truncated = sum(len(u.layers) for u in result.units) - factorised if result.setting.rank is not None else 0
    lines = [
        f"## {title or 'Sensitivity: ' + result.setting.describe()}",
        "",
        (f"Model `{result.model}`, data `{result.data}` split `{result.split}` ({result.task}); dense "
         f"{'top-1' if result.task == 'zeroshot' else 'mean recall@1'} **{result.baseline:.4f}**. "
         f"{len(result.units)} units ({result.group_by}s) compressed one at a time; {result.seconds:.0f} s."),
        "",
        "*Drift* is the mean KL divergence of the task's predictions from the dense model's (nats; "
        "higher = more sensitive; the layer tree's colour). *Drop* is dense − compressed primary metric on "
        f"the split{_step(result)}. *Saved* counts stored numbers."
        + (f" {truncated} layers at this rank would not store fewer numbers factorised (r(m+n) ≥ mn) and were "
           "truncated in place (saved 0)." if truncated else ""),
        "",
        f"![drift per unit]({bars})",
        "",
        markdown_table(["#", "unit", "kind", "drift", "drop", "saved", *PROXIES], rows,
                       "rllrrrrrrr"),
        "",
        "Spearman ρ of each proxy against the measured drift and drop (ρ undefined where one side is constant):",
        "",
        markdown_table(["proxy", "ρ vs drift", "ρ vs drop"], correlations),
        "",
        f"![proxies against drift]({scatter})",
        "",
    ]
    return "\n".join(lines)


def _step(result: SensitivityResult) -> str:
    examples = int(result.extra.get("examples", 0))
    return f" (one example = {1 / examples:.4f})" if examples and result.task == "zeroshot" else ""


# -- ablation ---------------------------------------------------------------------------------

def plot_ablation(result: AblationResult, path: Path) -> str:
    """Left: metric against parameters removed per variant; right: seconds per stage, stacked."""
    fig = _figure(11, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.3])
    styles = {"full": ("*", "black", 90), "without": ("v", "#e15759", 36), "order": ("o", "#4e79a7", 30)}
    places: dict[tuple[float, float], list[str]] = {}  # variants that land on one point share one label
    for v in sorted(result.variants, key=lambda v: v.kind == "full"):  # the full variant's star on top
        marker, colour, size = styles.get(v.kind, styles["order"])
        left.scatter(v.removed_fraction * 100, v.metric, marker=marker, color=colour, s=size, label=v.kind,
                     zorder=3 if v.kind == "full" else 2)
        places.setdefault((round(v.removed_fraction * 100, 1), round(v.metric, 4)), []).append(
            v.name.replace(" → ", "→"))
    for (x, y), names in places.items():
        # Of the groups stacked at one x, the highest is labelled above its point and the others below.
        top = y == max(other_y for other_x, other_y in places if other_x == x)
        left.annotate("\n".join(sorted(names)), (x, y), xytext=(5, 3 if top else -3), textcoords="offset points",
                      fontsize=6, va="bottom" if top else "top")
    xs = [x for x, _ in places]
    span = max(xs) - min(xs) or 10.0
    left.set_xlim(min(xs) - 0.08 * span, max(xs) + 0.45 * span)
    low = min([y for _, y in places] + [result.dense_metric * result.threshold])
    high = max([y for _, y in places] + [result.dense_metric])
    left.set_ylim(low - 0.05 * (high - low or 0.1), high + 0.3 * (high - low or 0.1))  # room for stacked labels
    handles, labels = left.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    left.legend(unique.values(), unique.keys(), fontsize=7)
    left.axhline(result.dense_metric, color="grey", lw=0.8, ls="--")
    left.axhline(result.dense_metric * result.threshold, color="red", lw=0.8, ls=":")
    left.set_xlabel("selected layers' parameters removed (%)")
    left.set_ylabel("metric on the eval split")
    left.set_title("size against quality (dashed: dense; dotted: threshold)", fontsize=9)
    names = [v.name.replace(" → ", "→") for v in result.variants][::-1]
    stages = list(dict.fromkeys(s for v in result.variants for s in v.stages))  # the full variant's order first
    colours = {"dare": "#4e79a7", "nullu": "#f28e2b", "alphaedit": "#59a14f"}
    starts = [0.0] * len(names)
    for stage in stages:
        widths = [v.stage_seconds.get(stage, 0.0) for v in result.variants][::-1]
        right.barh(names, widths, left=starts, label=stage, color=colours.get(stage))
        starts = [s + w for s, w in zip(starts, widths)]
    right.set_xlabel("seconds per stage (compression + evaluation, all attempts)")
    right.tick_params(axis="y", labelsize=7)
    right.legend(fontsize=7)
    return _save(fig, path)


def ablation_section(result: AblationResult, out_dir: str | Path, stem: str = "ablation",
                     title: str | None = None) -> str:
    plot = plot_ablation(result, Path(out_dir) / f"{stem}.png")
    has_test = any(v.test_metric is not None for v in result.variants)
    test = result.test_split or "test"
    columns = ["variant", "kind", "removed", "params after", f"{result.eval_split} metric",
               *([test] if has_test else []), "wall s", "CPU s", "kept / undone", "skipped"]
    rows = []
    for v in result.variants:
        rows.append([v.name, v.kind if v.kind != "without" else f"without {v.removed}", f"{v.removed_fraction:.1%}",
                     v.params_after, v.metric, *([v.test_metric] if has_test else []), f"{v.seconds:.1f}",
                     f"{v.cpu_seconds:.1f}",
                     f"{v.attempts_kept} / {v.attempts_undone}", ", ".join(v.skipped) or "–"])
    best = result.best()
    lines = [
        f"## {title or 'Stage ablation and ordering'}",
        "",
        f"Same start, plan and calibration for every variant; threshold {result.threshold} × dense "
        f"(dense metric {result.dense_metric:.4f} on {result.eval_split}"
        + (f", {test} {result.dense_test:.4f}" if result.dense_test is not None else "")
        + f"), schedule {result.schedule} × {result.steps}. {len(result.variants)} variants, {result.seconds:.0f} s. "
        "*wall s* is the whole cascade's wall clock (calibration and the dense evaluation included); *CPU s* is "
        "this process's CPU time over it (all threads), which other jobs on a shared machine inflate less.",
        "",
        markdown_table(columns, rows, "ll" + "r" * (len(columns) - 3) + "l"),
        "",
        (f"Highest {result.eval_split} metric (ties: most removed): **{best.name}** ({best.removed_fraction:.1%} "
         f"removed, metric {best.metric:.4f})."),
        "",
        f"![ablation]({plot})",
        "",
        "Plan (rules in order; a later rule wins):",
        "",
        plan_table(result.plan),
        "",
    ]
    return "\n".join(lines)


def plan_table(plan: dict) -> str:
    """A plan's rules and overrides as a table: what each matches, and the settings it gives."""
    rows = [[" ".join(f"{k}={v}" for k, v in rule.items() if k != "settings") or "any layer",
             json.dumps(rule.get("settings", {}), sort_keys=True)] for rule in plan.get("rules", [])]
    rows += [[f"override {name}", json.dumps(settings, sort_keys=True)]
             for name, settings in plan.get("overrides", {}).items()]
    extra = "; ".join(f"{k} {plan[k]}" for k in ("budget", "seed") if plan.get(k) is not None)
    return markdown_table(["matches", "settings"], rows, "ll") + (f"\n\n{extra}" if extra else "")


# -- subspaces, comparison, profile --------------------------------------------------------------

def plot_subspaces(result: SubspaceResult, path: Path) -> str:
    layers = list(result.layers)
    fig = _figure(8, max(3.0, 0.2 * len(layers) + 1.2))
    ax = fig.add_subplot()
    ys = list(range(len(layers)))[::-1]
    norm = [math.pi / 2 * math.sqrt(layer.k) for layer in layers]
    ax.barh([y + 0.2 for y in ys], [layer.left_distance / n for layer, n in zip(layers, norm)], height=0.4,
            label="left (outputs)", color="#4e79a7")
    ax.barh([y - 0.2 for y in ys], [layer.right_distance / n for layer, n in zip(layers, norm)], height=0.4,
            label="right (inputs)", color="#f28e2b")
    ax.set_yticks(ys, [f"{_short(layer.name)} (k={layer.k})" for layer in layers], fontsize=7)
    ax.set_xlim(0, 1)
    ax.margins(y=0.01)
    ax.set_xlabel("Grassmann distance ÷ (π/2)·√k  (0: same subspace, 1: orthogonal)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def subspace_section(result: SubspaceResult, out_dir: str | Path, stem: str = "subspace",
                     title: str | None = None) -> str:
    lines = [f"## {title or 'Subspaces: dense against compressed'}", "",
             (f"{len(result.layers)} changed layers ({result.unchanged} unchanged). Distances are ‖θ‖₂ over the "
              f"principal angles between the top-k singular subspaces."), ""]
    if result.layers:
        plot = plot_subspaces(result, Path(out_dir) / f"{stem}.png")
        lines += [markdown_table(["tower", "layers", "mean left", "mean right", "max", "mean normalised"],
                                 [[s.group, s.layers, s.mean_left, s.mean_right, s.max_distance, s.mean_normalised]
                                  for s in result.towers]), "",
                  markdown_table(["block", "layers", "mean left", "mean right", "max", "mean normalised"],
                                 [[s.group, s.layers, s.mean_left, s.mean_right, s.max_distance, s.mean_normalised]
                                  for s in result.blocks]), "",
                  f"![subspace distances]({plot})", "",
                  markdown_table(["layer", "k", "left", "right", "largest angle (°)", "normalised"],
                                 [[layer.name, layer.k, layer.left_distance, layer.right_distance,
                                   math.degrees(max(layer.left_angles + layer.right_angles)), layer.normalised]
                                  for layer in result.layers]), ""]
    return "\n".join(lines)


def compare_section(comparison: ModelsComparison, title: str | None = None) -> str:
    a, b, d = comparison.interval_a, comparison.interval_b, comparison.paired.difference
    level = f"{a.confidence:.0%}"
    rows = [[comparison.a, a.estimate, f"[{a.low:.4f}, {a.high:.4f}]"],
            [comparison.b, b.estimate, f"[{b.low:.4f}, {b.high:.4f}]"],
            [f"Δ = {comparison.b} − {comparison.a}", d.estimate, f"[{d.low:+.4f}, {d.high:+.4f}]"]]
    extra = ""
    if comparison.paired.discordant is not None:
        b_count, c_count = comparison.paired.discordant
        extra = (f" Discordant examples: {b_count} only {comparison.a} got right, {c_count} only "
                 f"{comparison.b} got right.")
    return "\n".join([
        f"## {title or f'{comparison.a} against {comparison.b}'}", "",
        (f"`{comparison.data}` split `{comparison.split}`, n = {comparison.paired.n}; percentile bootstrap "
         f"({a.resamples} resamples, seed {comparison.seed})."), "",
        markdown_table([comparison.paired.measure, "value", f"{level} interval"], rows, "lrl"), "",
        f"p = **{comparison.paired.p_value:.4g}** ({comparison.paired.test}).{extra}", ""])


def profile_section(profile: RunProfile, title: str | None = None, slowest: int = 10) -> str:
    def seconds(value: float | None) -> str | None:
        return None if value is None else f"{value:.2f}"

    def mib(value: int | None) -> str | None:
        return None if value is None else f"{value / 2**20:,.0f} MiB"

    rows = [[f"{a.stage} (step {a.step}, attempt {a.attempt})", f"{a.fraction:.3g}", "kept" if a.accepted else "undone",
             seconds(a.seconds), seconds(a.setup_seconds), seconds(a.evaluate_seconds), mib(a.peak_rss_bytes),
             mib(a.peak_cuda_bytes)] for a in profile.attempts]
    lines = [f"## {title or 'Profile'}", "",
             f"Source: {profile.source}; total {profile.total_seconds:.1f} s"
             + (f", setup (calibration, dense evaluation) {profile.setup_seconds:.1f} s" if profile.setup_seconds
                else "")
             + (f"; process peak RSS {profile.peak_rss_bytes / 2**20:,.0f} MiB" if profile.peak_rss_bytes else "")
             + ".", "",
             markdown_table(["attempt", "strength", "verdict", "seconds", "setup s", "eval s", "peak RSS", "peak CUDA"],
                            rows), ""]
    slow = profile.slowest_layers(slowest)
    if slow:
        lines += [f"Slowest {len(slow)} layer steps:", "",
                  markdown_table(["stage", "layer", "seconds"], [[s, layer, f"{t:.3f}"] for s, layer, t in slow],
                                 "llr"), ""]
    return "\n".join(lines)


def write_markdown(path: str | Path, title: str, sections: Sequence[str], intro: str = "") -> Path:
    """Join sections under a title into one Markdown file."""
    target = Path(path)
    text = f"# {title}\n\n" + (intro.strip() + "\n\n" if intro else "") + "\n".join(sections).rstrip() + "\n"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise AnalysisError(f"cannot write report {str(target)!r}: {error.strerror or error}") from None
    return target
