"""The Super Learner (van der Laan, Polley and Hubbard 2007) as scikit-learn estimators.

Each base learner is fitted on K-fold splits and predicts the rows it did not see; the
learning strategy (weights over base learners, ``jmeta.supervised.stacking``) is fitted on those
out-of-fold predictions — never on in-sample ones, which would hand the weight to
whichever learner memorises — and the base learners are then refitted on all the data.

The strategy replaces the best single learner only if it does better by cross-validation:
its own cross-validated loss comes from refitting the weights on folds of the
out-of-fold rows and scoring the rows held out, so it is not judged on the rows its
weights were fitted on. Otherwise the best single learner is kept. ``summary_`` says
which won and by how much.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from jmeta.strategy import strategy_weights
from jmeta.supervised.stacking import fit_strategy, stacked_prediction


def default_classifiers(seed: int = 0) -> list[tuple[str, BaseEstimator]]:
    """The founding design's base learners: a decision tree, logistic regression, k-NN, naive
    Bayes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    return [
        ("decision_tree", DecisionTreeClassifier(max_depth=5, random_state=seed)),
        ("logistic_regression", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
        ("k_nearest_neighbours", make_pipeline(StandardScaler(), KNeighborsClassifier())),
        ("naive_bayes", GaussianNB()),
    ]


def default_regressors(seed: int = 0) -> list[tuple[str, BaseEstimator]]:
    """A decision tree, ridge regression and k-NN."""
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    return [
        ("decision_tree", DecisionTreeRegressor(max_depth=5, random_state=seed)),
        ("ridge", make_pipeline(StandardScaler(), Ridge())),
        ("k_nearest_neighbours", make_pipeline(StandardScaler(), KNeighborsRegressor())),
    ]


def _named(base_learners) -> list[tuple[str, BaseEstimator]]:
    """``[(name, estimator)]`` from estimators or pairs; names made unique."""
    if base_learners is None or len(base_learners) == 0:
        raise ValueError("base_learners must hold at least one estimator, got none")
    named, seen = [], {}
    for item in base_learners:
        name, estimator = item if isinstance(item, tuple) else (type(item).__name__.lower(), item)
        if not hasattr(estimator, "fit"):
            raise TypeError(
                f"base_learners: {name!r} is a {type(estimator).__name__}, not an estimator with "
                "fit()"
            )
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name}_{seen[name]}", estimator))
    return named


