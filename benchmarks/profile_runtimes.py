"""Where the time goes from JPEG paths to embeddings, per stage, in PyTorch and ONNX Runtime.

On a ViT-B/32-size random CLIP and ``--n-images`` generated JPEGs (320x240 by default),
five tables, each row in milliseconds per image, wall and CPU time (the CPU time of the
whole process, every thread: what a stage costs the machine; on 2 cores kept busy the
wall throughput is about ``2 / CPU per image``), and the cores used (CPU / wall):

1. Stages: file read + hash, decode + preprocess (1 and 2 threads), the forward pass
   (PyTorch eager from ready float tensors, ``bench_featurizer.py``'s baseline, and ONNX
   Runtime), pooling + normalization + cache store.
2. The forward of one batch in ONNX Runtime session variants (spinning of the intra-op
   threads, 1 or 2 of them, graph optimization level, parallel execution with 2 inter-op
   threads, IO binding, the session made from the file or, as skclip does, from memory)
   and in PyTorch eager on 1 and 2 threads: how much work each runtime does (1 thread)
   and how well it uses 2 cores. Then the CPU that idle intra-op threads burn after a
   pass, when the next batch's images are decoded.
3. ONNX Runtime's forward at batch sizes 8, 16, 32 and 64.
4. Whether torch in the same process slows ONNX Runtime: its forward in a process that
   never imported torch, and here, right after a torch operation (its OpenMP threads may
   still spin) or after 0.2 s idle.
5. End to end, ``CLIPFeaturizer(cache=False).transform(paths)``: PyTorch, ONNX Runtime as
   skclip runs it, and ONNX Runtime decoding during the passes on one thread (as skclip
   did before), against PyTorch's eager forward on ready tensors: the ratio
   ``bench_featurizer.py`` prints (goal for ONNX Runtime: >= 1.3).

Every number is the median of ``--rounds`` rounds; in each round every row of a table
runs once, in turn, so a drift of the machine touches them alike. The load average is
printed at the start and the end, with the CPU time other processes used during the run
(``/proc/stat``): the results are marked "NOT COMPARABLE" if the load average at the start
is above 1.0 or other processes used more than a quarter of a core on average (the load
average at the end counts this script's own threads, so it is no test). About 3 minutes
on a quiet 2-core machine.

    python benchmarks/profile_runtimes.py [--n-images 64] [--rounds 3] [--size 320x240]
    python benchmarks/profile_runtimes.py --parts 2,5     # some tables only
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

Timing = tuple[float, float]  # (wall, CPU) seconds
SPIN_OFF = {"session.intra_op.allow_spinning": "0"}
SPIN_ON = {"session.intra_op.allow_spinning": "1"}  # ONNX Runtime's default
# spin at most 100 us in a pass (onnxruntime >= 1.26), none after it
SPIN_100_US = {
    **SPIN_ON,
    "session.force_spinning_stop": "1",
    "session.intra_op.spin_duration_us": "100",
}


def variant_table(own: dict[str, str]) -> dict[str, tuple[int, dict[str, str], dict[str, str]]]:
    """ONNX Runtime session variants: name -> (intra-op threads, config entries, other
    options); each changes one thing from skclip's settings ``own``."""
    return {
        "skclip's settings, session from the file": (2, own, {}),
        "spin off": (2, SPIN_OFF, {}),
        "spin on (ORT's default: 2**20 pauses)": (2, SPIN_ON, {}),
        "spin <= 100 us in a pass, stop after it": (2, SPIN_100_US, {}),
        "1 intra-op thread": (1, own, {}),
        "graph optimization: basic": (2, own, {"opt": "basic"}),
        "graph optimization: extended": (2, own, {"opt": "extended"}),
        "parallel execution, 2 inter-op threads": (2, own, {"mode": "parallel"}),
    }


