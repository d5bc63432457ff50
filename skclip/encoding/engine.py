"""The encoding engine: images in, embeddings and the errors of bad inputs out.

Used by :class:`skclip.CLIPFeaturizer` (parameters, validation, scikit-learn API) and
by :func:`skclip.distributed.transform` (one call per partition on a worker). One
call of :func:`encode` runs these small steps:

1. :func:`lookup` (calling thread, cheap): digests of in-memory images and of files
   hashed before and unchanged since, and their cache hits, which need no decoding.
2. :func:`prepare` (decode threads, through :func:`prefetch`): read each other file
   once, hash those bytes and look them up, decode the misses from the same bytes (so
   an embedding is stored under the digest of exactly what was decoded), crop them
   (:func:`crops`: the clean view, or ``n_views`` random views seeded by the image's
   content, :func:`view_rng`).
3. :func:`embed` (calling thread): :func:`tower`, the forward pass of the
   checkpoint's family adapter (:mod:`skclip.backbones.families`) or its ONNX Runtime export,
   then :func:`pool_views` (the mean of the raw views, then normalization).
4. :func:`store`: cache writes.

Every input is handled inside its own error handling (:func:`item_error`), so a bad
input becomes one :class:`ItemError` naming it, never an exception that loses the
others; :func:`report_errors` raises or warns once for all of them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from PIL import Image
from sklearn.utils import check_random_state
from tqdm.auto import tqdm

from .claims import claim, release, wait_for
from .cache import (
    FILE_DIGESTS,
    MEMORY,
    ROWS,
    EmbeddingCache,
    _read_bytes,
    memory_digest,
    settings_digest,
    worker_folder,
)
from ..backbones import onnx as _onnx
from .._images import DECODE_RULES, ImageLoadError, ImageLoadWarning, describe, open_image
from ..backbones.identity import CheckpointInfo
from .stamps import Lease
from ..backbones.loading import Backbone, load_backbone, resolve_device
from ..backbones.preprocess import Preprocessor


# -- named results ---------------------------------------------------------------------------
class ItemError(NamedTuple):
    """A bad input: its position in the input and a message naming it."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, by name only
    message: str


class Lookup(NamedTuple):
    """What :func:`lookup` found in the calling thread."""

    digests: list[str | None]  # content digest per input (None: a file not hashed yet)
    hit_index: list[int]  # input positions of the cache hits
    hit_vecs: list[np.ndarray]  # their cached embeddings, in the same order
    todo: list[int]  # positions still to hash, look up or encode, in input order
    errors: list[ItemError]  # in-memory inputs that could not even be hashed
    lease: Lease | None = None  # on the files' stamps, when all are files with known digests


class Prepared(NamedTuple):
    """One batch after :func:`prepare`, in a decode thread."""

    found: list[tuple[int, np.ndarray]]  # cache hits of files hashed in the thread
    kept: list[int]  # positions decoded, in the order of ``pixels``
    keys: list[str | None]  # content digest of each kept input (its cache key)
    pixels: dict[str, np.ndarray] | None  # collated uint8 views of the kept inputs, or None
    errors: list[ItemError]


class Encoded(NamedTuple):
    """The result of :func:`encode`: embeddings (NaN rows for bad inputs) and the errors."""

    embeddings: np.ndarray
    errors: list[ItemError]


@dataclass(frozen=True)
class EncodeSpec:
    """Everything one :func:`encode` call needs besides the inputs.

    Attributes
    ----------
    clip : Backbone
        The loaded checkpoint, with its family's adapter.
    preprocess : Preprocessor
        The checkpoint's preprocessing (``clip.preprocessor``).
    normalize : bool
        L2-normalize each output row.
    n_views : int
        0: the clean, center-cropped view; ``k > 0``: the pooled mean of ``k`` random views.
    seed : int or None
        Seed of the views (with each image's content); None when ``n_views == 0``.
    cache : EmbeddingCache or None
    batch_size : int
        Inputs per forward pass.
    n_threads : int
        Decode threads.
    progress : bool or "auto"
    encoder : skclip.backbones.onnx.ImageEncoder or None
        The ONNX Runtime image tower (``runtime="onnxruntime"``), or None for PyTorch.
    decode_between : bool
        Decode each batch between forward passes, on every decode thread
        (:func:`decoded_between`), instead of during them.
    """

    clip: Backbone
    preprocess: Preprocessor
    normalize: bool
    n_views: int
    seed: int | None
    cache: EmbeddingCache | None
    batch_size: int
    n_threads: int
    progress: bool | str = "auto"
    encoder: _onnx.ImageEncoder | None = None
    decode_between: bool = False

    @property
    def needs_digests(self) -> bool:
        """Content digests key the cache and seed the views."""
        return self.cache is not None or self.n_views > 0


