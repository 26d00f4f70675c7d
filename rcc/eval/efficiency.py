"""What a model costs: parameters, bytes as stored, FLOPs, latency and peak memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from rcc.errors import EvalError
from rcc.models.adapter import VLModel

INDEX_BYTES = 4  # a CSR column index (int32)
ROW_POINTER_BYTES = 8  # a CSR row pointer (int64)
_PROBE_WORDS = "a photo of a small dog sitting on the green grass next to a red ball".split()


@dataclass(frozen=True)
class ParameterCount:
    """Parameter totals and their storage cost (dense vs. sparse-where-smaller)."""

    total: int
    nonzero: int
    factorised: int
    dense_bytes: int
    stored_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EfficiencyReport:
    """Size, compute and speed of one model on one device. Text fields are None for caption-only models.

    ``*_latency_s`` is the median wall time of one encode call on a batch of
    ``latency_batch_size`` samples. ``peak_memory_bytes`` is ``torch.cuda.max_memory_allocated``
    on CUDA, and on CPU the growth of the process's peak RSS (``ru_maxrss``) across the
    measurement — 0 when the process had already peaked higher before.
    """

    total_parameters: int
    nonzero_parameters: int
    factorised_parameters: int
    dense_bytes: int
    stored_bytes: int
    image_flops: int | None
    text_flops: int | None
    image_latency_s: float | None
    text_latency_s: float | None
    latency_batch_size: int
    peak_memory_bytes: int
    memory_measure: str
    image_shape: tuple[int, ...] | None
    text_tokens: int | None
    device: str
    dtype: str

    @property
    def sparsity(self) -> float:
        """Fraction of parameters that are exactly zero."""
        return 1.0 - self.nonzero_parameters / self.total_parameters if self.total_parameters else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["image_shape"] = list(self.image_shape) if self.image_shape is not None else None
        out["sparsity"] = self.sparsity
        return out


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes to store one tensor: min(dense, CSR) for matrices, dense otherwise.

    dense = numel · elem;  CSR = nnz · (elem + 4) + rows · 8, rows = shape[0] (≥3-D flattened).
    """
    elem = tensor.element_size()
    dense = tensor.numel() * elem
    if tensor.ndim < 2:
        return dense
    nnz = int(torch.count_nonzero(tensor.detach()))
    csr = nnz * (elem + INDEX_BYTES) + tensor.shape[0] * ROW_POINTER_BYTES
    return min(dense, csr)


def count_parameters(module: nn.Module) -> ParameterCount:
    """Totals over the weights: ``module.parameters()`` (shared ones counted once) and the int8 values
    and scales of int8 layers, which are buffers (``rcc.models.stored_weights``).

    ``factorised`` sums the parameters of modules exposing an integer ``rank`` (low-rank layers).
    """
    from rcc.models.stored_weights import stored_tensors

    total = nonzero = dense = stored = 0
    for param in stored_tensors(module):
        total += param.numel()
        nonzero += int(torch.count_nonzero(param.detach()))
        dense += param.numel() * param.element_size()
        stored += stored_bytes(param)
    factorised_ids: set[int] = set()
    factorised = 0
    for sub in module.modules():
        if not isinstance(getattr(sub, "rank", None), int):
            continue
        for param in sub.parameters():
            if id(param) not in factorised_ids:
                factorised_ids.add(id(param))
                factorised += param.numel()
    return ParameterCount(total=total, nonzero=nonzero, factorised=factorised, dense_bytes=dense, stored_bytes=stored)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call, counted by ``FlopCounterMode`` (matmuls, convolutions, attention; 2 per MAC).

    Fused attention kernels the counter cannot see (PyTorch's CPU flash attention, the
    ``nn.MultiheadAttention`` fast path) are switched off while counting, so attention is
    counted through its matmuls.
    """
    counter = FlopCounterMode(display=False)
    with _countable_attention(), torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def measure_efficiency(
    model: VLModel,
    image_size: int | None = None,
    text_len: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    batch_size: int = 1,
) -> EfficiencyReport:
    """Parameters, stored bytes, FLOPs per image/text (batch 1), median latency and peak memory.

    The image probe is zeros shaped like ``model.preprocess`` of a blank image (or
    ``image_size``² pixels); the text probe is ``text_len`` words (default 8) through ``model.tokenize``.
    """
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise EvalError(
            f"need repeats >= 1, warmup >= 0, batch_size >= 1; got repeats={repeats}, warmup={warmup}, "
            f"batch_size={batch_size}"
        )
    if image_size is not None and image_size < 1:
        raise EvalError(f"image_size must be a positive number of pixels, got {image_size}")
    if text_len is not None and text_len < 1:
        raise EvalError(f"text_len must be a positive number of words, got {text_len}")

    device, dtype = model.device, model.dtype
    params = count_parameters(model.module)

    pixel_shape = _image_shape(model, image_size)
    tokens = _probe_tokens(model, text_len or 8, batch_size)
    text_tokens = int(tokens["input_ids"].shape[-1]) if tokens is not None else None

    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _peak_rss_bytes()

    image_flops = text_flops = None
    image_latency = text_latency = None
    if pixel_shape is not None:
        one = torch.zeros((1, *pixel_shape), device=device, dtype=dtype)
        batch = torch.zeros((batch_size, *pixel_shape), device=device, dtype=dtype)
        image_flops = count_flops(lambda: model.encode_image(one))
        image_latency = _median_latency(lambda: model.encode_image(batch), repeats, warmup, device)
    if tokens is not None:
        first = {k: v[:1] for k, v in tokens.items()}
        text_flops = count_flops(lambda: model.encode_text(first))
        text_latency = _median_latency(lambda: model.encode_text(tokens), repeats, warmup, device)

    if on_cuda:
        peak, measure = int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    else:
        peak, measure = max(0, _peak_rss_bytes() - rss_before), "process_peak_rss_growth"

    return EfficiencyReport(
        total_parameters=params.total,
        nonzero_parameters=params.nonzero,
        factorised_parameters=params.factorised,
        dense_bytes=params.dense_bytes,
        stored_bytes=params.stored_bytes,
        image_flops=image_flops,
        text_flops=text_flops,
        image_latency_s=image_latency,
        text_latency_s=text_latency,
        latency_batch_size=batch_size,
        peak_memory_bytes=peak,
        memory_measure=measure,
        image_shape=pixel_shape,
        text_tokens=text_tokens,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
    )


def _image_shape(model: VLModel, image_size: int | None) -> tuple[int, ...] | None:
    """(C, H, W) of the model's preprocessed input; None if the model has no image input."""
    try:
        shape = tuple(model.preprocess(Image.new("RGB", (224, 224))).shape)
    except (EvalError, NotImplementedError):
        return None
    if image_size is not None:
        shape = (shape[0], image_size, image_size)
    return shape


def _probe_tokens(model: VLModel, words: int, batch_size: int) -> dict[str, torch.Tensor] | None:
    """A batch of identical ``words``-word texts on the model's device; None if it cannot encode text."""
    text = " ".join(_PROBE_WORDS[i % len(_PROBE_WORDS)] for i in range(words))
    try:
        tokens = model.tokens_to_device(model.tokenize([text] * batch_size))
        with torch.no_grad():
            model.encode_text({k: v[:1] for k, v in tokens.items()})
    except (EvalError, NotImplementedError):
        return None
    return tokens


def _median_latency(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` timed runs after ``warmup`` untimed ones."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_bytes() -> int:
    """The process's peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


@contextmanager
def _countable_attention():
    """Route attention through plain matmuls so ``FlopCounterMode`` sees every FLOP."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
