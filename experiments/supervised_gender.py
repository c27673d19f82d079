"""The founding design's example: classify sex from height, weight, age and grip strength.

Command:  jmeta run supervised-gender
Runtime:  about 15 seconds on a 2-core laptop CPU.
Expected: on 200 men and 200 women, the decision tree, logistic regression, k-NN and
          naive Bayes reach about 0.90-0.94 test accuracy; the learned strategy, the kept
          Super Learner and scikit-learn's StackingClassifier are within a standard error
          of the best of them over 20 random 75/25 splits (logistic regression, which
          suits two Gaussian-like groups, is hard to beat here).

The population is synthetic, drawn from distributions chosen to be plausible for US
adults (not fitted to any data set):

* height: normal, men 175.3 cm (s.d. 7.6), women 161.5 cm (s.d. 7.1) — the means of CDC
  NHANES 2015-2018 adults (Fryar et al. 2021, Vital Health Stat 3(46));
* body-mass index: log-normal with means 29.1 (men) and 29.6 (women), s.d. about 6 and
  7.5 (same source); weight = BMI x height^2, so weight correlates with height;
* age: uniform 20-79 years, the same for both;
* hand-grip strength: normal, men 46 kg (s.d. 8), women 28 kg (s.d. 5.5), falling by
  0.35 and 0.2 kg a year after 40 — shaped after the normative curves of Dodds et al.
  2014 (PLoS ONE 9(12): e113637).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from tqdm.auto import tqdm

from jmeta.experiments._supervised_common import comparison_table, repeated_comparison
from jmeta.runs import RunDir
from jmeta.supervised.super_learner import default_classifiers
from jmeta.validation import check_fields

FEATURES = ("height_cm", "weight_kg", "age_years", "grip_strength_kg")


@dataclasses.dataclass(frozen=True)
class Config:
    men: int = 200
    women: int = 200
    n_repeats: int = 20
    n_folds: int = 5
    seed: int = 0


def synthetic_population(men: int, women: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``X`` with the columns of ``FEATURES`` and ``y`` (1 for women, 0 for men)."""
    rng = np.random.default_rng(seed)

    def group(count, height, height_sd, bmi, bmi_sd, grip, grip_sd, grip_decline):
        heights = rng.normal(height, height_sd, count)
        sigma = np.sqrt(np.log(1 + (bmi_sd / bmi) ** 2))
        bmis = rng.lognormal(np.log(bmi) - sigma**2 / 2, sigma, count)
        ages = rng.uniform(20, 80, count)
        grips = rng.normal(grip, grip_sd, count) - grip_decline * np.maximum(ages - 40, 0)
        return np.column_stack([heights, bmis * (heights / 100) ** 2, ages, np.maximum(grips, 5.0)])

    X = np.vstack(
        [
            group(men, 175.3, 7.6, 29.1, 6.0, 46.0, 8.0, 0.35),
            group(women, 161.5, 7.1, 29.6, 7.5, 28.0, 5.5, 0.2),
        ]
    )
    return X, np.concatenate([np.zeros(men, int), np.ones(women, int)])


def check(config: Config) -> None:
    """Every field checked before the run folder is made or any data read."""
    check_fields(config, positive_ints=("n_repeats",), at_least_two=("men", "women", "n_folds"))


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    X, y = synthetic_population(config.men, config.women, config.seed)
    learners = default_classifiers(config.seed)
    with tqdm(total=config.n_repeats, desc="splits", disable=not progress, leave=False) as bar:
        result = repeated_comparison(
            X,
            y,
            learners,
            classify=True,
            n_repeats=config.n_repeats,
            n_folds=config.n_folds,
            seed=config.seed,
            progress=bar,
        )
    table = comparison_table(
        f"Sex from {', '.join(FEATURES)}: {config.men} men, {config.women} women, "
        f"{config.n_repeats} random 75/25 splits",
        result,
        "test accuracy",
    )
    weights = ", ".join(f"{n}={w:.3f}" for n, w in result["weights"]["softmax"].items())
    kept = {k: result["kept"]["softmax"].count(k) for k in set(result["kept"]["softmax"])}
    table += (
        f"\nMean learned weights: {weights}\n"
        f"Kept by cross-validation (times out of {config.n_repeats}): {kept}\n"
    )
    with open(run.file("table.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    return {"features": FEATURES, **result}
