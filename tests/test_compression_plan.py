"""Compression plans: rule matching and order, locks, validation messages, JSON, parameter counts."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcc.compression.plan import (
    CompressionPlan, LayerPlan, PlanError, RankSpec, Rule, layer_params_after, load_plan, parse_rank,
    plan_from_dict, plan_to_dict, resolve_plan, save_plan, summarize_plan, uniform_plan,
)
from rcc.schema.names import PRUNE_METHODS as METHODS
from rcc.errors import RccError
from rcc.schema.layers import LAYER_KINDS, TOWERS, LayerInfo

# An OpenCLIP-shaped inventory: a 2-block ViT (width 64, MLP 256) and a 2-block text tower
# (width 48, MLP 192), fused q/k/v split into row slices, and the transposed x @ W projections.
_KINDS = (("attn.in_proj.q", "attn_q", 0), ("attn.in_proj.k", "attn_k", 0), ("attn.in_proj.v", "attn_v", 0),
          ("attn.out_proj", "attn_out", 0), ("mlp.c_fc", "mlp_in", 4), ("mlp.c_proj", "mlp_out", 4))


def _tower(prefix: str, tower: str, width: int) -> list[LayerInfo]:
    found = []
    for block in range(2):
        for suffix, kind, mlp in _KINDS:
            name = f"{prefix}transformer.resblocks.{block}.{suffix}"
            shape = {"mlp_in": (mlp * width, width), "mlp_out": (width, mlp * width)}.get(kind, (width, width))
            fused = suffix.startswith("attn.in_proj")
            rows = (("qkv".index(suffix[-1])) * width, ("qkv".index(suffix[-1]) + 1) * width) if fused else None
            param = name.rsplit(".", 1)[0] + "_weight" if fused else f"{name}.weight"
            found.append(LayerInfo(name, tower, block, kind, shape, param, rows))
    return found


LAYERS = (_tower("visual.", "vision", 64)
          + [LayerInfo("visual.proj", "vision", None, "projection", (32, 64), "visual.proj", transposed=True)]
          + _tower("", "text", 48)
          + [LayerInfo("text_projection", "text", None, "projection", (32, 48), "text_projection", transposed=True)])
BY_NAME = {layer.name: layer for layer in LAYERS}
V0 = "visual.transformer.resblocks.0."
V1 = "visual.transformer.resblocks.1."
T0 = "transformer.resblocks.0."


def _error(plan_or_call, layers=LAYERS) -> str:
    """The one-line message of the PlanError that resolving (or calling) raises."""
    with pytest.raises(PlanError) as caught:
        if callable(plan_or_call):
            plan_or_call()
        else:
            resolve_plan(plan_or_call, layers)
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, RccError)
    return message


def _selected(resolved) -> set[str]:
    return {name for name, setting in resolved.items() if setting.selected}


# --- matching and order ---------------------------------------------------------------------

def test_defaults_cover_every_layer():
    resolved = resolve_plan(CompressionPlan(), LAYERS)
    assert list(resolved) == [layer.name for layer in LAYERS]
    assert all(setting == LayerPlan() for setting in resolved.values())
    assert _selected(resolved) == set()


def test_rules_apply_in_order_and_later_wins_field_by_field():
    plan = CompressionPlan(rules=(
        Rule(tower="vision", settings={"sparsity": 0.3, "method": "wanda"}),
        Rule(kind="mlp_in", settings={"sparsity": 0.6}),
        Rule(kind="mlp_in", tower="text", settings={"rank": "16"}),
    ))
    got = resolve_plan(plan, LAYERS)
    assert got[V0 + "mlp.c_fc"] == LayerPlan(sparsity=0.6, method="wanda")  # 0.6 wins, wanda stays
    assert got[V0 + "attn.out_proj"] == LayerPlan(sparsity=0.3, method="wanda")
    assert got[T0 + "mlp.c_fc"] == LayerPlan(sparsity=0.6, rank=RankSpec("fixed", 16))
    assert got[T0 + "attn.out_proj"] == LayerPlan()
    # Swapping the first two rules lets the broad one win on the vision MLP input.
    swapped = CompressionPlan(rules=(plan.rules[1], plan.rules[0]))
    assert resolve_plan(swapped, LAYERS)[V0 + "mlp.c_fc"].sparsity == 0.3


def test_glob_tower_block_and_kind_matching():
    def picked(**matchers):
        return _selected(resolve_plan(CompressionPlan(rules=(Rule(**matchers, settings={"sparsity": 0.5}),)), LAYERS))

    # The fused q/k/v slices of both vision blocks.
    assert picked(name="visual.*.attn.in_proj.?") == {
        f"{b}attn.in_proj.{x}" for b in (V0, V1) for x in "qkv"}
    # fnmatch's * crosses dots: "visual.*" is the whole vision tower, projection included.
    assert len(picked(name="visual.*")) == 13
    assert picked(tower="text", kind="projection") == {"text_projection"}
    assert picked(block=1, kind="attn_out") == {V1 + "attn.out_proj", "transformer.resblocks.1.attn.out_proj"}
    assert picked(block="1-1", tower="vision", kind="mlp_out") == {V1 + "mlp.c_proj"}
    # A block range never matches the block-less projections.
    assert len(picked(block="0-1")) == 24
    assert picked(block="0", kind="attn_q", tower="text") == {T0 + "attn.in_proj.q"}


def test_overrides_apply_last_and_by_exact_name():
    plan = CompressionPlan(
        rules=(Rule(tower="vision", settings={"sparsity": 0.5}),),
        overrides={V0 + "mlp.c_fc": {"sparsity": 0.2, "correction": True}},
    )
    got = resolve_plan(plan, LAYERS)
    assert got[V0 + "mlp.c_fc"] == LayerPlan(sparsity=0.2, correction=True)
    assert got[V1 + "mlp.c_fc"] == LayerPlan(sparsity=0.5)


def test_override_for_an_unknown_layer_suggests_the_nearest_name():
    message = _error(CompressionPlan(overrides={"visual.prj": {"sparsity": 0.5}}))
    assert "override for layer 'visual.prj' names no layer" in message
    assert "did you mean 'visual.proj'?" in message


# --- locks ----------------------------------------------------------------------------------

LOCK_PROJ = Rule(name="visual.proj", settings={"locked": True})


def test_locked_layer_is_never_selected_and_keeps_its_parameters():
    plan = CompressionPlan(defaults=LayerPlan(sparsity=0.5), rules=(LOCK_PROJ,))
    got = resolve_plan(plan, LAYERS)
    assert got["visual.proj"].locked and not got["visual.proj"].selected
    assert layer_params_after(BY_NAME["visual.proj"], got["visual.proj"]) == 32 * 64


def test_a_later_rule_may_not_change_a_locked_layer():
    plan = CompressionPlan(rules=(LOCK_PROJ, Rule(tower="vision", settings={"sparsity": 0.5})))
    message = _error(plan)
    assert message.startswith("rules[1] (tower='vision') would change sparsity of layer 'visual.proj'")
    assert "locked by rules[0]" in message and 'override {"locked": false}' in message


def test_a_rule_may_not_unlock():
    message = _error(CompressionPlan(rules=(LOCK_PROJ, Rule(name="visual.proj", settings={"locked": False}))))
    assert "rules[1] (name='visual.proj') would change locked of layer 'visual.proj'" in message


def test_locking_again_is_fine():
    plan = CompressionPlan(rules=(LOCK_PROJ, LOCK_PROJ), overrides={"visual.proj": {"locked": True}})
    assert resolve_plan(plan, LAYERS)["visual.proj"].locked


def test_an_override_may_not_change_a_locked_layer_without_unlocking_it():
    plan = CompressionPlan(rules=(LOCK_PROJ,), overrides={"visual.proj": {"sparsity": 0.3}})
    message = _error(plan)
    assert "override for layer 'visual.proj' would change sparsity" in message
    assert message.endswith('allowed: add "locked": false to this override')


def test_an_override_with_locked_false_unlocks_and_changes():
    plan = CompressionPlan(defaults=LayerPlan(locked=True, sparsity=0.5),
                           overrides={V0 + "mlp.c_fc": {"locked": False, "sparsity": 0.25}})
    got = resolve_plan(plan, LAYERS)
    assert _selected(got) == {V0 + "mlp.c_fc"}
    assert got[V0 + "mlp.c_fc"] == LayerPlan(sparsity=0.25)


def test_locked_layers_skip_shape_checks():
    # rank 999 exceeds every layer, but a locked layer is never touched, so it is not an error.
    plan = CompressionPlan(defaults=LayerPlan(locked=True, rank=RankSpec("fixed", 999)))
    assert _selected(resolve_plan(plan, LAYERS)) == set()


# --- validation errors ----------------------------------------------------------------------

def test_sparsity_out_of_range_names_where_and_the_range():
    allowed = "allowed: 0 ≤ sparsity < 1"
    message = _error(lambda: CompressionPlan(overrides={V0 + "mlp.c_fc": {"sparsity": 1.2}}))
    assert message == f"override for layer '{V0}mlp.c_fc': sparsity 1.2 is out of range; {allowed}"
    message = _error(lambda: plan_from_dict({"rules": [{"tower": "text", "settings": {"sparsity": -0.1}}]}))
    assert message == f"rules[0]: sparsity -0.1 is out of range; {allowed}"
    assert _error(lambda: plan_from_dict({"defaults": {"sparsity": 1}})).startswith("defaults: sparsity 1 ")
    assert allowed in _error(lambda: LayerPlan(sparsity=1.0))


def test_fixed_rank_above_min_dimension_names_layer_value_and_bound():
    plan = CompressionPlan(rules=(Rule(tower="vision", kind="attn_q", settings={"rank": 65}),))
    assert _error(plan) == (f"layer '{V0}attn.in_proj.q': rank 65 is out of range for shape 64×64 "
                            "(set by rules[0]); allowed: 1 ≤ rank ≤ 64")
    # 64 is the largest rank of a 64×64 slice: no error, just no saving.
    ok = CompressionPlan(rules=(Rule(tower="vision", kind="attn_q", settings={"rank": 64}),))
    assert resolve_plan(ok, LAYERS)[V0 + "attn.in_proj.q"].rank == RankSpec("fixed", 64)


def test_rank_below_one_is_refused():
    message = _error(lambda: CompressionPlan(overrides={T0 + "mlp.c_fc": {"rank": "0"}}))
    assert message == f"override for layer '{T0}mlp.c_fc': rank 0 is out of range; allowed: rank ≥ 1"
    assert "allowed: rank ≥ 1" in _error(lambda: RankSpec("fixed", -3))


@pytest.mark.parametrize("text", ["energy:0", "energy:1.5", "energy:-0.2", "energy:nan"])
def test_energy_outside_zero_one_is_refused(text):
    message = _error(lambda: Rule(kind="mlp_in", settings={"rank": text}))
    assert message.endswith("allowed: 0 < energy ≤ 1")


def test_rule_matching_no_layer_names_the_rule():
    plan = CompressionPlan(rules=(Rule(tower="text", settings={"sparsity": 0.1}),
                                  Rule(name="visual.*.mlp.zz", settings={"sparsity": 0.5})))
    message = _error(plan)
    assert message.startswith("rules[1] (name='visual.*.mlp.zz') matches no layer (rules are numbered from 0)")
    assert "fusion" not in message  # only the matchers the rule gives are shown
    assert "rules[0] (tower='fusion', block='3-5') matches no layer" in _error(
        CompressionPlan(rules=(Rule(tower="fusion", block="3-5"),)))


def test_nm_pattern_must_divide_in_features():
    # 64 inputs are not a multiple of 3.
    plan = CompressionPlan(rules=(Rule(name=V0 + "attn.out_proj", settings={"sparsity": 2 / 3, "pattern": "1:3"}),))
    assert _error(plan) == (f"layer '{V0}attn.out_proj': pattern 1:3 needs in_features divisible by 3, got 64 "
                            "(set by rules[0]); allowed: an N:M whose M divides 64, 'unstructured' or 'row'")
    # 2:4 divides every in_features here; a dense layer (sparsity 0) ignores its pattern.
    fine = CompressionPlan(defaults=LayerPlan(pattern="1:3"), rules=(Rule(tower="vision", settings={
        "sparsity": 0.5, "pattern": "2:4"}),))
    assert len(_selected(resolve_plan(fine, LAYERS))) == 13


def test_nm_pattern_fixes_the_sparsity():
    plan = CompressionPlan(rules=(Rule(tower="vision", kind="mlp_in", settings={"sparsity": 0.3, "pattern": "2:4"}),))
    message = _error(plan)
    assert "pattern 2:4 keeps 2 of every 4 weights" in message and message.endswith("allowed: sparsity 0.5 or 0")


def test_nm_pattern_with_a_rank_is_refused():
    plan = CompressionPlan(defaults=LayerPlan(sparsity=0.5, pattern="2:4", rank=RankSpec("fixed", 8)),
                           overrides={"visual.proj": {"rank": None}, "text_projection": {"rank": None}})
    assert "pattern 2:4 cannot prune low-rank factors" in _error(plan)


@pytest.mark.parametrize("settings_, what, allowed", [
    ({"sparsty": 0.5}, "setting 'sparsty' is unknown", "sparsity, method, pattern, rank, correction, locked"),
    ({"method": "obs"}, "method 'obs' is unknown", ", ".join(METHODS)),
    ({"pattern": "4:2"}, "pattern '4:2' is unknown", "'unstructured', 'row', 'N:M' with 0 < N < M (e.g. '2:4'), 'channel'"),
    ({"pattern": "blocks"}, "pattern 'blocks' is unknown", "'unstructured', 'row', 'N:M' with 0 < N < M (e.g. '2:4'), 'channel'"),
    ({"rank": "half"}, "rank 'half' is not understood", "an integer ≥ 1, 'energy:F' with 0 < F ≤ 1, or 'auto'"),
    ({"rank": 1.5}, "rank 1.5 has type float", "an integer ≥ 1"),
    ({"correction": "yes"}, "correction 'yes' is not a boolean", "true, false"),
])
def test_unknown_fields_and_values_list_what_is_allowed(settings_, what, allowed):
    message = _error(lambda: plan_from_dict({"rules": [{"settings": settings_}]}))
    assert message.startswith(f"rules[0]: {what}") and f"allowed: {allowed}" in message


@pytest.mark.parametrize("matchers, what, allowed", [
    ({"tower": "audio"}, "tower 'audio' is unknown", ", ".join(TOWERS)),
    ({"kind": "mlp_gate"}, "kind 'mlp_gate' is unknown", ", ".join(LAYER_KINDS)),
    ({"block": "3-1"}, "block '3-1' is not understood", "a range 'a-b' with a ≤ b"),
    ({"block": -1}, "block -1 is not understood", "an integer ≥ 0"),
    ({"towers": "text"}, "rule key 'towers' is unknown", "name, tower, block, kind, settings"),
])
def test_bad_matchers_list_what_is_allowed(matchers, what, allowed):
    message = _error(lambda: plan_from_dict({"rules": [{"name": "x*"}, matchers]}))
    assert message.startswith(f"rules[1]: {what}") and allowed in message


def test_auto_rank_needs_a_budget():
    plan = CompressionPlan(rules=(Rule(tower="text", kind="mlp_out", settings={"rank": "auto"}),))
    assert _error(plan) == (f"layer '{T0}mlp.c_proj': rank 'auto' needs the plan's budget, which is not set "
                            "(rank set by rules[0]); allowed: a budget with 0 < budget < 1")
    assert resolve_plan(CompressionPlan(rules=plan.rules, budget=0.5), LAYERS)
    with pytest.raises(PlanError, match="needs a budget"):
        uniform_plan(rank="auto")


@pytest.mark.parametrize("budget", [0, 1, 1.5, -0.2, math.nan, True, "0.5"])
def test_budget_outside_zero_one_is_refused(budget):
    assert _error(lambda: CompressionPlan(budget=budget)).endswith("allowed: 0 < budget < 1 (fraction kept)")


def test_rank_on_a_transposed_parameter_is_refused():
    plan = CompressionPlan(rules=(Rule(kind="projection", settings={"rank": "energy:0.9"}),))
    assert _error(plan) == ("layer 'visual.proj': rank energy:0.9 cannot apply to a bare parameter used as x @ W "
                            "(set by rules[0]); allowed: sparsity only")
    sparse_only = CompressionPlan(rules=(Rule(kind="projection", settings={"sparsity": 0.5}),))
    assert _selected(resolve_plan(sparse_only, LAYERS)) == {"visual.proj", "text_projection"}


# --- ranks, JSON, starter plans ---------------------------------------------------------------

def test_parse_rank_forms_round_trip():
    assert parse_rank("64") == RankSpec("fixed", 64)
    assert parse_rank(" Energy:0.9 ") == RankSpec("energy", 0.9)
    assert parse_rank("energy:1") == RankSpec("energy", 1.0)
    assert parse_rank("auto") == RankSpec("auto")
    for text in ("64", "energy:0.9", "energy:1.0", "auto"):
        assert str(parse_rank(text)) == text


def test_save_and_load(tmp_path):
    plan = CompressionPlan(
        defaults=LayerPlan(method="dare"),
        rules=(Rule(tower="text", block="0-1", kind="mlp_in", settings={"sparsity": 0.5, "rank": "auto"}),),
        overrides={"text_projection": {"locked": True}}, budget=0.6, seed=7)
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["rules"][0] == {
        "tower": "text", "block": "0-1", "kind": "mlp_in", "settings": {"sparsity": 0.5, "rank": "auto"}}
    assert load_plan(path) == plan


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    assert _error(lambda: load_plan(missing)).startswith(f"plan file '{missing}' does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": [')
    assert _error(lambda: load_plan(bad)).startswith(f"plan file '{bad}' is not valid JSON: ")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"version": 1, "budgett": 0.5}')
    assert _error(lambda: load_plan(wrong)) == (f"plan file '{wrong}': plan key 'budgett' is unknown; "
                                                "allowed: version, defaults, rules, overrides, budget, seed")
    wrong.write_text('{"version": 2}')
    assert _error(lambda: load_plan(wrong)).endswith("plan version 2 is not supported; allowed: 1")
    wrong.write_text('[1, 2]')
    assert "a plan must be a JSON object, got list" in _error(lambda: load_plan(wrong))


def test_uniform_plan_rules_and_transposed_overrides():
    plan = uniform_plan(sparsity=0.5, rank="auto", budget=0.5, towers=("vision", "text"),
                        kinds=("mlp_in", "projection"), layers=LAYERS)
    assert plan.defaults == LayerPlan()
    assert [(r.tower, r.kind) for r in plan.rules] == [
        ("vision", "mlp_in"), ("vision", "projection"), ("text", "mlp_in"), ("text", "projection")]
    # The transposed projections would refuse a rank: the starter plan drops it for them.
    assert plan.overrides == {"visual.proj": {"rank": None}, "text_projection": {"rank": None}}
    got = resolve_plan(plan, LAYERS)
    assert got["visual.proj"] == LayerPlan(sparsity=0.5)
    assert got[V1 + "mlp.c_fc"] == LayerPlan(sparsity=0.5, rank=RankSpec("auto"))
    everything = uniform_plan(sparsity=0.5)
    assert everything.rules == (Rule(settings={"sparsity": 0.5, "method": "magnitude", "pattern": "unstructured",
                                                "rank": None, "correction": False}),)
    assert len(_selected(resolve_plan(everything, LAYERS))) == len(LAYERS)


# --- parameter accounting -------------------------------------------------------------------

MLP_OUT = BY_NAME[V0 + "mlp.c_proj"]  # 64 × 256 = 16384 parameters; m + n = 320


@pytest.mark.parametrize("setting, rank, expected", [
    (LayerPlan(), None, 16384),                                            # untouched
    (LayerPlan(sparsity=0.5, locked=True), None, 16384),                   # locked
    (LayerPlan(sparsity=0.5), None, 8192),                                 # 16384 − 8192
    (LayerPlan(sparsity=0.3), None, 11469),                                # 16384 − round(4915.2)
    (LayerPlan(sparsity=0.3, pattern="row"), None, 11456),                 # 64 · (256 − round(76.8))
    (LayerPlan(sparsity=0.5, pattern="2:4"), None, 8192),                  # 16384 · 2/4
    (LayerPlan(sparsity=0.75, pattern="1:4"), None, 4096),                 # 16384 · 1/4
    (LayerPlan(rank=RankSpec("fixed", 16)), None, 5120),                   # 16 · 320, factorised
    (LayerPlan(rank=RankSpec("fixed", 51)), None, 16320),                  # 51 · 320 < 16384: still factorised
    (LayerPlan(rank=RankSpec("fixed", 52)), None, 16384),                  # 52 · 320 ≥ 16384: stored dense
    (LayerPlan(sparsity=0.5, rank=RankSpec("fixed", 16)), None, 2560),     # 5120 − 2560
    (LayerPlan(sparsity=0.3, rank=RankSpec("fixed", 16)), None, 3584),     # 5120 − round(1536.0)
    (LayerPlan(sparsity=0.5, pattern="row", rank=RankSpec("fixed", 16)), None, 2560),  # 64·8 + 16·128
    (LayerPlan(sparsity=0.5, rank=RankSpec("fixed", 60)), None, 8192),     # not factorised: sparsity only
    (LayerPlan(rank=RankSpec("energy", 0.9)), None, None),                 # unknown before the SVD
    (LayerPlan(rank=RankSpec("energy", 0.9)), 10, 3200),                   # 10 · 320 once known
    (LayerPlan(rank=RankSpec("auto")), 20, 6400),                          # 20 · 320
    (LayerPlan(rank=RankSpec("fixed", 16)), 8, 2560),                      # the actual rank wins
])
def test_layer_params_after(setting, rank, expected):
    assert layer_params_after(MLP_OUT, setting, rank) == expected


def test_magnitude_count_rounds_like_l1_unstructured():
    # torch prunes round(amount · numel): round(4.5) = 4 of 9, so 5 stay.
    tiny = LayerInfo("tiny", "text", 0, "mlp_in", (3, 3), "tiny.weight")
    assert layer_params_after(tiny, LayerPlan(sparsity=0.5)) == 5


TOTAL = 2 * (4 * 64 * 64 + 2 * 256 * 64) + 32 * 64 + 2 * (4 * 48 * 48 + 2 * 192 * 48) + 32 * 48  # 157184


def test_summary_totals():
    assert TOTAL == 157184 == sum(layer.params for layer in LAYERS)
    plan = CompressionPlan(rules=(Rule(tower="vision", kind="mlp_out", settings={"sparsity": 0.5}),
                                  Rule(tower="text", kind="attn_q", settings={"rank": 8})))
    summary = summarize_plan(plan, LAYERS)
    # vision mlp_out: 2 × 16384 → 2 × 8192; text q: 2 × 48·48 = 2 × 2304 → 2 × 8·96 = 2 × 768.
    assert summary.selected_before == 2 * 16384 + 2 * 2304 == 37376
    assert summary.selected_after == 2 * 8192 + 2 * 768 == 17920
    assert summary.total_before == TOTAL
    assert summary.total_after == TOTAL - 37376 + 17920
    assert summary.removed_fraction == pytest.approx(1 - 17920 / 37376)
    assert not summary.estimated and summary.unknown == ()
    assert [c.name for c in summary.layers if c.selected] == [
        V0 + "mlp.c_proj", V1 + "mlp.c_proj", T0 + "attn.in_proj.q", "transformer.resblocks.1.attn.in_proj.q"]


def test_summary_estimates_auto_from_the_budget_and_leaves_energy_unknown():
    plan = CompressionPlan(rules=(Rule(tower="text", kind="mlp_in", settings={"rank": "auto"}),), budget=0.25)
    summary = summarize_plan(plan, LAYERS)
    # text mlp_in: 2 × 192·48 = 2 × 9216, budget keeps a quarter: 2 × 2304.
    assert summary.selected_before == 18432 and summary.selected_after == 4608
    assert summary.removed_fraction == 0.75 and summary.estimated
    assert [c.estimated for c in summary.layers if c.selected] == [True, True]
    # With the allocator's actual ranks the count is exact: rank 10 → 10 · 240 = 2400 each.
    exact = summarize_plan(plan, LAYERS, ranks={T0 + "mlp.c_fc": 10, "transformer.resblocks.1.mlp.c_fc": 10})
    assert exact.selected_after == 4800 and not exact.estimated

    energy = CompressionPlan(rules=(Rule(tower="vision", kind="mlp_in", settings={"rank": "energy:0.9"}),))
    summary = summarize_plan(energy, LAYERS)
    assert summary.unknown == (V0 + "mlp.c_fc", V1 + "mlp.c_fc")
    assert summary.total_after is None and summary.selected_after is None and summary.removed_fraction is None
    assert summary.total_before == TOTAL


def test_summary_with_nothing_selected():
    summary = summarize_plan(CompressionPlan(), LAYERS)
    assert summary.total_after == summary.total_before == TOTAL
    assert summary.selected_before == 0 and summary.removed_fraction == 0.0


# --- properties -----------------------------------------------------------------------------

unit_open = st.floats(0, 1, exclude_min=True, exclude_max=True)
ranks = st.one_of(
    st.none(), st.integers(1, 4096).map(lambda r: RankSpec("fixed", r)),
    st.floats(0, 1, exclude_min=True).map(lambda e: RankSpec("energy", e)), st.just(RankSpec("auto")))
patterns = st.one_of(
    st.sampled_from(["unstructured", "row"]),
    st.tuples(st.integers(1, 15), st.integers(2, 16)).filter(lambda t: t[0] < t[1]).map(lambda t: f"{t[0]}:{t[1]}"))
setting_values = {
    "sparsity": st.floats(0, 1, exclude_max=True), "method": st.sampled_from(METHODS), "pattern": patterns,
    "rank": ranks, "correction": st.booleans(), "locked": st.booleans(),
}
partial_settings = st.fixed_dictionaries({}, optional=setting_values)
blocks = st.one_of(st.none(), st.integers(0, 40),
                   st.tuples(st.integers(0, 20), st.integers(0, 20)).map(lambda t: f"{min(t)}-{max(t)}"))
rules = st.builds(Rule, name=st.none() | st.text(max_size=20), tower=st.none() | st.sampled_from(TOWERS),
                  block=blocks, kind=st.none() | st.sampled_from(LAYER_KINDS), settings=partial_settings)
plans = st.builds(
    CompressionPlan, defaults=st.fixed_dictionaries(setting_values).map(lambda s: LayerPlan(**s)),
    rules=st.lists(rules, max_size=5).map(tuple),
    overrides=st.dictionaries(st.text(min_size=1, max_size=30), partial_settings, max_size=4),
    budget=st.none() | unit_open, seed=st.integers(-(2**63), 2**63))


@settings(max_examples=200, deadline=None)
@given(plan=plans)
def test_valid_plans_round_trip_through_json(plan):
    text = json.dumps(plan_to_dict(plan))
    assert plan_from_dict(json.loads(text)) == plan


not_a_sparsity = st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0 <= x < 1)


@settings(max_examples=150, deadline=None)
@given(value=not_a_sparsity, where=st.sampled_from(["defaults", "rule", "override"]))
def test_sparsity_outside_zero_one_is_always_refused(value, where):
    data = {"defaults": {"sparsity": value}} if where == "defaults" else (
        {"rules": [{"settings": {"sparsity": value}}]} if where == "rule"
        else {"overrides": {"x.q": {"sparsity": value}}})
    message = _error(lambda: plan_from_dict(data))
    assert "allowed: 0 ≤ sparsity < 1" in message
    with pytest.raises(PlanError):
        LayerPlan(sparsity=value)


@settings(max_examples=150, deadline=None)
@given(sparsity=st.floats(0, 1, exclude_max=True), rank=st.none() | st.integers(1, 64),
       pattern=st.sampled_from(["unstructured", "row"]), name=st.sampled_from(sorted(BY_NAME)))
def test_compression_never_adds_parameters(sparsity, rank, pattern, name):
    layer = BY_NAME[name]
    setting = LayerPlan(sparsity=sparsity, pattern=pattern, rank=None if rank is None else RankSpec("fixed", rank))
    assert 0 <= layer_params_after(layer, setting) <= layer.params
