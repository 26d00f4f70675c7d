"""Tiny random Hugging Face CLIP / BLIP checkpoints, built offline, for tests.

Each ``save_tiny_*`` writes a complete checkpoint directory (config, safetensors weights,
tokenizer, image processor) that ``from_pretrained`` / ``rcc.models.hf_*`` load without network.
Tokenizers are real ``transformers`` classes (``CLIPTokenizer`` BPE, ``BertTokenizer`` WordPiece)
built in memory from small vocabularies, so loading goes through ``AutoTokenizer`` exactly as for
a hub checkpoint.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_SIZE = 30
PATCH_SIZE = 6

# Words a tiny caption/zero-shot test is likely to use; anything else falls back to characters.
WORDS = (
    "a an the of in on with and photo picture image drawing cat cats dog dogs bird car truck "
    "plane ship horse deer frog red green blue black white small large two three digit zero one "
    "four five six seven eight nine is are sitting standing"
).split()
_CHARS = string.ascii_lowercase + string.digits + ".,!?'-"


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` (byte-level BPE, ``</w>`` word ends) over letters, digits and WORDS."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _CHARS:
        vocab.setdefault(ch, len(vocab))
    for ch in _CHARS:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        if len(word) < 2:
            continue
        # Merge left to right so each word becomes one token: ((p h) o) t (o</w>) ...
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1]] + pieces[2:]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_bert_tokenizer():
    """A BLIP-style ``BertTokenizer``: BERT specials plus ``[DEC]`` as bos, WordPiece over WORDS."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    tokens += [w for w in WORDS if w not in tokens]
    tokens += [c for c in _CHARS if c not in tokens]
    tokens += ["##" + c for c in _CHARS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)


def tiny_clip_config(vocab_size: int, bos: int, eos: int, pad: int):
    """CLIP: text and vision width 32, 2 layers, 2 heads, MLP 37, 30×30 images, patch 6, embed 16."""
    from transformers import CLIPConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    return CLIPConfig(
        text_config=dict(common, vocab_size=vocab_size, max_position_embeddings=77,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(common, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE),
        projection_dim=16,
    )


def tiny_blip_config(vocab_size: int, bos: int, sep: int, pad: int):
    """BLIP: text width 32, vision width 24 (so cross-attention k/v are 32×24), 2 layers, 2 heads,
    MLP 37, 30×30 images, patch 6, ITC embed 16."""
    from transformers import BlipConfig

    return BlipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=37, max_position_embeddings=64,
                         bos_token_id=bos, eos_token_id=sep, sep_token_id=sep, pad_token_id=pad),
        vision_config=dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                           # BLIP's default vision init (1e-10) would make every image look alike.
                           initializer_range=0.02),
        projection_dim=16,
        image_text_hidden_size=16,
    )


def save_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``CLIPModel`` checkpoint with tokenizer and image processor to ``path``."""
    from transformers import CLIPImageProcessor, CLIPModel

    path = Path(path)
    tokenizer = tiny_clip_tokenizer()
    config = tiny_clip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                              tokenizer.pad_token_id)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    ).save_pretrained(path)
    return path


def save_tiny_blip(path: str | Path, task: str = "retrieval", seed: int = 0) -> Path:
    """Write a tiny random BLIP checkpoint (``task``: retrieval or caption) to ``path``."""
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipImageProcessor

    classes = {"retrieval": BlipForImageTextRetrieval, "caption": BlipForConditionalGeneration}
    if task not in classes:
        raise ValueError(f"task must be one of {sorted(classes)}, got {task!r}")
    path = Path(path)
    tokenizer = tiny_bert_tokenizer()
    config = tiny_blip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.sep_token_id,
                              tokenizer.pad_token_id)
    torch.manual_seed(seed)
    classes[task](config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(path)
    return path


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (48, 40)) -> list[Image.Image]:
    """``n`` random RGB PIL images (width, height = ``size``), not square so resize/crop matter."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            for _ in range(n)]


def sharpen_blip_heads(model, scale: float = 300.0, seed: int = 0) -> None:
    """Make a tiny random BLIP's predictions peaked enough to move (``model``: a loaded ``HFBlipModel``).

    Random init scores every pair alike and spreads next-token mass almost evenly (logits of
    std ~0.1), so no distribution can drift. ITM head: weights × ``scale``, bias set so that the
    logits of random pairs average 0 (uncentred, the softmax would saturate). Caption decoder:
    the LM head's last LayerNorm gain × ``scale`` / 10 (logits of std ~3).
    """
    with torch.no_grad():
        if model.can_caption:
            model.module.text_decoder.cls.predictions.transform.LayerNorm.weight.mul_(scale / 10)
            return
        head = model.module.itm_head
        pixels = model.preprocess_batch(random_images(4, seed=seed))
        tokens = model.tokenize(["a photo of a cat", "two dogs", "a red car", "the bird"])
        head.weight.mul_(scale)
        head.bias.zero_()
        head.bias.sub_(model.match_logits(model.image_states(pixels), tokens).mean(0))