# -- measuring -------------------------------------------------------------------------------
def timed(fn: Callable[[], object]) -> Timing:
    """(wall, CPU) seconds of one call; CPU counts every thread of the process."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def rounds(fns: dict[str, Callable[[], object]], n: int) -> dict[str, Timing]:
    """Median (wall, CPU) of each function over ``n`` rounds, all of them once per round."""
    got: dict[str, list[Timing]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            got[name].append(timed(fn))
    return {name: median(ts) for name, ts in got.items()}


def median(ts: list[Timing]) -> Timing:
    return statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)


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


def table(title: str, got: dict[str, Timing], per: int, ref: float | None = None) -> None:
    """Print a table: milliseconds per image (wall, CPU), images per second, cores used
    (CPU / wall), and the speed relative to the wall time ``ref`` if given."""
    print(f"\n{title}")
    print(f"  {'':<48s} {'wall ms':>8s} {'CPU ms':>8s} {'img/s':>7s} {'cores':>5s}  (per image)")
    for name, (wall, cpu) in got.items():
        extra = f"  {ref / wall:5.2f}x" if ref else ""
        print(
            f"  {name:<48s} {wall / per * 1e3:8.2f} {cpu / per * 1e3:8.2f} {per / wall:7.1f} "
            f"{cpu / wall:5.2f}{extra}"
        )


# -- ONNX Runtime, without torch (also run in a process that never imports torch) -----------
def ort_session(model: str, threads: int, config: dict[str, str], other: dict[str, str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    parallel = other.get("mode") == "parallel"
    options.inter_op_num_threads = 2 if parallel else 1
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }.get(other.get("opt", ""), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3
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

        from skclip._images import open_image
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
        self.export_s = timed(lambda: _onnx.export(self.clip, progress=False))[0]
        self.encoder = _onnx.image_encoder(self.clip)
        self.onnx_file = str(self.encoder.path / "model.onnx")
        self.config = dict(_onnx.SESSION_CONFIG)
        self.pixels = np.stack([self.clip.preprocessor(open_image(p)) for p in self.paths])
        self.ready = self.clip.preprocessor.normalize(torch.from_numpy(self.pixels))
        self.results: dict[str, dict[str, Timing]] = {}

    def torch_forward(self, n: int, batch_size: int) -> Callable[[], None]:
        """PyTorch's eager forward of the first ``n`` ready float tensors."""
        import torch

        def run() -> None:
            with torch.inference_mode():
                for i in range(0, n, batch_size):
                    self.clip.model.get_image_features(pixel_values=self.ready[i : i + batch_size])

        return run


def stages(s: Setup) -> dict[str, Timing]:
    """Table 1 (its forward rows come from tables 3 and 5)."""
    import torch

    from skclip._hashing import hasher
    from skclip._images import open_image
    from skclip.encoding import engine
    from skclip.encoding.cache import EmbeddingCache, _read_bytes

    n, bs = len(s.paths), s.args.batch_size
    data = [_read_bytes(p) for p in s.paths]
    cache = EmbeddingCache("profile" * 3, s.clip.embedding_dim)
    emb = torch.from_numpy(s.encoder(s.pixels[:bs]))
    keys = [f"{k:032x}" for k in range(len(emb))]

    def read_hash() -> None:
        for p in s.paths:
            hasher().update(_read_bytes(p))

    def decode(b: bytes) -> np.ndarray:
        return s.clip.preprocessor(open_image("x.jpg", data=b))

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
        return rounds(fns, s.args.rounds)


def print_stages(s: Setup) -> None:
    n, bs = len(s.paths), s.args.batch_size
    got = dict(s.results["1"])
    if "5" in s.results:
        got[f"forward torch eager, batch {bs}"] = s.results["5"][BASELINE]
    if "3" in s.results:
        got[f"forward ONNX Runtime, batch {bs}"] = s.results["3"][f"batch {bs}"]
    table(f"1. stages, {n} {s.args.size} JPEGs, batch {bs}", got, n)
    cpu = sum(c for name, (w, c) in got.items() if "2 threads" not in name and "torch" not in name)
    print(
        f"  ONNX Runtime path, CPU per image over all stages: {cpu / n * 1e3:.1f} ms, so at most "
        f"{2 * n / cpu:.1f} img/s on 2 cores"
    )


