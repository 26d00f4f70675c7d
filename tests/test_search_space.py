"""Search spaces: every point of a space is a valid plan; seeding from plans and sensitivity; refusals."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcc.compression.plan import CompressionPlan, Rule, resolve_plan, summarize_plan, uniform_plan
from rcc.errors import RccError
from rcc.search.space import (
    GROUP_KEYS, LEVELS, Bounds, SpaceConfig, build_space, layer_values, params_from_plan, params_from_sensitivity,
    plan_from_params, rank_for, space_config_from_dict,
)


@pytest.fixture(scope="module")
def inventory(tiny_spec):
    from rcc.models.registry import load_model

    return tuple(load_model(tiny_spec, device="cpu").layers())


def _base(inventory) -> CompressionPlan:
    """A plan with a rule, an override and a locked layer: the search must keep all three."""
    text = [layer.name for layer in inventory if layer.tower == "text"]
    return CompressionPlan(rules=(Rule(tower="vision", kind="mlp_in", settings={"sparsity": 0.3, "method": "wanda"}),),
                           overrides={text[0]: {"locked": True}, text[1]: {"method": "dare"}}, seed=3)


def _grid(draw, low_steps: int, high_steps: int) -> Bounds:
    step = 0.05
    low = draw(st.integers(0, low_steps))
    high = draw(st.integers(low, high_steps))
    grid = draw(st.booleans())
    return Bounds(round(low * step, 10), round(high * step, 10), step if grid else None)


@st.composite
def space_configs(draw):
    level = draw(st.sampled_from(LEVELS))
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS), unique=True, min_size=1 if level == "group" else 0))
    towers = draw(st.sampled_from([(), ("text",), ("vision",), ("vision", "text")]))
    sparsity = _grid(draw, 18, 19) if draw(st.booleans()) else None
    rank = None
    if sparsity is None or draw(st.booleans()):
        k = draw(st.integers(1, 10))
        rank = Bounds(round(k * 0.1, 10), 1.0, draw(st.sampled_from([None, 0.1])) if k < 10 else None)
    multiplier = draw(st.sampled_from([None, Bounds(0.5, 1.5, 0.1), Bounds(0.0, 2.0)]))
    method = draw(st.sampled_from([None, "magnitude", "wanda", "dare"]))
    return SpaceConfig(level=level, group_by=tuple(keys), towers=towers, sparsity=sparsity, rank=rank,
                       multiplier=multiplier, method=method, bits=draw(st.booleans()))


def _draw_params(draw, space) -> dict[str, float]:
    params = {}
    for dim in space.dimensions:
        b = dim.bounds
        if b.step is None:
            params[dim.name] = draw(st.floats(b.low, b.high, allow_nan=False))
        else:
            params[dim.name] = b.low + draw(st.integers(0, round((b.high - b.low) / b.step))) * b.step
    return params


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=space_configs(), data=st.data())
def test_every_point_of_a_space_is_a_valid_plan_within_its_bounds(inventory, config, data):
    base = _base(inventory)
    space = build_space(config, inventory, base)
    params = _draw_params(data.draw, space)
    plan = plan_from_params(space, params)

    resolved, before = resolve_plan(plan, inventory), resolve_plan(base, inventory)  # resolves: the plan is valid
    summary = summarize_plan(plan, inventory)
    assert summary.total_after is not None and summary.total_after <= summary.total_before
    searched = {layer.name: layer for layer in space.layers}
    assert not any(before[name].locked for name in searched)  # locked layers are never searched
    for layer in inventory:
        now, was = resolved[layer.name], before[layer.name]
        if layer.name not in searched:  # everything outside the space stays as the base plan says
            assert now == was, layer.name
            continue
        assert now.pattern == was.pattern and now.correction == was.correction
        assert now.method == (config.method or was.method)
        if config.sparsity is not None:
            assert config.sparsity.low - 1e-9 <= now.sparsity <= config.sparsity.high + 1e-9
        else:
            assert now.sparsity == was.sparsity
        if now.rank is not None:
            out_f, in_f = layer.shape
            assert config.rank is not None and not layer.transposed
            assert 1 <= now.rank.value <= min(out_f, in_f) and now.rank.value * (out_f + in_f) < out_f * in_f
        if now.bits is not None:
            assert config.bits and now.bits == 8 and not layer.transposed
        else:
            assert not config.bits or layer.transposed or params[f"bits[{layer.name}]" if config.level == "layer"
                                                                 else next(d.name for d in space.dimensions
                                                                           if d.field == "bits"
                                                                           and layer.name in d.layers)] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=space_configs(), data=st.data())
def test_a_per_layer_or_per_group_point_comes_back_from_its_own_plan(inventory, config, data):
    changes = {"rank": None, "sparsity": config.sparsity or Bounds(0.0, 0.9, 0.05)}
    if config.level == "global":
        changes["level"] = "layer"
    space = build_space(SpaceConfig(**{**config.__dict__, **changes}), inventory, _base(inventory))
    params = _draw_params(data.draw, space)
    again = params_from_plan(space, plan_from_params(space, params))
    assert again == pytest.approx(params, abs=1e-6)


def test_the_global_level_times_a_group_multiplier_is_clipped_to_the_bounds(inventory):
    config = SpaceConfig(level="global", group_by=("tower",), sparsity=Bounds(0.1, 0.8, 0.05),
                         multiplier=Bounds(0.5, 1.5, 0.1))
    space = build_space(config, inventory, CompressionPlan())
    assert [d.name for d in space.dimensions] == ["sparsity", "sparsity_mult[tower=vision]",
                                                  "sparsity_mult[tower=text]"]
    values = layer_values(space, {"sparsity": 0.6, "sparsity_mult[tower=vision]": 1.5,
                                  "sparsity_mult[tower=text]": 0.5})
    towers = {layer.name: layer.tower for layer in inventory}
    assert {v["sparsity"] for n, v in values.items() if towers[n] == "vision"} == {0.8}  # 0.9 clipped
    assert {v["sparsity"] for n, v in values.items() if towers[n] == "text"} == {0.3}


def test_without_multipliers_the_global_space_is_the_uniform_plan(inventory):
    space = build_space(SpaceConfig(level="global", multiplier=None, towers=("text",)), inventory, CompressionPlan())
    assert [d.name for d in space.dimensions] == ["sparsity"]
    plan = plan_from_params(space, {"sparsity": 0.45})
    uniform = uniform_plan(sparsity=0.45, towers=["text"])
    assert resolve_plan(plan, inventory) == resolve_plan(uniform, inventory)


def test_rank_is_searched_as_a_fraction_of_full_rank_and_transposed_matrices_get_none(inventory):
    space = build_space(SpaceConfig(level="layer", sparsity=None, rank=Bounds(0.25, 1.0, 0.25)), inventory,
                        CompressionPlan())
    names = {d.layers[0] for d in space.dimensions}
    assert names == {layer.name for layer in inventory if not layer.transposed}
    mlp = next(layer for layer in inventory if layer.kind == "mlp_in")  # 32 → 128: full rank 32
    assert rank_for(mlp, 0.25) == 8 and rank_for(mlp, 1.0) is None
    square = next(layer for layer in inventory if layer.kind == "attn_out")  # 32×32: factors never pay below
    assert rank_for(square, 0.5) is None and rank_for(square, 0.25) == 8


def test_bits_are_an_int8_choice_per_layer_or_per_group_that_seeding_recovers(inventory):
    space = build_space(SpaceConfig(level="layer", sparsity=None, bits=True), inventory, CompressionPlan())
    assert {d.layers[0] for d in space.dimensions} == {layer.name for layer in inventory if not layer.transposed}
    assert {(d.bounds.low, d.bounds.high, d.bounds.step) for d in space.dimensions} == {(0.0, 1.0, 1.0)}
    first, second = space.dimensions[0], space.dimensions[1]
    params = {d.name: 0.0 for d in space.dimensions} | {first.name: 1.0}
    plan = plan_from_params(space, params)
    resolved = resolve_plan(plan, inventory)
    assert resolved[first.layers[0]].bits == 8 and resolved[second.layers[0]].bits is None
    assert params_from_plan(space, plan) == params
    grouped = build_space(SpaceConfig(level="global", group_by=("tower",), bits=True), inventory, CompressionPlan())
    assert [d.name for d in grouped.dimensions if d.field == "bits"] == ["bits[tower=vision]", "bits[tower=text]"]


def test_a_space_is_seeded_from_the_current_plan(inventory):
    plan = uniform_plan(sparsity=0.5, towers=["text"])
    space = build_space(SpaceConfig(level="global", group_by=("kind",), towers=("text",),
                                    sparsity=Bounds(0.0, 0.9, 0.05)), inventory, CompressionPlan())
    params = params_from_plan(space, plan)
    assert params["sparsity"] == pytest.approx(0.5)
    assert all(v == pytest.approx(1.0) for k, v in params.items() if "_mult" in k)


def test_sensitive_layers_get_less_sparsity_at_the_same_mean(inventory):
    space = build_space(SpaceConfig(level="layer", towers=("text",), sparsity=Bounds(0.0, 0.9)), inventory,
                        CompressionPlan())
    names = [layer.name for layer in space.layers]
    scores = {name: float(i) for i, name in enumerate(names)}  # the later, the more sensitive
    params = params_from_sensitivity(space, scores, {"sparsity": 0.4})
    values = [params[f"sparsity[{name}]"] for name in names]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    sizes = [layer.params for layer in space.layers]
    assert sum(v * s for v, s in zip(values, sizes)) / sum(sizes) == pytest.approx(0.4, abs=0.02)
    with pytest.raises(RccError, match="no sensitivity score names a searched layer"):
        params_from_sensitivity(space, {"nope": 1.0})


@pytest.mark.parametrize("config, message", [
    (dict(level="diagonal"), "search level 'diagonal' is unknown; allowed: global, group, layer"),
    (dict(group_by=("head",)), "group key 'head' is unknown; allowed: tower, block, kind"),
    (dict(sparsity=Bounds(0.2, 1.0)), r"sparsity bounds \(0.2, 1.0\) are out of range"),
    (dict(sparsity=Bounds(0.0, 0.9, 0.2)), "step 0.2 does not divide"),
    (dict(sparsity=None, rank=None), "searches neither sparsity, rank nor bits"),
    (dict(rank=Bounds(0.0, 1.0)), "rank fraction low 0.0 is out of range"),
    (dict(towers=("audio",)), "tower 'audio' is unknown"),
    (dict(method="sorcery"), "method 'sorcery' is unknown"),
])
def test_bad_space_settings_are_refused_in_one_line(config, message):
    with pytest.raises(RccError, match=message):
        SpaceConfig(**config)


def test_a_space_without_an_unlocked_layer_or_with_n_m_patterns_is_refused(inventory):
    with pytest.raises(RccError, match="holds no layer"):
        build_space(SpaceConfig(towers=("decoder",)), inventory, CompressionPlan())
    nm = CompressionPlan(rules=(Rule(tower="text", kind="mlp_out", settings={"sparsity": 0.5, "pattern": "2:4"}),))
    with pytest.raises(RccError, match="pattern 2:4, whose sparsity is fixed"):
        build_space(SpaceConfig(towers=("text",)), inventory, nm)


def test_a_space_config_survives_its_json_form():
    config = SpaceConfig(level="group", group_by=("tower", "block"), towers=("text",), rank=Bounds(0.1, 1.0, 0.1))
    assert space_config_from_dict(config.as_dict()) == config
    with pytest.raises(RccError, match="key 'levels' is unknown"):
        space_config_from_dict({"levels": "layer"})


def test_the_search_command_bits_option_searches_int8_and_adds_the_quant_stage():
    import argparse

    from rcc.cli.search_cmd import build_settings
    from rcc.search.study import StudySettings

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    from rcc.cli import search_cmd

    search_cmd.add_parser(sub)
    args = parser.parse_args(["search", "SESSION", "--bits", "--sparsity", "none"])
    settings = build_settings(args, StudySettings())
    assert settings.space.bits and settings.space.sparsity is None
    assert settings.objective.stages == ("dare", "quant")
    explicit = build_settings(parser.parse_args(["search", "SESSION", "--bits", "--stages", "quant"]), StudySettings())
    assert explicit.objective.stages == ("quant",)
