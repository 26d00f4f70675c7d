"""The DARE, Nullu and AlphaEdit stages acting on a real (tiny OpenCLIP) model."""

import random

import pytest
import torch

from hf_tiny import random_images
from rcc.compression import dare, nullu
from rcc.compression.alphaedit import reconstruction_error
from rcc.compression.calibration import CalibrationData, collect_input_stats
from rcc.compression.correction_stage import run_correction_stage
from rcc.compression.layers import (
    LayerSnapshot, dense_weight, get_mask, layer_form, layer_module, stored_parameters, unfuse,
)
from rcc.compression.lowrank_stage import run_lowrank_stage
from rcc.compression.plan import CompressionPlan, Rule, resolve_plan
from rcc.compression.prune_stage import run_prune_stage
from rcc.compression.stage_context import StageContext, StageOptions
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "a photo of the red dog small cat two birds on grass large blue car sitting standing".split()


@pytest.fixture
def tiny(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


def _texts(n: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    return tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n))


CALIBRATION = CalibrationData(images=random_images(40, seed=1), texts=_texts(40, seed=1))
# K₀: one image (5 tokens) and one text (~11 tokens), far fewer directions than the layers' widths,
# so the null space a correction may use stays large.
PRESERVED = CalibrationData(images=random_images(1, seed=2), texts=_texts(1, seed=2))


def _context(model, plan, calibration=None, preserved=None, options=StageOptions(), gram=True) -> StageContext:
    """What ``run_cascade`` builds: selected plans, unfused attention, dense weights, statistics."""
    plans = {n: p for n, p in resolve_plan(plan, model.layers()).items() if p.selected or p.correction}
    unfuse(model.module, [model.layer_index[n] for n in plans])
    layers = [model.layer_index[n] for n in plans]
    stats = collect_input_stats(model, layers, calibration, gram=gram) if calibration else {}
    kept = collect_input_stats(model, layers, preserved, gram=True) if preserved else {}
    dense = {layer.name: dense_weight(model.module, layer).detach().clone() for layer in layers}
    return StageContext(model=model, plans=plans, stats=stats, preserved=kept, dense=dense, seed=plan.seed,
                        budget=plan.budget if plan.budget is not None else 1.0, options=options)


def _sparsity_counts(model, ctx):
    return {layer.name: int((~get_mask(model.module, layer)).sum()) for layer in ctx.layers()}


# -- DARE stage: magnitude, row, N:M, Wanda ---------------------------------------------------

def test_magnitude_pruning_is_progressive_exact_and_nested(tiny):
    plan = CompressionPlan(rules=(
        Rule(tower="text", settings={"sparsity": 0.5}),
        Rule(tower="vision", settings={"sparsity": 0.25, "pattern": "row"}),
    ))
    ctx = _context(tiny, plan)
    layers = ctx.layers()
    assert len(layers) == 26  # every layer, fused q/k/v split, both bare projections included
    changes = run_prune_stage(ctx, 0.5)
    assert len(changes) == 26
    half = {layer.name: get_mask(tiny.module, layer).clone() for layer in ctx.layers()}
    for layer in ctx.layers():
        pruned = (~half[layer.name])
        if layer.tower == "text":  # round(0.5 · 0.5 · numel), as l1_unstructured counts
            assert int(pruned.sum()) == round(0.25 * layer.params), layer.name
        else:  # row pattern: round(0.5 · 0.25 · in) in every output row
            assert (pruned.sum(dim=1) == round(0.125 * layer.shape[1])).all(), layer.name
        # Pruned entries are zero in the live weight.
        assert (dense_weight(tiny.module, layer)[pruned] == 0).all()

    run_prune_stage(ctx, 1.0)
    for layer in ctx.layers():
        mask = get_mask(tiny.module, layer)
        weight = dense_weight(tiny.module, layer).detach()
        dense = ctx.dense[layer.name]
        if layer.tower == "text":
            assert int((~mask).sum()) == round(0.5 * layer.params), layer.name
            expected = dare.magnitude_mask(dense, 0.5)
        else:
            assert ((~mask).sum(dim=1) == round(0.25 * layer.shape[1])).all(), layer.name
            expected = dare.magnitude_mask(dense, 0.25, scope="row")
        assert not (mask & ~half[layer.name]).any(), "a second step revived a pruned entry"
        # Two steps prune exactly what one step at the full sparsity would: the smallest |w|.
        assert torch.equal(mask, expected), layer.name
        assert torch.equal(weight, torch.where(mask, dense, torch.zeros_like(dense)))  # kept entries untouched
        assert stored_parameters(tiny.module, layer) == int(mask.sum())
    # A repeated strength changes nothing.
    assert run_prune_stage(ctx, 1.0) == []