# -- inputs and settings -----------------------------------------------------------------------
def as_items(X: Any) -> list:
    """The inputs as a flat list of images (paths, PIL images or arrays), read once.

    Any iterable works, a one-shot generator included: it is consumed here, once.
    """
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise ValueError(
            f"Expected a sequence of images, got a single {type(X).__name__}; wrap it in a list: "
            "featurizer.transform([image])."
        )
    if hasattr(X, "iloc"):  # pandas Series or DataFrame
        if X.ndim == 2:
            if X.shape[1] != 1:
                raise ValueError(
                    f"Expected a one-column DataFrame of images, got {X.shape[1]} columns "
                    f"({list(X.columns)}); select the image column first."
                )
            X = X.iloc[:, 0]
        return X.tolist()
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "OUS":
            if X.ndim == 2 and X.shape[1] == 1:
                X = X[:, 0]
            if X.ndim != 1:
                raise ValueError(
                    f"Expected a 1-D array of file paths or images, got shape {X.shape}."
                )
            return X.tolist() if X.dtype.kind in "US" else list(X)
        if X.ndim in (3, 4):  # a stack of images: (n, H, W) or (n, H, W, C)
            return list(X)
        raise ValueError(
            f"Got a numeric array of shape {X.shape}: pass a list of images, or a stack of shape "
            "(n_images, height, width) or (n_images, height, width, channels)."
        )
    if not isinstance(X, Sequence) and not hasattr(X, "__iter__"):
        raise ValueError(f"Expected a sequence of images, got {type(X).__name__}.")
    return list(X)


def check_items(X: Any) -> list:
    """:func:`as_items`, refusing an empty input."""
    items = as_items(X)
    if len(items) == 0:
        raise ValueError("Found 0 images: CLIPFeaturizer needs at least one image.")
    return items


#: With ONNX Runtime on the CPU and ``n_jobs=None``, decode between the forward passes on
#: as many threads as ONNX Runtime's (:func:`decoded_between`), not during them on one:
#: the pass keeps every core busy. ``benchmarks/profile_runtimes.py`` measures both.
ONNX_DECODE_BETWEEN = True


def n_threads(n_jobs: int | None, device: torch.device) -> int:
    """Decode threads for ``n_jobs``: None is 1 on the CPU (the model uses every core),
    ``min(8, cpus)`` on an accelerator; negative counts from the number of CPUs."""
    cpus = os.cpu_count() or 1
    if n_jobs is None:
        return 1 if device.type == "cpu" else min(8, cpus)
    if n_jobs < 0:
        return max(1, cpus + 1 + n_jobs)
    return int(n_jobs)


def draw_seed(random_state: Any, n_views: int) -> int | None:
    """The views' seed for one call: drawn from ``random_state`` (None: a fresh one)."""
    if n_views == 0:
        return None
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def view_seeds(random_state: Any, n_views: int) -> list[int]:
    """Seeds of ``n_views`` single random views (``CLIPFeaturizer(train_views=...)``):
    one seed drawn from ``random_state``, then one per view index, so view ``e`` (and its
    cache entry) is the same whatever the number of views."""
    if n_views == 0:
        return []
    base = draw_seed(random_state, 1)
    assert base is not None  # one view: a seed is drawn
    return [int(np.random.SeedSequence([base, e]).generate_state(1)[0]) for e in range(n_views)]


# How views are pooled; part of the settings of augmented embeddings, so that entries
# pooled another way (earlier versions averaged normalized views) are never reused.
VIEW_POOLING = "normalized mean of raw views"


# cache_settings per loaded model (dropped with it): computed once, not on every call;
# the most recently used few per model (a fresh seed per call must not grow it)
_SETTINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SETTINGS_PER_MODEL = 64


def cache_settings(
    clip: Backbone, normalize: bool, n_views: int, seed: int | None, encoder: str | None = None
) -> str:
    """Digest of everything besides the image that determines an embedding.

    ``encoder`` is the identity of the ONNX Runtime tower that encodes
    (:attr:`skclip.backbones.onnx.ImageEncoder.identity`: its export's checksums, ONNX Runtime's
    version, the precision), or None for PyTorch (whose entries keep the keys they
    always had)."""
    memo = _SETTINGS.setdefault(clip, OrderedDict())
    key = (bool(normalize), n_views, seed, encoder)
    if key in memo:
        memo.move_to_end(key)
    else:
        memo[key] = _cache_settings(clip, *key)
        if len(memo) > _SETTINGS_PER_MODEL:
            memo.popitem(last=False)
    return memo[key]


