"""Shared set-up for the benchmark scripts: random models and generated data, offline;
paired timings; and the load guard every script runs (:func:`load_guard`), which prints
the load average at the start and at the end and marks ratios measured on a busy machine
as not comparable."""

from __future__ import annotations

import atexit
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:  # no "Loading weights" bars between the numbers
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:
    pass


def vit_b32_folder(folder: str | None = None) -> str:
    """A random CLIP whose image tower has the real ViT-B/32 size, saved to a folder."""
    from skclip._testing import save_random_clip

    return save_random_clip(folder or tempfile.mkdtemp(prefix="skclip-bench-vitb32-"), "vit-b32")


def jpeg_folder(
    n: int = 200, size: tuple[int, int] = (500, 375), folder: str | None = None, seed: int = 0
) -> list[str]:
    """Write ``n`` generated photo-like JPEGs of (width, height) ``size``; return their
    paths. Another ``seed`` gives other images (other contents: cache misses)."""
    from PIL import Image

    folder = folder or tempfile.mkdtemp(prefix="skclip-bench-jpegs-")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        f = rng.uniform(0.01, 0.05, 3)
        base = np.stack([np.sin(f[c] * xx + f[(c + 1) % 3] * yy + i) for c in range(3)], -1)
        arr = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"img{i:04d}.jpg")
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Shortest wall time of ``repeat`` calls (the least disturbed by machine noise)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def small_clip_folder(dim: int = 512, folder: str | None = None, seed: int = 0) -> str:
    """A random CLIP with the tiny towers (32x32 images) but ``dim``-d embeddings, as
    ViT-B/32's 512: for benchmarks of what happens *around* the model (cache lookups,
    classifier fits), where a real-size forward would only cost time."""
    import torch
    from transformers import CLIPModel

    from skclip._testing import save_random_clip

    folder = save_random_clip(folder or tempfile.mkdtemp(prefix="skclip-bench-small-"), "tiny")
    config = CLIPModel.from_pretrained(folder).config
    config.projection_dim = dim
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    return folder


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Paired(NamedTuple):
    """Result of :func:`paired`: the median ratio and what it was computed from."""

    ratio: float  # median over rounds of measured / baseline time
    ratios: list[float]
    baseline: float  # median time of the baseline
    measured: float  # median time of the measured function

    def line(self, what: str, goal: str = "", speedup: bool = False) -> str:
        """A printable line; ``speedup=True`` reports baseline / measured time instead
        (e.g. throughput relative to the baseline's)."""
        ratios = [1 / r for r in self.ratios] if speedup else self.ratios
        rounds = ", ".join(f"{r:.3f}" for r in sorted(ratios))
        goal = f"  (goal {goal})" if goal else ""
        return (
            f"ratio {what}: {statistics.median(ratios):.3f}{goal}{load_note()}  [median of "
            f"{len(ratios)} paired rounds: {rounds}; median times {self.measured:.4g} s "
            f"measured, {self.baseline:.4g} s baseline]"
        )


def paired(
    baseline: Callable[[], object], measured: Callable[[], object], rounds: int = 5
) -> Paired:
    """Time ``baseline`` and ``measured`` back to back ``rounds`` times (alternating which
    goes first) and return the median of the per-round ratios measured / baseline.

    Each round's ratio cancels slow drifts of a shared machine; the median resists the
    odd disturbed round. Warm both up before calling this.
    """
    return paired_times(lambda: timed(baseline), lambda: timed(measured), rounds)


def paired_times(
    baseline: Callable[[], float], measured: Callable[[], float], rounds: int = 5
) -> Paired:
    """:func:`paired` for callables that return their own time in seconds (e.g. the time
    a child process measured around the part that matters)."""
    ratios, times_b, times_m = [], [], []
    for r in range(rounds):
        if r % 2:
            t_m = measured()
            t_b = baseline()
        else:
            t_b = baseline()
            t_m = measured()
        times_b.append(t_b)
        times_m.append(t_m)
        ratios.append(t_m / t_b)
    return Paired(
        statistics.median(ratios), ratios, statistics.median(times_b), statistics.median(times_m)
    )


def machine() -> str:
    """One line saying where the numbers were measured: CPUs, load, torch threads, GPU."""
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"machine: {platform.machine()} cpus={os.cpu_count()} load average {load} "
        f"torch={torch.__version__} threads={torch.get_num_threads()} gpu={gpu}"
    )


# -- the load guard ---------------------------------------------------------------------------
def load_average() -> float:
    """The 1-minute load average (NaN where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def load_limit(cpus: int | None = None) -> float:
    """Highest load average at which a ratio counts as measured on a quiet machine: half
    the CPUs (1.0 on a 2-core machine). Above it, other processes take a share of the
    cores that differs between the two sides of a ratio: a parallel run, with more
    processes, gets a larger share of a busy machine than a serial one."""
    return (cpus if cpus is not None else os.cpu_count() or 1) / 2


def comparable(loads: list[float], limit: float) -> bool:
    """Whether every load average in ``loads`` is known and at most ``limit``."""
    return all(not math.isnan(load) and load <= limit for load in loads)


_LOAD_AT_START: list[float] = []  # set by load_guard()


def load_note() -> str:
    """``""`` while the load average at the start (:func:`load_guard`) and now are both
    within :func:`load_limit`; else the mark every ratio printed then carries."""
    limit = load_limit()
    if comparable([*_LOAD_AT_START, load_average()], limit):
        return ""
    return f"  (not comparable: load average above {limit:.1f})"


def load_guard() -> float:
    """Print the load average now and, when the script ends, again (with a warning if
    it rose above :func:`load_limit`); every script calls this first. From then on
    :func:`load_note` marks ratios printed on a busy machine. Returns the load now."""
    load = load_average()
    first = not _LOAD_AT_START
    _LOAD_AT_START[:] = [load]
    print(
        f"load average at start: {load:.2f} (ratios are comparable at most {load_limit():.1f} "
        f"at start and at end, on {os.cpu_count()} cpus)",
        flush=True,
    )
    if first:
        atexit.register(_print_load_at_end)
    return load


def _print_load_at_end() -> None:
    load, limit = load_average(), load_limit()
    line = f"load average at end: {load:.2f}"
    if not comparable([load], limit):
        line += f" (above {limit:.1f}: no ratio printed above is comparable)"
    print(line, flush=True)
