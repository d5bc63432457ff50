"""Saving fitted pipelines: small files without weights, identical predictions anywhere."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV


def _pipe(model, kind):
    tip = {
        "tip": TipAdapterClassifier(clip_model=model, alpha=5.0),
        "tip-f": TipAdapterClassifier(
            clip_model=model, alpha=5.0, fine_tune=True, epochs=3, random_state=0
        ),
        "tip-cv": TipAdapterClassifierCV(clip_model=model, cv=3),
    }[kind]
    return Pipeline([("clip", CLIPFeaturizer(model=model, progress=False)), ("tip", tip)])


KINDS = ["tip", "tip-f", "tip-cv"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["pickle", "joblib", "skops"])
def test_round_trip_holds_no_weights(tiny_clip_path, image_folder, tmp_path, kind, fmt):
    paths, labels = image_folder
    pipe = _pipe(tiny_clip_path, kind).fit(paths, labels)
    expected_proba = pipe.predict_proba(paths)
    path = tmp_path / f"model.{fmt}"
    if fmt == "pickle":
        path.write_bytes(pickle.dumps(pipe))
        loaded = pickle.loads(path.read_bytes())
    elif fmt == "joblib":
        joblib.dump(pipe, path)
        loaded = joblib.load(path)
    else:
        sio = pytest.importorskip("skops.io")
        sio.dump(pipe, path)
        untrusted = sio.get_untrusted_types(file=path)
        assert set(untrusted) <= {
            "skclip.featurizer.CLIPFeaturizer",
            "skclip.tip_adapter.TipAdapterClassifier",
            "skclip.model_selection.TipAdapterClassifierCV",
        }
        loaded = sio.load(path, trusted=untrusted)
    _assert_no_torch_objects(loaded)
    if fmt != "skops":  # skops stores cv_results_ as verbose JSON: its size says little
        weights = (Path(tiny_clip_path) / "model.safetensors").stat().st_size
        assert path.stat().st_size < min(weights / 4, 60_000)  # parameters and caches only
    np.testing.assert_array_equal(loaded.predict_proba(paths), expected_proba)


def _assert_no_torch_objects(obj):
    """Pickle ``obj`` with a pickler that refuses tensors and modules: no weights inside."""
    import io

    import torch

    class Refuse(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, (torch.Tensor, torch.nn.Module)):
                raise AssertionError(f"a {type(o).__name__} is stored in the estimator")
            return None

    Refuse(io.BytesIO()).dump(obj)


def test_fresh_process_reloads_the_model_lazily(tiny_clip_path, image_folder, tmp_path):
    paths, labels = image_folder
    pipe = _pipe(tiny_clip_path, "tip-f").fit(paths, labels)
    joblib.dump(pipe, tmp_path / "m.joblib")
    script = textwrap.dedent(
        f"""
        import json, joblib
        from skclip.backbones import loading as _models
        pipe = joblib.load({str(tmp_path / "m.joblib")!r})
        loaded_before = len(_models._CACHE)
        paths = json.loads({json.dumps(json.dumps(list(paths)))})
        proba = pipe.predict_proba(paths)
        print(json.dumps({{"before": loaded_before, "after": len(_models._CACHE),
                          "proba": proba.tolist()}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["before"] == 0 and out["after"] == 1  # loaded on first use, once
    np.testing.assert_allclose(out["proba"], pipe.predict_proba(paths), atol=1e-6)


def test_missing_model_folder_is_named(tiny_clip_path, image_folder, tmp_path):
    paths, labels = image_folder
    model = shutil.copytree(tiny_clip_path, tmp_path / "my-clip")
    pipe = _pipe(str(model), "tip").fit(paths, labels)
    blob = pickle.dumps(pipe)
    shutil.rmtree(model)
    from skclip.backbones import loading as _models

    _models.clear_model_cache()  # as in a new process
    loaded = pickle.loads(blob)
    with pytest.raises(OSError, match=r"my-clip.*does not exist"):
        loaded.predict(paths)


@pytest.mark.parametrize("fmt", ["skops", "joblib"])
@pytest.mark.parametrize("attr", ["cache_keys_", "text_features_", "logit_scale_"])
def test_i20_6_non_finite_fitted_arrays_are_refused_on_load(
    tiny_clip_path, image_folder, tmp_path, fmt, attr, capsys
):
    """Issue 20, case 6: a .skops with NaN cache_keys_ predicted one class for every image
    with NaN probabilities, exit 0."""
    from skclip.cli.model_file import load_model_file as load_model, save_model
    from skclip.cli import main

    if fmt == "skops":
        pytest.importorskip("skops.io")
    paths, labels = image_folder
    pipe = _pipe(tiny_clip_path, "tip-cv").fit(paths, labels)
    tip = pipe.named_steps["tip"]
    if attr == "logit_scale_":
        tip.logit_scale_ = float("inf")
    else:
        getattr(tip, attr)[1, 2] = np.nan
    path = tmp_path / f"damaged.{fmt}"
    save_model(pipe, path)
    with pytest.raises(ValueError, match=rf"damaged.{fmt}' is damaged: .* tip.{attr} holds NaN"):
        load_model(path)
    assert main(["predict", str(path), paths[0], "-q"]) == 1
    assert f"tip.{attr} holds NaN or infinite values" in capsys.readouterr().err
