"""Shared fixtures: a tiny random CLIP checkpoint built offline once per session."""

from __future__ import annotations

import os

# Tests never touch the network: fail fast instead of retrying the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

TINY_IMAGE_SIZE = 32
TINY_DIM = 16


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


def make_image(rng: np.random.Generator, size: tuple[int, int] = (48, 40), mode: str = "RGB"):
    """A random PIL image of (width, height) ``size``: smooth colour blobs plus noise."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 255, size=3)
    freq = rng.uniform(0.05, 0.3, size=3)
    arr = np.stack([base[c] / 2 + 60 * np.sin(freq[c] * (xx + yy * (c + 1))) for c in range(3)], -1)
    arr = np.clip(arr + rng.normal(0, 20, arr.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    return img if mode == "RGB" else img.convert(mode)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A small generated image set: 3 classes x 6 JPEGs of varying size, as (paths, labels).

    Classes differ by colour, so even a random tiny CLIP separates them reasonably.
    """
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    colours = {"red_apple": (200, 30, 30), "green-leaf": (30, 180, 40), "blue sky": (30, 60, 210)}
    paths, labels = [], []
    for name, colour in colours.items():
        (root / name).mkdir()
        for i in range(6):
            w, h = int(rng.integers(36, 80)), int(rng.integers(36, 80))
            arr = np.clip(
                np.array(colour)[None, None] + rng.normal(0, 25, (h, w, 3)), 0, 255
            ).astype(np.uint8)
            path = root / name / f"img{i}.jpg"
            Image.fromarray(arr).save(path, quality=90)
            paths.append(str(path))
            labels.append(name)
    return paths, np.array(labels)


@pytest.fixture(autouse=True)
def _add_doctest_namespace(doctest_namespace, request):
    if "tiny_clip_path" in request.fixturenames or request.node.__class__.__name__ == "DoctestItem":
        doctest_namespace["tiny_clip_path"] = request.getfixturevalue("tiny_clip_path")
