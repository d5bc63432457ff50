"""The catalogue of methods ``skclip evaluate`` compares, with their grids (:data:`GRIDS`)."""

from __future__ import annotations

import argparse
from typing import Any


def _text_model(args: argparse.Namespace) -> str | None:
    """``args.model`` as the classifiers' ``clip_model``, or None for an image-only
    backbone (DINOv2...): the cache model alone, without a zero-shot text term."""
    from ..backbones.loading import load_backbone

    return args.model if load_backbone(args.model, args.device).has_text else None


#: Hyperparameter grids that the inner cross-validation of ``skclip evaluate`` searches.
#: GDA: the authors' grid of alpha (Wang et al., ICLR 2024). APE: alpha and beta in the
#: authors' search range [0.1, 7), gamma in [0, 0.5) (Zhu et al., ICCV 2023), coarsely.
#: Linear probe: the inverse L2 penalty C of logistic regression, log-spaced.
GRIDS: dict[str, dict[str, list[float]]] = {
    "GDA": {"alpha": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]},
    "APE": {"alpha": [0.5, 1.0, 2.0, 4.0], "beta": [1.0, 3.0, 5.5], "gamma": [0.0, 0.1, 0.3]},
    "linear probe": {"C": [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]},
}


def _grid_text(grid: dict[str, list[float]]) -> str:
    return ", ".join(
        f"{k} in [{', '.join(f'{v:g}' for v in values)}]" for k, values in grid.items()
    )


def _methods(args: argparse.Namespace, inner_cv: int | None, n_train_min: int) -> dict:
    """``{name: (estimator, how it is configured, its hyperparameters)}``: every
    hyperparameter is chosen by
    an inner cross-validation on the training images of each split (accuracy), or is
    the method's documented default when a class has a single training image. No
    zero-shot method for an image-only backbone (GDA and APE then have no text term)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from ..ape import APEClassifier
    from ..gda import GDAClassifier
    from ..model_selection import APEClassifierCV, GDAClassifierCV
    from ..tip_adapter import TipAdapterClassifier

    common = dict(clip_model=_text_model(args), device=args.device)
    methods: dict[str, tuple[Any, str, tuple[str, ...]]] = {}
    if common["clip_model"] is not None:
        methods["zero-shot CLIP"] = (
            TipAdapterClassifier(alpha=0.0, **common),
            "text classifier only (alpha=0), no training image used",
            (),
        )
    no_cv = f"{n_train_min} training image(s) in the smallest class leave no inner cross-validation"
    methods.update(_tip_adapters(args, inner_cv, common, no_cv))
    heads = {
        "GDA": (GDAClassifier(**common), ""),
        "APE": (APEClassifier(**common), ""),
        "linear probe": (
            LogisticRegression(max_iter=2000),
            "logistic regression on the embeddings (the CLIP paper's linear probe); ",
        ),
    }
    # GDA learns nothing from one image per class (zero scatter): every alpha ties then
    smallest_inner_train = 0 if inner_cv is None else n_train_min - -(-n_train_min // inner_cv)
    for name, (est, what) in heads.items():
        grid = GRIDS[name]
        if inner_cv is None or (name == "GDA" and smallest_inner_train < 2):
            defaults = est.get_params()
            why = (
                no_cv
                if inner_cv is None
                else (
                    f"{inner_cv}-fold inner folds train GDA on {smallest_inner_train} image(s) of "
                    "the smallest class, where its covariance carries no information"
                )
            )
            how = "default " + ", ".join(f"{k}={defaults[k]:g}" for k in grid) + f": {why}"
        else:
            inner = StratifiedKFold(inner_cv, shuffle=True, random_state=args.random_state)
            if name == "GDA":  # one fit per fold scores every alpha
                est = GDAClassifierCV(alphas=grid["alpha"], cv=inner, **common)
            elif name == "APE":  # one fit per fold scores every (alpha, beta, gamma)
                est = APEClassifierCV(
                    alphas=grid["alpha"],
                    betas=grid["beta"],
                    gammas=grid["gamma"],
                    cv=inner,
                    **common,
                )
            else:
                est = GridSearchCV(est, grid, cv=inner, scoring="accuracy")
            how = (
                f"{_grid_text(grid)} chosen by {inner_cv}-fold inner cross-validation "
                "(accuracy) on the training images"
            )
        methods[name] = (est, what + how, tuple(grid))
    methods.update(_frontier_heads(common, inner_cv, no_cv))
    return methods


def _tip_adapters(
    args: argparse.Namespace, inner_cv: int | None, common: dict, no_cv: str
) -> dict[str, tuple[Any, str, tuple[str, ...]]]:
    """Tip-Adapter (and with ``--fine-tune`` Tip-Adapter-F): alpha and beta chosen by
    TipAdapterClassifierCV's inner cross-validation, or their defaults without one."""
    from ..model_selection import TipAdapterClassifierCV
    from ..tip_adapter import TipAdapterClassifier

    methods: dict[str, tuple[Any, str, tuple[str, ...]]] = {}
    variants = [("Tip-Adapter", False)] + ([("Tip-Adapter-F", True)] if args.fine_tune else [])
    for name, fine_tune in variants:
        extra = dict(fine_tune=True, random_state=args.random_state) if fine_tune else {}
        if inner_cv is not None:
            methods[name] = (
                TipAdapterClassifierCV(cv=inner_cv, **extra, **common),
                f"alpha and beta chosen by {inner_cv}-fold inner cross-validation (accuracy) "
                "on the training images, over TipAdapterClassifierCV's default grid",
                ("alpha", "beta"),
            )
        else:
            est = TipAdapterClassifier(**extra, **common)
            methods[name] = (
                est,
                f"default alpha={est.alpha:g}, beta={est.beta:g}: {no_cv}",
                ("alpha", "beta"),
            )
    return methods


