"""Random CLIP checkpoints for tests, doctests, examples and benchmarks, built offline.

No pretrained weights can be downloaded where skclip is tested, so the real loading
code (``from_pretrained`` on a folder) is exercised on randomly initialised models saved
with ``save_pretrained``: a *tiny* one for the test suite and a *ViT-B/32-size* one for
benchmarks (real image-tower cost, random weights).
"""

from __future__ import annotations

import os
from pathlib import Path

#: The tiny test checkpoint: 32x32 images, 16-d embeddings.
TINY_IMAGE_SIZE = 32
TINY_DIM = 16


def _byte_level_alphabet() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to one printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def character_tokenizer():
    """A working CLIP tokenizer with a character-level vocabulary (no BPE merges):
    every text tokenizes, nothing is downloaded. Its vocabulary has 514 entries."""
    import json
    import tempfile

    from transformers import CLIPTokenizer

    chars = _byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # Loaded from vocab/merges files, which transformers 4 and 5 both read.
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def save_random_clip(folder: str | os.PathLike, size: str = "tiny", seed: int = 0) -> str:
    """Save a randomly initialised CLIP (model, tokenizer, image processor) to ``folder``.

    Parameters
    ----------
    folder : path-like
        Where to write; it can then be passed as ``model=`` / ``clip_model=``.
    size : {"tiny", "vit-b32"}, default="tiny"
        ``"tiny"``: 2-layer towers of width 32, 32x32 images, 16-d embeddings (tests).
        ``"vit-b32"``: the image tower of ``CLIPConfig()`` (ViT-B/32: 12 layers, width
        768, 224 px, 512-d embeddings) with a 1-layer text tower (benchmarks).
    seed : int, default=0
        Seed of the random weights.

    Returns
    -------
    folder : str

    Examples
    --------
    >>> import tempfile
    >>> from skclip._testing import save_random_clip
    >>> path = save_random_clip(tempfile.mkdtemp())
    >>> sorted(os.listdir(path))[:2]
    ['config.json', 'model.safetensors']
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    from ._models import _pil_image_processor_class

    processor_cls = _pil_image_processor_class()  # needs no torchvision

    tokenizer = character_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tokenizer), max_position_embeddings=77, hidden_size=32,
        intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos,
        pad_token_id=eos,
    )
    if size == "tiny":
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                      num_attention_heads=2, image_size=TINY_IMAGE_SIZE, patch_size=8)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=TINY_DIM)
        image_processor = processor_cls(
            size={"shortest_edge": TINY_IMAGE_SIZE},
            crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        )
    elif size == "vit-b32":
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1)
        config = CLIPConfig(text_config=text)  # vision tower: CLIPConfig() defaults
        image_processor = processor_cls()  # 224 bicubic, crop 224, OpenAI mean/std
    else:
        raise ValueError(f"size must be 'tiny' or 'vit-b32', got {size!r}.")
    torch.manual_seed(seed)
    folder = os.fspath(folder)
    CLIPModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return folder
