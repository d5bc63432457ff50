"""The ``skclip`` command: evaluate, fit and predict on folders of images.

::

    skclip evaluate data/ --cv 5 --report report.html
    skclip fit data/ -o model.skops
    skclip predict model.skops new_images/ --proba --output predictions.csv
    skclip demo-model /tmp/tiny-clip      # a random checkpoint, to try skclip offline

Every argument that can be checked from the command line and the folder listings is
checked before a model is loaded or an image encoded; what the command line alone shows
to be wrong (an option's value out of range, an output suffix skclip does not write, a
file where a folder belongs or the other way round, a model file and images swapped) is
checked while parsing, before anything heavy is imported (:mod:`skclip.cli.arguments`).

Exit status: 0 on success; 2 for a wrong command line (argparse's usage and message);
1 when the data or model cannot be used (a missing or damaged file, too few images for
the protocol, a checkpoint that moved or differs: the message says why); 141 (128 +
SIGPIPE, silently) when whoever reads the output stops early, as ``skclip predict ... |
head`` does.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


from .messages import plain_warnings
from .parser import build_parser


@contextlib.contextmanager
def _progress_bars(quiet: bool) -> Iterator[None]:
    """transformers' own bars ("Loading weights") off with ``-q`` or when stderr is not
    a terminal; restored afterwards."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet or not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run the ``skclip`` command; returns the exit status (also where argparse would
    exit: 0 after ``--help``, 2 for a wrong command line, its usage on stderr).

    Examples
    --------
    >>> from skclip.cli import main
    >>> main(["predict", "no-such-model.skops", "image.jpg"])
    1
    >>> main(["predict", "image.jpg", "model.skops"])  # swapped: a wrong command line
    2
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version (0), a wrong command line (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with _progress_bars(args.quiet), plain_warnings():  # warnings: one plain line each
            return args.func(args)
    except BrokenPipeError:
        return _reader_gone()
    except (ValueError, OSError) as exc:
        from .._images import readable

        print(f"skclip: error: {readable(str(exc))}", file=sys.stderr)
        return 1


def _reader_gone() -> int:
    """The reader of stdout went away (``| head``): stop quietly, as command-line tools
    do. stdout is pointed at /dev/null so that Python's final flush does not complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what the shell reports for a command stopped that way


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