def _frontier_heads(common: dict, inner_cv: int | None, no_cv: str) -> dict:
    """ProKeR (beta and lmbda by ProKeRClassifierCV's inner cross-validation on the
    training images, over the authors' grid), and, with a text model, CLAP and LP++ at
    their authors' fixed settings (CLAP is meant to be used without any tuning)."""
    from ..clap import CLAPClassifier
    from ..linear_probe_pp import LinearProbePPClassifier
    from ..model_selection import ProKeRClassifierCV
    from ..proker import ProKeRClassifier

    methods: dict[str, tuple[Any, str, tuple[str, ...]]] = {}
    if inner_cv is not None:
        methods["ProKeR"] = (
            ProKeRClassifierCV(cv=inner_cv, **common),
            f"beta and lmbda chosen by {inner_cv}-fold inner cross-validation (accuracy) on "
            "the training images, over the authors' grid (ProKeRClassifierCV's default)",
            ("beta", "lmbda"),
        )
    else:
        est = ProKeRClassifier(**common)
        methods["ProKeR"] = (
            est,
            f"the authors' 16-shot beta={est.beta:g}, lmbda={est.lmbda:g}: {no_cv}",
            ("beta", "lmbda"),
        )
    if common["clip_model"] is not None:
        methods["CLAP"] = (
            CLAPClassifier(random_state=0, **common),
            "the authors' fixed settings, no tuning (300 epochs, SGD lr 0.1)",
            ("epochs", "lr"),
        )
        methods["LP++"] = (
            LinearProbePPClassifier(random_state=0, **common),
            "the authors' fixed settings (300 epochs, Lipschitz step sizes), last epoch",
            ("epochs",),
        )
    return methods


def _chosen(fitted: Any, names: tuple[str, ...]) -> dict[str, float]:
    """The hyperparameters ``names`` that a fitted method uses: chosen by its inner
    cross-validation (GridSearchCV, or skclip's CVs: the candidate at ``best_index_``
    of their ``cv_results_``), else its fixed values."""
    if hasattr(fitted, "best_params_"):
        return {k: float(v) for k, v in fitted.best_params_.items()}
    if hasattr(fitted, "cv_results_"):  # TipAdapter-, GDA-, APE-, ProKeRClassifierCV
        return {k: float(v) for k, v in fitted.cv_results_["params"][fitted.best_index_].items()}
    params = fitted.get_params()
    return {n: float(params[n]) for n in names}
