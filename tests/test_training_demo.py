"""The rcc-mini demo recipe: deterministic from its seed, and good enough to ship."""

import pytest
import torch

from rcc.models.rcc_mini import TEXT_TRANSFORMER_PREFIX, build_rcc_mini, shipped_state
from rcc.training.demo import DemoTrainConfig, train_demo


def test_same_seed_gives_bit_identical_weights_and_the_text_tower_stays_locked():
    pretrained_text = {k: v.clone() for k, v in build_rcc_mini(trained=False).module.state_dict().items()
                       if k.startswith(TEXT_TRANSFORMER_PREFIX)}
    runs = [train_demo(DemoTrainConfig(seed=3, epochs=1)) for _ in range(2)]
    first, second = (shipped_state(run.model.module) for run in runs)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert runs[0].test == runs[1].test
    for name, tensor in runs[0].model.module.state_dict().items():
        if name.startswith(TEXT_TRANSFORMER_PREFIX):
            assert torch.equal(tensor, pretrained_text[name]), name


@pytest.mark.slow
def test_the_shipped_recipe_reaches_90_percent_zero_shot():
    result = train_demo(DemoTrainConfig(seed=0))
    assert result.test.top1 >= 0.90
    assert result.test.n == 360
    card = result.card()
    assert card["command"] == "rcc-tui train-demo --seed 0 --epochs 20"
