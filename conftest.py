"""Shared pytest set-up for tests/ and the docstring examples in skclip/.

Builds a tiny random CLIP checkpoint (model, tokenizer, image processor) offline once
per session; tests and doctests get its folder as ``tiny_clip_path``.
"""

from __future__ import annotations

import os

# Tests never touch the network: fail fast instead of retrying the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import TINY_DIM, TINY_IMAGE_SIZE  # noqa: E402


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tiny_clip(folder: str, seed: int = 0) -> str:
    """Save a tiny random CLIP (model, tokenizer, image processor) into ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"] = bos
    vocab["<|endoftext|>"] = eos
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=8,
        ),
        projection_dim=TINY_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> str:
    """Folder of a tiny random CLIP checkpoint (16-d embeddings, 32x32 images)."""
    return build_tiny_clip(str(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(autouse=True)
def _doctest_tiny_clip(request):
    """Doctests see ``tiny_clip_path``, a local CLIP folder, in their namespace."""
    if type(request.node).__name__ == "DoctestItem":
        ns = request.getfixturevalue("doctest_namespace")
        ns["tiny_clip_path"] = request.getfixturevalue("tiny_clip_path")