def variants(s: Setup) -> dict[str, Timing]:
    """Table 2: session variants against skclip's own session, and torch eager."""
    import torch

    bs = min(s.args.variant_batch, len(s.paths))
    batch = np.ascontiguousarray(s.pixels[:bs])
    sessions = {
        name: ort_session(s.onnx_file, threads, config, other)
        for name, (threads, config, other) in variant_table(s.config).items()
    }
    own = s.encoder.session  # made from the verified bytes in memory, as skclip does

    def io_binding() -> None:
        binding = own.io_binding()
        binding.bind_cpu_input("pixels", batch)
        binding.bind_output("features")
        own.run_with_iobinding(binding)
        binding.copy_outputs_to_cpu()

    def torch_eager(threads: int) -> Callable[[], None]:
        forward = s.torch_forward(bs, bs)

        def run() -> None:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                forward()
            finally:
                torch.set_num_threads(before)

        return run

    fns: dict[str, Callable[[], object]] = {
        "skclip's session (settings, made from memory)": lambda: own.run(None, {"pixels": batch}),
        "skclip's session + IO binding": io_binding,
        **{name: (lambda x=x: x.run(None, {"pixels": batch})) for name, x in sessions.items()},
        "torch eager, 2 threads": torch_eager(2),
        "torch eager, 1 thread": torch_eager(1),
    }
    for fn in fns.values():
        fn()
    got = rounds(fns, s.args.rounds)
    for name in ("spin on (ORT's default: 2**20 pauses)", "spin off"):
        got[f"{name}: CPU of idle threads in the 0.1 s after a pass"] = spin_burn(
            sessions[name], batch
        )
    got["skclip's: CPU of idle threads in the 0.1 s after a pass"] = spin_burn(own, batch)
    return got


def spin_burn(session, batch: np.ndarray) -> Timing:
    """(0.1 s, CPU used) over the 0.1 s after a pass: idle threads spinning."""
    burnt = []
    for _ in range(3):
        session.run(None, {"pixels": batch})
        c = time.process_time()
        time.sleep(0.1)
        burnt.append(time.process_time() - c)
    return 0.1, statistics.median(burnt)


def print_variants(s: Setup) -> None:
    got = s.results["2"]
    bs = min(s.args.variant_batch, len(s.paths))
    ref = got["skclip's session (settings, made from memory)"][0]
    runs = {name: t for name, t in got.items() if "idle threads" not in name}
    table(f"2. forward of one batch of {bs}, x = speed relative to skclip's session", runs, bs, ref)
    t1, o1 = got["torch eager, 1 thread"][1], got["1 intra-op thread"][1]  # CPU: work
    t2, o2 = got["torch eager, 2 threads"][0], ref
    print(
        f"  work (CPU on 1 thread), torch / ONNX Runtime: {t1 / o1:.2f}; use of 2 cores "
        f"(CPU on 1 thread / (2 x wall on 2)): torch {t1 / (2 * t2):.2f}, ONNX Runtime "
        f"{o1 / (2 * o2):.2f}"
    )
    for name, (_, cpu) in got.items():
        if "idle threads" in name:
            print(f"  {name}: {cpu * 1e3:.1f} ms")


def batch_sizes(s: Setup) -> dict[str, Timing]:
    """Table 3: ONNX Runtime's forward over all images at batch sizes 8 to 64."""
    n = len(s.paths)
    sizes = sorted({b for b in (8, 16, 32, 64, s.args.batch_size) if b <= n})

    def run(size: int) -> Callable[[], None]:
        return lambda: [s.encoder(s.pixels[i : i + size]) for i in range(0, n, size)] and None

    for size in sizes:
        s.encoder(s.pixels[:size])  # warm-up: this shape's buffers
    return rounds({f"batch {size}": run(size) for size in sizes}, s.args.rounds)


def torch_in_process(s: Setup) -> dict[str, Timing]:
    """Table 4: ONNX Runtime's forward without torch in the process, and with it."""
    import torch

    bs = s.args.batch_size
    batch = np.ascontiguousarray(s.pixels[:bs])
    pixels_file = os.path.join(s.folder, "pixels.npy")
    np.save(pixels_file, batch)
    config = json.dumps([s.encoder.threads, s.config])
    cmd = [sys.executable, __file__, "--ort-alone", s.onnx_file, pixels_file, config]
    out = subprocess.run([*cmd, str(s.args.rounds)], capture_output=True, text=True, check=True)
    alone = json.loads(out.stdout.strip().splitlines()[-1])["alone"]
    a = torch.randn(512, 512)
    preludes = {
        "torch imported, right after a torch op": lambda: a @ a,  # its threads may spin
        "torch imported, idle for 0.2 s before": lambda: time.sleep(0.2),  # they sleep
    }
    got: dict[str, list[Timing]] = {name: [] for name in preludes}
    s.encoder(batch)
    for _ in range(s.args.rounds):
        for name, prelude in preludes.items():
            prelude()
            got[name].append(timed(lambda: s.encoder(batch)))
    return {
        "process without torch (subprocess)": tuple(alone),
        **{k: median(v) for k, v in got.items()},
    }


