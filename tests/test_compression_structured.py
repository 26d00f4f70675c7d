"""Structured pruning: channel / head groups from the inventory, real shape changes, removal equal to
masking before reconstruction, the closed-form refit, the cascade's back-off, and refusals."""

import copy

import pytest
import torch

from hf_tiny import random_images, save_tiny_blip, save_tiny_clip
from rcc.compression import alphaedit
from rcc.compression.calibration import CalibrationData, collect_input_stats
from rcc.compression.cascade import CascadeConfig, run_cascade, run_stage
from rcc.compression.groups import planned_shapes, structured_groups
from rcc.compression.layers import LayerSnapshot, dense_weight, layer_module, set_mask, unfuse
from rcc.compression.plan import CompressionPlan, PlanError, Rule, resolve_plan, summarize_plan, uniform_plan
from rcc.compression.stage_context import StageOptions
from rcc.compression.structure import structure_of
from rcc.errors import RccError
from rcc.models.registry import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ("a photo of a cat", "two dogs on the grass", "a red car", "a small bird", "the green truck",
         "a drawing of a horse", "three white ships", "a black plane")
CALIBRATION = CalibrationData(images=random_images(12, seed=1), texts=TEXTS)
PROBE_TEXTS = ["a photo of a dog", "red birds", "a white car"]


def channel_rule(sparsity=0.5, method="wanda", correction=False, **match):
    return Rule(kind="mlp_in", **match, settings={"sparsity": sparsity, "pattern": "channel", "method": method,
                                                  "correction": correction})


def head_rule(sparsity=0.5, method="wanda", correction=False, **match):
    return Rule(kind="attn_q", **match, settings={"sparsity": sparsity, "pattern": "head", "method": method,
                                                  "correction": correction})


@pytest.fixture(scope="module")
def tiny(config_path):
    torch.manual_seed(0)
    return load_model(f"open_clip:{config_path}", device="cpu")


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    return load_model(f"hf:{save_tiny_clip(tmp_path_factory.mktemp('clip'))}", device="cpu")


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return load_model(f"hf-blip:{save_tiny_blip(tmp_path_factory.mktemp('blip'))}", device="cpu")


@pytest.fixture(scope="module")
def blip_caption(tmp_path_factory):
    return load_model(f"hf-blip:{save_tiny_blip(tmp_path_factory.mktemp('blipc'), task='caption')}", device="cpu")


def outputs(model):
    with torch.no_grad():
        pixels = model.preprocess_batch(random_images(3, seed=5))
        image = model.encode_image(pixels)
        text = model.encode_text(model.tokenize(PROBE_TEXTS)) if "zeroshot" in model.tasks else None
    return image, text


# -- groups from the inventory ---------------------------------------------------------------------

def test_groups_come_from_the_inventory_of_every_adapter(tiny, hf_clip, blip, blip_caption, rcc_mini):
    def summary(model):
        return sorted((g.kind, g.tower, g.block, g.units, g.unit_width) for g in structured_groups(model.layers()))

    assert summary(tiny) == sorted([("channel", t, b, u, 1) for t, u in (("vision", 128), ("text", 96)) for b in (0, 1)]
                                   + [("head", t, b, 2, w) for t, w in (("vision", 16), ("text", 12)) for b in (0, 1)])
    assert summary(hf_clip) == sorted([(k, t, b, u, w) for t in ("vision", "text") for b in (0, 1)
                                       for k, u, w in (("channel", 37, 1), ("head", 2, 16))])
    mini = [g for g in structured_groups(rcc_mini.layers()) if g.tower == "text"]
    assert sorted((g.kind, g.units, g.unit_width) for g in mini) == [("channel", 1536, 1)] * 6 + [("head", 12, 32)] * 6
    group = next(g for g in mini if g.kind == "head" and g.block == 3)
    prefix = "text.transformer.encoder.layer.3."
    assert group.producers == tuple(prefix + f"attention.self.{p}" for p in ("query", "key", "value"))
    assert group.consumer == prefix + "attention.output.dense"
    # BLIP: the vision attention's fused qkv (row slices), the text encoder's self-attention; cross-attention
    # (fusion tower, k / v reading the 24-wide vision states) is a head group of its own.
    blip_groups = {(g.kind, g.tower, g.block): g for g in structured_groups(blip.layers())}
    assert blip_groups[("head", "vision", 0)].producers[0].endswith("self_attn.qkv.q")
    assert blip_groups[("head", "fusion", 1)].producers[1].endswith("crossattention.self.key")
    # The captioning decoder holds self- and cross-attention in one (tower, block): paired by name.
    decoder = [g for g in structured_groups(blip_caption.layers()) if g.tower == "decoder" and g.kind == "head"]
    assert len(decoder) == 4
    for g in decoder:
        root = g.leader.rsplit(".self.query", 1)[0]
        assert all(name.startswith(root + ".") for name in g.members), g


