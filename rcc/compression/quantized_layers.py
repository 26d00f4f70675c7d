"""The int8 forms of a layer: the values a deployment stores, and a forward that runs on them.

- ``QuantizedLinear`` (from an ``nn.Linear``): buffers ``weight`` (int8, out × in) and
  ``weight_scale`` (out), y = (diag(s) Q)(x ⊙ t) + b;
- ``QuantizedLowRankLinear`` (from a ``LowRankLinear``): both factors in int8 with per-row
  scales, y = (diag(s_up) Q_up)((diag(s_down) Q_down)(x ⊙ t)) + b;
- ``QuantizedEmbedding`` (from an ``nn.Embedding``, the quant stage's ``quant_embeddings``):
  int8 rows with per-row scales, looked up and rescaled (weight-only).

t is the optional ``input_scale`` (SmoothQuant's 1/σ, ``rcc.compression.int8``). A pruned
layer keeps its masks (``weight_mask``; ``up_mask`` / ``down_mask``) on the int8 values, so
the structure, the sizes and the compressed export still see the sparsity; the pruned values
are 0 in Q. The names follow compressed-tensors (``weight`` holds the int8 values, next to
``weight_scale``). Int8 values are buffers, never parameters: an optimiser cannot touch them,
and the float bias is frozen by recovery training (``quantized_parameter_names``).
The forward runs ``rcc.compression.int8_kernels.int8_linear``.
"""

from __future__ import annotations

import torch
from torch import nn

from rcc.compression.factor_shapes import FactorShapes
from rcc.compression.int8 import Int8Weight
from rcc.compression.int8_kernels import KernelCache, int8_linear

INT8_BITS = 8


