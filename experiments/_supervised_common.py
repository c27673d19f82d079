"""Shared by the supervised experiments: repeated splits and mean ± standard error."""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from jmeta.stats import markdown_table


def repeated_comparison(
    X,
    y,
    base_learners,
    *,
    classify: bool,
    n_repeats: int,
    n_folds: int,
    seed: int,
    activations=("softmax",),
    test_size: float = 0.25,
    progress=None,
) -> dict:
    """Scores every base learner, the learned strategy per activation, the kept Super Learner
    and scikit-learn's Stacking estimator on ``n_repeats`` random splits (same folds for all)."""
    from sklearn.ensemble import StackingClassifier, StackingRegressor

    from jmeta.supervised.super_learner import SuperLearnerClassifier, SuperLearnerRegressor

    scores, seconds, weights, kept = (
        {},
        {},
        {a: [] for a in activations},
        {a: [] for a in activations},
    )

    def record(name, score, elapsed):
        scores.setdefault(name, []).append(score)
        seconds.setdefault(name, []).append(elapsed)

    for repeat in range(n_repeats):
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_size, random_state=seed + repeat, stratify=y if classify else None
        )
        folds = (StratifiedKFold if classify else KFold)(
            n_folds, shuffle=True, random_state=seed + repeat
        )
        for name, estimator in base_learners:
            start = time.perf_counter()
            fitted = clone(estimator).fit(X_train, y_train)
            record(name, fitted.score(X_test, y_test), time.perf_counter() - start)
        for activation in activations:
            kind = SuperLearnerClassifier if classify else SuperLearnerRegressor
            start = time.perf_counter()
            model = kind(
                base_learners,
                activation=activation,
                n_folds=n_folds,
                seed=seed + repeat,
                keep_best=False,
            ).fit(X_train, y_train)
            elapsed = time.perf_counter() - start
            record(f"learned strategy ({activation})", model.score(X_test, y_test), elapsed)
            weights[activation].append([model.weights_[n] for n, _ in base_learners])
            kept[activation].append(model.kept_)
            best = model.best_learner_
            record(f"best single learner by CV ({activation} run)", scores[best][-1], elapsed)
            record(
                f"Super Learner, kept model ({activation})",
                scores[f"learned strategy ({activation})"][-1]
                if model.kept_ == "strategy"
                else scores[best][-1],
                elapsed,
            )
        stacking = (StackingClassifier if classify else StackingRegressor)(
            [(n, clone(e)) for n, e in base_learners], cv=folds
        )
        start = time.perf_counter()
        stacking.fit(X_train, y_train)
        record("scikit-learn Stacking", stacking.score(X_test, y_test), time.perf_counter() - start)
        if progress is not None:
            progress.update(1)
    summary = {
        name: {
            "mean": float(np.mean(v)),
            "standard_error": float(np.std(v, ddof=1) / np.sqrt(len(v)))
            if len(v) > 1
            else float("nan"),
            "fit_seconds": float(np.mean(seconds[name])),
            "values": v,
        }
        for name, v in scores.items()
    }
    return {
        "scores": summary,
        "weights": {
            a: dict(zip([n for n, _ in base_learners], np.mean(w, axis=0).tolist()))
            for a, w in weights.items()
        },
        "kept": kept,
    }


def comparison_table(title: str, result: dict, metric: str) -> str:
    rows = [
        [name, f"{s['mean']:.4f} ± {s['standard_error']:.4f}", f"{s['fit_seconds']:.3f}"]
        for name, s in result["scores"].items()
    ]
    return f"### {title}\n\n" + markdown_table(["model", f"{metric} (mean ± s.e.)", "fit s"], rows)
