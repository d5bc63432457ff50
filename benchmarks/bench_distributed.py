"""Speed-up of encoding on 2 local Dask workers over 1, on this machine.

Both clusters use the same cores: 1 worker with as many torch threads as CPUs, vs 2
workers with half as many each. Model loading is excluded (a warm-up partition).

    python benchmarks/bench_distributed.py [--n-images 96]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import jpeg_folder, load_guard, load_note, vit_b32_folder  # noqa: E402


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def main() -> None:
    from dask.distributed import Client, LocalCluster

    from skclip import CLIPFeaturizer
    from skclip.distributed import transform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=96)
    args = parser.parse_args()
    load_guard()
    model, paths = vit_b32_folder(), jpeg_folder(args.n_images)
    feat = CLIPFeaturizer(model=model, device="cpu", cache=False)
    cpus = os.cpu_count() or 1
    times = {}
    for workers in (1, 2):
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        with Client(cluster) as client:
            client.run(_set_threads, max(1, cpus // workers))
            transform(feat, paths[: 2 * workers], client, partition_size=1)  # load models
            t0 = time.perf_counter()
            transform(feat, paths, client, partition_size=16)
            times[workers] = time.perf_counter() - t0
        cluster.close()
        print(
            f"{workers} worker(s), {max(1, cpus // workers)} torch threads each: "
            f"{args.n_images / times[workers]:.1f} img/s"
        )
    print(
        f"speed-up 2 workers / 1 worker: {times[1] / times[2]:.2f}  ({cpus} cpus; expect <= 2)"
        f"{load_note()}"
    )


if __name__ == "__main__":
    main()