def _cache_settings(
    clip: Backbone | CheckpointInfo,
    normalize: bool,
    n_views: int,
    seed: int | None,
    encoder: str | None,
) -> str:
    parts: tuple = (
        clip.vision_fingerprint,
        sorted(clip.image_config.items()),
        str(clip.dtype),
        clip.device.type,
        normalize,
        n_views,
        seed,
        DECODE_RULES,
    )
    if n_views > 0:
        parts += (VIEW_POOLING,)
    if encoder is not None:
        parts += ("onnxruntime", encoder, _onnx.EXPORT_FORMAT)
    return settings_digest(*parts)


RUNTIMES = ("auto", "torch", "onnxruntime")

#: Whether ``runtime="auto"`` picks ONNX Runtime on the CPU in float32 when it is installed.
#: False: from image files to embeddings on 2 cores it was about 1.2x PyTorch's eager
#: forward (both keep the cores busy, so the gain is the ratio of their work, decoding
#: included), short of the 1.3x that would pay for its one-time export and the second or
#: two each process spends checking and loading it (``benchmarks/profile_runtimes.py``;
#: README, "Which runtime"). ``runtime="onnxruntime"`` asks for it.
AUTO_PICKS_ONNXRUNTIME = False


def resolve_runtime(runtime: str, device: torch.device, dtype: str) -> str:
    """``"torch"`` or ``"onnxruntime"``: what encodes for these featurizer parameters.

    ``"auto"`` is PyTorch (ONNX Runtime on the CPU in float32, when installed, if
    :data:`AUTO_PICKS_ONNXRUNTIME`). ``dtype="int8"`` exists only in ONNX Runtime.
    """
    if dtype == "int8":
        if runtime == "torch":
            raise ValueError(
                "dtype='int8' is ONNX Runtime's dynamic quantization: use runtime='onnxruntime' "
                "or runtime='auto', or a torch dtype ('float32', 'float16', 'bfloat16')."
            )
        runtime = "onnxruntime"
    if runtime == "auto":
        cpu_float32 = device.type == "cpu" and dtype in ("auto", "float32")
        onnx = AUTO_PICKS_ONNXRUNTIME and cpu_float32 and _onnx.is_available()
        return "onnxruntime" if onnx else "torch"
    if runtime == "onnxruntime":
        if device.type != "cpu":
            raise ValueError(
                f"runtime='onnxruntime' runs on the CPU; device={str(device)!r} was given. Use "
                "runtime='auto' (PyTorch on a GPU) or runtime='torch'."
            )
        if dtype not in ("auto", "float32", "int8"):
            raise ValueError(
                f"runtime='onnxruntime' runs in float32 (or dtype='int8'), not dtype={dtype!r}."
            )
        _onnx.require()
    return runtime


def model_dtype(dtype: str) -> str:
    """The torch dtype to load the model in for a featurizer ``dtype`` (``"int8"`` is
    quantized from the float32 model)."""
    return "float32" if dtype == "int8" else dtype


def onnx_encoder(
    clip: Backbone, dtype: str, strict: bool, progress: bool | str = "auto"
) -> _onnx.ImageEncoder | None:
    """The ONNX Runtime tower of ``clip``; None (PyTorch) if it cannot be exported and
    ONNX Runtime was not asked for explicitly (``strict=False``: ``runtime="auto"``).
    An export made now says so on stderr unless ``progress`` is False."""
    onnx_dtype = "int8" if dtype == "int8" else "float32"
    failed = _ONNX_FAILED.setdefault(clip, set())
    if not strict and onnx_dtype in failed:
        return None  # tried once for this loaded model: no export attempt per call
    try:
        return _onnx.image_encoder(clip, dtype=onnx_dtype, progress=progress)
    except Exception as exc:
        if strict:
            raise
        failed.add(onnx_dtype)
        _onnx.warn_fallback(clip, exc)
        return None


def export_onnx(model: Any, dtype: str = "auto", progress: bool | str = "auto") -> Path:
    """The ONNX export that ``runtime="onnxruntime"`` (and ``"auto"`` on the CPU) uses for
    a featurizer's ``model`` and ``dtype``, made now if it is missing or broken (see
    :func:`skclip.backbones.onnx.export`): ``"int8"`` is quantized, any other of
    ``"auto"`` and ``"float32"`` is float32. The model is loaded on the CPU in float32
    whatever the featurizer's device."""
    if dtype not in ("auto", "float32", "int8"):
        raise ValueError(
            f"ONNX Runtime runs in float32 (or dtype='int8'): there is no export for "
            f"dtype={dtype!r}, which runs in PyTorch."
        )
    _onnx.require()
    clip = load_backbone(model, "cpu", "float32")
    return _onnx.export(clip, "int8" if dtype == "int8" else "float32", progress=progress)


