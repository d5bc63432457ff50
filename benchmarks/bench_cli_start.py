"""How fast the ``skclip`` command answers when it has nothing to compute.

``skclip --help``, ``skclip fit --help`` and a usage error (``skclip fit`` without its
arguments) each run in a fresh process, as the console script does (``from skclip.cli
import main``), against the floor of any Python command line, ``python -c "import numpy,
argparse"``. Prints the median of 5 runs of each and the ratio command / floor (goal: at
most 3).

    python benchmarks/bench_cli_start.py          # this checkout's skclip

The load average is printed at the start and the end (``_common.load_guard``): a ratio
is marked "not comparable" when either is above half the cpus (other processes then
share the cores, and start-up times, mostly reading and compiling files, vary with them).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import load_guard, load_note

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
GOAL = 3.0
CLI = "import sys; from skclip.cli import main; sys.exit(main())"
#: What is timed, and the exit status it must end with (else the timing means nothing).
COMMANDS = {
    "skclip --help": (["-c", CLI, "--help"], 0),
    "skclip fit --help": (["-c", CLI, "fit", "--help"], 0),
    "skclip fit (usage error)": (["-c", CLI, "fit"], 2),
}
FLOOR = (["-c", "import numpy, argparse"], 0)


def median_seconds(arguments: list[str], status: int = 0) -> float:
    """Median wall time of ``RUNS`` fresh ``python ARGUMENTS`` processes, run in this
    checkout (``python -c`` puts the current folder first on the path), each of which
    must exit with ``status``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *arguments], env=env, cwd=ROOT, capture_output=True)
        if done.returncode != status:
            raise SystemExit(f"{arguments} exited {done.returncode}:\n{done.stderr.decode()}")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    load_guard()  # the load average now and at the end; load_note() marks a busy machine
    median_seconds(*FLOOR)  # warm the file cache
    floor = median_seconds(*FLOOR)
    results = {what: median_seconds(*run) for what, run in COMMANDS.items()}
    print(f"python -c 'import numpy, argparse': {floor:.3f} s (median of {RUNS})")
    for what, seconds in results.items():
        print(
            f"{what}: {seconds:.3f} s (median of {RUNS}), ratio {seconds / floor:.2f} "
            f"(goal at most {GOAL:g}){load_note()}"
        )


if __name__ == "__main__":
    main()