def test_nm_pattern_waits_for_full_strength(tiny):
    plan = CompressionPlan(rules=(Rule(tower="vision", kind="mlp_in", settings={"sparsity": 0.5, "pattern": "2:4"}),))
    ctx = _context(tiny, plan)
    assert run_prune_stage(ctx, 0.5) == []
    assert all(layer_form(tiny.module, layer) == "dense" for layer in ctx.layers())
    assert len(run_prune_stage(ctx, 1.0)) == 2
    for layer in ctx.layers():
        mask = get_mask(tiny.module, layer)
        assert dare.is_nm_mask(mask, 2, 4) and int(mask.sum()) == layer.params // 2


def test_wanda_uses_calibration_norms_and_bare_projections_fall_back_to_magnitude(tiny):
    plan = CompressionPlan(rules=(Rule(tower="text", settings={"sparsity": 0.5, "method": "wanda"}),))
    ctx = _context(tiny, plan, CALIBRATION, gram=False)
    assert "text_projection" not in ctx.stats  # a bare parameter: no module for a hook
    run_prune_stage(ctx, 1.0)
    for layer in ctx.layers():
        dense, mask = ctx.dense[layer.name], get_mask(tiny.module, layer)
        if layer.name == "text_projection":
            assert torch.equal(mask, dare.magnitude_mask(dense, 0.5))
        else:
            norms = ctx.stats[layer.name].norms
            assert torch.equal(mask, dare.wanda_mask(dense, norms, 0.5)), layer.name
            assert not torch.equal(mask, dare.magnitude_mask(dense, 0.5))


def test_dare_steps_keep_the_expected_value_and_nest_their_masks(tiny):
    name = "visual.transformer.resblocks.0.mlp.c_fc"  # 128 × 32 = 4096 entries
    plan = CompressionPlan(overrides={name: {"sparsity": 0.5, "method": "dare"}})
    ctx = _context(tiny, plan)
    layer = ctx.layers()[0]
    dense = ctx.dense[name]
    snapshot = LayerSnapshot(tiny.module, [layer])
    seeds = 160
    total = torch.zeros_like(dense)
    for seed in range(seeds):
        ctx.seed = seed
        run_prune_stage(ctx, 0.5)
        first_mask = get_mask(tiny.module, layer).clone()
        s0 = 1 - first_mask.float().mean().item()
        first = dense_weight(tiny.module, layer).detach().clone()
        run_prune_stage(ctx, 1.0)
        mask, weight = get_mask(tiny.module, layer), dense_weight(tiny.module, layer).detach()
        assert not (mask & ~first_mask).any()  # nested
        assert abs(s0 - 0.25) < 0.04 and abs((1 - mask.float().mean().item()) - 0.5) < 0.04
        # Kept entries carry both rescales: 1/(1 − 0.25), then 1/(1 − p) with p = (0.5 − s0)/(1 − s0).
        p = (0.5 - s0) / (1 - s0)
        torch.testing.assert_close(weight[mask], dense[mask] / 0.75 / (1 - p), rtol=1e-5, atol=0)
        torch.testing.assert_close(weight[mask], first[mask] / (1 - p), rtol=1e-5, atol=0)
        assert (weight[~mask] == 0).all()
        total += weight
        snapshot.restore(tiny.module)
    ratio = total / seeds / dense  # E[W'] / W, entry by entry
    # Each entry: mean of 160 draws of keep·2 (variance ≈ 1), so its sd is ≈ 0.08; the average of
    # 4096 such means has sd ≈ 0.0012.
    assert abs(ratio.mean().item() - 1) < 0.01
    assert (ratio - 1).abs().max().item() < 0.45
    # Different seeds drew different masks (the stage seeds from the run seed, layer and strength).
    assert total.ne(0).float().mean().item() > 0.99