#: Loaded models whose ONNX export failed under runtime="auto", per ONNX dtype.
_ONNX_FAILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_only(
    items: list, featurizer: Any, info: CheckpointInfo, n_views: int, seed: int | None
) -> np.ndarray | None:
    """The embeddings of ``items`` if *every* one is in the cache, found without the
    model: ``info`` (the checkpoint's recorded identity,
    :func:`skclip.backbones.loading.checkpoint_identity`) and the recorded identity of its
    ONNX export (:func:`skclip.backbones.onnx.recorded_identity`) make exactly the key
    that :func:`spec_for` would. None as soon as one is missing, cannot be read, or the
    key cannot be known without the model (ONNX Runtime with no export yet): then
    :func:`encode` does the work (files hashed here are not read again to look up).
    """
    if not featurizer.cache or featurizer.progress is True:
        return None  # a bar was asked for: encode() shows it
    runtime = resolve_runtime(featurizer.runtime, info.device, featurizer.dtype)
    encoder = None
    strict = featurizer.runtime == "onnxruntime" or featurizer.dtype == "int8"
    if runtime == "onnxruntime" and (strict or _onnx.supports(info)):
        encoder = _onnx.recorded_identity(info, "int8" if featurizer.dtype == "int8" else "float32")
        if encoder is None:
            return None
    settings = _cache_settings(info, featurizer.normalize, n_views, seed, encoder)
    folder = featurizer.cache_dir if featurizer.cache_dir is not None else worker_folder()
    cache = EmbeddingCache(settings, info.embedding_dim, folder, unit=featurizer.normalize)
    vecs = []
    for i, item in enumerate(items):
        try:
            digest = known_digest(item)
            if digest is None and isinstance(item, (str, os.PathLike)):
                digest = FILE_DIGESTS.read(os.fspath(item), i)[0]
        except Exception:  # noqa: BLE001 - a bad input: encode() names it
            return None
        vec = None if digest is None else cache.get(digest)
        if vec is None:
            return None
        vecs.append(vec)
    MEMORY.count(hits=len(items), misses=0)
    return np.stack(vecs)


def spec_for(
    featurizer: Any, n_views: int, seed: int | None, progress: bool | str | None = None
) -> EncodeSpec:
    """The :class:`EncodeSpec` of a :class:`~skclip.CLIPFeaturizer`'s (public) parameters.

    Loads the model (once per process). ``progress`` overrides the featurizer's.
    """
    device = resolve_device(featurizer.device)
    runtime = resolve_runtime(featurizer.runtime, device, featurizer.dtype)
    clip = load_backbone(featurizer.model, device, model_dtype(featurizer.dtype))
    progress = featurizer.progress if progress is None else progress
    encoder = None
    strict = featurizer.runtime == "onnxruntime" or featurizer.dtype == "int8"
    if runtime == "onnxruntime" and (strict or _onnx.supports(clip)):  # "auto": fixed sizes
        encoder = onnx_encoder(clip, featurizer.dtype, strict, progress)
    cache = None
    if featurizer.cache:
        MEMORY.maxsize = featurizer.cache_size
        identity = None if encoder is None else encoder.identity
        settings = cache_settings(clip, featurizer.normalize, n_views, seed, identity)
        folder = featurizer.cache_dir if featurizer.cache_dir is not None else worker_folder()
        cache = EmbeddingCache(settings, clip.embedding_dim, folder, unit=featurizer.normalize)
    between = ONNX_DECODE_BETWEEN and encoder is not None and featurizer.n_jobs is None
    threads = encoder.threads if encoder is not None and between else None
    return EncodeSpec(
        clip=clip,
        preprocess=clip.preprocessor,
        normalize=featurizer.normalize,
        n_views=n_views,
        seed=seed,
        cache=cache,
        batch_size=featurizer.batch_size,
        n_threads=threads or n_threads(featurizer.n_jobs, clip.device),
        progress=progress,
        encoder=encoder,
        decode_between=between,
    )


# -- per item: digests, errors, views ----------------------------------------------------------
def item_error(item: Any, index: int, exc: BaseException) -> ItemError:
    """The :class:`ItemError` for an exception raised while handling one input."""
    if isinstance(exc, ImageLoadError):
        return ItemError(index, str(exc))
    return ItemError(index, f"Cannot process {describe(item, index)}: {exc!r}")