def test_pairs_by_shape_and_name_not_by_a_list(tiny):
    # Hand-built layers of an unknown model: the grouping rule needs only (tower, block, kind, shapes).
    from rcc.schema.layers import LayerInfo

    layers = [LayerInfo("m.0.up", "text", 0, "mlp_in", (64, 16), "m.0.up.weight"),
              LayerInfo("m.0.down", "text", 0, "mlp_out", (16, 64), "m.0.down.weight"),
              LayerInfo("m.1.up", "text", 1, "mlp_in", (64, 16), "m.1.up.weight"),
              LayerInfo("m.1.down", "text", 1, "mlp_out", (16, 32), "m.1.down.weight")]  # does not chain
    groups = structured_groups(layers)
    assert [(g.leader, g.consumer) for g in groups] == [("m.0.up", "m.0.down")]


# -- real shape changes -----------------------------------------------------------------------------

def _assert_shapes_as_planned(model, plan):
    before = model.layers()
    expected = planned_shapes(before, resolve_plan(plan, before))
    summary = summarize_plan(plan, before)
    run_stage(model, plan, "dare", 1.0, CALIBRATION)
    after = {layer.name: layer for layer in model.layers()}
    assert {name: layer.shape for name, layer in after.items()} == expected
    narrowed = [layer for layer in after.values() if layer.shape != layer.original_shape]
    assert narrowed and all(isinstance(layer_module(model.module, layer), torch.nn.Linear) for layer in narrowed)
    assert not structure_of(model.module)["masks"]  # real shapes, never masks
    assert sum(layer.params for layer in after.values()) == summary.total_after
    return after


@pytest.mark.parametrize("which", ["tiny", "hf_clip", "blip"])
def test_shapes_shrink_as_planned_and_the_model_still_encodes(which, request):
    model = copy.deepcopy(request.getfixturevalue(which))
    dense_image, dense_text = outputs(model)
    plan = CompressionPlan(rules=(channel_rule(0.5, correction=True), head_rule(0.5, method="magnitude")))
    after = _assert_shapes_as_planned(model, plan)
    heads = {layer.heads for layer in after.values() if layer.kind == "attn_q" and layer.tower != "fusion"}
    assert heads == {1}  # 2 heads → 1 everywhere the text/vision towers have attention
    image, text = outputs(model)
    assert image.shape == dense_image.shape and torch.isfinite(image).all()
    if text is not None:
        assert text.shape == dense_text.shape and torch.isfinite(text).all()


def test_blip_captioning_decoder_loses_heads_and_still_generates(blip_caption):
    model = copy.deepcopy(blip_caption)
    plan = CompressionPlan(rules=(head_rule(0.5, method="magnitude", tower="decoder"),
                                  channel_rule(0.4, method="magnitude", tower="decoder")))
    after = _assert_shapes_as_planned(model, plan)
    assert {layer.heads for layer in after.values() if layer.tower == "decoder" and layer.kind == "attn_q"} == {1}
    captions = model.generate_captions(model.preprocess_batch(random_images(2, seed=3)), max_new_tokens=4)
    assert len(captions) == 2