def test_dare_is_reproducible_for_a_seed(tiny):
    name = "transformer.resblocks.0.mlp.c_fc"
    plan = CompressionPlan(overrides={name: {"sparsity": 0.4, "method": "dare"}}, seed=7)
    ctx = _context(tiny, plan)
    layer = ctx.layers()[0]
    snapshot = LayerSnapshot(tiny.module, [layer])
    run_prune_stage(ctx, 1.0)
    first = dense_weight(tiny.module, layer).detach().clone()
    snapshot.restore(tiny.module)
    run_prune_stage(ctx, 1.0)
    assert torch.equal(dense_weight(tiny.module, layer), first)


# -- Nullu stage ----------------------------------------------------------------------------

def test_lowrank_factorises_only_ranks_that_save_and_the_model_still_runs(tiny):
    # text c_fc is 96 × 24: mn/(m + n) = 2304/120 = 19.2; attention q is 24 × 24: 576/48 = 12.
    plan = CompressionPlan(overrides={
        "transformer.resblocks.0.mlp.c_fc": {"rank": 10},  # 10 · 120 = 1200 < 2304: factorised
        "transformer.resblocks.1.mlp.c_fc": {"rank": 20},  # 20 · 120 = 2400 ≥ 2304: left dense
        "transformer.resblocks.0.attn.in_proj.q": {"rank": 11},  # 11 · 48 = 528 < 576: factorised
        "transformer.resblocks.1.attn.in_proj.k": {"rank": 12},  # 12 · 48 = 576, saves nothing: dense
    })
    tokens = tiny.tokenize(["a photo of a cat", "two dogs"])
    before = tiny.num_parameters()
    ctx = _context(tiny, plan, options=StageOptions(whiten=False))
    assert tiny.num_parameters() == before  # unfusing alone adds nothing
    dense_k = dense_weight(tiny.module, tiny.layer_index["transformer.resblocks.1.attn.in_proj.k"]).detach().clone()

    changes = run_lowrank_stage(ctx, 1.0)
    assert sorted(c.name for c in changes) == ["transformer.resblocks.0.attn.in_proj.q",
                                               "transformer.resblocks.0.mlp.c_fc"]
    forms = {layer.name: layer_form(tiny.module, layer) for layer in ctx.layers()}
    assert forms == {"transformer.resblocks.0.attn.in_proj.q": "factorised",
                     "transformer.resblocks.0.mlp.c_fc": "factorised",
                     "transformer.resblocks.1.attn.in_proj.k": "dense",
                     "transformer.resblocks.1.mlp.c_fc": "dense"}
    assert layer_module(tiny.module, tiny.layer_index["transformer.resblocks.0.mlp.c_fc"]).rank == 10
    assert torch.equal(dense_weight(tiny.module, tiny.layer_index["transformer.resblocks.1.attn.in_proj.k"]), dense_k)
    # Exactly the saved numbers leave the model: (2304 − 1200) + (576 − 528) = 1152.
    assert tiny.num_parameters() == before - 1152
    # Plain SVD at rank r is the best rank-r approximation (Eckart–Young).
    c_fc = tiny.layer_index["transformer.resblocks.0.mlp.c_fc"]
    error = (dense_weight(tiny.module, c_fc) - ctx.dense[c_fc.name]).pow(2).sum().item()
    assert error == pytest.approx(nullu.truncation_loss(nullu.spectrum(ctx.dense[c_fc.name]), 10), rel=1e-4)
    with torch.no_grad():
        out = tiny.encode_text(tokens)
    assert out.shape == (2, 16) and torch.isfinite(out).all()


