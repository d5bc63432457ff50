"""CLIPFeaturizer: images in, L2-normalized CLIP image embeddings out."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from tqdm.auto import tqdm

from ._cache import FILE_DIGESTS, MEMORY, CacheInfo, EmbeddingCache, settings_digest
from ._cache import memory_digest as _digest
from ._images import CLIPPreprocessor, ImageLoadError, ImageLoadWarning, describe, open_image
from ._models import DEFAULT_MODEL, LoadedCLIP, load_clip, resolve_device


def _as_items(X: Any) -> list:
    """The inputs as a flat list of images (paths, PIL images or arrays)."""
    from PIL import Image

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


class CLIPFeaturizer(TransformerMixin, BaseEstimator):
    """Turn images into L2-normalized CLIP image embeddings.

    Images can be file paths (``str`` or :class:`pathlib.Path`), PIL images or numpy
    arrays (``HxW`` grayscale, ``HxWx3`` RGB or ``HxWx4`` RGBA, ``uint8``), given as a
    list, an array, or a one-column pandas DataFrame/Series. Each image is opened
    (EXIF orientation applied, converted to RGB), preprocessed exactly like the
    checkpoint's ``CLIPImageProcessor`` and encoded by the CLIP vision tower. Decoding
    runs in worker threads while the model runs, so the model does not wait on JPEG
    decoding.

    The model is loaded lazily on first use and shared process-wide with every other
    skclip estimator naming the same checkpoint, device and dtype; the estimator
    itself stores only parameters, so cloning and pickling are cheap.

    Parameters
    ----------
    model : str or path-like, default="openai/clip-vit-base-patch32"
        Hugging Face hub id or local folder of a ``transformers`` CLIP checkpoint.
        Without internet, pass a folder written by ``save_pretrained``.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
        or ``"mps"``.
    dtype : {"auto", "float32", "float16", "bfloat16"}, default="auto"
        Model precision; ``"auto"`` is float16 on CUDA, float32 on CPU. Outputs are
        always float32.
    batch_size : int, default=32
        Images per forward pass. Results do not depend on it.
    normalize : bool, default=True
        L2-normalize each embedding (what CLIP similarity and Tip-Adapter expect).
    augment : int, default=0
        If ``k > 0``, :meth:`fit_transform` returns for each image the mean of ``k``
        random views (random resized crop with scale 0.5-1, horizontal flip), then
        L2-normalized: the cache-key recipe of the Tip-Adapter paper. :meth:`transform`
        always encodes the clean, center-cropped view. So in a Pipeline, training
        images get augmented keys while queries are encoded as usual.
    random_state : int, RandomState instance or None, default=None
        Seeds the augmentation. Each image gets its own stream derived from the seed
        and the image's *content*, so its views do not depend on ``batch_size``,
        ``n_jobs`` or where the image sits in the input (a cross-validation fold gets
        the same keys for an image as the full data set).
    n_jobs : int or None, default=None
        Threads that decode and preprocess images while the model runs. ``None`` means
        1 when the model runs on the CPU (it already uses every core, and decoding costs
        about a tenth of a ViT-B/32 forward, so more threads only contend with it; see
        ``benchmarks/bench_featurizer.py``) and ``min(8, os.cpu_count())`` on a GPU.
        ``-1`` means all CPUs.
    progress : bool or "auto", default="auto"
        Show a tqdm progress bar. ``"auto"`` shows it for inputs of more than one batch
        when writing to a terminal.
    cache : bool, default=True
        Reuse embeddings of images encoded before in this process (and in
        ``cache_dir``). Entries are keyed by the model's weights, the preprocessing,
        dtype, device type, ``normalize``, the augmentation settings and seed, and the
        image *content* (a hash of the file's bytes, or of the pixels), so an edited
        file is encoded again. This is what makes ``GridSearchCV`` over a Pipeline
        encode each image once: alpha and beta never change the embeddings.
    cache_dir : str, path-like or None, default=None
        Also keep embeddings in this folder, shared between processes (e.g.
        ``GridSearchCV(n_jobs=2)`` workers) and later runs. Writes are atomic; a partial
        or corrupt entry is ignored and recomputed.
    cache_size : int, default=100_000
        Most embeddings kept in memory (least recently used ones are dropped first);
        100,000 ViT-B/32 embeddings take about 200 MB. The memory cache is shared by all
        featurizers of the process; the last one used sets its size.
    on_error : {"raise", "warn"}, default="raise"
        What to do with inputs that are not usable images (missing, truncated, not an
        image, too large...). ``"raise"``: an :class:`ImageLoadError` (a ``ValueError``)
        naming *every* bad input, after the good ones were encoded into the cache, so
        the retry after fixing them is cheap. ``"warn"``: one ``ImageLoadWarning``
        naming every bad input, whose rows are NaN (drop them with
        ``np.isfinite(X).all(axis=1)`` before fitting a classifier).

    Attributes
    ----------
    n_features_in_ : int
        Always 1: each sample is one image.

    See Also
    --------
    TipAdapterClassifier : Few-shot classifier for these embeddings.

    Notes
    -----
    ``fit`` learns nothing: the featurizer is stateless, and ``transform`` may be
    called without ``fit``. ``fit_transform`` differs from ``fit().transform()`` only
    when ``augment > 0`` (see above).

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import CLIPFeaturizer
    >>> images = [np.full((64, 48, 3), c, dtype=np.uint8) for c in (0, 128, 255)]
    >>> featurizer = CLIPFeaturizer(model=tiny_clip_path)  # a local CLIP folder
    >>> X = featurizer.fit_transform(images)
    >>> X.shape[0], X.dtype
    (3, dtype('float32'))
    >>> bool(np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5))
    True
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "device": [str, torch.device],
        "dtype": [StrOptions({"auto", "float32", "float16", "bfloat16"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "normalize": ["boolean"],
        "augment": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "n_jobs": [
            Interval(Integral, None, -1, closed="right"),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "progress": ["boolean", StrOptions({"auto"})],
        "cache": ["boolean"],
        "cache_dir": [str, os.PathLike, None],
        "cache_size": [Interval(Integral, 0, None, closed="left")],
        "on_error": [StrOptions({"raise", "warn"})],
    }

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        normalize: bool = True,
        augment: int = 0,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int | None = None,
        progress: bool | str = "auto",
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        cache_size: int = 100_000,
        on_error: str = "raise",
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.normalize = normalize
        self.augment = augment
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.progress = progress
        self.cache = cache
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.on_error = on_error

    # -- sklearn API -------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> CLIPFeaturizer:
        """Validate the parameters; nothing is learned.

        Parameters
        ----------
        X : sequence of images
            Ignored apart from a check that it is a non-empty sequence of images.
        y : ignored

        Returns
        -------
        self : CLIPFeaturizer
        """
        self._validate_params()
        resolve_device(self.device)
        self._check_items(X)
        self.n_features_in_ = 1
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Embed images (clean, center-cropped view).

        Parameters
        ----------
        X : sequence of images, array or one-column DataFrame
            File paths, PIL images or numpy arrays.

        Returns
        -------
        embeddings : ndarray of shape (n_images, embedding_dim), dtype float32
            Rows in input order, L2-normalized when ``normalize=True``.
        """
        self._validate_params()
        return self._embed(self._check_items(X), n_views=0, random_state=None)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit, then embed; with ``augment=k > 0`` each row is the mean of ``k`` random views.

        Parameters
        ----------
        X : sequence of images, array or one-column DataFrame
        y : ignored

        Returns
        -------
        embeddings : ndarray of shape (n_images, embedding_dim), dtype float32
        """
        self.fit(X, y)
        return self._embed(self._check_items(X), n_views=self.augment, random_state=self.random_state)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names: ``clipfeaturizer0`` ... ``clipfeaturizer{d-1}``.

        Loads the model (to read the embedding dimension) if it is not loaded yet.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        dim = self._clip().embedding_dim
        return np.asarray([f"clipfeaturizer{i}" for i in range(dim)], dtype=object)

    @staticmethod
    def cache_info() -> CacheInfo:
        """Statistics of the process-wide embedding cache in memory.

        Returns
        -------
        info : CacheInfo
            Named tuple ``(hits, misses, maxsize, currsize)``: images served from the
            cache (memory or disk) and images encoded since the last
            :meth:`cache_clear`, the size bound and the number of entries held.

        Examples
        --------
        >>> from skclip import CLIPFeaturizer
        >>> CLIPFeaturizer.cache_clear()
        >>> CLIPFeaturizer.cache_info().currsize
        0
        """
        return MEMORY.info()

    @staticmethod
    def cache_clear() -> None:
        """Empty the process-wide embedding cache in memory and reset its statistics.

        Files in a ``cache_dir`` are left alone; delete the folder to drop them.
        """
        MEMORY.clear()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    # -- internals -----------------------------------------------------------------------
    def _clip(self) -> LoadedCLIP:
        return load_clip(self.model, self.device, self.dtype)

    @staticmethod
    def _check_items(X: Any) -> list:
        items = _as_items(X)
        if len(items) == 0:
            raise ValueError("Found 0 images: CLIPFeaturizer needs at least one image.")
        return items

    def _n_threads(self, device: torch.device) -> int:
        cpus = os.cpu_count() or 1
        if self.n_jobs is None:
            return 1 if device.type == "cpu" else min(8, cpus)
        if self.n_jobs < 0:
            return max(1, cpus + 1 + self.n_jobs)
        return int(self.n_jobs)

    def _embed(self, items: list, n_views: int, random_state: Any) -> np.ndarray:
        """Embeddings of ``items``; bad inputs handled as ``on_error`` says."""
        out, errors = self._embed_collect(
            items, n_views, random_state, keep_going=self.on_error == "warn"
        )
        self._handle_errors(errors, len(items), out)
        return out

    def _handle_errors(self, errors: list[tuple[int, str]], n: int, out: np.ndarray) -> None:
        """Raise one error naming every bad input, or warn once (their rows are NaN)."""
        if not errors:
            return
        message = f"{len(errors)} of {n} images could not be used:\n  " + "\n  ".join(
            m for _, m in errors
        )
        if self.on_error == "raise":
            raise ImageLoadError(message)
        warnings.warn(message + "\nTheir rows are NaN.", ImageLoadWarning, stacklevel=4)

    def _embed_collect(
        self, items: list, n_views: int, random_state: Any, keep_going: bool
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Embeddings of ``items`` and the ``(position, message)`` of each bad input, whose
        rows are NaN. After a bad input the rest is encoded only if ``keep_going`` or the
        cache keeps the work; else the remaining inputs are only checked."""
        clip = self._clip()
        preprocess = CLIPPreprocessor(clip.image_config)
        n, dim = len(items), clip.embedding_dim
        seed = None
        if n_views > 0:
            seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        cache = None
        if self.cache:
            MEMORY.maxsize = self.cache_size
            settings = settings_digest(
                clip.vision_fingerprint, sorted(clip.image_config.items()), str(clip.dtype),
                clip.device.type, self.normalize, n_views, seed,
            )
            cache = EmbeddingCache(settings, dim, self.cache_dir)
        need_digest = cache is not None or n_views > 0  # augmentation is seeded by content

        # 1. In this thread, only what is cheap: digests of in-memory images and of files
        #    hashed before and unchanged since; their cache hits need no decoding at all.
        digests: list[str | None] = [None] * n
        out = np.empty((n, dim), dtype=np.float32)
        todo = []
        for i, item in enumerate(items):
            if need_digest:
                is_path = isinstance(item, (str, os.PathLike))
                digests[i] = FILE_DIGESTS.known(os.fspath(item)) if is_path else _digest(item)
            vec = cache.get(digests[i]) if cache is not None and digests[i] else None
            if vec is None:
                todo.append(i)
            else:
                out[i] = vec
        n_hits = n - len(todo)

        def prepare(batch: list[int]) -> dict:
            """In a worker thread: hash unknown files, look them up, decode the misses."""
            found, kept, arrays, errors = [], [], [], []
            for i in batch:
                item, data = items[i], None
                try:
                    if need_digest and digests[i] is None:
                        try:
                            digests[i], data = FILE_DIGESTS.read(os.fspath(item))
                        except OSError:
                            pass  # open_image below says what is wrong with the path
                        vec = cache.get(digests[i]) if cache is not None and digests[i] else None
                        if vec is not None:
                            found.append((i, vec))
                            continue
                    img = open_image(item, i, data=data)
                    if n_views == 0:
                        arrays.append(preprocess(img))
                    else:
                        rng = np.random.default_rng([seed, int(digests[i][:16], 16)])
                        arrays.extend(preprocess.random_view(img, rng) for _ in range(n_views))
                    kept.append(i)
                except ImageLoadError as exc:
                    errors.append((i, str(exc)))
                except Exception as exc:  # noqa: BLE001 - any decoder failure names the file
                    errors.append((i, f"Cannot process {describe(item, i)}: {exc!r}"))
            pixels = np.stack(arrays) if arrays else None
            return {"found": found, "kept": kept, "pixels": pixels, "errors": errors}

        errors: list[tuple[int, str]] = []
        keep_going = keep_going or cache is not None
        batches = [todo[k : k + self.batch_size] for k in range(0, len(todo), self.batch_size)]
        show = {True: False, False: True, "auto": None if len(todo) > self.batch_size else True}
        # closing(): the prefetch generator (and its thread pool) is shut down here, in this
        # thread, on success or error, never later by the garbage collector from whatever
        # thread it runs in (that deadlocked inside threading's own locks).
        results = self._prefetch(prepare, batches, self._n_threads(clip.device))
        with contextlib.closing(results), tqdm(
            total=n, initial=n_hits, unit="img", desc="CLIP", disable=show[self.progress]
        ) as bar:
            for batch, res in zip(batches, results):
                errors.extend(res["errors"])
                for i, vec in res["found"]:
                    out[i] = vec
                n_hits += len(res["found"])
                # After a bad file, keep encoding only if the work is kept (in the cache,
                # so the retry after fixing the file is cheap, or in the output with
                # on_error="warn"); else only collect the remaining errors.
                if res["pixels"] is not None and (not errors or keep_going):
                    emb = self._forward(clip, preprocess, res["pixels"])
                    if n_views > 0:
                        emb = emb.reshape(-1, n_views, dim).mean(axis=1)
                        if self.normalize:
                            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
                    out[res["kept"]] = emb
                    if cache is not None:
                        for i, vec in zip(res["kept"], emb):
                            cache.put(digests[i], vec)
                bar.update(len(batch))
        if cache is not None:
            MEMORY.count(hits=n_hits, misses=n - n_hits - len(errors))
        out[[i for i, _ in errors]] = np.nan
        return out, errors

    @staticmethod
    def _prefetch(fn: Any, starts: Sequence[Any], n_threads: int) -> Iterator[Any]:
        """``map(fn, starts)`` computed ahead in threads, in order, with bounded look-ahead."""
        with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="skclip-decode") as pool:
            pending: deque = deque()
            it = iter(starts)
            for start in it:
                pending.append(pool.submit(fn, start))
                if len(pending) >= 2 * n_threads:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                yield result

    def _forward(
        self, clip: LoadedCLIP, preprocess: CLIPPreprocessor, pixels: np.ndarray
    ) -> np.ndarray:
        """Embed a batch of cropped pixels: (B, 3, H, W) uint8 -> (B, d) float32."""
        tensor = torch.from_numpy(pixels)
        with torch.inference_mode():
            if clip.device.type == "cuda":  # uint8 over the bus: 4x less than float32
                tensor = tensor.pin_memory().to(clip.device, non_blocking=True)
            tensor = preprocess.normalize(tensor.to(clip.device), clip.dtype)
            emb = clip.model.get_image_features(pixel_values=tensor).pooler_output.float()
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            return emb.cpu().numpy()