BASELINE = "torch eager forward, ready tensors (baseline)"
SKCLIP_ORT = "runtime=onnxruntime, as skclip runs it"


def end_to_end(s: Setup) -> dict[str, Timing]:
    """Table 5: CLIPFeaturizer from the paths, both runtimes, and ONNX Runtime decoding
    during its passes (on one thread) as skclip did before."""
    from skclip import CLIPFeaturizer
    from skclip.encoding import engine

    n, bs = len(s.paths), s.args.batch_size

    def featurizer(runtime: str, between: bool = True) -> Callable[[], None]:
        f = CLIPFeaturizer(
            model=s.model_dir, runtime=runtime, batch_size=bs, cache=False, progress=False
        )

        def run() -> None:
            engine.ONNX_DECODE_BETWEEN = between
            try:
                f.transform(s.paths)
            finally:
                engine.ONNX_DECODE_BETWEEN = True

        return run

    fns = {
        BASELINE: s.torch_forward(n, bs),
        "runtime=torch": featurizer("torch"),
        SKCLIP_ORT: featurizer("onnxruntime"),
        "  ... decoding during passes, 1 thread (before)": featurizer("onnxruntime", False),
    }
    for fn in fns.values():
        fn()  # warm-up (threads)
    return rounds(fns, s.args.rounds)


def print_end_to_end(s: Setup) -> None:
    got, n = s.results["5"], len(s.paths)
    base = got[BASELINE][0]
    table(
        f"5. end to end, {n} JPEG paths -> embeddings, batch {s.args.batch_size}, cache off, "
        "x = speed relative to the baseline",
        got,
        n,
        base,
    )
    ratio = base / got[SKCLIP_ORT][0]
    print(f"  ratio end to end, ONNX Runtime / torch eager forward: {ratio:.2f}  (goal >= 1.3)")


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
    parser.add_argument("--variant-batch", type=int, default=8, help="batch of table 2")
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
    steps = {"1": stages, "2": variants, "3": batch_sizes, "4": torch_in_process, "5": end_to_end}
    for part, step in steps.items():
        if part in parts or (part in "35" and "1" in parts):  # table 1 shows two of theirs
            print(f"measuring for table {part} ...", file=sys.stderr, flush=True)
            s.results[part] = step(s)
    report(s, parts)
    wall = time.perf_counter() - t0
    end_load, end_jiffies = os.getloadavg()[0], busy_jiffies()
    others = None
    if start_jiffies is not None and end_jiffies is not None:
        used = (end_jiffies - start_jiffies) / os.sysconf("SC_CLK_TCK")
        others = max(0.0, (used - (own_cpu() - start_own)) / wall)
    print(
        f"\nload average at end: {end_load:.2f} (counts this script's own threads); other "
        f"processes used {'?' if others is None else f'{others:.2f}'} cores on average "
        f"during the {wall:.0f} s run"
    )
    if start_load > 1.0 or (others is not None and others > 0.25):
        print("NOT COMPARABLE: the machine was busy (see above); the numbers give a direction only")


def report(s: Setup, parts: set[str]) -> None:
    if "1" in parts:
        print_stages(s)
    if "2" in parts:
        print_variants(s)
    if "3" in parts:
        got = s.results["3"]
        n, bs = len(s.paths), s.args.batch_size
        table(
            f"3. ONNX Runtime's forward, {n} images, x = speed relative to batch {bs}",
            got,
            n,
            got[f"batch {bs}"][0],
        )
    if "4" in parts:
        table(
            f"4. ONNX Runtime's forward of one batch of {s.args.batch_size}, with torch or not",
            s.results["4"],
            s.args.batch_size,
        )
    if "5" in parts:
        print_end_to_end(s)


if __name__ == "__main__":
    main()