def test_lowrank_strength_moves_a_fixed_rank_from_full_to_the_target(tiny):
    name = "transformer.resblocks.0.mlp.c_fc"  # full rank k = 24, target 10
    ctx = _context(tiny, CompressionPlan(overrides={name: {"rank": 10}}), options=StageOptions(whiten=False))
    layer = ctx.layers()[0]
    # f = 0.25: round(24 − 0.25 · 14) = round(20.5) = 20 ≥ 19.2: no saving, untouched.
    assert run_lowrank_stage(ctx, 0.25) == []
    # f = 0.5: 24 − 7 = 17 → factorised at 17; f = 1: 10. A higher rank never replaces a lower one.
    assert len(run_lowrank_stage(ctx, 0.5)) == 1
    assert layer_module(tiny.module, ctx.layers()[0]).rank == 17
    assert len(run_lowrank_stage(ctx, 1.0)) == 1
    assert layer_module(tiny.module, ctx.layers()[0]).rank == 10
    assert run_lowrank_stage(ctx, 0.5) == []
    assert stored_parameters(tiny.module, ctx.layers()[0]) == 10 * (96 + 24) and layer.params == 2304


def test_whitened_ranks_use_the_calibration_inputs(tiny):
    names = ["transformer.resblocks.0.mlp.c_fc", "visual.transformer.resblocks.1.mlp.c_fc"]
    plan = CompressionPlan(overrides={
        names[0]: {"rank": "energy:0.9"},
        names[1]: {"rank": 8},
    })
    ctx = _context(tiny, plan, CALIBRATION)
    eps = ctx.options.whitening_eps
    gram = {name: ctx.stats[name].gram for name in names}
    # The energy rank is read off the spectrum of W S (whitened), not of W.
    whitened_rank = nullu.rank_for_energy(nullu.spectrum(ctx.dense[names[0]], gram[names[0]], eps), 0.9)
    plain_rank = nullu.rank_for_energy(nullu.spectrum(ctx.dense[names[0]]), 0.9)
    assert whitened_rank != plain_rank and whitened_rank < 19  # so it factorises
    changes = {c.name: c.what for c in run_lowrank_stage(ctx, 1.0)}
    assert "whitened" in changes[names[0]] and "whitened" in changes[names[1]]
    assert layer_module(tiny.module, tiny.layer_index[names[0]]).rank == whitened_rank
    # The whitened factors are SVD-LLM's: on the calibration inputs they beat plain SVD at the same rank.
    for name in names:
        layer = tiny.layer_index[name]
        rank = layer_module(tiny.module, layer).rank
        got = reconstruction_error(ctx.dense[name], dense_weight(tiny.module, layer).detach(), gram[name])
        up, down = nullu.svd_factors(ctx.dense[name], rank, "exact")
        plain = reconstruction_error(ctx.dense[name], up @ down, gram[name])
        assert got < 0.9 * plain, name


def test_auto_ranks_meet_the_plan_budget(tiny):
    plan = CompressionPlan(rules=(Rule(tower="text", kind="mlp_in", settings={"rank": "auto"}),
                                  Rule(tower="text", kind="mlp_out", settings={"rank": "auto"}),
                                  Rule(tower="vision", kind="mlp_in", settings={"rank": "auto"})),
                           budget=0.4)
    ctx = _context(tiny, plan, CALIBRATION)
    layers = ctx.layers()
    dense_total = sum(layer.params for layer in layers)  # 2·2304 + 2·2304 + 2·4096 = 17408
    assert dense_total == 17408
    snapshot = LayerSnapshot(tiny.module, layers)
    for fraction, kept in ((0.5, 0.7), (1.0, 0.4)):  # budget at strength f: 1 − f(1 − b)
        snapshot.restore(tiny.module)
        run_lowrank_stage(ctx, fraction)
        stored = sum(stored_parameters(tiny.module, layer) for layer in ctx.layers())
        assert stored <= int(kept * dense_total)
        assert stored > 0.8 * kept * dense_total  # the allocator spends most of the budget
        assert any(layer_form(tiny.module, layer) == "factorised" for layer in ctx.layers())


# -- AlphaEdit stage ---------------------------------------------------------------------------

CORRECTED = ["transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.1.attn.in_proj.v",
             "visual.transformer.resblocks.0.mlp.c_proj", "visual.transformer.resblocks.1.attn.out_proj"]


