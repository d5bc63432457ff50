"""Where the time goes from JPEG paths to embeddings, per stage, in PyTorch and ONNX Runtime.

On a ViT-B/32-size random CLIP and ``--n-images`` generated JPEGs (320x240 by default):

1. Stages, per image (wall and CPU time of the whole process; the CPU column is what a
   stage costs the machine, so on 2 busy cores the wall throughput of the whole is
   about ``2 / sum(CPU per image)``): file read + hash, decode + preprocess (1 thread,
   and 2 threads), the forward pass (PyTorch eager from ready float tensors, as
   ``bench_featurizer.py``'s baseline; PyTorch from ``uint8`` crops, as the engine runs
   it; ONNX Runtime with skclip's session settings), pooling + normalization + cache
   store.
2. ONNX Runtime session variants, forward only (one batch): intra-op threads, spinning
   (``session.intra_op.allow_spinning``, ``session.force_spinning_stop``), graph
   optimization level, parallel execution with inter-op threads, IO binding.
3. Batch sizes (8, 16, 32, 64), both runtimes, forward only.
4. Whether torch in the same process hurts ONNX Runtime: its forward in a process that
   never imported torch, here right after a torch op (OpenMP threads may still spin),
   and here with torch idle.
5. End to end, ``CLIPFeaturizer(cache=False).transform(paths)`` for each runtime (and
   ONNX Runtime with 2 decode threads, and with the former session settings), against
   PyTorch's eager forward on ready tensors: the ratio ``bench_featurizer.py`` reports
   (goal for ONNX Runtime: >= 1.3).

Every number is the median of ``--rounds`` rounds; within a round every variant of a
table runs once, in turn, so a drift of the machine touches them alike. The load
average is printed at the start and the end, and the CPU time other processes used
during the run (from ``/proc/stat``): results are marked "not comparable" if the load
average at the start is above 1.0 or other processes used more than a quarter of a core
on average (the load average at the end counts this script's own threads). Runs in
under 3 minutes on a quiet 2-core machine.

    python benchmarks/profile_runtimes.py [--n-images 64] [--rounds 3] [--size 320x240]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

SPIN_OFF = {"session.intra_op.allow_spinning": "0"}
SPIN_ON = {"session.intra_op.allow_spinning": "1"}
SPIN_IN_RUN = {**SPIN_ON, "session.force_spinning_stop": "1"}


def variant_table(own: dict[str, str]) -> dict[str, tuple[int, dict[str, str], dict[str, str]]]:
    """ONNX Runtime session variants: name -> (intra-op threads, config entries, other
    options); each changes one thing from skclip's settings ``own``."""
    return {
        "spin off": (2, SPIN_OFF, {}),
        "spin on (ORT's default)": (2, SPIN_ON, {}),
        "spin in a run, stop between runs": (2, SPIN_IN_RUN, {}),
        "1 intra-op thread": (1, own, {}),
        "graph optimization: basic": (2, own, {"opt": "basic"}),
        "graph optimization: extended": (2, own, {"opt": "extended"}),
        "parallel execution, 2 inter-op threads": (2, own, {"mode": "parallel"}),
    }


# -- measuring -------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU counts every thread of the process."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def rounds(fns: dict[str, Callable[[], object]], n: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) of each function over ``n`` rounds, all of them once per round."""
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            got[name].append(timed(fn))
    return {
        name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
        for name, ts in got.items()
    }


