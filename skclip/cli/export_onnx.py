"""``skclip export-onnx MODEL``: the one-time ONNX export of a checkpoint, ahead of use.

With ONNX Runtime installed, ``CLIPFeaturizer`` (and ``evaluate``, ``fit``, ``predict``)
run the image tower in ONNX Runtime on the CPU and export it on first use of a
checkpoint. This command makes that export now (e.g. while building a container image),
into the same folder (``~/.cache/skclip/onnx``, or ``$SKCLIP_CACHE_DIR/onnx``), and
prints its folder on stdout. An export that is already there is checked, not made again.
"""

from __future__ import annotations

import argparse
import sys

from .common import _Say


def export_onnx_command(args: argparse.Namespace) -> int:
    """Run ``skclip export-onnx``; returns the exit status (0, or 1 with a message).

    Examples
    --------
    >>> from skclip.cli import main
    >>> main(["export-onnx", "-q", tiny_clip_path])  # doctest: +ELLIPSIS
    /...
    0
    """
    from ..featurizer import CLIPFeaturizer

    say, model = _Say(args.quiet), args.model
    featurizer = CLIPFeaturizer(
        model=model, device="cpu", dtype=args.dtype, progress=not args.quiet
    )
    try:
        path = featurizer.export_onnx()
    except ImportError as exc:  # the optional packages: say what to install
        print(f"skclip: error: {exc}", file=sys.stderr)
        return 1
    say.note(f"the ONNX export of {model} ({args.dtype}) is in {path}")
    if args.verbose:
        for file in sorted(path.iterdir()):
            say.note(f"  {file.name}: {file.stat().st_size / 1e6:.1f} MB")
    print(path)
    return 0
