"""``--coverage``: the calibration part of the training images, temperature scaling and
per-class (Mondrian) conformal prediction sets, for ``skclip evaluate`` and ``skclip fit``.

The protocol (the same in both commands): of each class's training images, half
(rounded down) are kept back as the calibration part, chosen at random with
``random_state``; the classifier is fitted on the other half. The calibration part is
split again per class: its first half (rounded down) fits the temperature
(:class:`~skclip.calibration.TemperatureScaledClassifier` around the frozen classifier),
the rest the per-class conformal thresholds
(:class:`~skclip.conformal.MondrianConformalClassifier`). A class therefore needs at
least :data:`MIN_IMAGES_PER_CLASS` training images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Fewest training images per class that ``--coverage`` accepts: 2 for the classifier
#: (its inner cross-validation), 1 for the temperature, 1 for the conformal thresholds.
MIN_IMAGES_PER_CLASS = 4

#: Confidence bins of the reliability diagram and of the ECE.
N_BINS = 15


def check_level(level: float | None, option: str = "--coverage") -> None:
    """A ValueError unless ``level`` is None or strictly between 0 and 1."""
    if level is not None and not 0 < level < 1:
        raise ValueError(f"{option} must be strictly between 0 and 1, got {level}.")


def check_coverage(level: float | None, y: np.ndarray, random_state: int) -> None:
    """With a ``--coverage`` level: a ValueError unless it is valid and every class of
    ``y`` has enough images for :func:`calibration_split`."""
    check_level(level)
    if level is not None:
        calibration_split(y, random_state, what="images")


def calibration_split(
    y: np.ndarray, random_state: int, *, what: str = "training images"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``y``: (fit the classifier, fit the temperature, conformalize).

    Per class with ``n`` images: ``n // 2`` calibration images, of which ``n // 4``
    (at least 1) fit the temperature and the others the thresholds.

    Raises
    ------
    ValueError
        Naming every class with fewer than :data:`MIN_IMAGES_PER_CLASS` images.
    """
    classes, counts = np.unique(y, return_counts=True)
    short = [f"{c!r} ({n})" for c, n in zip(classes.tolist(), counts.tolist())]
    short = [s for s, n in zip(short, counts) if n < MIN_IMAGES_PER_CLASS]
    if short:
        raise ValueError(
            f"--coverage keeps back half of each class's {what} for calibration (a quarter "
            "to fit the temperature, a quarter for the conformal thresholds), so every class "
            f"needs at least {MIN_IMAGES_PER_CLASS}; these have fewer: " + ", ".join(short) + "."
        )
    rng = np.random.RandomState(random_state)
    rest, temp, conf = [], [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        n_cal = len(idx) // 2
        n_temp = max(1, n_cal // 2)
        temp.append(idx[:n_temp])
        conf.append(idx[n_temp:n_cal])
        rest.append(idx[n_cal:])
    return tuple(np.sort(np.concatenate(part)) for part in (rest, temp, conf))  # type: ignore[return-value]


def calibrate(head: Any, X_temp: Any, y_temp: Any, X_conf: Any, y_conf: Any, level: float) -> Any:
    """``MondrianConformalClassifier(TemperatureScaledClassifier(FrozenEstimator(head)))``:
    the temperature fitted on ``X_temp``, the thresholds at ``level`` on ``X_conf``."""
    import warnings

    from sklearn.frozen import FrozenEstimator

    from ..calibration import TemperatureScaledClassifier
    from ..conformal import MondrianConformalClassifier

    with warnings.catch_warnings():  # no useful optimum: the warning would repeat per split
        warnings.simplefilter("ignore", UserWarning)
        scaled = TemperatureScaledClassifier(FrozenEstimator(head)).fit(X_temp, y_temp)
    return MondrianConformalClassifier(scaled, confidence_level=level).conformalize(X_conf, y_conf)


def reliability(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> list[dict]:
    """The reliability diagram's bins (those holding images): mean top-label confidence,
    accuracy and number of images; the bins of
    :func:`skclip.calibration.expected_calibration_error`."""
    from ..calibration import confidence_bins

    confidence = proba.max(axis=1)
    right = classes[proba.argmax(axis=1)] == y_true
    bins = confidence_bins(confidence, N_BINS)
    return [
        {
            "bin": int(b),
            "confidence": float(confidence[bins == b].mean()),
            "accuracy": float(right[bins == b].mean()),
            "n": int(np.sum(bins == b)),
        }
        for b in np.unique(bins)
    ]


def coverage_entry(
    est: Any, splits: list, enc: Any, classes: np.ndarray, level: float, random_state: int
) -> dict[str, Any]:
    """One method's ``--coverage`` results over the outer splits: the calibration part
    comes from each split's training images only; the test images are pooled."""
    from sklearn.base import clone

    from ..calibration import expected_calibration_error
    from ..conformal import coverage_score

    truth, raw, scaled, sets, temperatures, sizes = [], [], [], [], [], []
    for train, part in splits:
        X_q, y_q = (enc.X_test, enc.y_test) if part is None else (enc.X[part], enc.y[part])
        rest, temp, conf = (train[i] for i in calibration_split(enc.y[train], random_state))
        head = clone(est).fit(enc.X_keys[rest], enc.y[rest])
        conformal = calibrate(head, enc.X[temp], enc.y[temp], enc.X[conf], enc.y[conf], level)
        scaled_head = conformal.estimator_
        truth.append(y_q)
        raw.append(_columns(head.predict_proba(X_q), head.classes_, classes))
        scaled.append(_columns(scaled_head.predict_proba(X_q), scaled_head.classes_, classes))
        sets.append(_columns(conformal.predict_set(X_q)[1][:, :, 0], conformal.classes_, classes))
        temperatures.append(float(scaled_head.temperature_))
        sizes.append([len(rest), len(temp), len(conf)])
    y, in_set = np.concatenate(truth), np.concatenate(sets)
    p_raw, p_scaled = np.concatenate(raw), np.concatenate(scaled)
    per_class = coverage_score(y, in_set, labels=classes, by_class=True)
    return {
        "confidence_level": level,
        "coverage": float(coverage_score(y, in_set, labels=classes)),
        "coverage_per_class": {  # None: no test image of that class
            str(c): None if np.isnan(v) else float(v) for c, v in zip(classes, per_class)
        },
        "mean_set_size": float(in_set.sum(axis=1).mean()),
        "ece": float(expected_calibration_error(y, p_raw, labels=classes, n_bins=N_BINS)),
        "ece_calibrated": float(
            expected_calibration_error(y, p_scaled, labels=classes, n_bins=N_BINS)
        ),
        "temperature_per_split": temperatures,
        "n_fit_temperature_conformal_per_split": sizes,
        "reliability": reliability(y, p_raw, classes),
        "reliability_calibrated": reliability(y, p_scaled, classes),
    }


def _columns(values: np.ndarray, have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``values``' columns (in ``have`` order) in ``want`` order; a class the fitted
    classifier does not know gets zeros (never in a set, probability 0)."""
    out = np.zeros((len(values), len(want)), dtype=values.dtype)
    index = {c: j for j, c in enumerate(have.tolist())}
    for k, c in enumerate(want.tolist()):
        if c in index:
            out[:, k] = values[:, index[c]]
    return out


def protocol_text(level: float) -> str:
    """The ``--coverage`` item of the report's protocol."""
    return (
        f"coverage at confidence level {level:g}: in each split, half of each class's training "
        "images (rounded down, at random) are kept back for calibration and every method is "
        "refit on the other half; a quarter of the class's training images (at least 1) fits "
        "a temperature on the method's logits (skclip.calibration.TemperatureScaledClassifier; "
        "argmax unchanged), the remaining calibration images fix per-class (Mondrian) split "
        "conformal thresholds (skclip.conformal.MondrianConformalClassifier, LAC score "
        "1 - p_y); coverage (overall and per class) and mean set size over the pooled test "
        f"images; ECE ({N_BINS} equal-width bins) of the refit method before "
        "(ece) and after (ece_calibrated) temperature scaling"
    )