def busy_jiffies() -> int | None:
    """CPU time (clock ticks) every process used since boot, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def row(name: str, wall: float, cpu: float, per: int, extra: str = "") -> str:
    """A table line: milliseconds per image (wall, CPU) and images per second."""
    return (
        f"  {name:<48s} {wall / per * 1e3:8.2f} {cpu / per * 1e3:8.2f} {per / wall:8.1f}  {extra}"
    )


HEADER = f"  {'':<48s} {'wall ms':>8s} {'CPU ms':>8s} {'img/s':>8s}   (per image)"


# -- ONNX Runtime, without torch (also run in a process that never imports torch) -----------
def ort_options(threads: int, config: dict[str, str], other: dict[str, str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    parallel = other.get("mode") == "parallel"
    options.inter_op_num_threads = 2 if parallel else 1
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }.get(other.get("opt", ""), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.graph_optimization_level = level
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3
    return options


def ort_session(model: str, threads: int, config: dict[str, str], other: dict[str, str]):
    import onnxruntime as ort

    options = ort_options(threads, config, other)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def ort_alone(argv: list[str]) -> None:
    """``--ort-alone MODEL PIXELS CONFIG ROUNDS``: ONNX Runtime's forward in this process,
    which imports neither torch nor skclip; prints (wall, CPU) as JSON."""
    model, pixels_file, config, n = argv
    threads, entries = json.loads(config)
    pixels = np.load(pixels_file)
    session = ort_session(model, threads, entries, {})
    session.run(None, {"pixels": pixels})  # warm-up
    print(json.dumps(rounds({"alone": lambda: session.run(None, {"pixels": pixels})}, int(n))))


# -- the profile -------------------------------------------------------------------------------
class Setup:
    """The checkpoint, the JPEGs, the loaded model, its export and the crops."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        from _common import jpeg_folder, vit_b32_folder

        from skclip.backbones import onnx as _onnx
        from skclip.backbones.loading import load_backbone

        width, height = (int(v) for v in args.size.split("x"))
        self.args = args
        if args.model == "tiny":  # a smoke test of this script
            from skclip._testing import save_random_clip

            self.model_dir = save_random_clip(tempfile.mkdtemp(prefix="skclip-profile-tiny-"))
        else:
            self.model_dir = vit_b32_folder()
        self.paths = jpeg_folder(args.n_images, size=(width, height))
        self.clip = load_backbone(self.model_dir, "cpu", "float32")
        self.folder = tempfile.mkdtemp(prefix="skclip-profile-")
        os.environ["SKCLIP_CACHE_DIR"] = self.folder  # a fresh export, used by every part
        self.export_s = timed(lambda: _onnx.export(self.clip))[0]
        self.encoder = _onnx.image_encoder(self.clip)
        self.onnx_file = str(self.encoder.path / "model.onnx")
        from skclip._images import open_image

        crops = [self.clip.preprocessor(open_image(p)) for p in self.paths]
        self.pixels = np.stack(crops)
        self.ready = self.clip.preprocessor.normalize(torch.from_numpy(self.pixels))


def stages(s: Setup, forward: dict[str, tuple[float, float]]) -> None:
    """Table 1: what each stage costs per image (the forward rows come from table 3)."""
    import torch

    from skclip._hashing import hasher
    from skclip._images import open_image
    from skclip.encoding import engine
    from skclip.encoding.cache import EmbeddingCache, _read_bytes

    n, bs = len(s.paths), s.args.batch_size
    prep = s.clip.preprocessor
    data = [_read_bytes(p) for p in s.paths]
    cache = EmbeddingCache("profile" * 3, s.clip.embedding_dim)
    emb = torch.from_numpy(s.encoder(s.pixels[:bs]))
    keys = [f"{k:032x}" for k in range(bs)]

    def read_hash() -> None:
        for p in s.paths:
            hasher().update(_read_bytes(p))

    def decode(b: bytes) -> np.ndarray:
        return prep(open_image("x.jpg", data=b))

    def pool_store() -> None:
        for _ in range(0, n, bs):
            with torch.inference_mode():
                vecs = engine.pool_views(emb, 0, True).numpy()
            engine.store(cache, keys, vecs)

    with ThreadPoolExecutor(2) as pool:
        fns = {
            "file read + hash (1 thread)": read_hash,
            "decode + preprocess (1 thread)": lambda: [decode(b) for b in data],
            "decode + preprocess (2 threads)": lambda: list(pool.map(decode, data)),
            "pool + normalize + store": pool_store,
        }
        for fn in fns.values():
            fn()  # warm-up
        got = rounds(fns, s.args.rounds)
    got[f"forward torch eager, batch {bs}"] = forward[f"torch eager, batch {bs}"]
    got[f"forward ONNX Runtime, batch {bs}"] = forward[f"ONNX Runtime, batch {bs}"]
    print(f"\n1. stages, {n} {s.args.size} JPEGs, per image")
    print(HEADER)
    for name, (w, c) in got.items():
        print(row(name, w, c, n))
    cpu = sum(c for name, (w, c) in got.items() if "2 threads" not in name and "torch" not in name)
    print(
        f"  ONNX Runtime path, CPU per image, all stages: {cpu / n * 1e3:.1f} ms, so at most "
        f"{2 * n / cpu:.1f} img/s on 2 fully used cores"
    )