def _pruned_context(model, preserve: bool):
    plan = CompressionPlan(overrides={name: {"sparsity": 0.5, "correction": True} for name in CORRECTED})
    ctx = _context(model, plan, CALIBRATION, PRESERVED if preserve else None,
                   options=StageOptions(preserve=preserve))
    run_prune_stage(ctx, 1.0)
    return ctx


def _errors(ctx):
    module = ctx.model.module
    return {layer.name: reconstruction_error(ctx.dense[layer.name], dense_weight(module, layer).detach(),
                                             ctx.stats[layer.name].gram) for layer in ctx.layers()}


@pytest.mark.parametrize("preserve", [False, True])
def test_alphaedit_lowers_calibration_error_and_keeps_pruned_entries_zero(tiny, preserve):
    ctx = _pruned_context(tiny, preserve)
    masks = {layer.name: get_mask(tiny.module, layer).clone() for layer in ctx.layers()}
    before = _errors(ctx)
    changes = run_correction_stage(ctx, 1.0)
    assert sorted(c.name for c in changes) == sorted(CORRECTED)
    after = _errors(ctx)
    _assert_reported_errors_are_measured(changes, before, after)
    for layer in ctx.layers():
        # tr((W_c − W) C (W_c − W)ᵀ) goes down; without K₀ the closed form removes most of it.
        assert after[layer.name] < (0.85 if preserve else 0.4) * before[layer.name], layer.name
        mask = get_mask(tiny.module, layer)
        assert torch.equal(mask, masks[layer.name])
        assert (dense_weight(tiny.module, layer)[~mask] == 0).all()


def _assert_reported_errors_are_measured(changes, before, after):
    # The stage reports "reconstruction error B → A"; A may come from the optimality identity
    # instead of a product, so check it against the product (4 significant digits printed).
    for change in changes:
        reported = change.what.removeprefix("reconstruction error ").split(" → ")
        assert float(reported[0]) == pytest.approx(before[change.name], rel=1e-3), change.name
        assert float(reported[1]) == pytest.approx(after[change.name], rel=1e-3), change.name


def test_alphaedit_on_factorised_layers_reports_the_measured_errors(config_path):
    torch.manual_seed(0)
    model = load_model(f"open_clip:{config_path}", device="cpu")
    plan = CompressionPlan(overrides={name: {"sparsity": 0.3, "rank": 6, "correction": True} for name in CORRECTED})
    ctx = _context(model, plan, CALIBRATION)
    run_prune_stage(ctx, 1.0)
    for layer in ctx.layers():  # factorise the pruned weight without carrying its mask onto the factors
        module = layer_module(model.module, layer)
        for name in [n for n, _ in module.named_buffers(recurse=False) if n.endswith("_mask")]:
            delattr(module, name)
    run_lowrank_stage(ctx, 1.0)
    assert all(getattr(layer_module(model.module, layer), "up_mask", None) is None for layer in ctx.layers())
    before = _errors(ctx)
    changes = run_correction_stage(ctx, 1.0)
    after = _errors(ctx)
    assert sorted(c.name for c in changes) == sorted(CORRECTED)
    _assert_reported_errors_are_measured(changes, before, after)
    assert all(after[name] < before[name] for name in CORRECTED)


def test_alphaedit_preserved_inputs_barely_move(config_path):
    moved = {}
    for preserve in (False, True):
        torch.manual_seed(0)
        model = load_model(f"open_clip:{config_path}", device="cpu")
        ctx = _pruned_context(model, preserve)
        layers = ctx.layers()
        k0 = collect_input_stats(model, layers, PRESERVED, gram=True)
        compressed = {layer.name: dense_weight(model.module, layer).detach().clone() for layer in layers}
        run_correction_stage(ctx, 1.0)
        # ‖Δ K₀‖² = tr(Δ C₀ Δᵀ) with Δ = the correction; relative to ‖W_c K₀‖².
        moved[preserve] = {
            layer.name: reconstruction_error(compressed[layer.name], dense_weight(model.module, layer).detach(),
                                             k0[layer.name].gram)
            / reconstruction_error(torch.zeros_like(compressed[layer.name]), compressed[layer.name],
                                   k0[layer.name].gram)
            for layer in layers
        }
    for name in CORRECTED:
        assert moved[False][name] > 1e-3, name  # an unconstrained correction moves K₀'s outputs
        assert moved[True][name] < 0.1 * moved[False][name], name