def test_rcc_mini_text_tower_loses_channels_and_heads(rcc_mini):
    model = copy.deepcopy(rcc_mini)  # the fixture is shared
    plan = CompressionPlan(rules=(channel_rule(0.3, tower="text", block="0-1", correction=True),
                                  head_rule(0.25, tower="text", block=2, correction=True)))
    after = _assert_shapes_as_planned(model, plan)
    prefix = "text.transformer.encoder.layer."
    assert after[prefix + "0.intermediate.dense"].shape == (1536 - 461, 384)
    assert after[prefix + "1.output.dense"].shape == (384, 1075)
    assert after[prefix + "2.attention.self.value"].shape == (9 * 32, 384) and after[prefix + "2.attention.self.query"].heads == 9
    attention = model.module.get_submodule(prefix + "2.attention.self")
    assert (attention.num_attention_heads, attention.all_head_size) == (9, 288)
    with torch.no_grad():
        dense = rcc_mini.encode_text(rcc_mini.tokenize(PROBE_TEXTS))
        pruned = model.encode_text(model.tokenize(PROBE_TEXTS))
    assert torch.nn.functional.cosine_similarity(dense, pruned).min() > 0.9


# -- removal equals masking, before reconstruction --------------------------------------------------

def _kept_rows(dense_weight_, narrow_weight):
    """Which dense rows a narrowed producer kept (rows are copied unchanged without reconstruction)."""
    matches = (dense_weight_[None, :, :] == narrow_weight[:, None, :]).all(dim=2)
    return matches.float().argmax(dim=1)