class _SuperLearner(BaseEstimator):
    """Shared fitting; subclasses say how a base learner predicts and how rows are scored."""

    def __init__(
        self,
        base_learners=None,
        activation="softmax",
        loss=None,
        optimizer="lbfgs",
        learning_rate=0.05,
        n_folds=5,
        max_iter=100,
        seed=0,
        keep_best=True,
    ):
        self.base_learners = base_learners
        self.activation = activation
        self.loss = loss
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.n_folds = n_folds
        self.max_iter = max_iter
        self.seed = seed
        self.keep_best = keep_best

    def _check_params(self):
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {self.activation!r}")
        if (
            isinstance(self.n_folds, bool)
            or not isinstance(self.n_folds, (int, np.integer))
            or self.n_folds < 2
        ):
            raise ValueError(f"n_folds must be an integer >= 2, got {self.n_folds!r}")

    def _fit(self, X, targets, splitter, default_learners):
        named = _named(
            default_learners(self.seed) if self.base_learners is None else self.base_learners
        )
        folds = list(splitter.split(X, targets))
        out_of_fold = np.zeros((len(named),) + self._prediction_shape(len(targets)), np.float32)
        for train, test in folds:
            for index, (_, estimator) in enumerate(named):
                fitted = clone(estimator).fit(X[train], targets[train])
                out_of_fold[index, test] = self._base_predict(fitted, X[test])
        options = dict(
            activation=self.activation,
            loss=self.loss_,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            num_iterations=self.max_iter,
        )
        logits, _ = fit_strategy(out_of_fold, targets, **options)

        # The strategy's own cross-validated loss: weights refitted without the rows scored.
        strategy_rows = np.zeros(len(targets), np.float32)
        for train, test in folds:
            fold_logits, _ = fit_strategy(out_of_fold[:, train], targets[train], **options)
            strategy_rows[test] = self._row_losses(fold_logits, out_of_fold[:, test], targets[test])
        single_losses = [
            float(self._row_losses(None, out_of_fold[i], targets).mean()) for i in range(len(named))
        ]

        self.names_ = [name for name, _ in named]
        self.estimators_ = [clone(estimator).fit(X, targets) for _, estimator in named]
        self.strategy_logits_ = logits
        self.n_iter_ = self.max_iter  # the strategy's optimizer always runs max_iter steps
        self.weights_ = dict(
            zip(self.names_, np.asarray(strategy_weights(logits, self.activation)).tolist())
        )
        self.cv_losses_ = dict(zip(self.names_, single_losses))
        self.strategy_cv_loss_ = float(strategy_rows.mean())
        self.cv_scores_ = {
            name: self._score_rows(out_of_fold[i], targets) for i, name in enumerate(self.names_)
        }
        best = int(np.argmin(single_losses))
        self.best_learner_ = self.names_[best]
        self.improvement_ = single_losses[best] - self.strategy_cv_loss_
        self.kept_ = "strategy" if self.improvement_ > 0 else self.best_learner_
        winner, loser = (
            ("the learned strategy", self.best_learner_)
            if self.kept_ == "strategy"
            else (self.best_learner_, "the learned strategy")
        )
        self.summary_ = (
            f"{winner} wins: cross-validated {self.loss_} "
            f"{min(single_losses[best], self.strategy_cv_loss_):.4f} "
            f"against {max(single_losses[best], self.strategy_cv_loss_):.4f} for {loser} "
            f"(by {abs(self.improvement_):.4f}); weights "
            + ", ".join(f"{n}={w:.3f}" for n, w in self.weights_.items())
        )
        return self

    def _row_losses(self, logits, predictions, targets) -> np.ndarray:
        """Per-row loss of a single learner's predictions (``logits=None``) or of the strategy."""
        if logits is None:
            return self._loss_per_row(predictions, targets)
        return self._loss_per_row(
            np.asarray(stacked_prediction(logits, predictions, self.activation)), targets
        )

    def _combined(self, X) -> np.ndarray:
        check_is_fitted(self, "estimators_")
        X = validate_data(self, X, reset=False)
        if self.keep_best and self.kept_ != "strategy":
            return self._base_predict(self.estimators_[self.names_.index(self.kept_)], X)
        predictions = np.stack([self._base_predict(e, X) for e in self.estimators_]).astype(
            np.float32
        )
        return np.asarray(stacked_prediction(self.strategy_logits_, predictions, self.activation))