@pytest.mark.parametrize("preserve", [False, True])
def test_alphaedit_on_pruned_factorised_layers_keeps_rank_and_masks_and_never_raises_the_error(config_path, preserve):
    torch.manual_seed(0)
    model = load_model(f"open_clip:{config_path}", device="cpu")
    plan = CompressionPlan(overrides={name: {"sparsity": 0.5, "rank": 6, "correction": True} for name in CORRECTED})
    ctx = _context(model, plan, CALIBRATION, PRESERVED if preserve else None, options=StageOptions(preserve=preserve))
    run_prune_stage(ctx, 1.0)
    run_lowrank_stage(ctx, 1.0)  # factorised after pruning: the sparsity moves onto the factors
    stored = {layer.name: stored_parameters(model.module, layer) for layer in ctx.layers()}
    before = _errors(ctx)
    changes = run_correction_stage(ctx, 1.0)
    after = _errors(ctx)
    _assert_reported_errors_are_measured(changes, before, after)  # measured in the factors' coordinates
    for layer in ctx.layers():
        low_rank = layer_module(model.module, layer)
        assert low_rank.rank == 6 and stored_parameters(model.module, layer) == stored[layer.name]
        assert (low_rank.up[~low_rank.up_mask] == 0).all() and (low_rank.down[~low_rank.down_mask] == 0).all()
        # f(Δ*) ≤ f(0): a correction that cannot help must not hurt.
        assert after[layer.name] <= before[layer.name] * (1 + 1e-9), layer.name
    if not preserve:
        assert sum(after.values()) < 0.99 * sum(before.values())


def test_alphaedit_leaves_dense_and_uncalibrated_layers_alone(tiny):
    plan = CompressionPlan(overrides={"transformer.resblocks.0.mlp.c_fc": {"correction": True},
                                      "text_projection": {"sparsity": 0.5, "correction": True}})
    ctx = _context(tiny, plan, CALIBRATION)
    run_prune_stage(ctx, 1.0)
    saved = {k: v.clone() for k, v in tiny.module.state_dict().items()}
    assert run_correction_stage(ctx, 1.0) == []  # c_fc is dense; text_projection has no inputs recorded
    assert all(torch.equal(v, saved[k]) for k, v in tiny.module.state_dict().items())


def test_dare_against_a_base_model_drops_and_rescales_the_delta(config_path):
    from rcc.compression.cascade import CascadeConfig, run_cascade

    torch.manual_seed(0)
    base = load_model(f"open_clip:{config_path}")
    torch.manual_seed(0)
    tuned = load_model(f"open_clip:{config_path}")
    with torch.no_grad():
        for param in tuned.module.parameters():
            param.add_(0.01 * torch.randn_like(param))
    name = "transformer.resblocks.0.mlp.c_fc"
    before = dense_weight(tuned.module, tuned.layer_index[name]).detach().clone()
    plan = CompressionPlan(rules=(Rule(name=name, settings={"sparsity": 0.5, "method": "dare"}),))
    run_cascade(tuned, plan, lambda m: 1.0, CalibrationData(images=None, texts=("a cat",)),
                config=CascadeConfig(stages=("dare",), threshold=0.0), base=base)
    after = dense_weight(tuned.module, tuned.layer_index[name]).detach()
    reference = dense_weight(base.module, base.layer_index[name]).detach()
    delta, new_delta = before - reference, after - reference
    dropped = new_delta.abs() < 1e-12
    # Dropped entries fall back to the base exactly; kept deltas are doubled (1 / (1 − 0.5)).
    assert 0.4 < dropped.float().mean().item() < 0.6
    torch.testing.assert_close(new_delta[~dropped], 2 * delta[~dropped], rtol=1e-5, atol=1e-7)
    assert get_mask(tuned.module, tuned.layer_index[name]) is None  # dense: no pruning mask
