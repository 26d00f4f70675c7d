"""Efficiency: parameter and byte counts, exact FLOPs of known layers, latency and memory fields."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcc.errors import EvalError
from rcc.eval.efficiency import EfficiencyReport, count_flops, count_parameters, measure_efficiency, stored_bytes
from rcc.models.adapter import VLModel


def test_linear_flops_are_two_in_out_batch():
    layer = nn.Linear(7, 5)
    x = torch.randn(4, 7)
    assert count_flops(lambda: layer(x)) == 2 * 7 * 5 * 4


def test_attention_flops_are_counted_through_matmuls():
    # One self-attention over s tokens of width d (batch 1):
    #   in-proj 2·s·d·3d + scores 2·s·s·d + weighted sum 2·s·s·d + out-proj 2·s·d·d.
    s, d = 6, 8
    attn = nn.MultiheadAttention(d, num_heads=2, batch_first=True).eval()
    x = torch.randn(1, s, d)
    expected = 2 * s * d * 3 * d + 2 * s * s * d + 2 * s * s * d + 2 * s * d * d
    assert count_flops(lambda: attn(x, x, x, need_weights=False)) == expected
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards


def test_half_zeroed_weight_halves_nonzero_and_stays_dense():
    layer = nn.Linear(16, 10, bias=False)
    with torch.no_grad():
        layer.weight[:, :8] = 0
    counts = count_parameters(layer)
    assert counts.total == 160
    assert counts.nonzero == 80
    # float32: dense 160·4 = 640 B; CSR 80·(4 + 4) + 10·8 = 720 B is larger → dense kept.
    assert counts.dense_bytes == 640
    assert counts.stored_bytes == 640


def test_sparse_storage_chosen_only_when_smaller():
    weight = torch.ones(10, 16)
    weight[:, 4:] = 0  # 40 of 160 non-zero
    # dense 640 B; CSR 40·8 + 10·8 = 400 B → sparse.
    assert stored_bytes(weight) == 400
    # float16: dense 320 B; CSR 40·(2 + 4) + 80 = 320 B → a tie keeps dense, same size.
    assert stored_bytes(weight.half()) == 320
    # Vectors are always dense, however sparse.
    assert stored_bytes(torch.zeros(100)) == 400


class _LowRank(nn.Module):
    def __init__(self, d_in, d_out, rank):
        super().__init__()
        self.rank = rank
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out)


def test_factorised_counts_modules_with_a_rank():
    model = nn.Sequential(nn.Linear(8, 8), _LowRank(8, 6, rank=2))
    counts = count_parameters(model)
    assert counts.factorised == 8 * 2 + 2 * 6 + 6
    assert counts.total == 8 * 8 + 8 + counts.factorised


class FakeModel(VLModel):
    """Image: mean RGB → Linear(3, 5). Text: byte embeddings (width 4), mean → Linear(4, 3)."""

    family = "fake"

    def __init__(self, can_encode_text: bool = True):
        torch.manual_seed(0)
        module = nn.Module()
        module.image_proj = nn.Linear(3, 5)
        module.text_embed = nn.Embedding(256, 4)
        module.text_proj = nn.Linear(4, 3)
        super().__init__("fake-efficiency", module)
        self.can_encode_text = can_encode_text

    def tokenize(self, texts):
        if not self.can_encode_text:
            raise EvalError("this fake model has no text tower")
        ids = torch.zeros(len(texts), 16, dtype=torch.long)
        for row, text in enumerate(texts):
            data = list(text.encode())[:16]
            ids[row, :len(data)] = torch.tensor(data)
        return {"input_ids": ids}

    def preprocess(self, image):
        return torch.zeros(3, 6, 6)

    def encode_image(self, pixels):
        return self.module.image_proj(pixels.mean(dim=(2, 3)))

    def encode_text(self, tokens):
        return self.module.text_proj(self.module.text_embed(tokens["input_ids"]).mean(dim=1))

    def layers(self):
        return []

    def tower_of_param(self, name):
        return None


def test_measure_efficiency_on_a_fake_model():
    model = FakeModel()
    with torch.no_grad():
        model.module.image_proj.weight[:, :1] = 0  # 5 of the 15 weights
    report = measure_efficiency(model, repeats=3, warmup=1)
    assert isinstance(report, EfficiencyReport)
    total = 3 * 5 + 5 + 256 * 4 + 4 * 3 + 3
    assert report.total_parameters == total
    assert report.nonzero_parameters == total - 5
    assert report.dense_bytes == 4 * total
    assert report.image_flops == 2 * 3 * 5
    assert report.text_flops == 2 * 4 * 3
    assert report.image_shape == (3, 6, 6)
    assert report.text_tokens == 16
    assert report.image_latency_s > 0 and report.text_latency_s > 0
    assert report.latency_batch_size == 1
    assert report.memory_measure == "process_peak_rss_growth"
    assert report.peak_memory_bytes >= 0
    assert (report.device, report.dtype) == ("cpu", "float32")
    shown = report.as_dict()
    assert shown["image_shape"] == [3, 6, 6]
    assert shown["sparsity"] == pytest.approx(5 / total)


def test_image_size_overrides_the_probe_shape():
    report = measure_efficiency(FakeModel(), image_size=9, repeats=1, warmup=0, batch_size=2)
    assert report.image_shape == (3, 9, 9)
    assert report.image_flops == 2 * 3 * 5  # FLOPs stay per single image
    assert report.latency_batch_size == 2


def test_a_model_without_text_reports_none():
    report = measure_efficiency(FakeModel(can_encode_text=False), repeats=1, warmup=0)
    assert report.text_flops is None and report.text_latency_s is None and report.text_tokens is None
    assert report.image_flops == 2 * 3 * 5


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"batch_size": 0}, {"image_size": 0},
                                    {"text_len": 0}])
def test_bad_settings_name_the_problem(kwargs):
    with pytest.raises(EvalError):
        measure_efficiency(FakeModel(), **kwargs)
