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

    from .backbones.loading import _pil_image_processor_class

    processor_cls = _pil_image_processor_class()  # needs no torchvision

    tokenizer = character_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=eos,
        pad_token_id=eos,
    )
    if size == "tiny":
        vision = dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_IMAGE_SIZE,
            patch_size=8,
        )
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


# -- other backbone families (tests of skclip.backbones.families) ----------------------------------
#: The tiny checkpoints of the other families share these sizes: 32x32 images, 8x8 patches.
TINY_WIDTH = 32
TINY_PATCH = 8

_PIECES = list("abcdefghijklmnopqrstuvwxyz0123456789.,'-!?")

#: The tiny SigLIP checkpoints' learned zero-shot scale and bias (exp(logit_scale) and
#: logit_bias), set away from their zero initialisation so that tests see them used.
TINY_SIGLIP_SCALE, TINY_SIGLIP_BIAS = 10.0, -2.5


def _set_scale_and_bias(model) -> None:
    import math

    import torch

    with torch.no_grad():
        model.logit_scale.fill_(math.log(TINY_SIGLIP_SCALE))
        model.logit_bias.fill_(TINY_SIGLIP_BIAS)


def unigram_tokenizer():
    """A SentencePiece-like tokenizer (unigram over characters, ``▁`` for spaces,
    lowercased, ``</s>`` appended) built with the ``tokenizers`` library: what SigLIP's
    tokenizer does, without needing ``sentencepiece`` or a model file."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    pieces = ["▁"] + _PIECES + ["▁" + c for c in _PIECES]
    vocab = [(s, 0.0) for s in specials] + [(p, -1.0 - len(p)) for p in pieces]
    tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="</s>",
        pad_token="</s>",
        model_max_length=16,
    )


def _tiny_text(vocab_size: int, **extra) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=TINY_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        **extra,
    )


def _tiny_vision(**extra) -> dict:
    return dict(
        hidden_size=TINY_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=TINY_PATCH,
        **extra,
    )


def save_random_siglip(folder: str | os.PathLike, seed: int = 0) -> str:
    """Save a tiny random SigLIP (``SiglipModel``, a unigram tokenizer, the SigLIP image
    processor: 32x32 bicubic resize without crop, mean and std 0.5) to ``folder``.

    Examples
    --------
    >>> import tempfile
    >>> from skclip._testing import save_random_siglip
    >>> "config.json" in os.listdir(save_random_siglip(tempfile.mkdtemp()))
    True
    """
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    tokenizer = unigram_tokenizer()
    config = SiglipConfig(
        text_config=_tiny_text(
            len(tokenizer),
            max_position_embeddings=16,
            pad_token_id=1,
            bos_token_id=None,
            eos_token_id=1,
        ),
        vision_config=_tiny_vision(image_size=TINY_IMAGE_SIZE),
    )
    torch.manual_seed(seed)
    folder = os.fspath(folder)
    model = SiglipModel(config).eval()
    _set_scale_and_bias(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    SiglipImageProcessorPil(size=size).save_pretrained(folder)
    return folder


def save_random_siglip2(folder: str | os.PathLike, seed: int = 0) -> str:
    """Save a tiny random SigLIP 2 NaFlex (``Siglip2Model``, a Gemma-style tokenizer, the
    NaFlex image processor: 8x8 patches, at most 16 per image) to ``folder``.

    Examples
    --------
    >>> import tempfile
    >>> from skclip._testing import save_random_siglip2
    >>> "config.json" in os.listdir(save_random_siglip2(tempfile.mkdtemp()))
    True
    """
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model, Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials + ["▁"] + _PIECES)}
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=16)
    config = Siglip2Config(
        text_config=_tiny_text(
            len(vocab), max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=1
        ),
        vision_config=_tiny_vision(num_patches=16),
    )
    torch.manual_seed(seed)
    folder = os.fspath(folder)
    model = Siglip2Model(config).eval()
    _set_scale_and_bias(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Siglip2ImageProcessorPil(patch_size=TINY_PATCH, max_num_patches=16).save_pretrained(folder)
    return folder


def save_random_metaclip2(folder: str | os.PathLike, seed: int = 0) -> str:
    """Save a tiny random MetaCLIP 2 (``MetaClip2Model``, an XLM-R-style unigram tokenizer,
    the CLIP image processor at 32x32) to ``folder``.

    Examples
    --------
    >>> import tempfile
    >>> from skclip._testing import save_random_metaclip2
    >>> "config.json" in os.listdir(save_random_metaclip2(tempfile.mkdtemp()))
    True
    """
    import torch
    from transformers import CLIPImageProcessorPil, MetaClip2Config, MetaClip2Model
    from transformers import XLMRobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    pieces = ["▁"] + _PIECES + ["▁" + c for c in _PIECES]
    vocab = [(s, 0.0) for s in specials] + [(p, -1.0 - len(p)) for p in pieces]
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=16)
    config = MetaClip2Config(
        text_config=_tiny_text(
            len(vocab), max_position_embeddings=18, bos_token_id=0, pad_token_id=1, eos_token_id=2
        ),
        vision_config=_tiny_vision(image_size=TINY_IMAGE_SIZE),
        projection_dim=TINY_DIM,
    )
    torch.manual_seed(seed)
    folder = os.fspath(folder)
    MetaClip2Model(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    ).save_pretrained(folder)
    return folder


def save_random_dinov2(folder: str | os.PathLike, seed: int = 0) -> str:
    """Save a tiny random DINOv2 (``Dinov2Model``, image only, no tokenizer; the BiT image
    processor as DINOv2's: shortest edge to 36, center crop 32x32, ImageNet mean and std)
    to ``folder``.

    Examples
    --------
    >>> import tempfile
    >>> from skclip._testing import save_random_dinov2
    >>> "config.json" in os.listdir(save_random_dinov2(tempfile.mkdtemp()))
    True
    """
    import torch
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=TINY_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH,
    )
    torch.manual_seed(seed)
    folder = os.fspath(folder)
    Dinov2Model(config).eval().save_pretrained(folder)
    BitImageProcessorPil(
        size={"shortest_edge": 36},
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)
    return folder
