"""ONNX Runtime for the image tower on the CPU.

On a CPU, ONNX Runtime runs a ViT image tower faster than PyTorch's eager forward when
it has several cores. Its optimized graph keeps the matrix products, where most of the
time goes, and fuses little (QuickGELU, a transposed product); on one thread both
runtimes do about the same work, but ONNX Runtime keeps the cores busier. Table 2 of
``benchmarks/profile_runtimes.py`` measures both on your machine. This module makes
that usable without any step by hand:

- :func:`image_encoder` exports the checkpoint's image tower once, *with* the
  preprocessing's rescale and normalization, so the ONNX model takes the decode
  threads' ``uint8`` crops ``(B, 3, H, W)`` directly and returns the raw projected
  features ``(B, d)`` (float32; batch size free).
- Exports are kept in a folder (default: ``user_cache_dir("onnx")``, e.g.
  ``~/.cache/skclip/onnx``) under a key made of the image tower's weight fingerprint,
  its configuration, the preprocessing, the precision and :data:`EXPORT_FORMAT`: a
  retrained checkpoint gets a new export, the same weights under another path share
  one. Each export is a folder (``model.onnx`` with its weights in
  ``model.onnx.data``) written under a temporary name and renamed into place in one
  step, so a reader sees a complete export or none. Its ``meta.json`` records the
  size and SHA-256 of each file and the torch and ONNX Runtime versions that made it.
  The first time a process opens an export, every file is hashed and compared with
  the record (a few hundred MB for a ViT-B: about a second, once per process; again
  only if a file's stamp changes); one that does not match (bytes changed in place,
  truncated, missing, from an older skclip) or that ONNX Runtime cannot load is
  deleted and rebuilt.
- Embeddings made by ONNX Runtime are cached under the identity of the exact encoder
  (:attr:`ImageEncoder.identity`: the export's checksums, the ONNX Runtime version and
  the precision), so entries made by another export, e.g. before a rebuild, are never
  served.
- ``dtype="int8"`` applies ONNX Runtime's dynamic quantization to the float32 export
  (int8 weights, activations quantized on the fly): faster, but the embeddings are
  *approximate* (on a random ViT-B/32, cosine to float32 >= 0.9998; unknown on
  trained weights). Opt-in only.
- An :class:`onnxruntime.InferenceSession` is created once per (export, threads,
  :data:`SESSION_CONFIG`) in the process and shared. It is created from the bytes that
  were hashed (the files are read into memory, checked against the record, and the
  weights handed to ONNX Runtime from memory), so a weights file edited or replaced
  later, even while the session lives, cannot change what it computes. Cost: the
  export's files are hashed a second time then, and its bytes are held in memory while
  the session is made (ONNX Runtime copies the weights, as it would from the file).
  Needs onnxruntime >= 1.23.

``onnxruntime`` is an optional dependency (``pip install skclip[onnx]``); exporting
also needs ``onnx`` and ``onnxscript`` (in the same extra).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .identity import CheckpointInfo
from .loading import Backbone
from .._hashing import hasher
from .._images import fixed_size
from .._paths import user_cache_dir

#: Version of the export recipe; part of every export's key. Bump it when the exported
#: graph changes (inputs, outputs, what is baked in), so old exports are not reused.
EXPORT_FORMAT = 1

#: Precisions of an export: ``"float32"`` (equal to PyTorch within rounding) or
#: ``"int8"`` (dynamic quantization, approximate).
DTYPES = ("float32", "int8")

_MODEL_FILE = "model.onnx"
_META_FILE = "meta.json"

# export folder -> (stamps of its files, identity): verified in this process
_VERIFIED: dict[str, tuple[tuple, str]] = {}

# (export, threads, identity, SESSION_CONFIG items) -> session
_SESSIONS: dict[tuple[str, int, str | None, tuple], Any] = {}
# per loaded model: (dtype, threads, folder, config) -> encoder, so that a call finds its encoder
# without checking the export on disk again; dropped with the model
_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()  # one export (and one session creation) at a time per process


_PACKAGES = ("onnxruntime", "onnx", "onnxscript")  # run, and export with torch.onnx


@functools.lru_cache(maxsize=1)
def is_available() -> bool:
    """Whether ONNX Runtime and the packages that export to it are installed
    (``onnxruntime``, ``onnx``, ``onnxscript``: ``pip install 'skclip[onnx]'``), and
    torch can export (2.5 or later).

    Examples
    --------
    >>> from skclip.backbones.onnx import is_available
    >>> isinstance(is_available(), bool)
    True
    """
    torch_major_minor = tuple(int(v) for v in torch.__version__.split(".")[:2])
    return torch_major_minor >= (2, 5) and all(
        importlib.util.find_spec(name) is not None for name in _PACKAGES
    )


def require() -> None:
    """Raise an ImportError saying what to install if :func:`is_available` is False."""
    if not is_available():
        missing = [name for name in _PACKAGES if importlib.util.find_spec(name) is None]
        raise ImportError(
            "runtime='onnxruntime' needs the onnxruntime, onnx and onnxscript packages and "
            f"torch >= 2.5 (missing: {', '.join(missing) or 'a newer torch'}): "
            "pip install 'skclip[onnx]'."
        )


def _require_onnxruntime() -> Any:
    require()
    import onnxruntime

    return onnxruntime


_WARNED: set[str] = set()


def warn_fallback(clip: Backbone, exc: BaseException) -> None:
    """Warn once per checkpoint that ``runtime="auto"`` fell back to PyTorch."""
    if clip.name not in _WARNED:
        _WARNED.add(clip.name)
        warnings.warn(
            f"Could not run the image tower of {clip.name!r} in ONNX Runtime ({exc!r}); "
            "runtime='auto' uses PyTorch instead. Pass runtime='torch' to skip the attempt.",
            RuntimeWarning,
            stacklevel=4,
        )


def default_folder() -> Path:
    """Where exports are kept by default: ``user_cache_dir("onnx")``
    (``$SKCLIP_CACHE_DIR/onnx`` or e.g. ``~/.cache/skclip/onnx``)."""
    return user_cache_dir("onnx")


class _ImageTower(torch.nn.Module):
    """What is exported: ``uint8`` crops -> the family's rescale and normalization ->
    its image features (e.g. CLIP's projected embeddings)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.model = backbone.model  # registered: its weights are the export's
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        inputs = self.backbone.preprocessor.model_inputs({"pixel_values": pixels}, torch.float32)
        return self.backbone.image_features(inputs).float()


def _fixed_size(clip: Backbone | CheckpointInfo) -> tuple[int, int] | None:
    """The (height, width) every input of ``clip`` has, or None where inputs vary
    (SigLIP 2's NaFlex patches)."""
    return fixed_size(clip.image_config)


def supports(clip: Backbone | CheckpointInfo) -> bool:
    """Whether the checkpoint can be exported: a fixed input size (every family but
    SigLIP 2's NaFlex, whose inputs vary in patches)."""
    return _fixed_size(clip) is not None


def _input_shape(clip: Backbone | CheckpointInfo) -> tuple[int, int, int]:
    size = _fixed_size(clip)
    if size is None:
        raise ValueError(
            f"The checkpoint {clip.name!r} has no fixed input size, which an ONNX export "
            "needs; use runtime='torch'."
        )
    return 3, *size


def export_key(clip: Backbone | CheckpointInfo, dtype: str = "float32") -> str:
    """The name of ``clip``'s export: a digest of the image tower's weights fingerprint
    and configuration, the preprocessing (baked into the graph), ``dtype`` and
    :data:`EXPORT_FORMAT`.

    Parameters
    ----------
    clip : Backbone or CheckpointInfo
        A loaded model, or its recorded identity (:mod:`skclip.backbones.identity`).
    dtype : {"float32", "int8"}

    Returns
    -------
    key : str
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} for ONNX Runtime, got {dtype!r}.")
    h = hasher(digest_size=12)
    parts = (
        EXPORT_FORMAT,
        clip.vision_fingerprint,
        clip.vision_config_json,
        sorted(clip.image_config.items()),
        _input_shape(clip),
    )
    h.update(repr(parts).encode())
    return f"{h.hexdigest()}-{dtype}"


def _usable(folder: Path) -> bool:
    """An export folder whose files are all there, at the sizes written."""
    try:
        meta = json.loads(_read_meta(folder))
        return all((folder / name).stat().st_size == size for name, size in meta["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


#: Most bytes of an export's ``meta.json`` that are read.
_META_CAP = 1 << 20
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _open_regular(path: Path) -> int:
    """A descriptor of ``path`` if it is a regular file (not a link, a FIFO, a device):
    opened without following a link and without blocking; else OSError."""
    fd = os.open(path, _READ_FLAGS)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _read_file(path: Path, cap: int) -> bytes:
    """All of the regular file ``path``, at most ``cap`` bytes (else OSError)."""
    fd = _open_regular(path)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(cap + 1)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise OSError(errno.EFBIG, f"more than {cap} bytes", str(path))
    return data


def _read_meta(folder: Path) -> str:
    return _read_file(folder / _META_FILE, _META_CAP).decode()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with os.fdopen(_open_regular(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamps(folder: Path, names: list[str]) -> tuple:
    out = []
    for name in names:
        st = (folder / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev))
    return tuple(out)


def verified(folder: Path) -> str | None:
    """The identity of the export in ``folder`` if every file matches the SHA-256 its
    ``meta.json`` records, else None (damaged, or written before checksums were).

    Each file is hashed the first time in a process, and again only if its stamp
    (size, times, inode) changed since."""
    try:
        meta = json.loads(_read_meta(folder))
        sums = meta["sha256"]
        names = sorted(sums)
        if not names or sorted(meta["files"]) != names:
            return None
        stamps = _stamps(folder, names)
        memo = _VERIFIED.get(str(folder))
        if memo is not None and memo[0] == stamps:
            return memo[1]
        if any(_sha256(folder / name) != sums[name] for name in names):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    identity = _export_id(sums)
    _VERIFIED[str(folder)] = (stamps, identity)
    return identity


def _export_id(sums: dict[str, str]) -> str:
    """The identity of an export: a digest of the SHA-256 of its files."""
    return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:32]


def encoder_identity(export_id: str, dtype: str) -> str:
    """:attr:`ImageEncoder.identity` of a session of the export ``export_id``: what its
    embeddings depend on besides the image (part of their cache key)."""
    return f"{export_id} onnxruntime={_require_onnxruntime().__version__} {dtype}"


def recorded_identity(
    clip: Backbone | CheckpointInfo, dtype: str = "float32", folder: str | os.PathLike | None = None
) -> str | None:
    """The :attr:`ImageEncoder.identity` the export of ``clip`` in ``folder`` gives its
    embeddings, read from its ``meta.json`` alone: no file hashed, no session, no
    model (``clip`` may be a recorded :class:`~skclip.backbones.identity.CheckpointInfo`).
    None if there is no such export.

    Enough to *look up* embeddings: those stored under this identity were made by a
    session whose bytes matched exactly these checksums (see :func:`image_encoder`),
    whatever happened to the files since. Encoding needs :func:`image_encoder`.
    """
    if not supports(clip):
        return None
    root = Path(folder).expanduser() if folder is not None else default_folder()
    try:
        sums = json.loads(_read_meta(root / export_key(clip, dtype)))["sha256"]
        if not sums or not all(isinstance(v, str) for v in sums.values()):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return encoder_identity(_export_id(sums), dtype)


def _seal(tmp: Path, target: Path, info: dict) -> None:
    """Record the sizes and SHA-256 of ``tmp``'s files and the torch and ONNX Runtime
    versions, then move ``tmp`` to ``target`` in one step.

    If another process got there first, its export is kept and ``tmp`` is deleted."""
    files = sorted(p for p in tmp.iterdir() if p.name != _META_FILE)
    record = {
        "files": {p.name: p.stat().st_size for p in files},
        "sha256": {p.name: _sha256(p) for p in files},
        "torch": torch.__version__,
        "onnxruntime": _require_onnxruntime().__version__,
        **info,
    }
    (tmp / _META_FILE).write_text(json.dumps(record, indent=1))
    try:
        os.rename(tmp, target)  # atomic; fails if target exists and is not empty
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _usable(target):
            raise


def _discard(folder: Path) -> None:
    """Delete a broken export (renamed first, so no reader sees it half deleted)."""
    _VERIFIED.pop(str(folder), None)
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _export_float32(clip: Backbone, target: Path) -> None:
    """Export ``clip``'s image tower (float32, CPU) into the folder ``target``."""
    if clip.device.type != "cpu" or clip.dtype != torch.float32:
        raise ValueError(
            f"ONNX export needs the model on the CPU in float32, got {clip.device} {clip.dtype}."
        )
    tower = _ImageTower(clip).eval()
    example = torch.zeros((2, *_input_shape(clip)), dtype=torch.uint8)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    chatty = logging.getLogger("torch.onnx")  # "torchvision is not installed..." warnings
    level = chatty.level
    try:
        chatty.setLevel(logging.ERROR)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter chatter (deprecations)
            torch.onnx.export(
                tower,
                (example,),
                str(tmp / _MODEL_FILE),
                input_names=["pixels"],
                output_names=["features"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=True,
                verbose=False,
            )
        _seal(tmp, target, {"model": clip.name, "torch": torch.__version__, "dtype": "float32"})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        chatty.setLevel(level)


def _export_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the float32 export in ``source`` into ``target``."""
    ort = _require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(logging.ERROR)  # quantize_dynamic advises pre-processing on the root logger
        quantize_dynamic(
            source / _MODEL_FILE,
            tmp / _MODEL_FILE,
            weight_type=QuantType.QInt8,
            use_external_data_format=True,
        )
        _seal(tmp, target, {"source": source.name, "onnxruntime": ort.__version__, "dtype": "int8"})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        root.setLevel(level)


#: What the progress line says while an export is made.
EXPORT_NOTE = "exporting the image tower to ONNX (once per checkpoint)"


def _note_export(clip: Backbone, dtype: str, target: Path, progress: bool | str) -> None:
    """One line on stderr (unless ``progress`` is False) saying an export is being made:
    the first use of a checkpoint takes seconds to a minute longer than the next ones."""
    if progress is False:
        return
    tqdm.write(  # around an open progress bar
        f"skclip: {EXPORT_NOTE}: {clip.name} ({dtype}) into {target.parent} ...",
        file=sys.stderr,
    )


def export(
    clip: Backbone,
    dtype: str = "float32",
    folder: str | os.PathLike | None = None,
    *,
    progress: bool | str = "auto",
) -> Path:
    """The folder of ``clip``'s ONNX export, made now if it is missing or broken.

    Parameters
    ----------
    clip : Backbone
        A model loaded on the CPU in float32.
    dtype : {"float32", "int8"}, default="float32"
        ``"int8"``: ONNX Runtime's dynamic quantization of the float32 export
        (approximate embeddings).
    folder : path-like or None, default=None
        Where exports are kept; None is :func:`default_folder`.
    progress : bool or "auto", default="auto"
        False: no line on stderr when an export is made (:data:`EXPORT_NOTE`).

    Returns
    -------
    path : pathlib.Path
        The export's folder; its ``model.onnx`` takes ``uint8`` ``(B, 3, H, W)`` crops
        and returns ``(B, d)`` float32 features.
    """
    key = export_key(clip, dtype)
    root = Path(folder).expanduser() if folder is not None else default_folder()
    target = root / key
    with _LOCK:
        if _usable(target) and verified(target) is not None:
            return target
        root.mkdir(parents=True, exist_ok=True)
        with _export_lock(root, key):  # one process exports; the others wait, then use it
            if _usable(target) and verified(target) is not None:
                return target  # made by another process meanwhile
            if target.exists():
                _discard(target)
            _note_export(clip, dtype, target, progress)
            if dtype == "float32":
                _export_float32(clip, target)
            else:
                _export_int8(export(clip, "float32", root, progress=False), target)
        return target


@contextlib.contextmanager
def _export_lock(root: Path, key: str) -> Iterator[None]:
    """Hold the lock of export ``key`` in ``root`` across processes (``flock`` on the file
    ``.lock-<key>``, released by the system if the process dies): processes that need
    the same export (a search's workers) make it once instead of each at the same time.
    Where it cannot be taken (no ``fcntl``, a read-only folder) each process exports, as
    before; the first rename wins (:func:`_seal`).

    The holder deletes the lock file when done, so no file is left beside the exports.
    A process that waited on it then holds a lock no newcomer sees; both find the export
    made, and only if it failed may both export, as without a lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path = root / f".lock-{key}"
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # no locks on this file system: as before
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # releases the lock


class ImageEncoder:
    """An ONNX Runtime session of an exported image tower.

    Call it with ``uint8`` crops ``(B, 3, H, W)``; it returns the raw (not normalized)
    projected features ``(B, d)``, float32.

    Attributes
    ----------
    path : pathlib.Path
        The export's folder.
    threads : int
        ONNX Runtime's intra-op threads.
    session : onnxruntime.InferenceSession
    dtype : {"float32", "int8"}
    identity : str
        What the embeddings it makes depend on besides the image: the export's
        checksums, the ONNX Runtime version and the precision (part of their cache key).
    """

    def __init__(
        self, path: Path, threads: int, session: Any, dtype: str = "float32", export_id: str = ""
    ) -> None:
        self.path = path
        self.threads = threads
        self.session = session
        self.dtype = dtype
        self.identity = encoder_identity(export_id, dtype)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        return self.session.run(None, {"pixels": pixels})[0]

    def __repr__(self) -> str:
        return f"ImageEncoder(path={str(self.path)!r}, threads={self.threads})"


#: Configuration entries of every session (``SessionOptions.add_session_config_entry``):
#: no spinning. ONNX Runtime's default spin (2**20 pauses) burns about 40 ms of a core
#: after every forward pass on a 2-core AMD EPYC, which the decoding of the next batch
#: needs; a spin bounded to 100 us within a pass and stopped after it
#: (``session.intra_op.spin_duration_us``, ``session.force_spinning_stop``) was no faster
#: there and took more CPU under load. Measured by ``benchmarks/profile_runtimes.py``;
#: part of a session's key in this process.
SESSION_CONFIG: dict[str, str] = {"session.intra_op.allow_spinning": "0"}


def session_options(threads: int) -> Any:
    """The :class:`onnxruntime.SessionOptions` of an image tower's session: ``threads``
    intra-op threads, sequential execution (the graph is a chain: inter-op threads would
    only wait), every graph optimization, :data:`SESSION_CONFIG`, errors-only logging.

    Examples
    --------
    >>> from skclip.backbones.onnx import session_options
    >>> session_options(2).intra_op_num_threads
    2
    """
    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3  # errors only
    return options


def _session(path: Path, threads: int) -> tuple[Any, str]:
    """A session of the export in ``path`` and its identity, made from the verified bytes.

    Every file is read into memory once, hashed and compared with ``meta.json``; the
    session is created from those same bytes (the weights file through ONNX Runtime's
    in-memory external data), never from the files: ONNX Runtime maps a weights file and
    would read later edits of it. Raises ValueError if a file no longer matches."""
    ort = _require_onnxruntime()
    meta = json.loads(_read_meta(path))
    sums = meta["sha256"]
    blobs = {name: _read_file(path / name, int(meta["files"][name])) for name in sorted(sums)}
    changed = [n for n, data in blobs.items() if hashlib.sha256(data).hexdigest() != sums[n]]
    if changed or _MODEL_FILE not in blobs:
        raise ValueError(f"the export in {path} changed since it was verified: {changed}")
    options = session_options(threads)
    weights = [name for name in blobs if name != _MODEL_FILE]
    buffers = [np.frombuffer(blobs[name], dtype=np.uint8) for name in weights]
    if weights and not hasattr(options, "add_external_initializers_from_files_in_memory"):
        raise RuntimeError(
            f"onnxruntime {ort.__version__} cannot take an export's weights from memory "
            "(SessionOptions.add_external_initializers_from_files_in_memory, onnxruntime "
            ">= 1.23): pip install -U onnxruntime, or use runtime='torch'."
        )
    if weights:  # ONNX Runtime copies them into the session: the buffers may go after
        options.add_external_initializers_from_files_in_memory(
            weights, buffers, [len(b) for b in buffers]
        )
    session = ort.InferenceSession(blobs[_MODEL_FILE], options, providers=["CPUExecutionProvider"])
    return session, _export_id(sums)


def image_encoder(
    clip: Backbone,
    *,
    dtype: str = "float32",
    threads: int | None = None,
    folder: str | os.PathLike | None = None,
    progress: bool | str = "auto",
) -> ImageEncoder:
    """ONNX Runtime encoder of ``clip``'s image tower, exported on first use.

    The export is made once per checkpoint (see :func:`export`); the session once per
    (export, ``threads``) in the process.

    Parameters
    ----------
    clip : Backbone
        A model loaded on the CPU in float32 (only needed to export; the session runs
        on its own copy of the weights).
    dtype : {"float32", "int8"}, default="float32"
        ``"int8"`` is approximate (dynamic quantization).
    threads : int or None, default=None
        Intra-op threads; None follows ``torch.get_num_threads()``, so thread limits set
        for torch (e.g. inside joblib workers) apply here too.
    folder : path-like or None, default=None
        Where exports are kept; None is :func:`default_folder`.
    progress : bool or "auto", default="auto"
        False: no line on stderr when the export is made.

    Returns
    -------
    encoder : ImageEncoder

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from skclip.backbones.loading import load_backbone
    >>> from skclip.backbones.onnx import image_encoder
    >>> clip = load_backbone(tiny_clip_path, "cpu", "float32")
    >>> encoder = image_encoder(clip, folder=tempfile.mkdtemp())  # exported once, then reused
    >>> encoder(np.zeros((2, 3, 32, 32), dtype=np.uint8)).shape
    (2, 16)
    """
    _require_onnxruntime()
    threads = int(threads) if threads is not None else torch.get_num_threads()
    config = tuple(sorted(SESSION_CONFIG.items()))
    memo_key = (dtype, threads, None if folder is None else os.fspath(folder), config)
    memo = _ENCODERS.get(clip)
    if memo is not None and memo_key in memo:  # checked and loaded before in this process
        return memo[memo_key]
    with _LOCK:
        path = export(clip, dtype, folder, progress=progress)  # verified
        key = (str(path), threads, verified(path), config)
        if key not in _SESSIONS:
            try:  # from the bytes it hashes: what is verified is what runs
                session, identity = _session(path, threads)
            except Exception:  # noqa: BLE001 - changed since, or unreadable: rebuild once
                _discard(path)
                path = export(clip, dtype, folder, progress=progress)
                session, identity = _session(path, threads)
            key = (str(path), threads, identity, config)
            _SESSIONS[key] = session
        encoder = ImageEncoder(path, threads, _SESSIONS[key], dtype, key[2] or "")
        _ENCODERS.setdefault(clip, {})[memo_key] = encoder
        return encoder


def clear_sessions() -> None:
    """Forget every ONNX Runtime session of this process and which exports were
    verified (exports on disk stay)."""
    with _LOCK:
        _SESSIONS.clear()
        _ENCODERS.clear()
        _VERIFIED.clear()
