"""2:4 sparsity that runs faster: semi-structured sparse weights on CUDA in fp16 / bf16.

A Linear pruned with the N:M pattern 2:4 keeps 2 of every 4 consecutive inputs. On CUDA
(compute capability ≥ 8.0) in fp16 or bf16, ``torch.sparse.to_sparse_semi_structured`` stores
such a weight as its kept values plus 2-bit indices and ``F.linear`` runs it on the sparse
tensor cores (cuSPARSELt / CUTLASS). Everywhere else (CPU, float32, shapes or GPUs the
backend refuses) the layer keeps its dense masked weight: the mask is the model's truth,
the semi-structured weight only a faster way to apply it.

The live session model stays float32 with masks (compression stages and training edit
weights in place); ``inference_copy`` makes the fp16 / bf16 copy that runs the kernels, and
``rcc.load_compressed(DIR, device="cuda", dtype=torch.float16)`` installs them on load (the
compressed export lists the 2:4 layers in its manifest).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rcc.compression.dare import is_nm_mask, to_semi_structured
from rcc.compression.layers import MASK

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def two_four_paths(module: nn.Module) -> list[str]:
    """Paths of the float Linears whose keep-mask is 2:4 along the input (the layers a kernel can take)."""
    return [path for path, child in module.named_modules()
            if isinstance(child, nn.Linear) and MASK in child._buffers
            and is_nm_mask(child._buffers[MASK], 2, 4)]


@torch.no_grad()
def install_semi_structured(module: nn.Module, paths: list[str] | None = None) -> list[str]:
    """Replace the weights of 2:4 Linears by semi-structured sparse tensors; returns the paths done.

    Nothing happens on CPU or in float32 (``to_semi_structured`` returns None there); the masks stay.
    """
    done = []
    for path in two_four_paths(module) if paths is None else paths:
        linear = module.get_submodule(path)
        sparse = to_semi_structured(linear.weight.detach(), linear._buffers[MASK])
        if sparse is None:
            continue
        linear.weight = nn.Parameter(sparse, requires_grad=False)
        done.append(path)
    return done


def inference_copy(model, precision: str = "fp16"):
    """A copy of ``model`` in fp16 / bf16 on its device, 2:4 layers as semi-structured weights on CUDA.

    Returns (copy, paths made semi-structured). Int8 layers keep their int8 values (torchao runs
    them with activations in the copy's precision).
    """
    from rcc.errors import RccError

    if precision not in HALF:
        raise RccError(f"inference precision {precision!r} is not supported; allowed: {', '.join(HALF)}")
    clone = copy.copy(model)
    clone.module = copy.deepcopy(model.module).to(dtype=HALF[precision]).eval()
    return clone, install_semi_structured(clone.module)