class SuperLearnerClassifier(ClassifierMixin, _SuperLearner):
    """Super Learner for classification: a learned strategy over base classifiers' probabilities.

    Parameters:
      base_learners: estimators with ``predict_proba`` (or ``(name, estimator)`` pairs);
        default: decision tree, logistic regression, k-nearest neighbours, naive Bayes.
      activation: ``"softmax"`` (convex weights) or ``"sigmoid"``.
      loss: ``"ce"`` (default, log-loss) or ``"mse"`` (Brier score).
      optimizer: ``"lbfgs"`` (default), ``"adam"``, ``"sgd"`` or an optax transformation.
      learning_rate: for ``"adam"`` and ``"sgd"``.
      n_folds: folds for the out-of-fold predictions (stratified; reduced to the size of
        the smallest class when that is smaller).
      max_iter: optimizer steps for the strategy weights.
      seed: seeds the folds and the default base learners.
      keep_best: predict with the best single learner when the strategy does not beat it
        by cross-validation (the default); ``False`` always predicts with the strategy.

    Attributes after ``fit``: ``weights_`` (per base learner), ``cv_losses_`` and
    ``cv_scores_`` (accuracy) of each base learner, ``strategy_cv_loss_``, ``kept_``
    (``"strategy"`` or a learner's name), ``improvement_`` and ``summary_``.
    """

    def fit(self, X, y):
        self._check_params()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, targets = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y has 1 class ({self.classes_[0]!r}); a classifier needs at least 2 classes"
            )
        self.loss_ = "ce" if self.loss is None else self.loss
        if self.loss_ not in ("ce", "mse"):
            raise ValueError(f"loss must be 'ce' or 'mse', got {self.loss!r}")
        smallest = int(np.bincount(targets).min())
        if smallest < 2:
            raise ValueError(
                f"every class needs at least 2 examples for cross-validation; class "
                f"{self.classes_[np.argmin(np.bincount(targets))]!r} has {smallest}"
            )
        splitter = StratifiedKFold(
            min(self.n_folds, smallest), shuffle=True, random_state=self.seed
        )
        return self._fit(X, targets, splitter, default_classifiers)

    def _prediction_shape(self, rows):
        return (rows, len(self.classes_))

    def _base_predict(self, estimator, X):
        probabilities = np.zeros((len(X), len(self.classes_)), np.float32)
        probabilities[:, estimator.classes_] = estimator.predict_proba(X)
        return probabilities

    def _loss_per_row(self, combined, targets):
        picked = combined[np.arange(len(targets)), targets]
        if self.loss_ == "ce":
            return -np.log(np.clip(picked, 1e-12, None))
        one_hot = np.eye(combined.shape[1], dtype=combined.dtype)[targets]
        return np.sum(np.square(combined - one_hot), axis=1)

    def _score_rows(self, probabilities, targets):
        return float(np.mean(np.argmax(probabilities, axis=1) == targets))

    def predict_proba(self, X):
        """Class probabilities of the kept model (the strategy or the best base learner)."""
        return self._combined(X)

    def predict(self, X):
        probabilities = self.predict_proba(X)  # first: it raises NotFittedError before fit
        return self.classes_[np.argmax(probabilities, axis=1)]


class SuperLearnerRegressor(RegressorMixin, _SuperLearner):
    """Super Learner for regression: a learned strategy over base regressors' predictions.

    Parameters as ``SuperLearnerClassifier``, with ``loss="mse"`` (the only choice) and
    default base learners decision tree, ridge regression and k-nearest neighbours. With
    ``activation="sigmoid"`` the weights need not sum to one, so the strategy can also
    rescale its learners.
    """

    def fit(self, X, y):
        self._check_params()
        X, y = validate_data(self, X, y, y_numeric=True)
        self.loss_ = "mse" if self.loss is None else self.loss
        if self.loss_ != "mse":
            raise ValueError(f"loss must be 'mse' for regression, got {self.loss!r}")
        if len(y) < 2:
            raise ValueError(f"n_samples={len(y)}: cross-validation needs at least 2 samples")
        splitter = KFold(min(self.n_folds, len(y)), shuffle=True, random_state=self.seed)
        return self._fit(X, y.astype(np.float32), splitter, default_regressors)

    def _prediction_shape(self, rows):
        return (rows,)

    def _base_predict(self, estimator, X):
        return np.asarray(estimator.predict(X), np.float32).reshape(len(X))

    def _loss_per_row(self, combined, targets):
        return np.square(combined - targets)

    def _score_rows(self, predictions, targets):
        residual = np.sum(np.square(targets - predictions))
        total = np.sum(np.square(targets - targets.mean()))
        return float(1 - residual / total) if total > 0 else float("nan")

    def predict(self, X):
        """Predictions of the kept model (the strategy or the best base learner)."""
        return self._combined(X)