def known_digest(item: Any) -> str | None:
    """Content digest without reading a file: in-memory images are hashed (which loads a
    lazily opened PIL image, and may fail); a file only if it is unchanged since it was
    hashed; None otherwise (unknown files, unsupported types)."""
    if isinstance(item, (str, os.PathLike)):
        return FILE_DIGESTS.known(os.fspath(item))
    if isinstance(item, (Image.Image, np.ndarray)):
        return memory_digest(item)
    return None  # open_image names the unsupported type


def view_rng(seed: int, digest: str) -> np.random.Generator:
    """The random stream of an image's views: from the call's seed and the image's
    content, so its views do not depend on batching, threads or its position."""
    return np.random.default_rng([seed, int(digest[:16], 16)])


def crops(img: Image.Image, spec: EncodeSpec, digest: str | None) -> list[np.ndarray]:
    """The ``uint8`` arrays to encode for one image (``(3, H, W)`` crops, or NaFlex
    patches): its clean view, or ``spec.n_views`` random views."""
    if spec.n_views == 0:
        return [spec.preprocess(img)]
    if digest is None:
        raise ValueError("its content could not be hashed to seed its augmented views")
    assert spec.seed is not None  # views have a seed
    rng = view_rng(spec.seed, digest)
    return [spec.preprocess.random_view(img, rng) for _ in range(spec.n_views)]


# -- steps --------------------------------------------------------------------------------------
def _known_digests(
    items: list, cwd: str | None = None
) -> tuple[list[str | None], list[ItemError], Lease | None]:
    """:func:`known_digest` of every input: the files' in one batch (no system call per
    unchanged file, see ``skclip.encoding.stamps``; relative paths in ``cwd``, None: the
    working directory), in-memory images one by one; and a lease on the files' stamps if
    every input is a file whose digest is known."""
    n = len(items)
    paths = [i for i, item in enumerate(items) if isinstance(item, (str, os.PathLike))]
    known, lease = FILE_DIGESTS.known_leased([os.fspath(items[i]) for i in paths], cwd)
    if len(paths) == n:  # the common case: only files
        return known, [], lease
    digests: list[str | None] = [None] * n
    for i, digest in zip(paths, known):
        digests[i] = digest
    errors = []
    for i in sorted(set(range(n)).difference(paths)):
        try:
            digests[i] = known_digest(items[i])
        except Exception as exc:  # noqa: BLE001 - e.g. a truncated, lazily opened image
            errors.append(item_error(items[i], i, exc))
    return digests, errors, None


def rows_key(items: list, spec: EncodeSpec) -> tuple | None:
    """The key of ``items`` in :data:`~skclip.encoding.cache.ROWS`: the cache's settings,
    the working directory (relative paths) and the paths; None unless every input is a
    path (``str`` or path-like), the cache is on and no progress bar was asked for."""
    if spec.cache is None or spec.progress is True or not items:
        return None
    if not all(issubclass(kind, (str, os.PathLike)) for kind in set(map(type, items))):
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        return None
    return (spec.cache.prefix, cwd, tuple(items))


def lookup(items: list, spec: EncodeSpec, cwd: str | None = None) -> Lookup:
    """Step 1, in the calling thread: known digests and their cache hits, in one pass
    over the cache (no per-item work beyond dictionary lookups when all are hits).
    Relative paths are looked up in ``cwd`` (None: the working directory): the folder of
    the :func:`rows_key` the result may be kept under, whatever another thread's
    ``chdir`` does meanwhile."""
    n = len(items)
    digests: list[str | None] = [None] * n
    errors: list[ItemError] = []
    lease = None
    if spec.needs_digests:
        digests, errors, lease = _known_digests(items, cwd)
    hit_index: list[int] = []
    hit_vecs: list[np.ndarray] = []
    if spec.cache is not None:
        known = [i for i, digest in enumerate(digests) if digest is not None]
        vecs = spec.cache.get_many([digest for digest in digests if digest is not None])
        if len(known) == n and all(vec is not None for vec in vecs):
            hits = cast("list[np.ndarray]", vecs)
            return Lookup(digests, known, hits, [], errors, lease)  # all hits: nothing to do
        for i, vec in zip(known, vecs):
            if vec is not None:
                hit_index.append(i)
                hit_vecs.append(vec)
    done = set(hit_index).union(e.index for e in errors)
    todo = [i for i in range(n) if i not in done]
    return Lookup(digests, hit_index, hit_vecs, todo, errors)


def _read_file(item: Any, index: int, hashed: bool) -> tuple[str | None, bytes]:
    """(digest, bytes) of a file read once: decode these bytes, and key them by this
    digest of exactly these bytes (None unless ``hashed``). Raises
    :class:`~skclip._images.ImageLoadError` naming the file if it cannot be read (missing,
    not a regular file, over the byte cap)."""
    if hashed:
        return FILE_DIGESTS.read(os.fspath(item), index)
    return None, _read_bytes(os.fspath(item), index)


