"""Attention maps of the vision tower, for attention transfer in recovery training.

Handled: OpenCLIP-style ViTs, whose blocks ``visual.transformer.resblocks.<i>.attn`` are a dense
``nn.MultiheadAttention`` (fused ``in_proj_weight``, q / k / v of one width) or, once compressed,
rcc's ``SplitAttention`` (q, k, v as separate Linears, possibly masked or low-rank). Neither hands
its maps back as open_clip calls it (``need_weights=False``; ``SplitAttention`` runs
``scaled_dot_product_attention``, which never forms them), so a forward pre-hook recomputes

    A = mean over heads of softmax(q kᵀ / √d_head + mask)        (batch, tokens, tokens)

from the block's own input with the module's own q and k projections (masked weights, low-rank
factors and all). The maps are part of the autograd graph: a loss on them trains the student's
q / k weights and everything below them. Averaging over heads keeps the maps (and the teacher's
stored copies) one tokens² matrix per image and block.

Not handled (``attention_blocks`` returns [] and attention transfer is refused): Hugging Face
CLIP / BLIP vision towers, ResNet or timm vision towers, and every text tower (OpenCLIP's own,
or an HF BERT / MiniLM one such as rcc-mini's).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from rcc.compression.layers import SplitAttention, _additive_mask
from rcc.errors import RccError

BLOCK_PATTERN = re.compile(r"visual\.transformer\.resblocks\.\d+\.attn")


def _supported(attn: nn.Module) -> bool:
    if isinstance(attn, SplitAttention):
        return True
    return (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None
            and not attn.add_zero_attn)


def attention_blocks(module: nn.Module) -> list[str]:
    """Paths of the vision-tower self-attention modules whose maps can be captured, in order.

    Empty for architectures this module does not handle (see the module docstring).
    """
    return [path for path, child in module.named_modules() if BLOCK_PATTERN.fullmatch(path) and _supported(child)]


def require_attention_blocks(module: nn.Module, weight: float) -> list[str]:
    """``attention_blocks(module)``; a one-line RccError if ``weight`` > 0 and there are none."""
    blocks = attention_blocks(module)
    if weight > 0 and not blocks:
        raise RccError(f"attention_weight={weight} is invalid for this model: its vision tower has no attention "
                       f"blocks rcc can read maps from; allowed: 0 (attention transfer covers OpenCLIP ViTs, "
                       f"visual.transformer.resblocks.*.attn, dense or split)")
    return blocks


def _project(attn: nn.Module, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k as the module computes them (its own, possibly masked or factorised, projections)."""
    if isinstance(attn, SplitAttention):
        return attn.in_proj["q"](query), attn.in_proj["k"](key)
    width, weight, bias = attn.embed_dim, attn.in_proj_weight, attn.in_proj_bias
    return (F.linear(query, weight[:width], None if bias is None else bias[:width]),
            F.linear(key, weight[width:2 * width], None if bias is None else bias[width:2 * width]))


def attention_map(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None = None,
                  key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    """Head-averaged softmax(q kᵀ / √d_head + mask) of ``attn`` on these inputs: (batch, L, S), float32.

    Takes the inputs as the module's ``forward`` does (batch first or not, nn.MultiheadAttention's
    masks); equals ``nn.MultiheadAttention``'s ``need_weights=True, average_attn_weights=True``
    output, without attention dropout.
    """
    if not _supported(attn):
        raise TypeError(f"cannot read attention maps of a {type(attn).__name__}")
    if query.dim() == 2:  # unbatched (L, E)
        query, key = query.unsqueeze(0), key.unsqueeze(0)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    elif not attn.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    q, k = _project(attn, query, key)
    batch, length, width = q.shape
    heads = attn.num_heads
    head_dim = width // heads
    # Scores and softmax in float32 even under autocast: the maps are compared, not just used.
    with torch.autocast(query.device.type, enabled=False):
        q = q.float().view(batch, length, heads, head_dim).transpose(1, 2)
        k = k.float().view(batch, -1, heads, head_dim).transpose(1, 2)
        scores = (q / math.sqrt(head_dim)) @ k.transpose(-2, -1)
        mask = _additive_mask(attn_mask, key_padding_mask, torch.float32, batch, heads)
        if mask is None and is_causal:
            mask = torch.full(scores.shape[-2:], float("-inf"), device=scores.device).triu(1)
        if mask is not None:
            scores = scores + mask
        return scores.softmax(-1).mean(1)


@contextmanager
def capture_attention(module: nn.Module, blocks: Iterable[str] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, every forward through ``blocks`` (default: ``attention_blocks(module)``)
    stores that block's map (``attention_map``) under its path in the dict yielded; a later
    forward overwrites it. The hooks leave the module's outputs untouched and are removed on exit.
    """
    maps: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for path in (attention_blocks(module) if blocks is None else list(blocks)):
            attn = module.get_submodule(path)
            if not _supported(attn):
                raise TypeError(f"{path!r} is a {type(attn).__name__}; attention maps need an "
                                f"nn.MultiheadAttention (one width for q, k, v) or a SplitAttention")
            signature = inspect.signature(attn.forward)

            def hook(mod, args, kwargs, path=path, signature=signature):
                given = signature.bind(*args, **kwargs).arguments
                maps[path] = attention_map(mod, given["query"], given["key"], given.get("attn_mask"),
                                           given.get("key_padding_mask"), bool(given.get("is_causal", False)))

            handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def attention_transfer_loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the blocks both hold of the row-wise KL(teacher ‖ student) between their maps.

    Each row of a head-averaged map is a probability distribution over the keys, so the
    divergence between distributions is the natural comparison: it is zero only for equal rows,
    weighs an error by the teacher's mass there, and does not shrink with the token count as an
    entry-wise MSE does (entries are ~1/tokens: MSE would be ~1e-5 for ViT-B/16 and need a huge
    weight). Per block: Σ_key p (log p − log q), averaged over images and query rows. Teacher
    rows (stored in float16) are renormalised to sum to one first.
    """
    names = [name for name in student if name in teacher]
    if not names:
        raise RccError("no attention block is shared by the student's and the teacher's maps; allowed: maps "
                       "captured from models of one architecture")
    total = None
    for name in names:
        q = student[name].float()
        p = teacher[name].to(device=q.device, dtype=torch.float32)
        p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
        # log q stays finite (q underflowing to 0 where p > 0 gives a large, not infinite, loss);
        # where p = 0 the term is 0 and log q gets no gradient.
        log_q = q.clamp_min(1e-30).log().masked_fill(p == 0, 0.0)
        kl = (torch.xlogy(p, p) - p * log_q).sum(-1).mean()
        total = kl if total is None else total + kl
    return total / len(names)
