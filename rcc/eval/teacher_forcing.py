"""Teacher forcing: a captioner's next-token predictions along given captions.

A caption c = (bos, w₁ … w_n, sep) is run through the decoder attending to the image's token
states; position j's logits predict token j + 1, so the predictions that matter are

    logits[:, :-1]  against  targets = ids[:, 1:],  where  mask = attention_mask[:, 1:]

(what transformers' BLIP loss shifts, ``BlipTextLMHeadModel``). Recovery training distils these
distributions; caption probes compare them between a model and its compressed copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rcc.models.adapter import VLModel


@dataclass(frozen=True)
class NextTokenLogits:
    """Logits (B, L, V) at the positions that predict a caption token, the targets (B, L) and mask (B, L)."""

    logits: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def next_token_logits(model: VLModel, states: torch.Tensor, captions: Sequence[str]) -> NextTokenLogits:
    """Teacher-forced logits of ``captions[i]`` given image states ``states[i]`` (gradients flow)."""
    tokens = model.tokens_to_device(model.trim_text_padding(model.grounded_tokens(captions)))
    logits = model.ground_text(states, tokens)
    mask = tokens["attention_mask"][:, 1:].bool() if "attention_mask" in tokens \
        else torch.ones_like(tokens["input_ids"][:, 1:], dtype=torch.bool)
    return NextTokenLogits(logits[:, :-1], tokens["input_ids"][:, 1:], mask)


def binned_log_probs(log_probs: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """log p over the token ids ``bins`` plus one bin for every other id (when any is left).

    A coarsening of the distribution: KL between two coarsened distributions is at most the KL
    between the full ones, and it keeps a probe's memory at (rows × |bins|) for a vocabulary of
    tens of thousands.
    """
    kept = log_probs[:, bins]
    if len(bins) == log_probs.shape[-1]:
        return kept
    rest = torch.ones(log_probs.shape[-1], dtype=torch.bool, device=log_probs.device)
    rest[bins] = False
    return torch.cat([kept, torch.logsumexp(log_probs[:, rest], dim=-1, keepdim=True)], dim=-1)
