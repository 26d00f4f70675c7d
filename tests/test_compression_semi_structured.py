"""2:4 plans: semi-structured sparse weights on CUDA in fp16 / bf16, masks everywhere else."""

import copy
import json

import pytest
import torch
from torch import nn

import rcc
from hf_tiny import random_images
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CascadeConfig, run_cascade
from rcc.compression.dare import nm_mask
from rcc.compression.plan import CompressionPlan, Rule
from rcc.compression.semi_structured import inference_copy, install_semi_structured, two_four_paths
from rcc.compression.structure import MANIFEST
from rcc.errors import RccError
from rcc.models.registry import load_model
from rcc.exports.checkpoints import export_compressed

pytestmark = pytest.mark.usefixtures("one_thread")

CALIBRATION = CalibrationData(images=random_images(8, seed=1), texts=("a photo of a cat", "a red car"))
TWO_FOUR = CompressionPlan(rules=(Rule(tower="vision", kind="mlp_in", settings={"sparsity": 0.5, "pattern": "2:4"}),
                                  Rule(tower="vision", kind="mlp_out", settings={"sparsity": 0.3})))
cuda_ampere = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                                 reason="semi-structured sparse kernels need CUDA compute capability 8.0")


@pytest.fixture(scope="module")
def pruned(config_path):
    torch.manual_seed(0)
    model = load_model(f"open_clip:{config_path}", device="cpu")
    run_cascade(model, TWO_FOUR, lambda m: 1.0, CALIBRATION, config=CascadeConfig(stages=("dare",), threshold=0.0))
    return model


def test_only_2_4_masked_linears_are_candidates(pruned):
    assert two_four_paths(pruned.module) == ["visual.transformer.resblocks.0.mlp.c_fc",
                                             "visual.transformer.resblocks.1.mlp.c_fc"]  # c_proj: 30 % unstructured


def test_on_cpu_the_layers_stay_masked_and_a_half_copy_still_matches(pruned):
    before = {k: v.clone() for k, v in pruned.module.state_dict().items()}
    assert install_semi_structured(pruned.module) == []
    assert all(torch.equal(before[k], v) for k, v in pruned.module.state_dict().items())
    half, paths = inference_copy(pruned, "bf16")
    assert paths == [] and half.dtype == torch.bfloat16 and pruned.dtype == torch.float32
    pixels = pruned.preprocess_batch(random_images(2, seed=3))
    with torch.inference_mode():
        reference, candidate = pruned.encode_image(pixels), half.encode_image(pixels).float()
    assert torch.nn.functional.cosine_similarity(reference, candidate).min() > 0.99
    with pytest.raises(RccError, match="inference precision 'fp8' is not supported; allowed: fp16, bf16"):
        inference_copy(pruned, "fp8")


def test_the_compressed_export_lists_its_2_4_layers_and_loads_back_on_cpu(pruned, tmp_path):
    export_compressed(pruned, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["semi_structured"] == two_four_paths(pruned.module)
    loaded = rcc.load_compressed(tmp_path / "out")
    layer = loaded.module.visual.transformer.resblocks[0].mlp.c_fc
    assert type(layer.weight) is nn.Parameter and torch.equal(layer.weight_mask, pruned.module.get_submodule(
        "visual.transformer.resblocks.0.mlp.c_fc").weight_mask)


def _two_four_linear(device: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(1)
    linear = nn.Linear(256, 512).to(device, dtype)
    keep = nm_mask(linear.weight.detach().abs().float(), 2, 4).to(device)
    with torch.no_grad():
        linear.weight.mul_(keep)
    linear.register_buffer("weight_mask", keep)
    return nn.Sequential(linear)


@cuda_ampere
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_on_cuda_in_half_precision_2_4_layers_run_as_semi_structured_weights(dtype):
    from torch.sparse import SparseSemiStructuredTensor

    module = _two_four_linear("cuda", dtype)
    x = torch.randn(64, 256, device="cuda", dtype=dtype)
    dense = module(x)
    assert install_semi_structured(module) == ["0"]
    assert isinstance(module[0].weight, SparseSemiStructuredTensor)
    torch.testing.assert_close(module(x), dense, rtol=2e-2, atol=2e-2)
    assert install_semi_structured(_two_four_linear("cuda", torch.float32)) == []  # float32: no kernel


@cuda_ampere
def test_the_compressed_export_installs_2_4_kernels_when_loaded_on_cuda_in_fp16(pruned, tmp_path):
    export_compressed(pruned, tmp_path / "out")
    loaded = rcc.load_compressed(tmp_path / "out", device="cuda", dtype=torch.float16)
    pixels = pruned.preprocess_batch(random_images(2, seed=3))
    with torch.inference_mode():
        reference = copy.deepcopy(pruned).encode_image(pixels)
        candidate = loaded.encode_image(pixels.cuda().half()).float().cpu()
    assert torch.nn.functional.cosine_similarity(reference, candidate).min() > 0.99
