"""Shared pytest set-up for tests/ and the docstring examples in skclip/.

Builds a tiny random CLIP checkpoint (model, tokenizer, image processor) offline once
per session; tests and doctests get its folder as ``tiny_clip_path``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Tests never touch the network: fail fast instead of retrying the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Nor the user's cache folder (ONNX exports...): a folder of this run, inherited by
# worker processes, removed at exit.
if "SKCLIP_CACHE_DIR" not in os.environ:
    os.environ["SKCLIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="skclip-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SKCLIP_CACHE_DIR"], ignore_errors=True)

import pytest  # noqa: E402

from skclip._testing import save_random_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory) -> str:
    """Folder of a tiny random CLIP checkpoint (16-d embeddings, 32x32 images)."""
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), size="tiny")


@pytest.fixture(autouse=True)
def _doctest_tiny_clip(request):
    """Doctests see ``tiny_clip_path``, a local CLIP folder, in their namespace."""
    if type(request.node).__name__ == "DoctestItem":
        ns = request.getfixturevalue("doctest_namespace")
        ns["tiny_clip_path"] = request.getfixturevalue("tiny_clip_path")


# Tiny random checkpoints of the other backbone families (tests/test_backbones.py).
@pytest.fixture(scope="session")
def tiny_siglip_path(tmp_path_factory) -> str:
    """Folder of a tiny random SigLIP checkpoint (32-d embeddings, 32x32 images)."""
    from skclip._testing import save_random_siglip

    return save_random_siglip(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture(scope="session")
def tiny_siglip2_path(tmp_path_factory) -> str:
    """Folder of a tiny random SigLIP 2 NaFlex checkpoint (8x8 patches, at most 16)."""
    from skclip._testing import save_random_siglip2

    return save_random_siglip2(tmp_path_factory.mktemp("tiny-siglip2"))


@pytest.fixture(scope="session")
def tiny_metaclip2_path(tmp_path_factory) -> str:
    """Folder of a tiny random MetaCLIP 2 checkpoint (16-d embeddings, 32x32 images)."""
    from skclip._testing import save_random_metaclip2

    return save_random_metaclip2(tmp_path_factory.mktemp("tiny-metaclip2"))


@pytest.fixture(scope="session")
def tiny_dinov2_path(tmp_path_factory) -> str:
    """Folder of a tiny random DINOv2 checkpoint (image only, 32-d pooled output)."""
    from skclip._testing import save_random_dinov2

    return save_random_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))
