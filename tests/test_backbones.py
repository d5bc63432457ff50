"""Backbone families: each checkpoint's own processor and model are reproduced exactly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import make_image
from PIL import Image, ImageOps

from skclip.backbones.families import NoTextTowerError
from skclip._compat import pooled_embeddings
from skclip._images import open_image
from skclip.backbones.loading import load_backbone as load_model
from skclip.backbones.preprocess import (
    NaFlexPreprocessor,
    ResizeCropPreprocessor,
    UnsupportedPreprocessingError,
    config_from_processor,
    image_config,
)
from skclip._testing import TINY_SIGLIP_BIAS, TINY_SIGLIP_SCALE

FAMILIES = {  # fixture -> (family, embedding dim)
    "tiny_clip_path": ("clip", 16),
    "tiny_metaclip2_path": ("metaclip_2", 16),
    "tiny_siglip_path": ("siglip", 32),
    "tiny_siglip2_path": ("siglip2", 32),
    "tiny_dinov2_path": ("image-only", 32),
}
DUAL = [f for f, (fam, _) in FAMILIES.items() if fam != "image-only"]


@pytest.fixture(params=list(FAMILIES))
def family_path(request):
    return request.param, request.getfixturevalue(request.param)


def _hf_processor(path):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path, backend="pil")


def _ours(backbone, images):
    """Our model inputs for PIL images: decode-thread part, collate, device part."""
    prep = backbone.preprocessor
    batch = prep.collate([prep(open_image(im)) for im in images])
    return prep.model_inputs({k: torch.from_numpy(v) for k, v in batch.items()}, torch.float32)


def _photo_like_inputs(tmp_path):
    """Real-photo-like images in the modes photos come in, and a rotated-EXIF JPEG."""
    rng = np.random.default_rng(7)
    rgb = make_image(rng, (57, 41))
    rgba = make_image(rng, (40, 64)).convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[::3, :, 3] = 80
    palette = make_image(rng, (45, 45)).convert("P")
    palette.info["transparency"] = 0
    exif_path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    make_image(rng, (70, 30)).save(exif_path, exif=exif, quality=95)
    with Image.open(exif_path) as im:
        rotated = ImageOps.exif_transpose(im)
    return {
        "rgb": rgb,
        "gray": make_image(rng, (33, 61)).convert("L"),
        "rgba": Image.fromarray(alpha, "RGBA"),
        "palette+transparency": palette,
        "cmyk": make_image(rng, (90, 35)).convert("CMYK"),
        "exif": rotated,
        "tiny": make_image(rng, (9, 13)),
        "large": make_image(rng, (500, 375)),
    }


def test_preprocessing_equals_the_checkpoints_processor(family_path, tmp_path):
    fixture, path = family_path
    backbone = load_model(path, "cpu", "float32")
    proc = _hf_processor(path)
    for kind, img in _photo_like_inputs(tmp_path).items():
        ours = _ours(backbone, [img])
        theirs = proc(images=[img], do_convert_rgb=True, return_tensors="pt")
        assert set(ours) == set(theirs.keys()), kind
        for key, value in ours.items():
            assert value.shape == theirs[key].shape, (fixture, kind, key)
            np.testing.assert_allclose(
                value.numpy(), theirs[key].numpy(), atol=1e-5, err_msg=f"{fixture} {kind} {key}"
            )


def test_preprocessor_kinds_follow_the_processor(
    tiny_clip_path, tiny_siglip_path, tiny_siglip2_path
):
    siglip = image_config(tiny_siglip_path)
    assert siglip["do_center_crop"] is False and siglip["size"] == (32, 32)  # no crop
    assert isinstance(load_model(tiny_siglip_path, "cpu").preprocessor, ResizeCropPreprocessor)
    assert isinstance(load_model(tiny_siglip2_path, "cpu").preprocessor, NaFlexPreprocessor)
    # CLIP's settings are read as before (same keys and values), so its embedding-cache
    # keys do not change
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil.from_pretrained(tiny_clip_path)
    assert image_config(tiny_clip_path) == {
        "do_resize": True,
        "shortest_edge": 32,
        "size": (None, None),
        "resample": 3,
        "do_center_crop": True,
        "crop_size": (32, 32),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": tuple(proc.image_mean),
        "image_std": tuple(proc.image_std),
    }


def test_naflex_keeps_aspect_ratio_within_the_patch_budget(tiny_siglip2_path):
    prep = load_model(tiny_siglip2_path, "cpu").preprocessor
    for size in [(64, 16), (16, 64), (300, 20), (32, 32)]:
        rows, cols, dim = prep(make_image(np.random.default_rng(0), size)).shape
        assert rows * cols <= prep.max_num_patches and dim == 8 * 8 * 3
        if size[0] > size[1]:
            assert cols > rows
    rng = np.random.default_rng(1)
    view = prep.random_view(make_image(rng, (64, 40)), rng)
    assert view.dtype == np.uint8 and view.shape[0] * view.shape[1] <= prep.max_num_patches


@pytest.mark.parametrize("normalize", [True, False])
def test_embeddings_equal_the_models_own_processor_and_forward(family_path, normalize):
    fixture, path = family_path
    backbone = load_model(path, "cpu", "float32")
    assert (backbone.family, backbone.embedding_dim) == FAMILIES[fixture]
    rng = np.random.default_rng(3)
    sizes = rng.integers(20, 90, size=(6, 2))
    images = [make_image(rng, (int(w), int(h))) for w, h in sizes]
    prep = backbone.preprocessor
    X = backbone.embed_images(prep.collate([prep(im) for im in images]), normalize=normalize)
    inputs = _hf_processor(path)(images=images, return_tensors="pt")
    with torch.inference_mode():
        if backbone.has_text:
            ref = pooled_embeddings(backbone.model.get_image_features(**inputs))
        else:
            ref = backbone.model(**inputs).pooler_output
    if normalize:
        ref = torch.nn.functional.normalize(ref, dim=-1)
    assert X.dtype == np.float32 and X.shape == (6, backbone.embedding_dim)
    np.testing.assert_allclose(X, ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("fixture", DUAL)
def test_text_head_gives_the_models_zero_shot_logits(request, fixture):
    """scale * cos + bias, with the scale and bias the docs give, is logits_per_image."""
    from transformers import AutoTokenizer

    path = request.getfixturevalue(fixture)
    backbone = load_model(path, "cpu", "float32")
    rng = np.random.default_rng(4)
    images = [make_image(rng, (40 + 9 * i, 50)) for i in range(4)]
    texts = ["a photo of a cat.", "a photo of a dog.", "itap of a red car."]
    prep = backbone.preprocessor
    f = backbone.embed_images(prep.collate([prep(im) for im in images]))
    W = torch.nn.functional.normalize(backbone.text_features(texts), dim=-1).numpy()
    ours = backbone.logit_scale * f @ W.T + backbone.logit_bias

    siglip = backbone.family.startswith("siglip")
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_len = backbone.model.config.text_config.max_position_embeddings
    tokens = tokenizer(
        texts,
        padding="max_length" if siglip else True,
        max_length=max_len,
        truncation=True,
        return_tensors="pt",
    )
    inputs = _hf_processor(path)(images=images, return_tensors="pt")
    with torch.inference_mode():
        theirs = backbone.model(**inputs, **tokens).logits_per_image.numpy()
    if siglip:  # the learned scale and bias, as they are
        assert (backbone.logit_scale, backbone.logit_bias) == pytest.approx(
            (TINY_SIGLIP_SCALE, TINY_SIGLIP_BIAS)
        )
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    else:  # CLIP-like: Tip-Adapter's fixed 100, no bias, in place of the stored exp(logit_scale)
        assert (backbone.logit_scale, backbone.logit_bias) == (100.0, 0.0)
        learned = float(backbone.model.logit_scale.exp())
        assert backbone.learned_logit_scale == pytest.approx(learned)
        np.testing.assert_allclose(ours * learned / 100.0, theirs, atol=1e-4)


def test_family_comes_from_the_config_not_the_name(tiny_siglip_path, tmp_path):
    misleading = tmp_path / "openai-clip-vit-base-patch32"
    shutil.copytree(tiny_siglip_path, misleading)
    backbone = load_model(str(misleading), "cpu")
    assert backbone.family == "siglip"
    # same weights, same fingerprint: cached embeddings are shared across folder names
    assert backbone.vision_fingerprint == load_model(tiny_siglip_path, "cpu").vision_fingerprint


def test_fingerprints_differ_between_families(request):
    prints = {load_model(request.getfixturevalue(f), "cpu").vision_fingerprint for f in FAMILIES}
    assert len(prints) == len(FAMILIES)


def test_image_only_backbone_has_no_text_head(tiny_dinov2_path):
    backbone = load_model(tiny_dinov2_path, "cpu")
    assert backbone.tokenizer is None and not backbone.has_text
    with pytest.raises(NoTextTowerError, match="image-only.*clip_model=None"):
        backbone.text_features(["a photo of a cat."])


def test_missing_tokenizer_is_explained(tiny_siglip_path, tmp_path):
    folder = tmp_path / "siglip-no-tokenizer"
    shutil.copytree(tiny_siglip_path, folder)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    backbone = load_model(str(folder), "cpu")
    assert backbone.family == "siglip" and backbone.tokenizer is None
    with pytest.raises(NoTextTowerError, match="no usable tokenizer.*text_features="):
        backbone.text_features(["a cat"])


def test_unsupported_checkpoints_are_named(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(
        BertConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            vocab_size=50,
        )
    ).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"'bert'.*not supported"):
        load_model(str(folder), "cpu")


def test_unsupported_image_processor_is_named():
    from transformers import BitImageProcessorPil, ConvNextImageProcessorPil

    with pytest.raises(UnsupportedPreprocessingError, match="ConvNextImageProcessorPil"):
        config_from_processor(ConvNextImageProcessorPil(), "some/convnext")
    no_crop = BitImageProcessorPil(size={"shortest_edge": 32}, do_center_crop=False)
    with pytest.raises(UnsupportedPreprocessingError, match="different shapes"):
        config_from_processor(no_crop, "some/backbone")


# -- through the estimators ---------------------------------------------------------------
def _small_cv(path):
    from skclip import TipAdapterClassifierCV

    return TipAdapterClassifierCV(
        clip_model=path, alphas=[0.0, 1.0, 10.0], betas=[1.0, 5.0], cv=3, device="cpu"
    )


@pytest.mark.parametrize("fixture", DUAL)
def test_pipeline_with_cv_classifier_on_each_dual_encoder(request, fixture, image_folder):
    from sklearn.pipeline import Pipeline

    from skclip import CLIPFeaturizer

    path = request.getfixturevalue(fixture)
    paths, labels = image_folder
    pipe = Pipeline(
        [
            ("clip", CLIPFeaturizer(model=path, device="cpu", progress=False)),
            ("tip", _small_cv(path)),
        ]
    )
    pipe.fit(paths, labels)
    backbone = load_model(path, "cpu")
    tip = pipe.named_steps["tip"]
    assert (tip.logit_scale_, tip.logit_bias_) == (backbone.logit_scale, backbone.logit_bias)
    assert tip.text_features_.shape == (3, backbone.embedding_dim)
    assert pipe.score(paths, labels) > 0.8  # colour classes: the cache separates them
    assert pipe.predict_proba(paths[:2]).shape == (2, 3)


@pytest.mark.parametrize("fixture", DUAL)
def test_classifier_zero_shot_term_is_the_models_own_logits(request, fixture, image_folder):
    """alpha=0: the classifier's decision_function is the model's logits_per_image for
    one prompt per class (times 100 / exp(logit_scale) for the CLIP-like families)."""
    from transformers import AutoTokenizer

    from skclip import CLIPFeaturizer, TipAdapterClassifier

    path = request.getfixturevalue(fixture)
    backbone = load_model(path, "cpu")
    paths, labels = image_folder
    X = CLIPFeaturizer(model=path, device="cpu", progress=False).fit_transform(paths)
    clf = TipAdapterClassifier(
        alpha=0.0, clip_model=path, templates=["a photo of a {}."], device="cpu"
    ).fit(X, labels)
    prompts = [f"a photo of a {c.replace('_', ' ').replace('-', ' ')}." for c in clf.classes_]
    siglip = backbone.family.startswith("siglip")
    tokens = AutoTokenizer.from_pretrained(path)(
        prompts,
        padding="max_length" if siglip else True,
        truncation=True,
        return_tensors="pt",
        max_length=backbone.model.config.text_config.max_position_embeddings,
    )
    with torch.inference_mode():
        images = [Image.open(p) for p in paths]
        theirs = backbone.model(
            **_hf_processor(path)(images=images, return_tensors="pt"), **tokens
        ).logits_per_image.numpy()
    factor = 1.0 if siglip else float(backbone.model.logit_scale.exp()) / 100.0
    np.testing.assert_allclose(clf.decision_function(X) * factor, theirs, atol=1e-4)


def test_cv_scores_use_the_models_scale_and_bias(tiny_siglip_path, image_folder):
    """Each candidate's CV score equals a TipAdapterClassifier fit on the fold: the grid,
    the classifier and Tip-F share SigLIP's scale and bias, not CLIP's 100."""
    from sklearn.model_selection import StratifiedKFold

    from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV

    paths, labels = image_folder
    X = CLIPFeaturizer(model=tiny_siglip_path, device="cpu", progress=False).fit_transform(paths)
    X = X + np.random.default_rng(0).normal(0, 0.3, X.shape)  # make the folds less easy
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    for fine_tune in (False, True):
        params = dict(
            clip_model=tiny_siglip_path,
            device="cpu",
            fine_tune=fine_tune,
            epochs=3,
            lr=0.05,
            random_state=0,
        )
        search = TipAdapterClassifierCV(alphas=[0.3, 3.0], betas=[1.0, 8.0], cv=cv, **params)
        search.fit(X, labels)
        expected = []
        for train, test in cv.split(X, labels):
            fold = TipAdapterClassifier(**params).fit(X[train], labels[train])
            expected.append(
                [
                    fold.set_params(alpha=a, beta=b).score(X[test], labels[test])
                    for a in (0.3, 3.0)
                    for b in (1.0, 8.0)
                ]
            )
        np.testing.assert_allclose(
            search.cv_results_["mean_test_score"], np.mean(expected, axis=0), atol=1e-9
        )
        assert search.logit_scale_ == pytest.approx(TINY_SIGLIP_SCALE)


def test_image_only_backbone_in_a_pipeline(tiny_dinov2_path, image_folder):
    from sklearn.pipeline import Pipeline

    from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV

    paths, labels = image_folder
    heads = (TipAdapterClassifier(clip_model=None), TipAdapterClassifierCV(clip_model=None, cv=3))
    for tip in heads:
        pipe = Pipeline(
            [
                ("dino", CLIPFeaturizer(model=tiny_dinov2_path, device="cpu", progress=False)),
                ("tip", tip),
            ]
        )
        pipe.fit(paths, labels)
        assert pipe.named_steps["tip"].text_features_ is None
        assert pipe.named_steps["tip"].logit_scale_ is None
        assert pipe.named_steps["tip"].cache_keys_.shape == (len(paths), 32)
        assert pipe.score(paths, labels) > 0.8


def test_image_only_backbone_as_clip_model_is_a_clear_error(tiny_dinov2_path, image_folder):
    from skclip import CLIPFeaturizer, TipAdapterClassifier, TipAdapterClassifierCV

    paths, labels = image_folder
    X = CLIPFeaturizer(model=tiny_dinov2_path, device="cpu", progress=False).fit_transform(paths)
    for clf in (
        TipAdapterClassifier(clip_model=tiny_dinov2_path),
        TipAdapterClassifierCV(clip_model=tiny_dinov2_path, cv=3),
    ):
        with pytest.raises(ValueError, match=r"image-only backbone.*clip_model=None"):
            clf.fit(X, labels)


@pytest.mark.parametrize("fixture", ["tiny_siglip2_path", "tiny_dinov2_path"])
def test_augmented_views_and_embedding_cache(request, fixture, image_folder):
    from skclip import CLIPFeaturizer

    path = request.getfixturevalue(fixture)
    paths, _ = image_folder
    CLIPFeaturizer.cache_clear()
    feat = CLIPFeaturizer(model=path, device="cpu", progress=False, augment=2, random_state=0)
    views = feat.fit_transform(paths[:5])
    clean = feat.transform(paths[:5])
    assert views.shape == clean.shape and not np.allclose(views, clean)
    np.testing.assert_allclose(np.linalg.norm(views, axis=1), 1.0, atol=1e-5)
    before = CLIPFeaturizer.cache_info().hits
    np.testing.assert_array_equal(feat.transform(paths[:5]), clean)
    assert CLIPFeaturizer.cache_info().hits == before + 5


@pytest.mark.parametrize("fixture", ["tiny_siglip2_path", "tiny_dinov2_path"])
def test_persistence_round_trip_reloads_the_backbone(request, fixture, image_folder):
    import pickle

    from sklearn.pipeline import Pipeline

    from skclip import CLIPFeaturizer, TipAdapterClassifier
    from skclip.backbones.loading import clear_model_cache

    path = request.getfixturevalue(fixture)
    paths, labels = image_folder
    text = None if fixture == "tiny_dinov2_path" else path
    pipe = Pipeline(
        [
            ("enc", CLIPFeaturizer(model=path, device="cpu", progress=False, cache=False)),
            ("tip", TipAdapterClassifier(clip_model=text, device="cpu")),
        ]
    )
    pipe.fit(paths, labels)
    blob = pickle.dumps(pipe)
    assert len(blob) < 100_000  # parameters and fitted arrays, no weights
    clear_model_cache()
    again = pickle.loads(blob)
    np.testing.assert_allclose(
        again.decision_function(paths), pipe.decision_function(paths), atol=1e-6
    )
    assert load_model(path, "cpu").family == FAMILIES[fixture][0]


@pytest.mark.parametrize("fixture", ["tiny_dinov2_path", "tiny_siglip2_path"])
def test_cli_evaluate_fit_and_predict(request, fixture, image_folder, tmp_path):
    """An image-only backbone is evaluated as a cache model (no zero-shot method) and
    fitted with clip_model=None; a SigLIP 2 one with its text head."""
    import csv
    import json
    from pathlib import Path

    import joblib

    from skclip.cli import main

    path = request.getfixturevalue(fixture)
    image_only = fixture == "tiny_dinov2_path"
    data_dir = str(Path(image_folder[0][0]).parents[1])
    report = tmp_path / "r.json"
    args = ["evaluate", data_dir, "--model", path, "--cv", "3", "-q"]
    assert main(args + ["--report", str(report)]) == 0
    methods = set(json.loads(report.read_text())["methods"])
    heads = {"Tip-Adapter", "GDA", "APE", "linear probe", "ProKeR"}
    assert methods == (heads if image_only else heads | {"zero-shot CLIP", "CLAP", "LP++"})
    model_file = tmp_path / "model.joblib"
    assert main(["fit", data_dir, "-o", str(model_file), "--model", path, "-q"]) == 0
    pipe = joblib.load(model_file)
    assert pipe.named_steps["tip"].clip_model == (None if image_only else path)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(model_file), data_dir, "--output", str(out), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["prediction"] for r in rows] == list(pipe.predict([r["path"] for r in rows]))