class Fetched(NamedTuple):
    """One batch after :func:`fetch`: files read once and hashed, cache hits found."""

    found: list[tuple[int, np.ndarray]]  # cache hits of files hashed here
    todo: list[tuple[int, str | None, bytes | None]]  # (position, digest, file bytes or None)
    errors: list[ItemError]


def fetch(items: list, digests: list[str | None], spec: EncodeSpec, batch: list[int]) -> Fetched:
    """Step 2a: read each file of a batch once and hash those bytes, look them up (in
    memory, no decoding: cheap, and disk waits are hidden when done ahead)."""
    found, todo, errors = [], [], []
    for i in batch:
        item, digest, data = items[i], digests[i], None
        try:
            if isinstance(item, (str, os.PathLike)):  # never a digest computed earlier
                digest, data = _read_file(item, i, spec.needs_digests)
                missed = digests[i]  # looked up already (a miss) under this digest
                if spec.cache is not None and digest is not None and digest != missed:
                    vec = spec.cache.get(digest)
                    if vec is not None:
                        found.append((i, vec))
                        continue
        except Exception as exc:  # noqa: BLE001 - unreadable: named, the others go on
            errors.append(item_error(item, i, exc))
            continue
        todo.append((i, digest, data))
    return Fetched(found, todo, errors)


def decode(items: list, spec: EncodeSpec, fetched: Fetched, pool: Any = None) -> Prepared:
    """Step 2b: decode a fetched batch from the bytes that were hashed (so an embedding is
    stored under the digest of exactly what was decoded), crop, collate; one image per
    task in ``pool``'s threads if given (a ``ThreadPoolExecutor``), else here."""

    def one(entry: tuple[int, str | None, bytes | None]) -> tuple[list[np.ndarray] | None, Any]:
        i, digest, data = entry
        try:
            return crops(open_image(items[i], i, data=data), spec, digest), None
        except Exception as exc:  # noqa: BLE001 - any decoder failure names the input
            return None, item_error(items[i], i, exc)

    kept, keys, arrays, errors = [], [], [], list(fetched.errors)
    views = (pool.map if pool is not None else map)(one, fetched.todo)
    for (i, digest, _), (crop, error) in zip(fetched.todo, views):
        if crop is None:
            errors.append(error)
            continue
        arrays.extend(crop)
        kept.append(i)
        keys.append(digest)
    pixels = spec.preprocess.collate(arrays) if arrays else None
    return Prepared(fetched.found, kept, keys, pixels, errors)


def prepare(items: list, digests: list[str | None], spec: EncodeSpec, batch: list[int]) -> Prepared:
    """Step 2, in a decode thread: :func:`fetch`, then :func:`decode`."""
    return decode(items, spec, fetch(items, digests, spec, batch))


def decoded_between(
    items: list, digests: list[str | None], spec: EncodeSpec, batches: list[list[int]]
) -> Generator[Prepared, None, None]:
    """The prepared batches for a forward pass that uses every core (ONNX Runtime on the
    CPU): each batch's files are read ahead by one thread (during the previous pass:
    disk waits are hidden, at a negligible CPU cost), and decoded by ``spec.n_threads``
    threads only when the caller asks for the batch, between passes. On cores the pass
    keeps busy, decoding during it would cost the same CPU time, and would preempt a
    thread of its evenly split matrix products, which then all wait for that thread.

    Close it explicitly, as :func:`prefetch`.
    """
    with (
        ThreadPoolExecutor(spec.n_threads, thread_name_prefix="skclip-decode") as pool,
        contextlib.closing(prefetch(partial(fetch, items, digests, spec), batches, 1)) as ahead,
    ):
        for fetched in ahead:
            yield decode(items, spec, fetched, pool)


def prepared(
    items: list, digests: list[str | None], spec: EncodeSpec, batches: list[list[int]]
) -> Generator[Prepared, None, None]:
    """The batches, prepared as ``spec.decode_between`` says: :func:`decoded_between`, or
    :func:`prepare` in ``spec.n_threads`` threads ahead of the forward passes
    (:func:`prefetch`). Close it explicitly."""
    if spec.decode_between:
        return decoded_between(items, digests, spec, batches)
    return prefetch(partial(prepare, items, digests, spec), batches, spec.n_threads)


