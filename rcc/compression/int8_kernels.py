"""Where an int8 layer really runs: y = (diag(s) Q) x + b with x quantised on the fly.

- **CPU**: ``torch.ops.quantized.linear_dynamic`` (the x86 / fbgemm kernels behind
  ``torch.ao.quantization.quantize_dynamic``), on weights packed once from Q and s (per-channel,
  zero points 0) and cached until Q, s or b change. The activation is quantised per tensor
  (asymmetric uint8), the full 8-bit range on CPUs with VNNI, 7 bits on others (``reduce_range``:
  fbgemm's AVX2 kernel saturates 16-bit sums of u8·s8 pairs otherwise).
- **CUDA**: torchao's ``Int8Tensor`` (per-row int8 weight, per-token dynamic int8 activation,
  cuBLAS int8 matmul), built from the same Q and s without re-quantising; torchao is the
  optional ``rcc-tui[cuda]`` extra, and without it CUDA runs the simulated form below.
- **Training / autograd**: the dequantised weight diag(s) Q in float, with the activation
  fake-quantised as the device's kernel would (straight-through gradient): quantised layers are
  frozen (their int8 values never change), the layers around them learn to live with them.
- **torch.export** (the ONNX export): one custom op, ``rcc::int8_linear``, which
  ``rcc.exports.onnx_export`` translates to DynamicQuantizeLinear → MatMulInteger → scales.

Why torch's dynamic Linear and not torchao on CPU (measured on rcc-mini's MiniLM text tower,
``encode_text`` at batch 32, 2 threads, text fidelity on the held-out docstring sentences as
bench.quality computes it; torch 2.14.1, torchao 0.18, a shared 2-core Sapphire Rapids):
torchao's ``Int8DynamicActivationInt8WeightConfig`` keeps the closest embeddings (mean cosine
0.998, per-token activations) but runs 3–5× *slower* than fp32 in eager mode, because its CPU
path is ``torch._int_mm``, written for Inductor to fuse (``_int_mm`` alone: 73–83 ms against
41–53 ms for the fp32 matmul of the same 960 × 384 × 1536 product). ``quantize_dynamic``'s
kernel runs 1.3–3× faster than fp32 on the same batch; with per-channel weights it keeps mean
cosine 0.976 at 7-bit activations and 0.994 (one Linear with an outlier channel) at 8 bits. So
eager CPU inference uses the fbgemm kernel; torchao is used where its kernels are fast (CUDA).
torch marks its quantised tensors deprecated: when ``torch.ops.quantized`` is gone the CPU path
falls back to the simulated one (same numbers within rounding, float speed).
"""

from __future__ import annotations

import importlib
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

_QUINT8_MAX = 255


@lru_cache(maxsize=1)
def cpu_reduce_range() -> bool:
    """7-bit activations on CPUs without VNNI (fbgemm's AVX2 u8·s8 pair sums saturate at 16 bits)."""
    probe = getattr(torch._C._cpu, "_is_vnni_supported", None) or getattr(torch.cpu, "_is_vnni_supported", None)
    return not (probe() if probe is not None else False)


@lru_cache(maxsize=1)
def cpu_kernel_available() -> bool:
    return hasattr(torch.ops, "quantized") and hasattr(torch.ops.quantized, "linear_dynamic")


@lru_cache(maxsize=1)
def torchao_available() -> bool:
    try:
        return hasattr(importlib.import_module("torchao.quantization"), "Int8Tensor")
    except Exception:  # noqa: BLE001 - any import failure (missing, ABI mismatch) means: not usable
        return False


def _versions(*tensors: torch.Tensor | None) -> tuple:
    return tuple(None if t is None else (t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)


class KernelCache:
    """Packed weights per device, rebuilt when the int8 values, scales or bias change (in-place writes too)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tuple, object]] = {}

    def get(self, name: str, key: tuple, build):
        entry = self.entries.get(name)
        if entry is None or entry[0] != key:
            entry = (key, build())
            self.entries[name] = entry
        return entry[1]

    def clear(self) -> None:
        self.entries.clear()


def _pack_cpu(values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    with warnings.catch_warnings():  # torch deprecates quantised tensors; the kernel is what we want
        warnings.simplefilter("ignore")
        weight = torch._make_per_channel_quantized_tensor(
            values.contiguous(), scale.detach().double().contiguous(),
            torch.zeros(values.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(weight, None if bias is None else bias.detach().float())


def _torchao_weight(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
    from torchao.quantization import Int8Tensor
    from torchao.quantization.granularity import PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

    return Int8Tensor(values.contiguous(), scale.detach().to(dtype).reshape(-1, 1), [1, values.shape[1]], dtype,
                      act_quant_kwargs=QuantizeTensorToInt8Kwargs(granularity=PerRow()))


def fake_quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """x quantised and dequantised as the device's kernel does it, with a straight-through gradient.

    CPU: one asymmetric uint8 scale for the whole tensor (the range includes 0, 7 bits without
    VNNI); CUDA: one symmetric int8 scale per token (row).
    """
    detached = x.detach().float()
    if x.device.type == "cuda":
        scale = (detached.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(1e-12)
        quantised = torch.clamp(torch.round(detached / scale), -127, 127) * scale
    else:
        top = _QUINT8_MAX // 2 if cpu_reduce_range() else _QUINT8_MAX
        low, high = min(float(detached.min()), 0.0), max(float(detached.max()), 0.0)
        scale = (high - low) / top if high > low else 1.0
        zero = min(max(round(-low / scale), 0), top)
        quantised = (torch.clamp(torch.round(detached / scale) + zero, 0, top) - zero) * scale
    return x + (quantised.to(x.dtype) - x).detach()


def _simulated(x: torch.Tensor, values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    weight = values.to(x.dtype) * scale.to(x.dtype)[:, None]
    return F.linear(fake_quantize_activation(x), weight, None if bias is None else bias.to(x.dtype))


@torch.library.custom_op("rcc::int8_linear", mutates_args=())
def exported_int8_linear(x: torch.Tensor, values: torch.Tensor, scale: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """The int8 Linear as one opaque op for torch.export (eager: the simulated kernel)."""
    return _simulated(x, values, scale, bias)


@exported_int8_linear.register_fake
def _(x, values, scale, bias):
    return x.new_empty((*x.shape[:-1], values.shape[0]))


def int8_linear(x: torch.Tensor, values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                cache: KernelCache, name: str, differentiable: bool) -> torch.Tensor:
    """y = x (diag(s) Q)ᵀ + b on the fastest kernel for x's device; see the module docstring."""
    if torch.compiler.is_exporting():
        return exported_int8_linear(x, values, scale, bias)
    if not differentiable:
        if x.device.type == "cpu" and cpu_kernel_available():
            packed = cache.get(name, ("cpu", torch.backends.quantized.engine, *_versions(values, scale, bias)),
                               lambda: _pack_cpu(values, scale, bias))
            out = torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, cpu_reduce_range())
            return out.to(x.dtype)
        if x.device.type == "cuda" and torchao_available():
            weight = cache.get(name, ("cuda", x.dtype, *_versions(values, scale)),
                               lambda: _torchao_weight(values, scale, x.dtype))
            return F.linear(x, weight, None if bias is None else bias.to(x.dtype))
    return _simulated(x, values, scale, bias)
