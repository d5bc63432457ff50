"""Choosing hyperparameters by cross-validation, without refitting per candidate."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from numbers import Integral
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.special import softmax
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import check_scoring, get_scorer_names
from sklearn.model_selection import check_cv
from sklearn.utils import check_random_state
from threadpoolctl import threadpool_limits

from ._compat import PositiveInt, StrOptions, validate_params
from .ape import APEClassifier, ape_grid, ape_values
from .gda import GDAClassifier, gda_logits
from .heads._base import TextHead
from .heads._finetune import FineTuneResult, fine_tune_keys
from .heads._formula import tip_adapter_grid
from .proker import ProKeRClassifier, proker_grid
from .tip_adapter import TipAdapterClassifier, _BaseTipAdapter

#: Default alpha grid: zero-shot (0) plus log-spaced values up to 50, the top of the
#: reference code's per-dataset search ranges.
DEFAULT_ALPHAS = np.r_[0.0, np.geomspace(0.1, 50.0, 9)]
#: Default beta grid: log-spaced from a flat kernel (0.5) to nearly 1-nearest-neighbour (50).
DEFAULT_BETAS = np.geomspace(0.5, 50.0, 10)


@validate_params(
    {"y": ["array-like"], "shots": [PositiveInt()], "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def few_shot_split(
    y: Any, shots: int = 16, random_state: int | np.random.RandomState | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split into ``shots`` training samples per class and a test set of the rest.

    The protocol of the few-shot papers (CoOp, Tip-Adapter...): K labelled images per
    class to learn from, every other image to evaluate on.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels.
    shots : int, default=16
        Training samples per class. Every class needs more than ``shots`` samples, so
        that at least one is left to test on.
    random_state : int, RandomState instance or None, default=None
        Seeds which samples are drawn.

    Returns
    -------
    train, test : ndarray of int
        Sorted indices into ``y``.

    Examples
    --------
    >>> from skclip.model_selection import few_shot_split
    >>> y = ["a"] * 5 + ["b"] * 4
    >>> train, test = few_shot_split(y, shots=2, random_state=0)
    >>> len(train), len(test)
    (4, 5)
    """
    y = np.asarray(y)
    rng = check_random_state(random_state)
    classes, y_enc, counts = np.unique(y, return_inverse=True, return_counts=True)
    short = [(c, n) for c, n in zip(classes.tolist(), counts.tolist()) if n <= shots]
    if short:
        raise ValueError(
            f"shots={shots} needs more than {shots} samples in every class (at least one is "
            f"kept to test on); these classes have too few: "
            + ", ".join(f"{c!r} ({n})" for c, n in short)
        )
    train = np.concatenate(
        [rng.choice(np.flatnonzero(y_enc == k), shots, replace=False) for k in range(len(classes))]
    )
    train.sort()
    test = np.setdiff1d(np.arange(len(y)), train)
    return train, test


class _PrecomputedLogits(ClassifierMixin, BaseEstimator):
    """Lets a scikit-learn scorer score logits computed elsewhere (the ``X`` it is
    given *are* the logits), as ``RidgeCV`` does for its leave-one-out predictions."""

    def __init__(self, classes: np.ndarray) -> None:
        self.classes = classes

    def fit(self, X: Any, y: Any = None) -> _PrecomputedLogits:
        self.classes_ = self.classes
        return self

    def decision_function(self, logits: np.ndarray) -> np.ndarray:
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, axis=1)

    def predict(self, logits: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(logits, axis=1)]