def prefetch(
    fn: Callable[[Any], Any], args: Sequence[Any], n_threads: int
) -> Generator[Any, None, None]:
    """``map(fn, args)`` computed ahead in threads, in order, with bounded look-ahead.

    The generator owns a thread pool: close it explicitly (``contextlib.closing``) in
    the thread that iterates it, never leave it to the garbage collector, which may
    finalize it from another thread (that deadlocked inside threading's own locks).
    """
    with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="skclip-decode") as pool:
        pending: deque = deque()
        it = iter(args)
        for arg in it:
            pending.append(pool.submit(fn, arg))
            if len(pending) >= 2 * n_threads:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            yield result


def tower(spec: EncodeSpec, pixels: dict[str, np.ndarray]) -> torch.Tensor:
    """Raw features ``(B, d)`` float32 of a collated batch by the spec's runtime: its
    ONNX Runtime session, or the family's forward pass
    (:meth:`~skclip.backbones.families.Backbone.forward_images`: ``uint8`` crosses to the
    device, normalization runs there). Call under ``torch.inference_mode()``."""
    if spec.encoder is not None:
        return torch.from_numpy(spec.encoder(pixels["pixel_values"]))
    return spec.clip.forward_images(pixels)


def pool_views(emb: torch.Tensor, n_views: int, normalize: bool) -> torch.Tensor:
    """One row per image from ``(B * max(1, n_views), d)`` raw features: with views, the
    mean of each image's raw (un-normalized) view features, as the Tip-Adapter reference
    builds its cache keys; then L2-normalized if ``normalize``."""
    if n_views > 0:
        emb = emb.reshape(-1, n_views, emb.shape[-1]).mean(dim=1)
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb


def embed(spec: EncodeSpec, pixels: dict[str, np.ndarray]) -> np.ndarray:
    """Step 3: the embeddings of a prepared batch, ``(B, d)`` float32 numpy:
    :func:`tower`, then :func:`pool_views`."""
    with torch.inference_mode():
        emb = tower(spec, pixels)
        return pool_views(emb, spec.n_views, spec.normalize).cpu().numpy()


def store(cache: EmbeddingCache | None, keys: list[str | None], emb: np.ndarray) -> None:
    """Step 4: cache writes (memory, and disk if the cache has a folder)."""
    if cache is None:
        return
    for key, vec in zip(keys, emb):
        if key is not None:
            cache.put(key, vec)


def gathered(found: Lookup, out: np.ndarray, spec: EncodeSpec, key: tuple | None) -> Encoded:
    """Every input a cache hit: their embeddings gathered into ``out`` in one copy, and
    kept in :data:`~skclip.encoding.cache.ROWS` under ``key`` (:func:`rows_key`) while the
    lookup's lease holds, if it got one (the lookup found relative paths in the key's
    folder, whatever the working directory is now)."""
    np.concatenate(found.hit_vecs, out=out.reshape(-1))
    if spec.cache is not None:
        MEMORY.count(hits=len(out), misses=0)
    if key is not None and found.lease is not None:
        ROWS.put(key, found.lease, out)
    return Encoded(out, [])


def encode(items: list, spec: EncodeSpec, keep_going: bool) -> Encoded:
    """Embeddings of ``items`` and an :class:`ItemError` per bad input (its row is NaN).

    After a bad input the rest is still encoded if ``keep_going`` or if the cache keeps
    the work (so the retry after fixing it is cheap); else the remaining inputs are only
    checked, to name every bad one.
    """
    n, dim = len(items), spec.clip.embedding_dim
    key = rows_key(items, spec)
    if key is not None and (rows := ROWS.get(key)) is not None:  # the same list again
        MEMORY.count(hits=n, misses=0)
        return Encoded(rows, [])
    out = np.empty((n, dim), dtype=np.float32)
    found = lookup(items, spec, None if key is None else key[1])
    n_hits = len(found.hit_index)
    if n_hits == n and spec.progress is not True:  # all cached: one gather, no bar
        return gathered(found, out, spec, key)
    if n_hits:
        out[found.hit_index] = np.concatenate(found.hit_vecs).reshape(n_hits, dim)
    errors = list(found.errors)
    keep_going = keep_going or spec.cache is not None
    shared = spec.cache is not None and spec.cache.disk is not None
    waiting: list[tuple[int, str]] = []  # (position, key) being encoded by another process
    claims: set[str] = set()
    todo, size = found.todo, spec.batch_size
    batches = [todo[k : k + size] for k in range(0, len(todo), size)]
    disable = {True: False, False: True, "auto": None if len(todo) > size else True}
    results = prepared(items, found.digests, spec, batches)
    try:
        with (
            contextlib.closing(results),
            tqdm(
                total=n,
                initial=n - len(todo),
                unit="img",
                desc="CLIP",
                disable=disable[spec.progress],
            ) as bar,
        ):
            for batch, res in zip(batches, results):
                errors.extend(res.errors)
                for i, vec in res.found:
                    out[i] = vec
                n_hits += len(res.found)
                if res.pixels is not None and (not errors or keep_going):
                    n_hits += _forward(spec, res, out, claims if shared else None, waiting)
                bar.update(len(batch))
    finally:
        release(spec.cache, list(claims), claims)
        if spec.cache is not None:
            spec.cache.flush()  # the disk bound holds after every call
    again: list[int] = []
    if waiting:
        hits, again = wait_for(spec.cache, waiting, spec.progress)
        for i, vec in hits:
            out[i] = vec
        n_hits += len(hits)
    if spec.cache is not None:
        MEMORY.count(hits=n_hits, misses=n - n_hits - len(errors) - len(again))
    if again:  # their claims were void (process gone): encode them here
        redone = encode([items[i] for i in again], spec, keep_going)
        out[again] = redone.embeddings
        errors.extend(ItemError(again[e.index], e.message) for e in redone.errors)
    errors.sort()  # input order
    out[[e.index for e in errors]] = np.nan
    return Encoded(out, errors)


