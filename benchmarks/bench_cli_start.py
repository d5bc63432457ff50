"""How fast the ``skclip`` command answers when it has nothing to compute.

``skclip --help``, ``skclip fit --help`` and a usage error (``skclip fit`` without its
arguments) each run in a fresh process, as the console script does (``from skclip.cli
import main``), against the floor of any Python command line, ``python -c "import numpy,
argparse"``. Prints the median of 5 runs of each and the ratio command / floor (goal: at
most 3).

    python benchmarks/bench_cli_start.py          # this checkout's skclip

The load average is printed at the start and the end: the ratio is marked "not
comparable" when either 1-minute load is above 1.0 (other processes then share the
cores, and start-up times, mostly reading and compiling files, vary with them).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
MAX_LOAD = 1.0
GOAL = 3.0
CLI = "import sys; from skclip.cli import main; sys.exit(main())"
#: What is timed, and the exit status it must end with (else the timing means nothing).
COMMANDS = {
    "skclip --help": (["-c", CLI, "--help"], 0),
    "skclip fit --help": (["-c", CLI, "fit", "--help"], 0),
    "skclip fit (usage error)": (["-c", CLI, "fit"], 2),
}
FLOOR = (["-c", "import numpy, argparse"], 0)


def load_average() -> float:
    """The 1-minute load average (printed with the 5- and 15-minute ones); 0 where the
    system has none."""
    if not hasattr(os, "getloadavg"):
        print("load average: unavailable")
        return 0.0
    loads = os.getloadavg()
    print("load average: " + " ".join(f"{x:.2f}" for x in loads) + f" ({os.cpu_count()} cpus)")
    return loads[0]


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
    loads = [load_average()]
    median_seconds(*FLOOR)  # warm the file cache
    floor = median_seconds(*FLOOR)
    results = {what: median_seconds(*run) for what, run in COMMANDS.items()}
    loads.append(load_average())
    quiet = max(loads) <= MAX_LOAD
    print(f"python -c 'import numpy, argparse': {floor:.3f} s (median of {RUNS})")
    for what, seconds in results.items():
        verdict = "" if quiet else f"  not comparable: load average above {MAX_LOAD}"
        print(
            f"{what}: {seconds:.3f} s (median of {RUNS}), ratio {seconds / floor:.2f} "
            f"(goal at most {GOAL:g}){verdict}"
        )


if __name__ == "__main__":
    main()