def _check_grid(
    name: str, values: Any, default: np.ndarray, *, strictly_positive: bool = False
) -> np.ndarray:
    """A searched grid as a 1-D float64 array (``default`` when ``values`` is None): finite
    values, ``>= 0`` (or ``> 0``); a ValueError names the parameter otherwise."""
    grid = default if values is None else np.asarray(values, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of numbers, got {values!r}.")
    bad = grid <= 0 if strictly_positive else grid < 0
    if not np.all(np.isfinite(grid)) or np.any(bad):
        bound = "> 0" if strictly_positive else ">= 0"
        raise ValueError(f"{name} must hold finite values {bound}, got {grid.tolist()}.")
    return grid


def _store_grid_results(
    est: Any, scores: np.ndarray, grid: dict[str, np.ndarray]
) -> dict[str, float]:
    """Set ``cv_results_`` (GridSearchCV's layout and order: ``grid``'s names sorted, as
    its ``ParameterGrid`` sorts them, the last fastest), ``n_splits_``, ``best_index_``
    (the first of the best) and ``best_score_`` on ``est`` from the ``(n_splits,
    n_candidates)`` ``scores``; return the chosen parameters."""
    names = list(grid)
    if names != sorted(names):
        raise ValueError(f"grid names must be sorted (GridSearchCV's order), got {names}.")
    candidates = list(itertools.product(*grid.values()))
    mean, std = scores.mean(axis=0), scores.std(axis=0)
    rank = rankdata(-mean, method="min").astype(np.int32)
    results: dict[str, Any] = {
        "params": [{n: float(v) for n, v in zip(names, c)} for c in candidates]
    }
    for i, name in enumerate(names):
        column = np.array([c[i] for c in candidates], dtype=np.float64)
        results[f"param_{name}"] = np.ma.MaskedArray(column, mask=False)
    for k, split in enumerate(scores):
        results[f"split{k}_test_score"] = split
    results.update(mean_test_score=mean, std_test_score=std, rank_test_score=rank)
    est.cv_results_ = results
    est.n_splits_ = len(scores)
    est.best_index_ = int(np.argmin(rank))  # first of the best, in grid order
    est.best_score_ = float(mean[est.best_index_])
    return results["params"][est.best_index_]


def _check_cv_classes(cv: Any, y_enc: np.ndarray, classes: np.ndarray) -> None:
    """With an int ``cv`` (stratified folds), every class needs ``cv`` samples: else a
    ``ValueError`` names the smallest class."""
    if cv is not None and not isinstance(cv, Integral):
        return
    n_splits = 5 if cv is None else int(cv)
    counts = np.bincount(y_enc, minlength=len(classes))
    if counts.min() < n_splits:
        worst = int(np.argmin(counts))
        raise ValueError(
            f"Class {classes.tolist()[worst]!r} has only {counts[worst]} samples, fewer than "
            f"cv={n_splits} folds: every fold must be able to hold out each class. Use "
            f"cv={max(2, int(counts.min()))} or fewer folds, or pass a splitter."
        )


#: A factorization of a matrix up to this size is milliseconds of work on one core.
_SMALL_FACTORIZATION = 2048


def _cv_and_scorer(search: Any, y_enc: np.ndarray) -> tuple[Any, Any]:
    """A built-in CV's splitter (after :func:`_check_cv_classes`) and scorer (None for
    accuracy, which the searches compute vectorized)."""
    _check_cv_classes(search.cv, y_enc, search.classes_)
    cv = check_cv(search.cv, y_enc, classifier=True)
    scoring = search.scoring
    return cv, None if scoring == "accuracy" else check_scoring(search, scoring=scoring)


def _blas_threads(size: int) -> contextlib.AbstractContextManager:
    """One BLAS thread for a CV's loop of factorizations of ``(size, size)`` matrices
    when they are small (``size <= 2048``); no limit otherwise.

    Why: a few-shot CV factorizes one small matrix per fold (GDA's ``d x d`` scatter,
    ProKeR's ``n x n`` kernel per beta). Split over several BLAS threads, such a
    matrix gains little (too little work per thread to pay for their synchronization),
    and when the cores are busy (other processes, or an outer loop run in parallel by
    ``n_jobs``) the threads wait for each other: on a loaded 2-core machine a 512 x 512
    ``eigh`` took 0.027 s with one BLAS thread and 0.46 s with two. Larger matrices
    keep the threads, which pay for themselves there.
    """
    if size <= _SMALL_FACTORIZATION:
        return threadpool_limits(1, user_api="blas")
    return contextlib.nullcontext()


class _Fold(NamedTuple):
    """One split: its ``train`` and ``test`` indices, the (encoded) classes ``present``
    in its training part and that part's labels ``y`` encoded over them."""

    train: np.ndarray
    test: np.ndarray
    present: np.ndarray
    y: np.ndarray


def _folds(cv: Any, X: np.ndarray, y_enc: np.ndarray) -> Iterator[_Fold]:
    """The splits of ``cv``; a model fit on a fold's training part knows only the
    classes present there, as a classifier fit on it by ``GridSearchCV`` would."""
    for train, test in cv.split(X, y_enc):
        present, fold_y = np.unique(y_enc[train], return_inverse=True)
        yield _Fold(train, test, present, fold_y)


def _candidate_scores(
    logits: np.ndarray, fold: _Fold, y_enc: np.ndarray, classes: np.ndarray, scorer: Any
) -> np.ndarray:
    """The score of every candidate in ``logits`` of shape ``(*grid, n_test,
    n_present)``, the fold's held-out logits over its present classes: shape ``grid``.
    ``scorer=None`` is accuracy, vectorized; a scorer is called once per candidate."""
    y_test = y_enc[fold.test]
    if scorer is None:
        return (fold.present[logits.argmax(axis=-1)] == y_test).mean(axis=-1)
    judge = _PrecomputedLogits(classes[fold.present]).fit(None)
    y_true = classes[y_test]
    flat = logits.reshape(-1, *logits.shape[-2:])
    return np.array([scorer(judge, block, y_true) for block in flat]).reshape(logits.shape[:-2])


class TipAdapterClassifierCV(_BaseTipAdapter):
    """Tip-Adapter with alpha and beta chosen by cross-validation on the training data.

    Like :class:`sklearn.linear_model.RidgeCV`, it scores a whole grid of candidates
    at the cost of little more than one fit per fold: in each fold the query-key
    affinities and the zero-shot logits are computed once, the cache votes once per
    beta, and every alpha is a scaled sum of the two. The best mean score wins (ties go
    to the first candidate in grid order, smallest alpha then smallest beta, as in
    ``GridSearchCV``), and the model is refit on all the data with it. Only training
    data is ever used to choose.

    Parameters
    ----------
    alphas : array-like of shape (n_alphas,), default=None
        Residual ratios to try. ``None`` means ``DEFAULT_ALPHAS``: 0 (zero-shot CLIP)
        and 9 log-spaced values from 0.1 to 50.
    betas : array-like of shape (n_betas,), default=None
        Sharpness values to try. ``None`` means ``DEFAULT_BETAS``: 10 log-spaced values
        from 0.5 to 50.
    cv : int, cross-validation generator or iterable, default=5
        As in ``GridSearchCV``; an int means ``StratifiedKFold(cv)``. With an int, every
        class needs at least ``cv`` samples, else a ``ValueError`` names the class.
    scoring : str or callable, default="accuracy"
        A scikit-learn scorer name (one of :func:`sklearn.metrics.get_scorer_names`,
        checked at the start of ``fit``, before any model loads) or a callable
        ``scorer(estimator, X, y)``. ``"accuracy"`` is computed vectorized
        for all candidates at once; other scorers are called once per candidate and fold.
    fine_tune : bool, default=False
        Tip-Adapter-F: in each fold, train the keys on the fold's training part (at
        ``alpha`` and ``beta``), then score the grid on its held-out part; refit trains
        on all the data. This is what the reference code does on the *test* set, done on
        held-out training data instead.
    alpha, beta : float, default=1.0, 5.5
        Only with ``fine_tune=True``: the values the keys are trained with. Prediction
        uses the chosen ``alpha_`` and ``beta_``.
    epochs, lr, batch_size, leave_one_out, normalize_keys, train_dtype
        Tip-Adapter-F training, as in :class:`TipAdapterClassifier` and with its
        defaults; there is no validation split (the folds' held-out parts score the
        grid, and the refit trains on all the data).
    train_views : int, default=0
        As in :class:`TipAdapterClassifier`: ``X`` is ``[features | train_views views]``
        from ``CLIPFeaturizer(train_views=...)``; with ``fine_tune=True`` each fold's
        training and the refit use the views of their samples as per-epoch queries,
        while the grid is scored on the held-out samples' features (first block).
        Ignored without fine-tuning.
    random_state, verbose
        As in :class:`TipAdapterClassifier`.
    <text-head parameters>

    Attributes
    ----------
    alpha_ : float
        Chosen residual ratio.
    beta_ : float
        Chosen sharpness.
    best_score_ : float
        Mean cross-validated score of the chosen candidate.
    best_index_ : int
        Index of the chosen candidate in ``cv_results_``.
    cv_results_ : dict of ndarrays
        As ``GridSearchCV.cv_results_`` (``params``, ``param_alpha``, ``param_beta``,
        ``split{k}_test_score``, ``mean_test_score``, ``std_test_score``,
        ``rank_test_score``); ``pandas.DataFrame(cv_results_)`` works.
    n_splits_ : int
        Number of folds.
    classes_, n_features_in_, cache_keys_, cache_values_, text_features_, model_fingerprint_
        As in :class:`TipAdapterClassifier`, for the refit model.
    logit_scale_, logit_bias_ : float or None
        Zero-shot scale and bias, as in :class:`TipAdapterClassifier`; the grid, the
        folds' Tip-Adapter-F training and the refit all use them.
    loss_curve_ : list of float or None
        Training loss per epoch of the refit; ``None`` with ``fine_tune=False``.

    See Also
    --------
    TipAdapterClassifier : One alpha and beta, fixed.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import TipAdapterClassifierCV
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 8)) + np.repeat(np.eye(8)[:3] * 2, 20, axis=0)
    >>> y = np.repeat(["ant", "bee", "cat"], 20)
    >>> clf = TipAdapterClassifierCV(clip_model=None, cv=3).fit(X, y)
    >>> len(clf.cv_results_["params"]), bool(clf.alpha_ >= 0)
    (100, True)
    >>> clf.predict(X[:2])
    array(['ant', 'ant'], dtype='<U3')
    """

    _parameter_constraints: dict = {
        **{
            k: v
            for k, v in TipAdapterClassifier._parameter_constraints.items()
            if k != "validation_fraction"
        },
        "alphas": ["array-like", None],
        "betas": ["array-like", None],
        "cv": ["cv_object"],
        # Checked in fit before anything is loaded or encoded; one metric only.
        "scoring": [StrOptions(set(get_scorer_names())), callable],
    }

    def __init__(
        self,
        *,
        alphas: Any = None,
        betas: Any = None,
        cv: Any = 5,
        scoring: Any = "accuracy",
        fine_tune: bool = False,
        alpha: float = 1.0,
        beta: float = 5.5,
        epochs: int | str = "auto",
        lr: float = 1e-3,
        batch_size: int = 256,
        leave_one_out: bool = True,
        normalize_keys: bool = True,
        train_dtype: str = "float32",
        random_state: int | np.random.RandomState | None = None,
        train_views: int = 0,
        verbose: int = 0,
        **text_head: Any,
    ) -> None:
        super().__init__(**text_head)
        self.alphas = alphas
        self.betas = betas
        self.cv = cv
        self.scoring = scoring
        self.fine_tune = fine_tune
        self.alpha = alpha
        self.beta = beta
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.leave_one_out = leave_one_out
        self.normalize_keys = normalize_keys
        self.train_dtype = train_dtype
        self.random_state = random_state
        self.train_views = train_views
        self.verbose = verbose

    def _prediction_params(self) -> tuple[float, float]:
        return self.alpha_, self.beta_

    def _fine_tune(
        self,
        X: np.ndarray,
        y_enc: np.ndarray,
        n_classes: int,
        W: np.ndarray | None,
        views: np.ndarray | None,
    ) -> FineTuneResult:
        """Tip-Adapter-F keys for one fold's training part (or the refit), at (alpha, beta)."""
        return fine_tune_keys(
            X,
            y_enc,
            n_classes,
            W,
            alpha=self.alpha,
            beta=self.beta,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            leave_one_out=self.leave_one_out,
            normalize_keys=self.normalize_keys,
            train_dtype=self.train_dtype,
            device=self.device,
            random_state=self.random_state,
            verbose=self.verbose,
            views=views,
            **self._zero_shot_params(),
        )

    def fit(self, X: Any, y: Any) -> TipAdapterClassifierCV:
        """Score every (alpha, beta) by cross-validation, then refit with the best.

        Parameters
        ----------
        X : array-like of shape (n_samples, (1 + train_views) * n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels.

        Returns
        -------
        self : TipAdapterClassifierCV
        """
        self._validate_params()
        alphas = _check_grid("alphas", self.alphas, DEFAULT_ALPHAS)
        betas = _check_grid("betas", self.betas, DEFAULT_BETAS)
        X, y_enc, views = self._prepare_views(X, y, self.train_views)
        n_classes = len(self.classes_)
        cv, scorer = _cv_and_scorer(self, y_enc)
        judge = _PrecomputedLogits(self.classes_).fit(None)  # scores precomputed logits
        W = self.text_features_
        text = None if W is None else torch.from_numpy(W)
        alphas_t = torch.as_tensor(alphas, dtype=torch.from_numpy(X[:0]).dtype)  # X's dtype

        fold_scores = []
        for train, test in cv.split(X, y_enc):
            if self.fine_tune:  # train this fold's keys on its training part only
                # Over the classes present in the fold, as a classifier fit on it would.
                present, fold_y = np.unique(y_enc[train], return_inverse=True)
                fold_W = None if W is None else W[present]
                fold_views = None if views is None else views[:, train]
                result = self._fine_tune(X[train], fold_y, len(present), fold_W, fold_views)
                keys, labels = result.keys, present[fold_y[result.kept]]
            else:  # training-free: the fold's cache is its training part, as it is
                keys, labels = X[train], y_enc[train]
            grid = tip_adapter_grid(
                torch.from_numpy(X[test]),
                torch.from_numpy(np.ascontiguousarray(keys)),
                torch.from_numpy(labels),
                text,
                alphas_t,
                betas,
                n_classes,
                **self._zero_shot_params(),
            )
            scores = np.empty((len(alphas), len(betas)))
            y_true = self.classes_[y_enc[test]]
            for ib, grid_logits in enumerate(grid):
                logits = grid_logits.numpy()
                if scorer is None:
                    scores[:, ib] = (logits.argmax(axis=2) == y_enc[test]).mean(axis=1)
                else:
                    scores[:, ib] = [scorer(judge, logits[ia], y_true) for ia in range(len(alphas))]
            fold_scores.append(scores.ravel())  # alpha-major, beta fastest: GridSearchCV order

        searched = {"alpha": alphas, "beta": betas}
        best = _store_grid_results(self, np.array(fold_scores), searched)
        self.alpha_, self.beta_ = best["alpha"], best["beta"]
        if self.fine_tune:
            result = self._fine_tune(X, y_enc, n_classes, W, views)
            self._set_cache(result.keys, y_enc[result.kept])
            self.loss_curve_: list[float] | None = result.loss_curve
        else:
            self._set_cache(X, y_enc)
            self.loss_curve_ = None
        return self


#: ProKeRClassifierCV's default grids: the authors' (RN50, most datasets:
#: ``torch.linspace(0.5, 3, 20)`` and ``torch.linspace(0.001, 1, 10)``), in float64.
PROKER_BETAS = np.linspace(0.5, 3.0, 20)
PROKER_LMBDAS = np.linspace(0.001, 1.0, 10)


class ProKeRClassifierCV(ProKeRClassifier):
    """ProKeR with beta and lmbda chosen by cross-validation on the training data.

    Like :class:`sklearn.linear_model.RidgeCV`, it scores a whole grid at the cost of
    one eigendecomposition per fold and beta: with ``k(S, S) = Q diag(w) Q^T``, every
    lmbda's ``(k(S, S) / lmbda + I)^-1`` is ``Q diag(lmbda / (w + lmbda)) Q^T`` (see
    :func:`skclip.proker.proker_grid`). It chooses what ``GridSearchCV(
    ProKeRClassifier(), {"beta": betas, "lmbda": lmbdas}, cv=cv)`` chooses (up to
    floating-point rounding of near-tied logits): the best mean score, ties to the first
    candidate in GridSearchCV's order, beta-major (smallest beta first, then smallest
    lmbda) when the grids are increasing, which is also the authors' search order and
    tie rule (first strictly better). The model is then refit on all the data.

    The authors search on a validation set; in the few-shot setting there is rarely
    one, so the folds of the training data play its part here (``cv`` may be a
    ``PredefinedSplit`` to use a validation split as they do).

    Parameters
    ----------
    betas : array-like of shape (n_betas,), default=None
        Kernel sharpness values to try (> 0). ``None`` means ``PROKER_BETAS``, the
        authors' grid: 20 values evenly spaced from 0.5 to 3.
    lmbdas : array-like of shape (n_lmbdas,), default=None
        Regularization values to try (> 0). ``None`` means ``PROKER_LMBDAS``, the
        authors' grid: 10 values evenly spaced from 0.001 to 1.
    cv : int, cross-validation generator or iterable, default=5
        As in ``GridSearchCV``; an int means ``StratifiedKFold(cv)``, and every class
        needs at least ``cv`` samples. A class missing from a fold's training part
        keeps its column (the zero-shot term alone predicts it), whereas a
        ``ProKeRClassifier`` fit on that part would not know it.
    scoring : str or callable, default="accuracy"
        A scikit-learn scorer name or a callable ``scorer(estimator, X, y)``;
        ``"accuracy"`` is computed vectorized for all candidates at once.
    <text-head parameters>

    Attributes
    ----------
    beta_, lmbda_ : float
        The chosen values.
    best_score_ : float
        Mean cross-validated score of the chosen candidate.
    best_index_ : int
        Index of the chosen candidate in ``cv_results_``.
    cv_results_ : dict of ndarrays
        As ``GridSearchCV.cv_results_`` (``params``, ``param_beta``, ``param_lmbda``,
        ``split{k}_test_score``, ``mean_test_score``, ``std_test_score``,
        ``rank_test_score``); ``pandas.DataFrame(cv_results_)`` works.
    n_splits_ : int
        Number of folds.
    classes_, n_features_in_, support_, coef_, text_features_, logit_scale_, logit_bias_
        As in :class:`ProKeRClassifier`, for the model refit with ``beta_`` and ``lmbda_``.

    See Also
    --------
    ProKeRClassifier : One beta and lmbda, fixed.
    TipAdapterClassifierCV : The same search for Tip-Adapter.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import ProKeRClassifierCV
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 8)) + np.repeat(np.eye(8)[:3] * 2, 20, axis=0)
    >>> y = np.repeat(["ant", "bee", "cat"], 20)
    >>> clf = ProKeRClassifierCV(text_features=np.eye(8)[:3] + 0.5, cv=3).fit(X, y)
    >>> len(clf.cv_results_["params"]), bool(clf.lmbda_ > 0)
    (200, True)
    >>> clf.predict(X[:2])
    array(['ant', 'ant'], dtype='<U3')
    """

    _parameter_constraints: dict = {
        "betas": ["array-like", None],
        "lmbdas": ["array-like", None],
        "cv": ["cv_object"],
        "scoring": [StrOptions(set(get_scorer_names())), callable],
    }

    def __init__(
        self,
        *,
        betas: Any = None,
        lmbdas: Any = None,
        cv: Any = 5,
        scoring: Any = "accuracy",
        **text_head: Any,
    ) -> None:
        TextHead.__init__(self, **text_head)
        self.betas = betas
        self.lmbdas = lmbdas
        self.cv = cv
        self.scoring = scoring

    def _prediction_beta(self) -> float:
        return self.beta_

    def fit(self, X: Any, y: Any) -> ProKeRClassifierCV:
        """Score every (beta, lmbda) by cross-validation, then refit with the best.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels.

        Returns
        -------
        self : ProKeRClassifierCV
        """
        self._validate_params()
        betas = _check_grid("betas", self.betas, PROKER_BETAS, strictly_positive=True)
        lmbdas = _check_grid("lmbdas", self.lmbdas, PROKER_LMBDAS, strictly_positive=True)
        X, y_enc = self._prepare(X, y)
        cv, scorer = _cv_and_scorer(self, y_enc)
        judge = _PrecomputedLogits(self.classes_).fit(None)
        zero_shot = self._zero_shot_params()
        fold_scores = []
        with _blas_threads(len(X)):  # one eigh of an (n_train, n_train) kernel per fold and beta
            for train, test in cv.split(X, y_enc):
                train_X, train_y, n_classes = X[train], y_enc[train], len(self.classes_)
                W = self.text_features_
                grid = proker_grid(
                    X[test], train_X, train_y, W, n_classes, betas, lmbdas, **zero_shot
                )
                scores = np.empty((len(betas), len(lmbdas)))
                y_true = self.classes_[y_enc[test]]
                for ib, logits in enumerate(grid):
                    if scorer is None:
                        scores[ib] = (logits.argmax(axis=2) == y_enc[test]).mean(axis=1)
                    else:
                        scores[ib] = [scorer(judge, block, y_true) for block in logits]
                fold_scores.append(scores.ravel())  # beta-major, lmbda fastest: GridSearchCV order
        searched = {"beta": betas, "lmbda": lmbdas}
        best = _store_grid_results(self, np.array(fold_scores), searched)
        self.beta_, self.lmbda_ = best["beta"], best["lmbda"]
        self._set_support(X, y_enc, self.beta_, self.lmbda_)
        return self


#: GDAClassifierCV's default alphas: the authors' grid (Wang et al., ICLR 2024,
#: ``main_few_shots.py``), also that of ``skclip evaluate``.
GDA_ALPHAS = np.array([1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0])


class GDAClassifierCV(GDAClassifier):
    """GDA with alpha chosen by cross-validation on the training data.

    Alpha only weighs the GDA term against zero-shot CLIP: it changes nothing that
    ``fit`` estimates. Like :class:`sklearn.linear_model.RidgeCV`, each fold therefore
    estimates the class means and the shared precision once (one Cholesky
    factorization, see :func:`skclip.gda.spd_inverse`) and scores every alpha from
    them (:func:`skclip.gda.gda_logits` with all the alphas at once), where
    ``GridSearchCV`` refits them for every alpha. It chooses what ``GridSearchCV(
    GDAClassifier(), {"alpha": alphas}, cv=cv)`` chooses: the best mean score, ties
    to the first (smallest, for an increasing grid) alpha. The model is then refit on
    all the data with it. Only training data is ever used to choose.

    Parameters
    ----------
    alphas : array-like of shape (n_alphas,), default=None
        Weights of the GDA term to try (>= 0). ``None`` means ``GDA_ALPHAS``, the
        authors' grid ``[1e-4, 1e-3, ..., 10, 100]``.
    covariance_estimator, priors
        As in :class:`GDAClassifier`. In each fold, ``priors=None`` is uniform and
        ``"empirical"`` the class frequencies of the fold's training part, as a
        ``GDAClassifier`` fit on it would have them; an array of priors is restricted
        to the classes of the fold's training part (and renormalized).
    cv : int, cross-validation generator or iterable, default=5
        As in ``GridSearchCV``; an int means ``StratifiedKFold(cv)``, and every class
        needs at least ``cv`` samples, else a ``ValueError`` names the class. A fold's
        model knows the classes of its training part only, as one fit by
        ``GridSearchCV`` would.
    scoring : str or callable, default="accuracy"
        A scikit-learn scorer name or a callable ``scorer(estimator, X, y)``;
        ``"accuracy"`` is computed vectorized for all candidates at once.
    <text-head parameters>

    Attributes
    ----------
    alpha_ : float
        The chosen alpha.
    best_score_ : float
        Mean cross-validated score of the chosen candidate.
    best_index_ : int
        Index of the chosen candidate in ``cv_results_``.
    cv_results_ : dict of ndarrays
        As ``GridSearchCV.cv_results_`` (``params``, ``param_alpha``,
        ``split{k}_test_score``, ``mean_test_score``, ``std_test_score``,
        ``rank_test_score``); ``pandas.DataFrame(cv_results_)`` works.
    n_splits_ : int
        Number of folds.
    classes_, n_features_in_, means_, priors_, coef_, intercept_, text_features_
        As in :class:`GDAClassifier`, for the model refit on all the data.

    See Also
    --------
    GDAClassifier : One alpha, fixed.
    APEClassifierCV : The same search for APE.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import GDAClassifierCV
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 8)) + np.repeat(np.eye(8)[:3] * 2, 20, axis=0)
    >>> y = np.repeat(["ant", "bee", "cat"], 20)
    >>> clf = GDAClassifierCV(text_features=np.eye(8)[:3] + 0.5, cv=3).fit(X, y)
    >>> len(clf.cv_results_["params"]), bool(clf.alpha_ in clf.cv_results_["param_alpha"])
    (7, True)
    >>> clf.predict(X[:2])
    array(['ant', 'ant'], dtype='<U3')
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in GDAClassifier._parameter_constraints.items() if k != "alpha"},
        "alphas": ["array-like", None],
        "cv": ["cv_object"],
        "scoring": [StrOptions(set(get_scorer_names())), callable],
    }

    def __init__(
        self,
        *,
        alphas: Any = None,
        covariance_estimator: Any = None,
        priors: str | Any | None = None,
        cv: Any = 5,
        scoring: Any = "accuracy",
        **text_head: Any,
    ) -> None:
        TextHead.__init__(self, **text_head)
        self.alphas = alphas
        self.covariance_estimator = covariance_estimator
        self.priors = priors
        self.cv = cv
        self.scoring = scoring

    def _prediction_alpha(self) -> float:
        return self.alpha_

    def fit(self, X: Any, y: Any) -> GDAClassifierCV:
        """Score every alpha by cross-validation, then refit with the best.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels.

        Returns
        -------
        self : GDAClassifierCV
        """
        self._validate_params()
        alphas = _check_grid("alphas", self.alphas, GDA_ALPHAS)
        X, y_enc = self._prepare(X, y)
        cv, scorer = _cv_and_scorer(self, y_enc)
        priors = self._resolve_priors(y_enc)
        # one (d, d) Cholesky factorization per fold, and one for the refit
        with _blas_threads(X.shape[1]):
            scores = [
                self._fold_scores(X, y_enc, fold, priors, alphas, scorer)
                for fold in _folds(cv, X, y_enc)
            ]
            self.alpha_ = _store_grid_results(self, np.array(scores), {"alpha": alphas})["alpha"]
            self._set_parameters(X, y_enc, priors)
        return self

    def _fold_priors(self, priors: np.ndarray, fold: _Fold) -> np.ndarray:
        """The priors of a GDAClassifier fit on the fold's training part."""
        if isinstance(self.priors, str):  # "empirical": the fold's class frequencies
            return np.bincount(fold.y, minlength=len(fold.present)) / len(fold.y)
        if len(fold.present) == len(priors):
            return priors
        return priors[fold.present] / priors[fold.present].sum()

    def _fold_scores(
        self,
        X: np.ndarray,
        y_enc: np.ndarray,
        fold: _Fold,
        priors: np.ndarray,
        alphas: np.ndarray,
        scorer: Any,
    ) -> np.ndarray:
        """Fit the fold's training part once; the score of every alpha on its test part."""
        fold_priors = self._fold_priors(priors, fold)
        _, coef, intercept = self._parameters(X[fold.train], fold.y, fold_priors)
        t = torch.from_numpy
        W = self.text_features_
        logits = gda_logits(
            t(X[fold.test]),
            t(coef),
            t(intercept),
            None if W is None else t(W[fold.present]),
            t(alphas.astype(X.dtype)).view(-1, 1, 1),
            **self._zero_shot_params(),
        )
        return _candidate_scores(logits.numpy(), fold, y_enc, self.classes_, scorer)


#: APEClassifierCV's default grids: those of ``skclip evaluate``, coarse steps in the
#: authors' search ranges (Zhu et al., ICCV 2023: alpha and beta in [0.1, 7), gamma
#: in [0, 0.5)).
APE_ALPHAS = np.array([0.5, 1.0, 2.0, 4.0])
APE_BETAS = np.array([1.0, 3.0, 5.5])
APE_GAMMAS = np.array([0.0, 0.1, 0.3])


class APEClassifierCV(APEClassifier):
    """APE with alpha, beta and gamma chosen by cross-validation on the training data.

    None of the three changes what ``fit`` computes (the channel criterion, the
    selected channels, the cache keys and each key's divergence, see
    :func:`skclip.ape.ape_cache`): gamma re-weighs the keys' values, beta sharpens the
    affinities and alpha weighs the cache term, all at prediction. Like
    :class:`sklearn.linear_model.RidgeCV`, each fold therefore fits once and scores
    the whole grid from that fit (:func:`skclip.ape.ape_grid`), where ``GridSearchCV``
    refits for every candidate. It chooses what ``GridSearchCV(APEClassifier(),
    {"alpha": alphas, "beta": betas, "gamma": gammas}, cv=cv)`` chooses: the best mean
    score, ties to the first candidate in its order (alpha-major, then beta, gamma
    fastest). The model is then refit on all the data with it.

    Parameters
    ----------
    alphas, betas, gammas : array-like, default=None
        Residual ratios, sharpness values and key-weight exponents to try (>= 0).
        ``None`` means ``APE_ALPHAS`` (0.5, 1, 2, 4), ``APE_BETAS`` (1, 3, 5.5) and
        ``APE_GAMMAS`` (0, 0.1, 0.3): coarse steps in the authors' search ranges (alpha
        and beta in [0.1, 7), gamma in [0, 0.5)), the grid of ``skclip evaluate``.
    n_features_to_select, similarity_weight, variance_weight
        As in :class:`APEClassifier` (fixed, not searched: they change the fit).
    cv : int, cross-validation generator or iterable, default=5
        As in ``GridSearchCV``; an int means ``StratifiedKFold(cv)``, and every class
        needs at least ``cv`` samples, else a ``ValueError`` names the class. A fold's
        model knows the classes of its training part only, as one fit by
        ``GridSearchCV`` would.
    scoring : str or callable, default="accuracy"
        A scikit-learn scorer name or a callable ``scorer(estimator, X, y)``;
        ``"accuracy"`` is computed vectorized for all candidates at once.
    <text-head parameters>

    Attributes
    ----------
    alpha_, beta_, gamma_ : float
        The chosen values.
    best_score_ : float
        Mean cross-validated score of the chosen candidate.
    best_index_ : int
        Index of the chosen candidate in ``cv_results_``.
    cv_results_ : dict of ndarrays
        As ``GridSearchCV.cv_results_`` (``params``, ``param_alpha``, ``param_beta``,
        ``param_gamma``, ``split{k}_test_score``, ``mean_test_score``,
        ``std_test_score``, ``rank_test_score``); ``pandas.DataFrame(cv_results_)``
        works.
    n_splits_ : int
        Number of folds.
    classes_, n_features_in_, criterion_, selected_features_
        As in :class:`APEClassifier`, for the model refit on all the data.
    cache_keys_, cache_values_, key_divergence_, text_features_
        As in :class:`APEClassifier`, for the model refit on all the data.

    See Also
    --------
    APEClassifier : One alpha, beta and gamma, fixed.
    GDAClassifierCV : The same search for GDA.

    Examples
    --------
    >>> import numpy as np
    >>> from skclip import APEClassifierCV
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 8)) + np.repeat(np.eye(8)[:3] * 2, 20, axis=0)
    >>> y = np.repeat(["ant", "bee", "cat"], 20)
    >>> clf = APEClassifierCV(text_features=np.eye(8)[:3] + 0.5, cv=3).fit(X, y)
    >>> len(clf.cv_results_["params"]), clf.selected_features_.shape
    (36, (4,))
    >>> clf.predict(X[:2])
    array(['ant', 'ant'], dtype='<U3')
    """

    _parameter_constraints: dict = {
        **{
            k: v
            for k, v in APEClassifier._parameter_constraints.items()
            if k not in ("alpha", "beta", "gamma")
        },
        "alphas": ["array-like", None],
        "betas": ["array-like", None],
        "gammas": ["array-like", None],
        "cv": ["cv_object"],
        "scoring": [StrOptions(set(get_scorer_names())), callable],
    }

    def __init__(
        self,
        *,
        alphas: Any = None,
        betas: Any = None,
        gammas: Any = None,
        n_features_to_select: int | float = 0.5,
        similarity_weight: float = 0.7,
        variance_weight: float = 0.3,
        cv: Any = 5,
        scoring: Any = "accuracy",
        **text_head: Any,
    ) -> None:
        TextHead.__init__(self, **text_head)
        self.alphas = alphas
        self.betas = betas
        self.gammas = gammas
        self.n_features_to_select = n_features_to_select
        self.similarity_weight = similarity_weight
        self.variance_weight = variance_weight
        self.cv = cv
        self.scoring = scoring

    def _prediction_params(self) -> tuple[float, float, float]:
        return self.alpha_, self.beta_, self.gamma_

    def fit(self, X: Any, y: Any) -> APEClassifierCV:
        """Score every (alpha, beta, gamma) by cross-validation, then refit with the best.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Image features, e.g. from :class:`CLIPFeaturizer`; normalized inside.
        y : array-like of shape (n_samples,)
            Labels.

        Returns
        -------
        self : APEClassifierCV
        """
        self._validate_params()
        grid = {
            "alpha": _check_grid("alphas", self.alphas, APE_ALPHAS),
            "beta": _check_grid("betas", self.betas, APE_BETAS),
            "gamma": _check_grid("gammas", self.gammas, APE_GAMMAS),
        }
        X, y_enc = self._prepare(X, y)
        self._n_selected(X.shape[1])  # a bad count fails before any fold
        cv, scorer = _cv_and_scorer(self, y_enc)
        scores = [self._fold_scores(X, y_enc, fold, grid, scorer) for fold in _folds(cv, X, y_enc)]
        best = _store_grid_results(self, np.array(scores), grid)
        self.alpha_, self.beta_, self.gamma_ = best["alpha"], best["beta"], best["gamma"]
        self._set_fitted(X, y_enc)
        return self

    def _fold_scores(
        self, X: np.ndarray, y_enc: np.ndarray, fold: _Fold, grid: dict, scorer: Any
    ) -> np.ndarray:
        """Fit the fold's training part once; the score of every candidate on its test
        part, alpha-major, then beta, gamma fastest (GridSearchCV's order)."""
        W = self.text_features_
        fold_W = None if W is None else W[fold.present]
        cache = self._cache(X[fold.train], fold.y, len(fold.present), fold_W)
        one_hot = np.eye(len(fold.present), dtype=X.dtype)[fold.y]
        t = torch.from_numpy
        logits = ape_grid(
            t(X[fold.test]),
            t(cache.selected),
            t(cache.keys),
            t(ape_values(one_hot, cache.divergence, grid["gamma"])),
            None if fold_W is None else t(fold_W),
            t(grid["alpha"].astype(X.dtype)),
            grid["beta"],
            **self._zero_shot_params(),
        )
        per_beta = [
            _candidate_scores(block.numpy(), fold, y_enc, self.classes_, scorer) for block in logits
        ]  # each of shape (n_alphas, n_gammas)
        return np.stack(per_beta, axis=1).ravel()
