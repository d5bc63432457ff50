"""Model loading: one shared model per (name, device, dtype), offline-friendly errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from skclip.backbones.loading import load_backbone as load_clip, resolve_device, resolve_dtype


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


# -- issue 15, item 6: offline without waiting --------------------------------------------
@pytest.fixture
def online_calls(monkeypatch):
    """Record every ``from_pretrained`` call that may go to the hub (the config is read
    first, to pick the backbone family; then the model)."""
    from transformers import AutoConfig, CLIPModel

    calls = []
    for cls in (AutoConfig, CLIPModel):
        original = cls.from_pretrained.__func__

        def spy(cls, name, *args, _original=original, **kwargs):
            if not kwargs.get("local_files_only") and not os.path.isdir(os.path.expanduser(name)):
                calls.append(name)
            return _original(cls, name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls


@pytest.mark.parametrize(
    "name",
    [
        "models/clip-b32",  # one separator, but models/ is a folder here
        "./clip-b32",
        "~/no-such-skclip-folder",
        "models/clip-b32/",
        "a/b/c",
        "bad name!",
    ],
)
def test_path_like_names_are_missing_folders_never_hub_ids(
    name, tmp_path, monkeypatch, online_calls
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(OSError, match="does not exist or is not a folder") as info:
        load_clip(name, "cpu")
    assert repr(name) in str(info.value) and "read as a local path" in str(info.value)
    assert online_calls == []


def test_unreachable_hub_fails_at_once(monkeypatch, online_calls):
    """Without HF_HUB_OFFLINE and without a network, one quick request decides: no
    download attempt (whose retries took 31-35 s)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    with pytest.raises(OSError, match="the hub cannot be reached: http://127.0.0.1:9") as info:
        load_clip("skclip-test-org/no-such-clip-model", "cpu")
    assert "save_pretrained" in str(info.value)
    assert online_calls == []


def test_fitted_featurizer_refuses_a_different_checkpoint_under_its_name(tmp_path):
    """Issue 15 item 1: a checkpoint replaced under the stored name never embeds silently."""
    import pickle
    import shutil

    from skclip import CheckpointMismatchError, CLIPFeaturizer, TipAdapterClassifier
    from skclip.backbones.loading import clear_model_cache
    from skclip._testing import save_random_clip

    folder = tmp_path / "clip"
    save_random_clip(folder, seed=0)
    images = [np.full((40, 40, 3), c, dtype=np.uint8) for c in (10, 120, 240)]
    feat = CLIPFeaturizer(model=str(folder), cache=False, progress=False).fit(images)
    X = feat.transform(images)
    clf = TipAdapterClassifier(clip_model=str(folder), device="cpu").fit(X, ["a", "b", "c"])
    assert clf.model_fingerprint_ == feat.model_fingerprint_
    saved = pickle.dumps(feat)
    shutil.copytree(folder, tmp_path / "moved")
    shutil.rmtree(folder)
    save_random_clip(folder, seed=1)  # another checkpoint, same name
    clear_model_cache()
    restored = pickle.loads(saved)
    with pytest.raises(CheckpointMismatchError) as info:
        restored.transform(images)
    message = str(info.value)
    assert str(folder) in message and restored.model_fingerprint_ in message
    # Pointing at the original checkpoint's new location works, and gives the same output.
    restored.set_params(model=str(tmp_path / "moved"))
    np.testing.assert_allclose(restored.transform(images), X, atol=1e-6)
    # An unfitted featurizer has nothing to check: it uses whatever the name holds.
    assert (
        CLIPFeaturizer(model=str(folder), cache=False, progress=False).transform(images).shape
        == X.shape
    )
