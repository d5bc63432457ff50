"""Model loading: one shared model per (name, device, dtype), offline-friendly errors."""

from __future__ import annotations

import pytest
import torch

from skclip._models import load_clip, resolve_device, resolve_dtype


def test_loaded_once_and_shared(tiny_clip_path):
    a = load_clip(tiny_clip_path, "cpu", "float32")
    b = load_clip(tiny_clip_path, "auto", "auto") if not torch.cuda.is_available() else a
    assert a is b
    assert a.model.training is False
    assert all(not p.requires_grad for p in a.model.parameters())
    assert a.tokenizer is not None and a.embedding_dim == 16


def test_auto_device_and_dtype():
    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_offline_hub_id_error_says_how_to_pass_a_folder():
    with pytest.raises(OSError) as info:
        load_clip("skclip-test-org/no-such-clip-model", "cpu")
    msg = str(info.value)
    assert "skclip-test-org/no-such-clip-model" in msg
    assert "local folder" in msg and "save_pretrained" in msg


def test_missing_local_folder_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(OSError, match="does not exist"):
        load_clip(str(missing), "cpu")
