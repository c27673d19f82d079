"""Super Learner against single learners and scikit-learn's Stacking on bundled data sets.

Command:  jmeta run supervised-benchmarks
Runtime:  about 1.5 minutes on a 2-core laptop CPU.
Expected: breast cancer, wine, digits and iris (accuracy) and diabetes (R^2): the learned
          strategy (softmax or sigmoid) within a standard error of scikit-learn's
          StackingClassifier / StackingRegressor and at or above the best single learner
          chosen by cross-validation on most data sets.
"""

from __future__ import annotations

import dataclasses

from sklearn import datasets
from tqdm.auto import tqdm

from jmeta.experiments._supervised_common import comparison_table, repeated_comparison
from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.supervised.super_learner import default_classifiers, default_regressors
from jmeta.validation import check_fields

DATASETS = {
    "breast_cancer": (datasets.load_breast_cancer, True),
    "wine": (datasets.load_wine, True),
    "digits": (datasets.load_digits, True),
    "iris": (datasets.load_iris, True),
    "diabetes": (datasets.load_diabetes, False),
}


@dataclasses.dataclass(frozen=True)
class Config:
    datasets: tuple[str, ...] = tuple(DATASETS)
    n_repeats: int = 5
    n_folds: int = 5
    seed: int = 0


def check(config: Config) -> None:
    """Every field checked before the run folder is made or any data read."""
    check_fields(config, positive_ints=("n_repeats",), at_least_two=("n_folds",))
    unknown = [d for d in config.datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown datasets {unknown}; expected some of {', '.join(DATASETS)}")


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    results, tables = {}, []
    with tqdm(
        total=config.n_repeats * len(config.datasets),
        desc="splits",
        disable=not progress,
        leave=False,
    ) as bar:
        for name in config.datasets:
            load, classify = DATASETS[name]
            X, y = load(return_X_y=True)
            learners = (
                default_classifiers(config.seed) if classify else default_regressors(config.seed)
            )
            results[name] = run.stage(
                f"{name}",
                lambda: repeated_comparison(
                    X,
                    y,
                    learners,
                    classify=classify,
                    n_repeats=config.n_repeats,
                    n_folds=config.n_folds,
                    seed=config.seed,
                    activations=("softmax", "sigmoid"),
                    progress=bar,
                ),
            )
            tables.append(
                comparison_table(
                    f"{name} ({X.shape[0]} rows, {X.shape[1]} features)",
                    results[name],
                    "test accuracy" if classify else "test R²",
                )
            )
    summary = _summary_table(results)
    table = summary + "\n" + "\n".join(tables)
    with open(run.file("table.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    return results


SUMMARY_COLUMNS = {
    "best single learner by CV (softmax run)": "best single (by CV)",
    "learned strategy (softmax)": "strategy, softmax",
    "learned strategy (sigmoid)": "strategy, sigmoid",
    "Super Learner, kept model (softmax)": "Super Learner (kept)",
    "scikit-learn Stacking": "scikit-learn Stacking",
}


def _summary_table(results: dict) -> str:
    """One row per data set: test accuracy (R² for diabetes), mean ± s.e., and fit seconds."""
    rows = []
    for name, result in results.items():
        scores = result["scores"]
        rows.append(
            [name]
            + [
                f"{scores[k]['mean']:.3f} ± {scores[k]['standard_error']:.3f}"
                for k in SUMMARY_COLUMNS
            ]
            + [
                f"{scores['learned strategy (softmax)']['fit_seconds']:.2f} / "
                f"{scores['scikit-learn Stacking']['fit_seconds']:.2f}"
            ]
        )
    return "### Summary (accuracy; R² for diabetes)\n\n" + markdown_table(
        ["data set", *SUMMARY_COLUMNS.values(), "fit s (strategy / Stacking)"], rows
    )