class _Int8Module(nn.Module):
    """What both int8 forms share: the kernel cache (never copied or saved), the optional input scale."""

    def __init__(self) -> None:
        super().__init__()
        self._kernels = KernelCache()

    def __getstate__(self):  # deepcopy / pickle: packed kernel weights are rebuilt, never copied
        state = self.__dict__.copy()
        state["_kernels"] = KernelCache()
        return state

    def _differentiable(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (self.training or x.requires_grad)

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        input_scale = self._buffers.get("input_scale")
        return x if input_scale is None else x * input_scale.to(x.dtype)

    @property
    def smoothed(self) -> bool:
        return self._buffers.get("input_scale") is not None

    @property
    def bits(self) -> int:
        return INT8_BITS

    def int8_weights(self) -> dict[str, Int8Weight]:
        """Name → int8 values and scales of every quantised matrix in this layer."""
        return {"weight": Int8Weight(self.weight, self.weight_scale)}

    def stored_buffers(self) -> list[torch.Tensor]:
        """The buffers that are weights (int8 values, scales, input scale), not masks: ``rcc.models.stored_weights``."""
        return [buffer for name, buffer in self._buffers.items() if buffer is not None and not name.endswith("_mask")]

    def stored_bytes(self) -> int:
        """Bytes the compressed export writes for this layer's weights: one per kept int8 value, the
        float32 scales (and SmoothQuant's input scale), masks packed 8 per byte; the bias is not counted,
        as for float layers (``rcc.compression.layers.stored_bytes``)."""
        total = 0
        for name, weight in self.int8_weights().items():
            mask = self._buffers.get(f"{name}_mask")
            kept = weight.values.numel() if mask is None else int(mask.sum())
            total += kept * weight.values.element_size() + weight.scale.numel() * weight.scale.element_size()
            total += 0 if mask is None else (mask.numel() + 7) // 8
        input_scale = self._buffers.get("input_scale")
        return total + (0 if input_scale is None else input_scale.numel() * input_scale.element_size())

    @property
    def int8_original_dtype(self) -> torch.dtype:
        """The float dtype around this layer (OpenCLIP reads it to choose its cast dtype, as for bitsandbytes)."""
        bias = self._parameters.get("bias")
        return bias.dtype if bias is not None else next(t for n, t in self._buffers.items() if n.endswith("scale")).dtype

    def _set_input_scale(self, input_scale: torch.Tensor | None, in_features: int, device) -> None:
        if input_scale is not None:
            self.register_buffer("input_scale", input_scale.detach().float().to(device).reshape(in_features).clone())


class QuantizedLinear(_Int8Module):
    """An ``nn.Linear`` stored as int8 values Q with per-output-channel scales s."""

    def __init__(self, values: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        if values.dtype != torch.int8 or values.dim() != 2 or scale.shape != (values.shape[0],):
            raise ValueError(f"int8 values {tuple(values.shape)} {values.dtype} and scales {tuple(scale.shape)} "
                             f"do not make a quantised Linear")
        self.register_buffer("weight", values.detach().clone())
        self.register_buffer("weight_scale", scale.detach().float().to(values.device).clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self._set_input_scale(input_scale, values.shape[1], values.device)

    @classmethod
    def empty_like(cls, linear: nn.Linear, smoothed: bool = False) -> QuantizedLinear:
        """A zero layer of ``linear``'s shape, device and bias (values come from a state dict)."""
        device = linear.weight.device
        out_f, in_f = linear.weight.shape
        return cls(torch.zeros(out_f, in_f, dtype=torch.int8, device=device), torch.ones(out_f, device=device),
                   None if linear.bias is None else linear.bias.detach(),
                   torch.ones(in_f, device=device) if smoothed else None)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def dense_weight(self) -> torch.Tensor:
        """diag(s) Q diag(t): the float matrix this layer applies (a new tensor)."""
        weight = self.weight.float() * self.weight_scale.float()[:, None]
        input_scale = self._buffers.get("input_scale")
        dtype = self.bias.dtype if self.bias is not None else self.weight_scale.dtype
        return (weight if input_scale is None else weight * input_scale.float()[None, :]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(self._scaled(x), self.weight, self.weight_scale, self.bias, self._kernels, "weight",
                           self._differentiable(x))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, int8, bias={self.bias is not None}, "
                f"smoothed={self.smoothed}")


class QuantizedLowRankLinear(FactorShapes, _Int8Module):
    """A ``LowRankLinear`` (up @ down) whose two factors are int8 with per-row scales."""

    def __init__(self, up: Int8Weight, down: Int8Weight, bias: torch.Tensor | None = None,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        if up.values.shape[1] != down.values.shape[0]:
            raise ValueError(f"factor shapes {tuple(up.values.shape)} and {tuple(down.values.shape)} do not chain")
        self.register_buffer("up", up.values.detach().clone())
        self.register_buffer("up_scale", up.scale.detach().float().to(up.values.device).clone())
        self.register_buffer("down", down.values.detach().clone())
        self.register_buffer("down_scale", down.scale.detach().float().to(down.values.device).clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self._set_input_scale(input_scale, down.values.shape[1], down.values.device)

    @classmethod
    def empty_like(cls, low_rank: nn.Module, smoothed: bool = False) -> QuantizedLowRankLinear:
        """A zero layer of a ``LowRankLinear``'s shapes, device and bias."""
        device = low_rank.up.device
        (out_f, rank), in_f = low_rank.up.shape, low_rank.down.shape[1]
        zeros = lambda rows, cols: Int8Weight(torch.zeros(rows, cols, dtype=torch.int8, device=device),  # noqa: E731
                                              torch.ones(rows, device=device))
        return cls(zeros(out_f, rank), zeros(rank, in_f), None if low_rank.bias is None else low_rank.bias.detach(),
                   torch.ones(in_f, device=device) if smoothed else None)

    def int8_weights(self) -> dict[str, Int8Weight]:
        return {"up": Int8Weight(self.up, self.up_scale), "down": Int8Weight(self.down, self.down_scale)}

    def dense_weight(self) -> torch.Tensor:
        """(diag(s_up) Q_up)(diag(s_down) Q_down) diag(t): the float matrix this layer applies."""
        up = self.up.float() * self.up_scale.float()[:, None]
        down = self.down.float() * self.down_scale.float()[:, None]
        input_scale = self._buffers.get("input_scale")
        if input_scale is not None:
            down = down * input_scale.float()[None, :]
        dtype = self.bias.dtype if self.bias is not None else self.up_scale.dtype
        return (up @ down).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        differentiable = self._differentiable(x)
        hidden = int8_linear(self._scaled(x), self.down, self.down_scale, None, self._kernels, "down", differentiable)
        return int8_linear(hidden, self.up, self.up_scale, self.bias, self._kernels, "up", differentiable)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, int8, "
                f"bias={self.bias is not None}, smoothed={self.smoothed}")


class QuantizedEmbedding(_Int8Module):
    """A token-embedding table stored as int8 rows with one scale per row: e_i = s_i Q_i (weight-only).

    Looking rows up needs no activation quantisation, so the error is the rows' rounding alone.
    """

    def __init__(self, values: torch.Tensor, scale: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("weight", values.detach().clone())
        self.register_buffer("weight_scale", scale.detach().float().to(values.device).clone())
        self.padding_idx = padding_idx

    @classmethod
    def empty_like(cls, embedding: nn.Embedding, smoothed: bool = False) -> QuantizedEmbedding:
        rows, width = embedding.weight.shape
        device = embedding.weight.device
        return cls(torch.zeros(rows, width, dtype=torch.int8, device=device), torch.ones(rows, device=device),
                   embedding.padding_idx)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def dense_weight(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale.float()[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(ids, self.weight)
        return rows.to(self.weight_scale.dtype) * torch.nn.functional.embedding(ids, self.weight_scale[:, None])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


QUANTIZED_FORMS = (QuantizedLinear, QuantizedLowRankLinear, QuantizedEmbedding)
LAYER_FORMS = (QuantizedLinear, QuantizedLowRankLinear)  # what an inventory layer can become


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, QUANTIZED_FORMS)


def quantized_tensor_names(module: nn.Module) -> set[str]:
    """State-dict keys of int8 values and their scales (and input scales) in ``module``."""
    names = set()
    for path, child in module.named_modules():
        if is_quantized(child):
            prefix = f"{path}." if path else ""
            for leaf in child.int8_weights():
                names.update({prefix + leaf, f"{prefix}{leaf}_scale"})
            if child.smoothed:
                names.add(prefix + "input_scale")
    return names


def quantized_parameter_names(module: nn.Module) -> set[str]:
    """Float parameters of int8 layers (their biases): frozen in recovery training with the int8 values."""
    names = set()
    for path, child in module.named_modules():
        if is_quantized(child):
            names.update(f"{path}.{name}" if path else name for name, _ in child.named_parameters())
    return names
