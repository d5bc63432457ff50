"""CLIPFeaturizer: images in, L2-normalized CLIP image embeddings out."""

from __future__ import annotations

import os
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from .encoding import engine as _encode
from .encoding import cache as _cache
from .encoding.cache import MEMORY, CacheInfo, clear_worker_folder
from ._compat import Interval, StrOptions, get_output_config
from .backbones.identity import CheckpointInfo
from .backbones.loading import (
    DEFAULT_MODEL,
    Backbone,
    check_fingerprint,
    checkpoint_identity,
    load_backbone,
    resolve_device,
)


class CLIPFeaturizer(TransformerMixin, BaseEstimator):
    """Turn images into L2-normalized CLIP image embeddings.

    Images can be file paths (``str`` or :class:`pathlib.Path`), PIL images or numpy
    arrays (``HxW`` grayscale, ``HxWx3`` RGB or ``HxWx4`` RGBA, ``uint8``), given as a
    list, an array, or a one-column pandas DataFrame/Series. Float pixels (float arrays,
    PIL ``"F"`` images, float TIFF files) must lie in [0, 1] and are scaled to [0, 255].
    Each image is opened (EXIF orientation applied, converted to RGB), preprocessed
    exactly like the checkpoint's own image processor and encoded by its image tower.
    Files are read only if they are regular files, within limits of pixels, aspect ratio
    and bytes (see "Bad input" in the user guide). Decoding
    runs in worker threads while the model runs, so the model does not wait on JPEG
    decoding.

    The model is loaded lazily on first use and shared process-wide with every other
    skclip estimator naming the same checkpoint, device and dtype; the estimator
    itself stores only parameters, so cloning and pickling are cheap.

    Parameters
    ----------
    model : str or path-like, default="openai/clip-vit-base-patch32"
        Hugging Face hub id or local folder of a ``transformers`` checkpoint: CLIP,
        MetaCLIP 2, SigLIP, SigLIP 2 (NaFlex) or an image-only model with a pooled
        output (DINOv2...; its embedding is ``pooler_output``). The family is read from
        the checkpoint's config. Without internet, pass a folder written by
        ``save_pretrained``.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
        or ``"mps"``.
    dtype : {"auto", "float32", "float16", "bfloat16", "int8"}, default="auto"
        Model precision; ``"auto"`` is float16 on CUDA, float32 on CPU. Outputs are
        always float32. ``"int8"`` is ONNX Runtime's dynamic quantization (CPU only,
        needs ``skclip[onnx]``): faster still, but the embeddings are *approximate*
        (cosine to float32 about 0.9998 on a random ViT-B/32; check on your data).
    runtime : {"auto", "torch", "onnxruntime"}, default="auto"
        What runs the image tower. ``"onnxruntime"``: ONNX Runtime on the CPU, from an
        export of the checkpoint made on first use (a line on stderr says so; or ahead,
        :meth:`export_onnx`) and kept in the user's cache folder
        (``~/.cache/skclip/onnx``, or ``$SKCLIP_CACHE_DIR/onnx``); embeddings equal
        PyTorch's within 1e-5. Its forward pass of a ViT-B/32 on 2 cores was 1.37x
        PyTorch's eager one on a quiet 2-core machine, mostly because it keeps both
        cores busier (on one thread both do about the same work); from image files to
        embeddings the gain is smaller, as decoding takes its share of the same cores
        (``benchmarks/profile_runtimes.py`` says where the time goes on your machine).
        Exporting takes a few seconds to a minute, once per checkpoint. ``"torch"``:
        PyTorch. ``"auto"``: PyTorch (ONNX Runtime for ``dtype="int8"``): from image
        files to embeddings ONNX Runtime was about 1.2x PyTorch on 2 cores, too little to
        pay for its export and the second or two each process spends loading it unless
        you encode many images (README, "Which runtime"). Embeddings are cached per
        runtime, so switching re-encodes each image once.
    batch_size : int, default=32
        Images per forward pass. Results do not depend on it.
    normalize : bool, default=True
        L2-normalize each embedding (what CLIP similarity and Tip-Adapter expect).
    augment : int, default=0
        If ``k > 0``, :meth:`fit_transform` returns for each image the mean of the raw
        (un-normalized) embeddings of ``k`` random views (random resized crop with scale
        0.5-1, horizontal flip), then L2-normalized: the cache-key recipe of the
        Tip-Adapter reference code (``build_cache_model``). :meth:`transform`
        always encodes the clean, center-cropped view. So in a Pipeline, training
        images get augmented keys while queries are encoded as usual.
    train_views : int, default=0
        If ``E > 0``, :meth:`fit_transform` returns ``[key | view_1 | ... | view_E]``,
        of shape ``(n_images, (1 + E) * embedding_dim)``: the usual row (the clean
        embedding, or the augmented key with ``augment > 0``) followed by the
        embeddings of ``E`` single random views of the image (same augmentation as
        ``augment``, each view L2-normalized when ``normalize=True``). They are the
        per-epoch training queries of Tip-Adapter-F as the reference trains it: pass
        them to ``TipAdapterClassifier(fine_tune=True, train_views=E)``, which uses
        the first block as cache keys and view ``e % E`` as the queries of epoch ``e``.
        Each view has its own seed (from ``random_state`` and the view's index) and
        its own cache entries, so a second fit with an int ``random_state`` encodes
        nothing, and view ``e`` does not depend on ``E``. Encoding costs ``E`` more
        passes over the images at the first fit. :meth:`transform` and
        :meth:`get_feature_names_out` are unchanged (one block, the clean view); the
        wider output has no feature names, so ``set_output(transform="pandas")``
        refuses ``train_views > 0``.
    random_state : int, RandomState instance or None, default=None
        Seeds the augmentation. Each image gets its own stream derived from the seed
        and the image's *content*, so its views do not depend on ``batch_size``,
        ``n_jobs`` or where the image sits in the input (a cross-validation fold gets
        the same keys for an image as the full data set). With ``augment > 0``, pass an
        int: ``None`` (and a ``RandomState`` instance) draws a fresh seed at every
        :meth:`fit_transform`, as in scikit-learn, so each call gets new views and its
        augmented embeddings are never reused from the cache (every cross-validation
        fold and every ``GridSearchCV`` candidate encodes its images again).
    n_jobs : int or None, default=None
        Threads that decode and preprocess images while the model runs. ``None`` means
        1 when PyTorch runs the model on the CPU (it already uses every core, and
        decoding costs about a tenth of a ViT-B/32 forward, so more threads only contend
        with it; see ``benchmarks/bench_featurizer.py``) and ``min(8, os.cpu_count())``
        on a GPU. With ONNX Runtime on the CPU, ``None`` decodes each batch *between*
        forward passes, on as many threads as ONNX Runtime uses (its passes keep every
        core busy: decoding during them would cost the same CPU time and stall its
        evenly split matrix products), while the files of the next batches are read
        ahead during the passes; an int decodes during the passes on that many
        threads. ``-1`` means all CPUs.
    progress : bool or "auto", default="auto"
        Show a tqdm progress bar. ``"auto"`` shows it for inputs of more than one batch
        when writing to a terminal.
    cache : bool, default=True
        Reuse embeddings of images encoded before in this process (and in
        ``cache_dir``). Entries are keyed by the model's weights, the preprocessing,
        dtype, device type, the encoder (PyTorch, or the exact ONNX export and ONNX
        Runtime version), ``normalize``, the augmentation settings and seed, and the
        image *content* (a hash of exactly the file's bytes that were decoded, or of the
        pixels), so an edited file is encoded again, even one whose size and modification
        time were put back (see the user guide, "Embedding cache", for exactly which
        edits are noticed). This is what makes ``GridSearchCV`` over a Pipeline encode
        each image once: alpha and beta never change the embeddings.
    cache_dir : str, path-like or None, default=None
        Also keep embeddings in this folder, shared between processes and later runs
        (made if missing). Writes are atomic; each entry carries its key and a checksum,
        and a partial, corrupt, misplaced or linked entry is ignored and recomputed;
        about 500,000 entries are kept, the least recently used go first. Processes
        sharing the folder never encode an image at the same time: one encodes it, the
        others wait for its entry (a claim of a process that is gone is taken over at
        once). A folder that is read-only, full, cannot be made, or may be written by
        other users (``o+w``) is only read: new embeddings stay in memory, and one
        ``CacheDirWarning`` says why. With None, worker processes (``GridSearchCV(n_jobs=2)``,
        joblib, multiprocessing) still share embeddings with their siblings through a
        temporary folder named after their parent process, so a parallel search encodes
        each image about once in all (see the user guide, "Parallel searches");
        ``cache=False`` turns every cache off.
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
    model_fingerprint_ : str
        Hash of the checkpoint's weights and tokenizer, recorded by ``fit``. A fitted
        featurizer that later finds a *different* checkpoint under ``model`` (a folder
        rewritten, another folder of the same name) raises
        :class:`~skclip.CheckpointMismatchError` instead of embedding with it; point
        ``model`` at the original checkpoint's new location with ``set_params``.

    See Also
    --------
    TipAdapterClassifier : Few-shot classifier for these embeddings.

    Notes
    -----
    ``fit`` learns nothing but the checkpoint's fingerprint (it loads the model), and
    ``transform`` may be called without ``fit``. ``fit_transform`` differs from
    ``fit().transform()`` only when ``augment > 0`` or ``train_views > 0`` (see above).

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

    Two random views per image follow the embedding, for Tip-Adapter-F:

    >>> wide = CLIPFeaturizer(
    ...     model=tiny_clip_path, train_views=2, random_state=0
    ... ).fit_transform(images)
    >>> wide.shape[1] == 3 * X.shape[1]
    True
    """

    _parameter_constraints: dict = {
        "model": [str, os.PathLike],
        "device": [str, torch.device],
        "dtype": [StrOptions({"auto", "float32", "float16", "bfloat16", "int8"})],
        "runtime": [StrOptions(set(_encode.RUNTIMES))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "normalize": ["boolean"],
        "augment": [Interval(Integral, 0, None, closed="left")],
        "train_views": [Interval(Integral, 0, None, closed="left")],
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
        *,
        model: str | os.PathLike = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        runtime: str = "auto",
        batch_size: int = 32,
        normalize: bool = True,
        augment: int = 0,
        train_views: int = 0,
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
        self.runtime = runtime
        self.batch_size = batch_size
        self.normalize = normalize
        self.augment = augment
        self.train_views = train_views
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.progress = progress
        self.cache = cache
        self.cache_dir = cache_dir
        self.cache_size = cache_size
        self.on_error = on_error

    # -- sklearn API -------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> CLIPFeaturizer:
        """Validate the parameters and record the checkpoint's fingerprint.

        Parameters
        ----------
        X : sequence of images
            Ignored apart from a check that it is a non-empty sequence of images.
        y : ignored

        Returns
        -------
        self : CLIPFeaturizer
        """
        self._fit(X)
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
        return self._embed(_encode.check_items(X), n_views=0, seed=None)

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Fit, then embed; with ``augment=k > 0`` each row is the mean of ``k`` random views.

        With ``train_views=E > 0`` each row continues with the embeddings of ``E``
        single random views of the image (see ``train_views``).

        Parameters
        ----------
        X : sequence of images, array or one-column DataFrame
        y : ignored

        Returns
        -------
        embeddings : ndarray of shape (n_images, (1 + train_views) * embedding_dim), dtype float32
        """
        items = self._fit(X)  # X is read once: it may be a one-shot iterable
        if self.train_views and get_output_config("transform", self)["dense"] != "default":
            raise ValueError(
                f"CLIPFeaturizer(train_views={self.train_views}).fit_transform returns "
                f"{1 + self.train_views} blocks of embedding_dim columns, which have no feature "
                "names: use the default (numpy) output, not set_output(transform=...)."
            )
        seed = _encode.draw_seed(self.random_state, self.augment)
        keys = self._embed(items, n_views=self.augment, seed=seed)
        if not self.train_views:
            return keys
        # One random view per seed; bad inputs were reported with the keys already.
        views = [
            self._embed(items, n_views=1, seed=s, report=False)
            for s in _encode.view_seeds(self.random_state, self.train_views)
        ]
        return np.hstack([keys, *views])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names: ``clipfeaturizer0`` ... ``clipfeaturizer{d-1}``.

        Loads the model (to read the embedding dimension) if it is not loaded yet.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        dim = self._identity().embedding_dim
        return np.asarray([f"clipfeaturizer{i}" for i in range(dim)], dtype=object)

    def export_onnx(self) -> Path:
        """Export the checkpoint's image tower for ONNX Runtime now, ahead of first use.

        With ``runtime="onnxruntime"`` (or ``dtype="int8"``), the first
        :meth:`transform` of a checkpoint exports its image tower (seconds for small
        models, about 20 s for a ViT-B/32 on 2 cores; a line on stderr says so unless
        ``progress=False``), once per checkpoint: the export is kept in the user's cache
        folder (``~/.cache/skclip/onnx``, or ``$SKCLIP_CACHE_DIR/onnx``) and reused by
        every later process. Call this to pay that cost at a time of your choosing,
        e.g. while building a container image, or before timing; ``skclip export-onnx
        MODEL`` does the same from the command line. An export that is already there
        is checked (its checksums), not made again.

        Nothing is fitted and no parameter changes. The export is the one for ``model``
        and ``dtype`` (``"int8"``: quantized; ``"auto"`` and ``"float32"``: float32),
        made from the model loaded on the CPU whatever ``device`` says.

        Returns
        -------
        path : pathlib.Path
            The export's folder (``model.onnx``, its weights, ``meta.json``).

        Raises
        ------
        ImportError
            If ``onnxruntime``, ``onnx`` or ``onnxscript`` is missing
            (``pip install 'skclip[onnx]'``).
        ValueError
            If ``dtype`` is ``"float16"`` or ``"bfloat16"`` (PyTorch only), or the
            checkpoint has no fixed input size (SigLIP 2 NaFlex).

        Examples
        --------
        >>> from skclip import CLIPFeaturizer
        >>> path = CLIPFeaturizer(model=tiny_clip_path, progress=False).export_onnx()
        >>> (path / "model.onnx").is_file()
        True
        """
        self._validate_params()
        return _encode.export_onnx(self.model, self.dtype, progress=self.progress)

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

        The digests of files are forgotten too (their inotify watches removed), as are
        the ``cache_dir`` folders found unusable (they are tried, and warned about,
        again), and the temporary folder this process shares with its worker processes
        (see ``cache_dir``) is deleted. Files in a ``cache_dir`` are left alone; delete
        the folder to drop them.
        """
        _cache.clear()
        clear_worker_folder()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    # -- internals -----------------------------------------------------------------------
    def _clip(self) -> Backbone:
        return load_backbone(self.model, self.device, _encode.model_dtype(self.dtype))

    def _identity(self) -> Backbone | CheckpointInfo:
        """The loaded model, or the checkpoint's recorded identity if it is not loaded
        (see :func:`~skclip.backbones.loading.checkpoint_identity`)."""
        return checkpoint_identity(self.model, self.device, _encode.model_dtype(self.dtype))

    def _fit(self, X: Any) -> list:
        """Validate the parameters and the input; the input as a list (read once)."""
        self._validate_params()
        _encode.resolve_runtime(self.runtime, resolve_device(self.device), self.dtype)
        items = _encode.check_items(X)
        self.n_features_in_ = 1
        self.model_fingerprint_ = self._identity().fingerprint
        return items

    def _embed(
        self, items: list, n_views: int, seed: int | None, report: bool = True
    ) -> np.ndarray:
        """Embeddings of ``items`` by the engine; bad inputs handled as ``on_error`` says
        (``report=False``: their rows are NaN, nothing raised or warned).

        Without the model when every image is in the cache and the checkpoint's identity
        is recorded (a search's refit, a later run with the same ``cache_dir``)."""
        identity = self._identity()
        check_fingerprint(self, self.model, identity)
        if isinstance(identity, CheckpointInfo):
            cached = _encode.cached_only(items, self, identity, n_views, seed)
            if cached is not None:
                return cached
        spec = _encode.spec_for(self, n_views=n_views, seed=seed)
        result = _encode.encode(items, spec, keep_going=self.on_error == "warn" or not report)
        if report:
            _encode.report_errors(result.errors, len(items), self.on_error, stacklevel=3)
        return result.embeddings
