"""Recovery terms on image-grounded text (BLIP): what the embedding terms cannot reach.

A BLIP captioner has no text embedding, and a BLIP retriever's fusion layers (cross-attention)
do not take part in its embeddings. Both are distilled from the teacher's own predictive
distributions on the batch's images and their captions, with the teacher run alongside the
student (its next-token distributions over a whole vocabulary are too large to precompute):

    next tokens (captioners)   T² · mean over caption tokens j of KL(softmax(z_t,j / T) ‖ softmax(z_s,j / T))
                               z: teacher-forced logits along the caption (``rcc.eval.teacher_forcing``)
    ITM (retrieval with ITM)   T² · mean over pairs of KL(softmax(m_t / T) ‖ softmax(m_s / T))
                               m: (no match, match) logits of each image with its own caption and
                               with the next image's caption in the batch (a negative)

Both are weighted by ``kl_weight`` (the KL to the teacher's predictions, whatever the model predicts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rcc.eval.teacher_forcing import next_token_logits
from rcc.models.adapter import VLModel


def uses_grounded_terms(model: VLModel) -> bool:
    """Whether recovery training distils this model's grounded text (a caption decoder or an ITM head)."""
    return model.grounds_text and (model.can_caption or model.can_match)


def kl_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)) of each row (…, classes) → (…,)."""
    t = temperature
    log_q = F.log_softmax(student.float() / t, dim=-1)
    log_p = F.log_softmax(teacher.float() / t, dim=-1)
    return t * t * (log_p.exp() * (log_p - log_q)).sum(-1)


def grounded_kl(student: VLModel, teacher: VLModel, student_states: torch.Tensor, pixels: torch.Tensor,
                captions: Sequence[str], temperature: float) -> torch.Tensor:
    """The next-token KL (captioners) or the ITM KL (retrieval with ITM) of one batch.

    ``student_states``: the student's image states of ``pixels`` (computed once by the caller,
    which also takes its image embeddings from them); ``captions[i]`` goes with image i.
    """
    with torch.no_grad():
        teacher_states = teacher.image_states(pixels)
    if student.can_caption:
        ours = next_token_logits(student, student_states, captions)
        with torch.no_grad():
            theirs = next_token_logits(teacher, teacher_states, captions)
        return kl_rows(ours.logits[ours.mask], theirs.logits[ours.mask], temperature).mean()
    count = len(captions)
    texts = list(captions) + [captions[(i + 1) % count] for i in range(count)]
    rows = torch.arange(count, device=student_states.device).repeat(2)
    tokens = student.trim_text_padding(student.tokenize(texts))
    ours = student.match_logits(student_states[rows], tokens)
    with torch.no_grad():
        theirs = teacher.match_logits(teacher_states[rows.to(teacher_states.device)], tokens)
    return kl_rows(ours, theirs.to(ours.device), temperature).mean()
