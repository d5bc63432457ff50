"""Scaling out on a local Dask cluster: same results as one process, one model per worker."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import make_image
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")

from skclip import CLIPFeaturizer, ImageLoadError, TipAdapterClassifier  # noqa: E402
from skclip.distributed import transform  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _models_loaded_per_worker(client):
    def count():
        from skclip.backbones import loading as _models

        return len(_models._CACHE)

    return sorted(client.run(count).values())


class _FakeClient:
    def map(self, *a, **k): ...
    def gather(self, *a, **k): ...
    def scheduler_info(self): ...


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"featurizer": "not a featurizer"}, "'featurizer' parameter"),
        ({"client": object()}, "'client' parameter"),
        ({"partition_size": 0}, "'partition_size' parameter"),
    ],
)
def test_transform_validates_its_arguments_before_any_work(kwargs, match):
    from sklearn.utils._param_validation import InvalidParameterError

    args = {
        "featurizer": CLIPFeaturizer(model="unused"),
        "X": ["a.jpg"],
        "client": _FakeClient(),
        "partition_size": None,
    }
    args.update(kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        transform(**args)


def test_core_package_does_not_import_dask():
    import subprocess

    code = (
        "import skclip, sys; "
        "print(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_transform_equals_single_process(client, tiny_clip_path, image_folder):
    paths, _ = image_folder
    feat = CLIPFeaturizer(model=tiny_clip_path, cache=False)
    X = transform(feat, paths, client, partition_size=4)  # 5 partitions over 2 workers
    np.testing.assert_allclose(X, feat.transform(paths), atol=1e-6)
    assert _models_loaded_per_worker(client) == [1, 1]  # each worker loaded the model once
    transform(feat, paths[::-1], client, partition_size=3)
    assert _models_loaded_per_worker(client) == [1, 1]


def test_bad_files_are_named_not_lost(client, tiny_clip_path, tmp_path):
    good = []
    for i in range(5):
        good.append(str(tmp_path / f"g{i}.png"))
        make_image(np.random.default_rng(i)).save(good[-1])
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    items = good[:3] + [str(bad)] + good[3:]
    feat = CLIPFeaturizer(model=tiny_clip_path)
    with pytest.raises(ImageLoadError, match=r"1 of 6 images(.|\n)*broken.jpg"):
        transform(feat, items, client, partition_size=2)
    with pytest.warns(UserWarning, match="broken.jpg"):
        X = transform(feat.set_params(on_error="warn"), items, client, partition_size=2)
    assert np.isnan(X[3]).all() and np.isfinite(np.delete(X, 3, axis=0)).all()


def test_i20_minor_errors_number_inputs_as_the_caller_does(client, tiny_clip_path, tmp_path):
    """Issue 20, minor: messages numbered inputs per partition ("input 1" for input 9)."""
    good = tmp_path / "good.png"
    make_image(np.random.default_rng(0)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    items = [str(good)] * 9 + [str(bad), np.zeros((0, 3), np.uint8)]
    feat = CLIPFeaturizer(model=tiny_clip_path, cache=False)
    with pytest.raises(ImageLoadError) as info:
        transform(feat, items, client, partition_size=4)
    message = str(info.value)
    assert f"{str(bad)!r} (input 9)" in message and "(input 1)" not in message
    assert "array input 10 with shape (0, 3)" in message and "input 2 " not in message
    with pytest.raises(ImageLoadError) as local:
        feat.transform(items)
    for line in str(local.value).splitlines()[1:]:  # the same lines, each with its partition
        assert line.strip() in message


def test_gridsearch_on_the_cluster_equals_single_process(client, tiny_clip_path, image_folder):
    paths, labels = image_folder
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=tiny_clip_path, progress=False)),
            ("tip", TipAdapterClassifier(clip_model=tiny_clip_path)),
        ]
    )
    grid = {"tip__alpha": [0.0, 1.0, 10.0], "tip__beta": [1.0, 5.5]}
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    local = GridSearchCV(pipe, grid, cv=cv).fit(paths, labels)
    with joblib.parallel_config(backend="dask"):
        remote = GridSearchCV(pipe, grid, cv=cv, n_jobs=2).fit(paths, labels)
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"], atol=1e-9
    )
    assert remote.best_params_ == local.best_params_
    assert all(n <= 1 for n in _models_loaded_per_worker(client))


def test_worker_killed_mid_transform_is_retried(client, tiny_clip_path, image_folder):
    """A worker SIGKILLed inside a forward pass: the scheduler reruns its tasks elsewhere
    and the embeddings come back complete and equal. Last in this module: the cluster
    then has a restarted worker."""
    paths, _ = image_folder
    feat = CLIPFeaturizer(model=tiny_clip_path, cache=False, batch_size=1, progress=False)
    expected = feat.transform(paths)

    def die_on_second_forward(model):
        import os
        import signal

        from skclip.encoding import engine as _encode

        forward = _encode.tower  # the image tower of any runtime
        calls = [0]

        def patched(spec, pixels):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(spec, pixels)

        _encode.tower = patched

    victim = sorted(client.scheduler_info()["workers"])[0]
    client.run(die_on_second_forward, tiny_clip_path, workers=[victim])
    X = transform(feat, paths, client, partition_size=3)  # 6 partitions, 3 passes each
    assert victim not in client.scheduler_info()["workers"]  # it did die
    np.testing.assert_allclose(X, expected, atol=1e-6)


def test_19_8_workers_check_the_checkpoint_fingerprint(
    client, tiny_clip_path, image_folder, tmp_path
):
    """A fitted featurizer pointed at another checkpoint is refused on the workers too,
    as CLIPFeaturizer.transform refuses it."""
    from skclip import CheckpointMismatchError
    from skclip._testing import save_random_clip

    paths, _ = image_folder
    feat = CLIPFeaturizer(model=tiny_clip_path, cache=False).fit(paths[:2])
    feat.set_params(model=save_random_clip(tmp_path / "swapped", seed=1))
    with pytest.raises(CheckpointMismatchError):
        feat.transform(paths[:2])
    with pytest.raises(CheckpointMismatchError):
        transform(feat, paths[:4], client, partition_size=2)
