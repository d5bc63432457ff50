"""``skclip demo-model``: a tiny random CLIP checkpoint, to try skclip without the hub."""

from __future__ import annotations

import argparse
from pathlib import Path


def demo_model_command(args: argparse.Namespace) -> int:
    """``skclip demo-model DIR``: see the sub-command's help.

    The checkpoint is :func:`skclip._testing.save_random_clip`'s ``"tiny"`` CLIP (the
    one skclip's own tests use): 2-layer towers, 32x32 images, 16-d embeddings, random
    weights. A folder that already holds files is refused (never overwritten).

    Examples
    --------
    >>> import os, tempfile
    >>> from skclip.cli import main
    >>> folder = os.path.join(tempfile.mkdtemp(), "tiny-clip")
    >>> main(["demo-model", folder])  # doctest: +ELLIPSIS
    saved a random CLIP checkpoint in ...
    0
    >>> sorted(os.listdir(folder))[:2]
    ['config.json', 'model.safetensors']
    """
    from .._testing import save_random_clip

    folder = Path(args.folder)
    if folder.is_dir() and any(folder.iterdir()):
        raise ValueError(
            f"{args.folder!r} already holds files: give a new or empty folder (a demo "
            "model never overwrites anything)."
        )
    save_random_clip(folder, "tiny", seed=args.random_state)
    print(
        f"saved a random CLIP checkpoint in {args.folder} (for trying skclip offline: its "
        f"predictions are no better than chance). Try: skclip evaluate DATA_DIR --model "
        f"{args.folder}"
    )
    return 0