#: Images claimed and encoded at a time when processes share a disk cache.
CLAIM_CHUNK = 8


def _forward(
    spec: EncodeSpec,
    res: Prepared,
    out: np.ndarray,
    claims: set[str] | None,
    waiting: list[tuple[int, str]],
) -> int:
    """Embed a prepared batch into ``out`` and store it; the number of cache hits found
    meanwhile. With a disk cache shared by processes (``claims`` not None), a few
    images at a time are claimed and encoded, so that processes encoding the same
    images split them finely; those another process is encoding go to ``waiting``."""
    n_hits = 0
    for part in [res] if claims is None else split(res, CLAIM_CHUNK):
        if claims is not None:  # leave to other processes what they are encoding
            assert spec.cache is not None  # claims are made in a shared disk cache
            part, hits, others = _claimed(spec.cache, part, claims)
            for i, vec in hits:
                out[i] = vec
            n_hits += len(hits)
            waiting.extend(others)
        if part.kept:
            assert part.pixels is not None  # a batch with images to encode has their views
            emb = embed(spec, part.pixels)
            out[part.kept] = emb
            store(spec.cache, part.keys, emb)
            if claims is not None:
                release(spec.cache, part.keys, claims)
    return n_hits


def split(res: Prepared, size: int) -> list[Prepared]:
    """A prepared batch as consecutive parts of at most ``size`` images (with their
    views)."""
    if len(res.kept) <= size:
        return [res]
    assert res.pixels is not None  # images kept: their views are there
    per_image = len(next(iter(res.pixels.values()))) // len(res.kept)
    return [
        Prepared(
            [],
            res.kept[k : k + size],
            res.keys[k : k + size],
            {name: arr[k * per_image : (k + size) * per_image] for name, arr in res.pixels.items()},
            [],
        )
        for k in range(0, len(res.kept), size)
    ]


def _claimed(
    cache: EmbeddingCache, res: Prepared, claims: set[str]
) -> tuple[Prepared, list[tuple[int, np.ndarray]], list[tuple[int, str]]]:
    """The batch reduced to the images this process claims (:func:`~.claims.claim`),
    with the hits that appeared since the lookup and the images to wait for."""
    mine, hits, others = claim(cache, res.kept, res.keys, claims)
    if len(mine) < len(res.kept) and res.pixels is not None:
        n = len(res.kept)
        pixels = {  # the views of the claimed images, in every array of the batch
            name: arr.reshape(n, -1, *arr.shape[1:])[mine].reshape(-1, *arr.shape[1:])
            for name, arr in res.pixels.items()
        }
        res = res._replace(
            kept=[res.kept[j] for j in mine], keys=[res.keys[j] for j in mine], pixels=pixels
        )
    return res, hits, others


def report_errors(errors: list[ItemError], n: int, on_error: str, stacklevel: int = 2) -> None:
    """One :class:`ImageLoadError` naming every bad input (``on_error="raise"``), or one
    :class:`ImageLoadWarning` (``"warn"``; their rows are NaN). Nothing if no errors."""
    if not errors:
        return
    message = f"{len(errors)} of {n} images could not be used:\n  " + "\n  ".join(
        e.message for e in errors
    )
    if on_error == "raise":
        raise ImageLoadError(message)
    warning = ImageLoadWarning(
        message + "\nTheir rows are NaN.", {e.index: e.message for e in errors}
    )
    warnings.warn(warning, stacklevel=stacklevel + 1)