@pytest.mark.parametrize("kind", ["channel", "head"])
def test_before_reconstruction_the_outputs_equal_the_same_units_zeroed_by_a_mask(tiny, kind):
    pruned = copy.deepcopy(tiny)
    masked = copy.deepcopy(tiny)
    rule = channel_rule(0.5) if kind == "channel" else head_rule(0.5)
    run_stage(pruned, CompressionPlan(rules=(rule,)), "dare", 1.0, CALIBRATION)
    layers = masked.layers()
    unfuse(masked.module, layers)
    index = masked.layer_index
    for group in structured_groups(layers):
        if group.kind != kind:
            continue
        # Zero the units' output where it enters the consumer: mlp_in rows (the MLP's activation is
        # GELU, GELU(0) = 0) or v rows (a head whose values are zero contributes nothing).
        zeroed = group.producers[0] if kind == "channel" else group.producers[2]
        layer = index[zeroed]
        narrow = pruned.layer_index[zeroed]
        kept = _kept_rows(dense_weight(masked.module, layer), dense_weight(pruned.module, narrow))
        keep = torch.zeros(layer.shape[0], dtype=torch.bool)
        keep[kept] = True
        assert int(keep.sum()) == narrow.shape[0]
        set_mask(masked.module, layer, keep[:, None].expand(layer.shape).clone())
        with torch.no_grad():
            layer_module(masked.module, layer).bias.mul_(keep)
    for a, b in zip(outputs(pruned), outputs(masked)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- reconstruction ---------------------------------------------------------------------------------

def _consumer_error(model, dense, consumer_name):
    """‖Y − Y_dense‖² of one consumer's outputs on the calibration data, where only its group was narrowed."""
    captured = {}

    def grab(key):
        def hook(_module, _args, out):
            captured.setdefault(key, []).append(out.detach().reshape(-1, out.shape[-1]))
        return hook

    handles = [layer_module(m.module, m.layer_index[consumer_name]).register_forward_hook(grab(key))
               for key, m in (("model", model), ("dense", dense))]
    try:
        for m in (model, dense):
            with torch.no_grad():
                m.encode_image(m.preprocess_batch([CALIBRATION.images[i] for i in range(len(CALIBRATION.images))]))
    finally:
        for handle in handles:
            handle.remove()
    return float((torch.cat(captured["model"]) - torch.cat(captured["dense"])).pow(2).sum())


@pytest.mark.parametrize("kind", ["channel", "head"])
def test_reconstruction_lowers_the_consumers_calibration_error(tiny, kind):
    dense = copy.deepcopy(tiny)
    unfuse(dense.module, dense.layers())
    group = next(g for g in structured_groups(dense.layers()) if g.kind == kind and g.tower == "vision" and g.block == 1)
    errors = {}
    for correction in (False, True):
        model = copy.deepcopy(tiny)
        rule = (channel_rule if kind == "channel" else head_rule)(0.5, correction=correction, tower="vision", block=1)
        run_stage(model, CompressionPlan(rules=(rule,)), "dare", 1.0, CALIBRATION)
        errors[correction] = _consumer_error(model, dense, group.consumer)
    assert errors[True] < 0.7 * errors[False], errors


def test_removal_fit_is_least_squares_with_an_intercept_and_respects_the_null_space():
    torch.manual_seed(0)
    n, m, tokens = 12, 5, 400
    x = torch.randn(n, tokens, dtype=torch.float64) + torch.linspace(-1, 1, n, dtype=torch.float64)[:, None]
    x[3] = 0.6 * x[1] + 0.1 * torch.randn(tokens, dtype=torch.float64)  # a removed input others explain
    w = torch.randn(m, n, dtype=torch.float64)
    keep = torch.ones(n, dtype=torch.bool)
    keep[[3, 7, 8]] = False
    gram, sums = x @ x.T, x.sum(dim=1)
    fit = alphaedit.removal_fit(w, keep, gram, sums, tokens, lam=0.0)
    # Reference: ordinary least squares of W X on [X_K; 1].
    design = torch.cat([x[keep], torch.ones(1, tokens, dtype=torch.float64)]).T
    solution = torch.linalg.lstsq(design, (w @ x).T).solution.T
    torch.testing.assert_close(fit.weight, solution[:, :-1], rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(fit.bias_shift, solution[:, -1], rtol=1e-7, atol=1e-8)
    residual = fit.weight @ x[keep] + fit.bias_shift[:, None] - w @ x
    assert fit.after == pytest.approx(float(residual.pow(2).sum()), rel=1e-6)
    assert fit.before == pytest.approx(float((w[:, ~keep] @ x[~keep]).pow(2).sum()), rel=1e-9)
    assert fit.after < 0.8 * fit.before  # x_3 is mostly explained, x_7 and x_8 only through their means
    # With K₀: the refit's change to the kept weights leaves preserved inputs' outputs alone.
    preserved = torch.randn(n, 3, dtype=torch.float64)
    projector = alphaedit.null_space_projector((preserved @ preserved.T)[keep][:, keep], 1e-6)
    constrained = alphaedit.removal_fit(w, keep, gram, sums, tokens, lam=1e-3, projector=projector)
    change = (constrained.weight - w[:, keep]) @ preserved[keep]
    assert float(change.abs().max()) < 1e-8
    assert fit.after <= constrained.after < constrained.before


# -- the cascade: evaluation and back-off, partners, later stages -----------------------------------

def test_backoff_puts_the_dense_shapes_back_and_the_model_bit_identical(tiny):
    model = copy.deepcopy(tiny)
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    plan = CompressionPlan(rules=(channel_rule(0.5), head_rule(0.5)))
    result = run_cascade(model, plan, lambda m: 1.0 if m.layers()[4].shape[0] == 128 else 0.0, CALIBRATION,
                         config=CascadeConfig(stages=("dare",), threshold=0.9, max_attempts=2))
    assert [a.accepted for a in result.attempts] == [False, False] and result.skipped
    restored = model.module.state_dict()
    # Attention stays split (the cascade splits what it may touch), with every head and the same values.
    assert all(layer.shape == layer.original_shape and layer.dense_shape is None for layer in model.layers())
    assert all(m.num_heads == 2 for m in model.module.modules() if hasattr(m, "num_heads"))
    fused = {k: v for k, v in state.items() if "in_proj" not in k}
    assert all(torch.equal(restored[k], v) for k, v in fused.items())
    for a, b in zip(outputs(model), outputs(tiny)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_cascade_counts_partners_and_later_stages_skip_narrowed_layers(tiny):
    model = copy.deepcopy(tiny)
    plan = CompressionPlan(rules=(channel_rule(0.5, correction=True, tower="vision"),
                                  Rule(tower="vision", kind="mlp_out", settings={"sparsity": 0.3, "correction": True}),
                                  Rule(tower="vision", kind="mlp_in", settings={"rank": 8})))
    expected = summarize_plan(plan, model.layers())
    result = run_cascade(model, plan, lambda m: 1.0, CALIBRATION, config=CascadeConfig(threshold=0.0))
    layers = {layer.name: layer for layer in model.layers()}
    c_fc, c_proj = (layers[f"visual.transformer.resblocks.0.mlp.{n}"] for n in ("c_fc", "c_proj"))
    assert c_fc.shape == (64, 32) and c_proj.shape == (32, 64)
    structure = structure_of(model.module)
    assert "visual.transformer.resblocks.0.mlp.c_fc" in structure["factorised"]  # rank 8 on the narrow 64×32
    assert "visual.transformer.resblocks.0.mlp.c_proj.weight_mask" in structure["masks"]
    assert result.params_before == expected.selected_before
    assert result.params_after == expected.selected_after
    assert all(torch.isfinite(t).all() for t in outputs(model))


def test_sequential_refit_runs_block_by_block(tiny):
    model = copy.deepcopy(tiny)
    plan = CompressionPlan(rules=(channel_rule(0.5, correction=True),))
    run_stage(model, plan, "dare", 1.0, CALIBRATION, options=StageOptions(sequential=True))
    assert {layer.shape[0] for layer in model.layers() if layer.kind == "mlp_in"} == {64, 48}


def test_progressive_steps_remove_more_units_each_time_and_never_grow(tiny):
    model = copy.deepcopy(tiny)
    plan = CompressionPlan(rules=(channel_rule(0.5, method="magnitude", correction=True, tower="vision"),))
    widths, changed = [], []
    for fraction in (0.5, 1.0, 1.0, 0.5):
        changed.append(run_stage(model, plan, "dare", fraction, CALIBRATION).changed)
        widths.append(model.layer_index["visual.transformer.resblocks.0.mlp.c_fc"].shape[0])
    assert widths == [96, 64, 64, 64] and changed == [2, 2, 0, 0]


def test_group_magnitude_picks_the_channels_torch_pruning_picks(tiny):
    tp = pytest.importorskip("torch_pruning")
    model = copy.deepcopy(tiny)
    mlp = model.module.visual.transformer.resblocks[0].mlp
    reference = copy.deepcopy(mlp)
    plan = CompressionPlan(rules=(channel_rule(0.25, method="magnitude", tower="vision", block=0),))
    run_stage(model, plan, "dare", 1.0, CALIBRATION)
    ours = _kept_rows(reference.c_fc.weight.detach(), model.module.visual.transformer.resblocks[0].mlp.c_fc.weight.detach())
    # Torch-Pruning's DepGraph on the same MLP, group magnitude importance, the same number of channels.
    pruner = tp.pruner.MetaPruner(reference, torch.randn(2, 32), importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.25, ignored_layers=[reference.c_proj], root_module_types=[torch.nn.Linear])
    group = next(iter(pruner.DG.get_all_groups(root_module_types=[torch.nn.Linear], ignored_layers=[reference.c_proj])))
    scores = pruner.importance(group)
    theirs = torch.sort(torch.argsort(-scores, stable=True)[:96]).values
    assert torch.equal(torch.sort(ours).values, theirs)


# -- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, message", [
    (head_rule(0.75), "removes all 2 heads (round(0.75 · 2) = 2"),
    (channel_rule(0.999), "removes all 128 hidden units"),
    (Rule(kind="mlp_out", settings={"sparsity": 0.5, "pattern": "channel"}),
     "pattern channel is set on its group's mlp_in layer, not on a mlp_out"),
    (Rule(kind="attn_v", settings={"sparsity": 0.5, "pattern": "head"}), "not on a attn_v"),
    (channel_rule(0.5, method="dare"), "method dare has no structured form"),
])
def test_amounts_and_placements_that_cannot_work_are_refused_in_one_line_naming_the_layer(tiny, rule, message):
    with pytest.raises(PlanError) as error:
        resolve_plan(CompressionPlan(rules=(rule,)), tiny.layers())
    text = str(error.value)
    assert message in text and "layer '" in text and "\n" not in text and "allowed:" in text


def test_a_locked_partner_is_refused(tiny):
    plan = CompressionPlan(rules=(channel_rule(0.5),),
                           overrides={"visual.transformer.resblocks.1.mlp.c_proj": {"locked": True}})
    with pytest.raises(PlanError, match="would narrow 'visual.transformer.resblocks.1.mlp.c_proj', locked by"):
        resolve_plan(plan, tiny.layers())


def test_uniform_plans_put_structured_patterns_on_the_leaders(tiny):
    plan = uniform_plan(sparsity=0.5, method="wanda", pattern="head")
    resolved = resolve_plan(plan, tiny.layers())
    assert {name for name, p in resolved.items() if p.selected} == {
        layer.name for layer in tiny.layers() if layer.kind == "attn_q"}
    summary = summarize_plan(plan, tiny.layers())
    # q, k, v lose half their rows and out half its columns: 4 attentions × 4 layers × half.
    attention = [layer for layer in tiny.layers() if layer.kind.startswith("attn_")]
    assert summary.selected_before == sum(layer.params for layer in attention)
    assert summary.selected_after == summary.selected_before // 2


def test_a_snapshot_of_an_attention_layer_brings_back_its_head_count(hf_clip):
    model = copy.deepcopy(hf_clip)
    layers = [layer for layer in model.layers() if layer.kind.startswith("attn_") and layer.block == 0]
    snapshot = LayerSnapshot(model.module, layers)
    run_stage(model, CompressionPlan(rules=(head_rule(0.5, block=0),)), "dare", 1.0, CALIBRATION)
    attention = model.module.vision_model.encoder.layers[0].self_attn
    assert attention.num_heads == 1 and attention.q_proj.out_features == 16
    snapshot.restore(model.module)
    attention = model.module.vision_model.encoder.layers[0].self_attn
    assert attention.num_heads == 2 and attention.q_proj.out_features == 32
    assert attention.config is model.module.vision_model.config  # the shared config stays shared


def test_calibration_statistics_carry_means(tiny):
    layers = [layer for layer in tiny.layers() if layer.kind == "mlp_out"][:1]
    stats = collect_input_stats(tiny, layers, CALIBRATION, gram=True)[layers[0].name]
    assert stats.sums is not None and stats.mean.shape == (128,)
    deviations = stats.sq_norms - stats.sums ** 2 / stats.count
    torch.testing.assert_close(stats.sq_deviations, deviations.clamp_min(0))


# -- global allocation ------------------------------------------------------------------------------

def test_global_allocation_spreads_the_same_total_cheapest_first_within_the_cap():
    from rcc.compression.groups import StructuredGroup
    from rcc.compression.unit_allocation import GLOBAL_CAP, global_kept

    a = StructuredGroup("head", "text", 0, "a", ("a",), "a_out", 12, 12, 32)
    b = StructuredGroup("head", "text", 1, "b", ("b",), "b_out", 12, 12, 32)
    costs = {"a": torch.linspace(0.0, 0.011, 12), "b": torch.linspace(1.0, 2.0, 12)}  # a's heads are all cheaper
    kept = global_kept([(a, 0.5), (b, 0.5)], 1.0, costs)
    assert kept == {"a": 12 - round(GLOBAL_CAP * 6), "b": 12 - (12 - round(GLOBAL_CAP * 6))}
    assert sum(12 - k for k in kept.values()) == 12  # the plan's total: 6 + 6 heads
    # Units already gone count: at the same strength nothing more goes; at a higher one only the rest.
    narrowed = [(StructuredGroup("head", "text", 0, "a", ("a",), "a_out", 3, 12, 32), 0.5),
                (StructuredGroup("head", "text", 1, "b", ("b",), "b_out", 9, 12, 32), 0.5)]
    again = global_kept(narrowed, 1.0, {"a": costs["a"][:3], "b": costs["b"][:9]})
    assert again == {"a": 3, "b": 9}


def test_global_allocation_in_the_stage_keeps_the_total_and_differs_per_block(tiny):
    uniform, spread = copy.deepcopy(tiny), copy.deepcopy(tiny)
    plan = CompressionPlan(rules=(channel_rule(0.5, correction=True, tower="vision"),))
    run_stage(uniform, plan, "dare", 1.0, CALIBRATION)
    run_stage(spread, plan, "dare", 1.0, CALIBRATION, options=StageOptions(allocation="global"))
    widths = {name: [info.shape[0] for info in m.layers() if info.kind == "mlp_in" and info.tower == "vision"]
              for name, m in (("uniform", uniform), ("global", spread))}
    assert widths["uniform"] == [64, 64] and sum(widths["global"]) == 128 and widths["global"] != [64, 64]
    assert min(widths["global"]) >= 128 - round(1.5 * 64)
    assert run_stage(spread, plan, "dare", 1.0, CALIBRATION, options=StageOptions(allocation="global")).changed == 0
    with pytest.raises(RccError, match="allocation 'even' is unknown; allowed: uniform, global"):
        StageOptions(allocation="even")


# -- the rest of the engine around narrowed layers --------------------------------------------------

def test_a_run_on_targeted_leaders_brings_their_partners(tiny):
    from rcc.session.handlers import restricted_plan

    model = copy.deepcopy(tiny)
    plan = CompressionPlan(rules=(channel_rule(0.5),))
    leader = "visual.transformer.resblocks.1.mlp.c_fc"
    run_stage(model, restricted_plan(plan, model, (leader,)), "dare", 1.0, CALIBRATION)
    narrowed = {layer.name for layer in model.layers() if layer.dense_shape}
    assert narrowed == {leader, "visual.transformer.resblocks.1.mlp.c_proj"}


def test_ablation_leaves_a_structured_plan_s_model_as_it_was(tiny):
    from rcc.analysis.ablation import AblationVariant, run_ablation

    model = copy.deepcopy(tiny)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    plan = CompressionPlan(rules=(channel_rule(0.5, correction=True),))
    result = run_ablation(model, plan, lambda m: 1.0, CALIBRATION, config=CascadeConfig(threshold=0.0),
                          variants=[AblationVariant(("dare",), "full")])
    assert result.variants[0].removed_fraction == pytest.approx(0.5)
    after = model.module.state_dict()
    assert all(layer.dense_shape is None for layer in model.layers())
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_subspace_analysis_lists_narrowed_layers_instead_of_failing(tiny):
    from rcc.analysis.subspace import compare_subspaces

    model = copy.deepcopy(tiny)
    run_stage(model, CompressionPlan(rules=(channel_rule(0.5, tower="text", block=0),)), "dare", 1.0, CALIBRATION)
    result = compare_subspaces(tiny, model)
    assert set(result.narrowed) == {"transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.0.mlp.c_proj"}
    assert result.as_dict()["narrowed"] == list(result.narrowed)