def variants(s: Setup) -> None:
    """Table 2: session variants against skclip's own session (and torch eager), one
    batch of ``--variant-batch`` images."""
    import torch

    from skclip.backbones import onnx as _onnx

    bs = min(s.args.variant_batch, len(s.paths))
    batch = np.ascontiguousarray(s.pixels[:bs])
    ready = s.ready[:bs]
    own_config = dict(_onnx.SESSION_CONFIG)
    sessions = {
        name
        + (
            " (= skclip's)" if threads == 2 and not other and config == own_config else ""
        ): ort_session(s.onnx_file, threads, config, other)
        for name, (threads, config, other) in variant_table(own_config).items()
    }
    own = s.encoder.session  # made from the verified bytes in memory, as skclip does

    def io_binding() -> None:
        binding = own.io_binding()
        binding.bind_cpu_input("pixels", batch)
        binding.bind_output("features")
        own.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()

    def torch_eager(threads: int) -> Callable[[], None]:
        def run() -> None:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with torch.inference_mode():
                    s.clip.model.get_image_features(pixel_values=ready)
            finally:
                torch.set_num_threads(before)

        return run

    fns: dict[str, Callable[[], object]] = {
        "torch eager, 2 threads": torch_eager(2),
        "torch eager, 1 thread": torch_eager(1),
        "skclip's session": lambda: own.run(None, {"pixels": batch}),
        "skclip's session + IO binding": io_binding,
    }
    fns.update({name: (lambda x=x: x.run(None, {"pixels": batch})) for name, x in sessions.items()})
    for fn in fns.values():
        fn()
    got = rounds(fns, s.args.rounds)
    print(f"\n2. forward of one batch of {bs}: ONNX Runtime session variants, torch eager")
    print(HEADER)
    ref = got["skclip's session"][0]
    for name, (w, c) in got.items():
        print(row(name, w, c, bs, f"{ref / w:.2f}x skclip's"))
    t1, o1 = got["torch eager, 1 thread"][1], got["1 intra-op thread"][1]  # CPU
    t2, o2 = got["torch eager, 2 threads"][0], ref
    print(
        f"  work (1 thread, CPU): torch / ONNX Runtime = {t1 / o1:.2f}; use of 2 cores "
        f"(1-thread CPU / 2 x wall): torch {t1 / (2 * t2):.2f}, ONNX Runtime {o1 / (2 * o2):.2f}"
    )


def batch_sizes(s: Setup) -> dict[str, tuple[float, float]]:
    """Table 3: ONNX Runtime's forward at batch sizes 8 to 64 (torch eager at
    ``--batch-size``); returns the timings (table 1 shows two of them)."""
    import torch

    n, bs = len(s.paths), s.args.batch_size

    def run_torch() -> None:
        with torch.inference_mode():
            for i in range(0, n, bs):
                s.clip.model.get_image_features(pixel_values=s.ready[i : i + bs])

    def run_ort(size: int) -> Callable[[], None]:
        return lambda: [s.encoder(s.pixels[i : i + size]) for i in range(0, n, size)] and None

    fns = {f"torch eager, batch {bs}": run_torch}
    fns.update(
        {f"ONNX Runtime, batch {b}": run_ort(b) for b in sorted({8, 16, 32, 64, bs}) if b <= n}
    )
    for fn in fns.values():
        fn()
    got = rounds(fns, s.args.rounds)
    return got


def print_batch_sizes(s: Setup, got: dict[str, tuple[float, float]]) -> None:
    n = len(s.paths)
    print(f"\n3. batch sizes, forward only, {n} images")
    print(HEADER)
    base = got[f"torch eager, batch {s.args.batch_size}"][0]
    for name, (w, c) in got.items():
        print(row(name, w, c, n, f"{base / w:.2f}x torch"))


def torch_in_process(s: Setup) -> None:
    import torch

    from skclip.backbones import onnx as _onnx

    bs = s.args.batch_size
    batch = np.ascontiguousarray(s.pixels[:bs])
    pixels_file = os.path.join(s.folder, "pixels.npy")
    np.save(pixels_file, batch)
    config = json.dumps([s.encoder.threads, _onnx.SESSION_CONFIG])
    cmd = [sys.executable, __file__, "--ort-alone", s.onnx_file, pixels_file, config]
    out = subprocess.run([*cmd, str(s.args.rounds)], capture_output=True, text=True, check=True)
    alone = json.loads(out.stdout.strip().splitlines()[-1])["alone"]
    a = torch.randn(512, 512)
    preludes = {
        "torch imported, right after a torch op": lambda: a @ a,  # its threads may spin
        "torch imported, idle for 0.2 s before": lambda: time.sleep(0.2),  # they sleep
    }
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in preludes}
    s.encoder(batch)
    for _ in range(s.args.rounds):
        for name, prelude in preludes.items():
            prelude()
            got[name].append(timed(lambda: s.encoder(batch)))
    print(f"\n4. torch in the same process, ONNX Runtime forward of one batch of {bs}")
    print(HEADER)
    print(row("process without torch (subprocess)", *alone, bs))
    for name, ts in got.items():
        wall, cpu = (statistics.median(t[i] for t in ts) for i in (0, 1))
        print(row(name, wall, cpu, bs))


