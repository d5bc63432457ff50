"""End-to-end CLIPFeaturizer throughput vs the raw model forward, and one-image latency.

1. Throughput. Baseline: PyTorch's eager ``get_image_features`` on ready, normalized
   pixel tensors already on the device (no decoding, no preprocessing), same batch
   size and dtype. Measured: ``CLIPFeaturizer(cache=False).transform`` from JPEG paths
   to normalized embeddings. Prints (end-to-end throughput) / (raw throughput): 1.0
   means decoding and preprocessing are fully hidden behind the model; above 1 the
   featurizer's runtime is faster than PyTorch eager (ONNX Runtime on the CPU).
2. Latency (``--latency``): ``Pipeline([CLIPFeaturizer, TipAdapterClassifier]).predict``
   of one JPEG never seen before (warm model and caches), divided by the raw forward of
   that one image (batch 1, ready tensor). Goal <= 1.3.

Every ratio is the median of paired rounds (baseline and measured back to back).

    python benchmarks/bench_featurizer.py [--n-images 200] [--batch-size 32] [--rounds 5]
    python benchmarks/bench_featurizer.py --device cuda --n-jobs 16 --n-images 1000
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import jpeg_folder, load_guard, machine, paired, vit_b32_folder  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from skclip import CLIPFeaturizer, TipAdapterClassifier  # noqa: E402
from skclip._images import CLIPPreprocessor, open_image  # noqa: E402
from skclip.backbones.loading import load_backbone  # noqa: E402


def _featurizer_params(args: argparse.Namespace) -> dict:
    params = dict(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        n_jobs=args.n_jobs,
        progress=False,
    )
    if "runtime" in inspect.signature(CLIPFeaturizer).parameters:
        params["runtime"] = args.runtime
    elif args.runtime != "torch":
        sys.exit("this skclip has no CLIPFeaturizer(runtime=...)")
    return params


def _raw_forward(clip, pixels: torch.Tensor, batch_size: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            clip.model.get_image_features(pixel_values=pixels[i : i + batch_size])
    if clip.device.type == "cuda":
        torch.cuda.synchronize()


def throughput(args: argparse.Namespace, model_dir: str) -> None:
    paths = jpeg_folder(args.n_images)
    clip = load_backbone(model_dir, args.device, args.dtype)
    prep = CLIPPreprocessor(clip.image_config)
    pixels = torch.from_numpy(np.stack([prep(open_image(p)) for p in paths]))
    pixels = prep.normalize(pixels.to(clip.device), clip.dtype)
    featurizer = CLIPFeaturizer(model=model_dir, cache=False, **_featurizer_params(args))

    def raw() -> None:
        _raw_forward(clip, pixels, args.batch_size)

    def end_to_end() -> None:
        featurizer.transform(paths)

    raw(), end_to_end()  # warm-up: allocator, threads, file cache, ONNX export/session
    result = paired(raw, end_to_end, args.rounds)
    n = len(paths)
    print(
        f"throughput: device={clip.device} dtype={clip.dtype} runtime={args.runtime} "
        f"images={n} (500x375 JPEG) batch_size={args.batch_size} n_jobs={args.n_jobs}"
    )
    print(
        f"  raw get_image_features (PyTorch eager), ready tensors: {n / result.baseline:8.1f} img/s"
    )
    print(
        "  CLIPFeaturizer paths -> embeddings:                     "
        f"{n / result.measured:8.1f} img/s"
    )
    print(
        "  "
        + result.line(
            "featurizer throughput / raw forward throughput", args.goal or ">= 0.9", speedup=True
        )
    )


def latency(args: argparse.Namespace, model_dir: str) -> None:
    folder = tempfile.mkdtemp(prefix="skclip-bench-latency-")
    train = jpeg_folder(20, folder=os.path.join(folder, "train"))
    fresh = iter(
        jpeg_folder(2 * args.rounds + 4, size=(480, 360), folder=os.path.join(folder, "fresh"))
    )  # never seen: cache misses
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=model_dir, cache=False, **_featurizer_params(args))),
            ("tip", TipAdapterClassifier(clip_model=model_dir, device=args.device)),
        ]
    ).fit(train, np.repeat(["a", "b"], 10))
    clip = load_backbone(model_dir, args.device, args.dtype)
    prep = CLIPPreprocessor(clip.image_config)
    one = prep.normalize(
        torch.from_numpy(prep(open_image(train[0]))[None]).to(clip.device), clip.dtype
    )

    def raw() -> None:
        _raw_forward(clip, one, 1)

    def predict_one() -> None:
        pipe.predict([next(fresh)])

    raw(), predict_one(), predict_one()  # warm-up
    result = paired(raw, predict_one, args.rounds)
    print(
        f"latency: one new 480x360 JPEG, Pipeline.predict vs the raw forward of one image "
        f"(device={clip.device}, runtime={args.runtime})"
    )
    print(
        f"  raw forward {result.baseline * 1e3:.1f} ms, Pipeline.predict "
        f"{result.measured * 1e3:.1f} ms"
    )
    print("  " + result.line("one-image Pipeline.predict / raw forward", "<= 1.3"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "auto"])
    parser.add_argument("--n-jobs", type=int, default=None, help="decode threads")
    parser.add_argument("--goal", default=None, help="goal printed next to the throughput ratio")
    parser.add_argument("--latency", action="store_true", help="also the one-image latency")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    load_guard()
    print(machine())
    model_dir = vit_b32_folder()
    if not args.skip_throughput:
        throughput(args, model_dir)
    if args.latency:
        latency(args, model_dir)


if __name__ == "__main__":
    main()
