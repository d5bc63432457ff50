"""What the command line alone says is wrong: argparse types of the ``skclip`` options.

Each check here needs only the argument's text (and, for paths, whether it names a file
or a folder), so argparse runs it while parsing: a wrong command line is answered at
once, before anything heavy is imported, with the usage and exit status 2. What the
data or a model decide (too few images for ``--cv``, a missing file, a damaged model)
is checked later and gives exit status 1.

This module imports nothing heavy (the parser uses it) and nothing of the commands.

Examples
--------
>>> import argparse
>>> from skclip.cli.arguments import at_least, level
>>> parser = argparse.ArgumentParser(prog="demo", exit_on_error=False)
>>> _ = parser.add_argument("--cv", type=at_least(2))
>>> _ = parser.add_argument("--coverage", type=level)
>>> parser.parse_args(["--cv", "3", "--coverage", "0.9"])
Namespace(cv=3, coverage=0.9)
>>> parser.parse_args(["--cv", "1"])
Traceback (most recent call last):
...
argparse.ArgumentError: argument --cv: must be at least 2, got 1
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..backbones._hub import DEFAULT_MODEL
from .model_file import MODEL_SUFFIXES, model_file_problem

#: File suffixes ``skclip evaluate --report`` writes (defined here, where ``--help``
#: can read them without the report module's imports; ``report.summary`` uses this).
REPORT_SUFFIXES = (".json", ".md", ".html")

_DEVICE = re.compile(r"auto|(cpu|cuda|mps)(:\d+)?")


def default_model() -> tuple[str, str]:
    """The checkpoint used without ``--model`` and what chose it: the ``SKCLIP_MODEL``
    environment variable if set (and not empty), else the built-in ``DEFAULT_MODEL``.

    Examples
    --------
    >>> from skclip.cli.arguments import default_model
    >>> model, chosen_by = default_model()  # ('openai/clip-vit-base-patch32', '--model')
    >>> chosen_by in ("--model", "$SKCLIP_MODEL")
    True
    """
    if os.environ.get("SKCLIP_MODEL"):
        return os.environ["SKCLIP_MODEL"], "$SKCLIP_MODEL"
    return DEFAULT_MODEL, "--model"


def model_help() -> str:
    """The help of ``--model``: the built-in default, and the environment's choice when
    ``SKCLIP_MODEL`` is set (argparse's ``%`` escaped)."""
    text = (
        "checkpoint (CLIP, MetaCLIP 2, SigLIP, SigLIP 2, DINOv2...): hub id or local folder "
        f"(default: {DEFAULT_MODEL}"
    )
    chosen, source = default_model()
    if source == "$SKCLIP_MODEL":
        text += f"; $SKCLIP_MODEL is set to {chosen!r} and used instead"
    return (text + ")").replace("%", "%%")


def _checked(problem: Callable[[str], str | None], name: str) -> Callable[[str], str]:
    """An argparse type: the text itself, or an ArgumentTypeError saying ``problem``."""

    def parse(text: str) -> str:
        said = problem(text)
        if said is not None:
            raise argparse.ArgumentTypeError(said)
        return text

    parse.__name__ = name
    return parse


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"at_least_{minimum}"
    return parse


def level(text: str) -> float:
    """An argparse type: a confidence level, strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:  # NaN too
        raise argparse.ArgumentTypeError(
            f"must be strictly between 0 and 1, such as 0.9, got {text!r}"
        )
    return value


def device(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (whether this
    machine has it is checked when the model is loaded)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def output_file(suffixes: tuple[str, ...] = ()) -> Callable[[str], str]:
    """An argparse type: a file to write, not a folder, ending in one of ``suffixes``
    (any suffix if empty). Whether its folder exists is checked before work starts."""

    def problem(text: str) -> str | None:
        if suffixes and Path(text).suffix.lower() not in suffixes:
            return f"must end in {' or '.join(suffixes)}, got {text!r}"
        if Path(text).is_dir():
            return f"{text!r} is a folder; give a file name"
        return None

    return _checked(problem, "output_file")


def data_folder_problem(path: str) -> str | None:
    """Why ``path`` cannot be a data folder from its kind alone (a file, perhaps a model
    file given to the wrong command), else None; a missing folder is not this module's
    business (exit 1, said by the folder listing)."""
    if not Path(path).is_file():
        return None
    hint = (
        " (a model file: classify images with it by 'skclip predict MODEL_FILE IMAGES...')"
        if Path(path).suffix.lower() in MODEL_SUFFIXES
        else ""
    )
    return f"{path!r} is a file, not a folder with one sub-folder of images per class{hint}"


def folder_problem(path: str) -> str | None:
    """A folder to write into (``--cache-dir``) that exists as something else."""
    if Path(path).exists() and not Path(path).is_dir():
        return f"{path!r} is a file, not a folder"
    return None


def checkpoint_problem(name: str) -> str | None:
    """A checkpoint (``--model``) that names an existing file."""
    folder = Path(name).expanduser()
    if folder.exists() and not folder.is_dir():
        return f"{name!r} is a file, not a checkpoint folder"
    return None


def _model_file_argument(path: str) -> str | None:
    said = model_file_problem(path)
    if said is None:
        return None
    return f"{said} (the model file comes first, then the images or folders)"


data_folder = _checked(data_folder_problem, "data_folder")
folder = _checked(folder_problem, "folder")
checkpoint = _checked(checkpoint_problem, "checkpoint")
model_file = _checked(_model_file_argument, "model_file")