def end_to_end(s: Setup) -> float:
    import torch

    from skclip import CLIPFeaturizer
    from skclip.backbones import onnx as _onnx

    n, bs = len(s.paths), s.args.batch_size

    def featurizer(runtime: str, **kw: object) -> Callable[[], object]:
        f = CLIPFeaturizer(
            model=s.model_dir, runtime=runtime, batch_size=bs, cache=False, progress=False, **kw
        )
        return lambda: f.transform(s.paths)

    def raw() -> None:
        with torch.inference_mode():
            for i in range(0, n, bs):
                s.clip.model.get_image_features(pixel_values=s.ready[i : i + bs])

    current = dict(_onnx.SESSION_CONFIG)
    old = SPIN_OFF
    ort_old = featurizer("onnxruntime")

    def with_old_settings() -> None:
        _onnx.SESSION_CONFIG.clear()
        _onnx.SESSION_CONFIG.update(old)
        try:
            ort_old()
        finally:
            _onnx.SESSION_CONFIG.clear()
            _onnx.SESSION_CONFIG.update(current)

    fns = {
        "torch eager forward, ready tensors (baseline)": raw,
        "CLIPFeaturizer runtime=torch": featurizer("torch"),
        "CLIPFeaturizer runtime=onnxruntime": featurizer("onnxruntime"),
        "  ... n_jobs=2 (2 decode threads)": featurizer("onnxruntime", n_jobs=2),
    }
    if current != old:
        fns["  ... former session settings (spin off)"] = with_old_settings
    for fn in fns.values():
        fn()  # warm-up (sessions, threads)
    got = rounds(fns, s.args.rounds)
    print(f"\n5. end to end, {n} JPEG paths -> embeddings, batch {bs}, cache off")
    print(HEADER)
    base = got["torch eager forward, ready tensors (baseline)"][0]
    for name, (w, c) in got.items():
        print(row(name, w, c, n, f"{base / w:.2f}x baseline"))
    ratio = base / got["CLIPFeaturizer runtime=onnxruntime"][0]
    print(f"  ratio end to end ONNX Runtime / torch eager forward: {ratio:.2f}  (goal >= 1.3)")
    return ratio


def main() -> None:
    if sys.argv[1:2] == ["--ort-alone"]:
        ort_alone(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--size", default="320x240", help="JPEG width x height")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="vit-b32", choices=["vit-b32", "tiny"])
    parser.add_argument("--variant-batch", type=int, default=16, help="batch of table 2")
    parser.add_argument("--parts", default="1,2,3,4,5", help="which tables (1-5)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    start_load, start_jiffies, start_own = os.getloadavg()[0], busy_jiffies(), own_cpu()
    t0 = time.perf_counter()
    from _common import machine

    print(machine())
    print(f"load average at start: {start_load:.2f}")
    s = Setup(args)
    print(f"one-time ONNX export of the image tower: {s.export_s:.1f} s")
    parts = set(args.parts.split(","))
    forward = batch_sizes(s) if parts & {"1", "3"} else {}
    if "1" in parts:
        stages(s, forward)
    if "2" in parts:
        variants(s)
    if "3" in parts:
        print_batch_sizes(s, forward)
    if "4" in parts:
        torch_in_process(s)
    if "5" in parts:
        end_to_end(s)
    wall = time.perf_counter() - t0
    end_load, end_jiffies = os.getloadavg()[0], busy_jiffies()
    others = None
    if start_jiffies is not None and end_jiffies is not None:
        tick = os.sysconf("SC_CLK_TCK")
        others = max(0.0, ((end_jiffies - start_jiffies) / tick - (own_cpu() - start_own)) / wall)
    print(
        f"\nload average at end: {end_load:.2f} (counts this script's own threads); "
        f"other processes used {'?' if others is None else f'{others:.2f}'} cores on average "
        f"during the {wall:.0f} s run"
    )
    if start_load > 1.0 or (others is not None and others > 0.25):
        print("NOT COMPARABLE: the machine was busy (see above); numbers give a direction only")


if __name__ == "__main__":
    main()
