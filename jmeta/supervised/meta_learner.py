"""The supervised meta-learner of the founding design, in both of its forms.

* **Fixed base learners** (scikit-learn estimators): ``fit(X, y)`` stacks them with a
  learned strategy on out-of-fold predictions — the Super Learner
  (``jmeta.supervised.super_learner``).
* **Differentiable base learners across tasks** (``jmeta.Learner``): ``train(Xs, Ys, Xt,
  Yt)`` adapts every base learner to each task with inner gradient steps and learns the
  initial weights, the meta learning rate (one learned inner rate per learner) and the
  strategy weights through the core's meta-objective, by full-batch optimisation over the
  given tasks. Each epoch records every task's test accuracy (or MSE).

In both forms the strategy replaces the best single base learner only if it does better;
``kept_`` names the winner and ``summary_`` says by how much. In the differentiable form
a single learner is scored by giving it all the strategy's weight after joint training.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta.errors import NonFiniteError
from jmeta.models import Learner
from jmeta.objective import MetaLearnerConfig, make_meta_learner
from jmeta.optim import frozen_where, make_optimizer, minimise
from jmeta.sharding import rows, sharded_task_mean
from jmeta.strategy import strategy_weights
from jmeta.tasks.base import Batch, Task
from jmeta.validation import check_choice, check_positive_float, check_positive_int


class SupervisedMetaLearner:
    """Base learners combined by a learned learning strategy.

    Args:
      base_learners: scikit-learn estimators (or ``(name, estimator)`` pairs) for ``fit``;
        ``jmeta.Learner`` values for ``train``.
      activation: ``"softmax"`` or ``"sigmoid"`` for the strategy weights.
      loss: ``"mse"`` or ``"ce"``.
      optimizer: ``"lbfgs"``, ``"adam"``, ``"sgd"`` or an optax transformation.
      n_folds: folds for out-of-fold predictions (``fit``).
      max_iter: optimizer iterations (epochs for ``train``).
      lr: learning rate of ``"adam"`` / ``"sgd"``.
      num_inner_steps, inner_lr: inner steps and initial meta learning rate (``train``).
      seed: seeds the folds and default learners.
      verbose: print the summary after fitting or training.
      mesh: a one-axis ``jax.sharding.Mesh`` (``jmeta.task_mesh(n)``): ``train`` splits its
        tasks over it (their number must be a multiple of its size), one all-reduce a step.
    """

    def __init__(
        self,
        base_learners: Sequence[Any],
        *,
        activation: str = "softmax",
        loss: str = "ce",
        optimizer: str | optax.GradientTransformation = "lbfgs",
        n_folds: int = 5,
        max_iter: int = 100,
        lr: float = 0.01,
        num_inner_steps: int = 1,
        inner_lr: float = 0.01,
        seed: int = 0,
        verbose: bool = False,
        mesh: Any = None,
    ):
        if base_learners is None or len(base_learners) == 0:
            raise ValueError("base_learners must hold at least one base learner, got none")
        self.base_learners = list(base_learners)
        self.activation = check_choice("activation", activation, ("softmax", "sigmoid"))
        self.loss = check_choice("loss", loss, ("mse", "ce"))
        self.optimizer = optimizer
        self.n_folds = n_folds
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.lr = lr
        self.num_inner_steps = check_positive_int("num_inner_steps", num_inner_steps)
        self.inner_lr = inner_lr
        self.seed = seed
        self.verbose = verbose
        self.mesh = mesh

    # -- fixed base learners: the Super Learner -------------------------------------------
    def fit(self, X, y) -> "SupervisedMetaLearner":
        """Stacks scikit-learn base learners on out-of-fold predictions (classifiers for
        ``loss="ce"`` or when every base learner is a classifier, regressors otherwise)."""
        from sklearn.base import is_classifier

        from jmeta.supervised.super_learner import SuperLearnerClassifier, SuperLearnerRegressor

        if any(isinstance(item, Learner) for item in self.base_learners):
            raise TypeError(
                "fit() stacks scikit-learn estimators; for jmeta.Learner base learners use train()"
            )
        estimators = [item[1] if isinstance(item, tuple) else item for item in self.base_learners]
        classify = self.loss == "ce" or all(is_classifier(e) for e in estimators)
        kind = SuperLearnerClassifier if classify else SuperLearnerRegressor
        self.model_ = kind(
            self.base_learners,
            activation=self.activation,
            loss=self.loss,
            optimizer=self.optimizer,
            learning_rate=self.lr,
            n_folds=self.n_folds,
            max_iter=self.max_iter,
            seed=self.seed,
        ).fit(X, y)
        self.weights_, self.kept_, self.summary_ = (
            self.model_.weights_,
            self.model_.kept_,
            self.model_.summary_,
        )
        self.scores_ = self.model_.cv_scores_
        if self.verbose:
            print(self.summary_)
        return self

    def predict(self, X):
        """Predictions of the kept model from ``fit``."""
        if not hasattr(self, "model_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("call fit() before predict()")
        return self.model_.predict(X)

    # -- differentiable base learners across tasks ----------------------------------------
    def train(self, Xs, Ys, Xt, Yt, max_iter: int | None = None, lr: float | None = None) -> dict:
        """Meta-trains the strategy, the meta learning rate and the initial weights on tasks.

        Args:
          Xs, Ys: support (training) inputs ``(tasks, n, features)`` and targets
            (``(tasks, n, outputs)`` for MSE, ``(tasks, n)`` integer classes for CE).
          Xt, Yt: the tasks' test (query) sets, shaped alike.
          max_iter: epochs (full-batch outer iterations); default ``self.max_iter``.
          lr: outer learning rate for ``"adam"``/``"sgd"``; default ``self.lr``.

        Returns:
          ``history``: ``{"loss": (epochs,), "test_metric": (epochs, tasks)}``, the
          per-task test accuracy (CE) or MSE after adaptation at every epoch.
        """
        learners = tuple(self.base_learners)
        if not all(isinstance(l, Learner) for l in learners):
            raise TypeError(
                "train() needs jmeta.Learner base learners (e.g. jmeta.mlp_learner); "
                "for scikit-learn estimators use fit()"
            )
        tasks = Task(
            Batch(jnp.asarray(Xs), jnp.asarray(Ys)), Batch(jnp.asarray(Xt), jnp.asarray(Yt))
        )
        epochs = check_positive_int("max_iter", self.max_iter if max_iter is None else max_iter)
        config = MetaLearnerConfig(
            num_inner_steps=self.num_inner_steps,
            inner_lr=self.inner_lr,
            inner_rate="scalar",
            loss=self.loss,
            activation=self.activation,
        )
        meta_learner = make_meta_learner(learners, config)
        meta_learner.check_tasks(tasks)  # Xs, Ys, Xt, Yt against each other and the learners
        start = meta_learner.init()
        trainable = meta_learner.trainable(start)
        metric = "accuracy" if self.loss == "ce" else "loss"

        def test_metric(meta_params):
            return meta_learner.evaluate(meta_params, tasks, self.num_inner_steps)[metric][:, -1]

        outer_lr = check_positive_float("lr", self.lr if lr is None else lr)
        optimizer = make_optimizer(self.optimizer, outer_lr)
        meta_loss = meta_learner.meta_loss
        if self.mesh is not None:
            meta_loss = sharded_task_mean(meta_loss, self.mesh, tasks.support.x.shape[0])
            tasks = jax.device_put(tasks, rows(self.mesh))
        objective = lambda meta_params: meta_loss(frozen_where(meta_params, trainable), tasks)[0]
        # All epochs run inside one jitted scan (no per-epoch Python work), so there is no
        # progress to report until it returns.
        run = jax.jit(lambda p: minimise(objective, p, optimizer, epochs, record=test_metric))
        meta_params, losses, per_task = run(start)
        losses = np.asarray(losses)
        if not np.all(np.isfinite(losses)):
            epoch = int(np.argmin(np.isfinite(losses)))
            raise NonFiniteError(
                f"meta-training diverged: the meta-loss became {losses[epoch]} at epoch {epoch}; "
                f"lower lr (now {outer_lr}) or inner_lr (now "
                f"{self.inner_lr}), "
                f"or use fewer num_inner_steps (now {self.num_inner_steps})"
            )

        self.meta_learner_, self.meta_params_ = meta_learner, meta_params
        names = [l.name for l in learners]
        self.weights_ = dict(
            zip(names, np.asarray(strategy_weights(meta_params.strategy, self.activation)).tolist())
        )
        self.inner_lr_ = dict(zip(names, [float(jnp.exp(r)) for r in meta_params.log_inner_lr]))
        better = (lambda a, b: a > b) if metric == "accuracy" else (lambda a, b: a < b)
        strategy_score = float(np.mean(per_task[-1]))
        self.scores_ = {"strategy": strategy_score}
        for index, name in enumerate(names):
            self.scores_[name] = float(jnp.mean(test_metric(_all_weight_on(meta_params, index))))
        best = (
            max(names, key=lambda n: self.scores_[n])
            if metric == "accuracy"
            else min(names, key=self.scores_.get)
        )
        self.kept_ = (
            "strategy" if len(names) > 1 and better(strategy_score, self.scores_[best]) else best
        )
        label = "test accuracy" if metric == "accuracy" else "test MSE"
        self.summary_ = (
            f"{'the learned strategy' if self.kept_ == 'strategy' else self.kept_} wins: {label} "
            f"{strategy_score:.4f} (strategy) against {self.scores_[best]:.4f} ({best}); weights "
            + ", ".join(f"{n}={w:.3f}" for n, w in self.weights_.items())
            + "; meta learning rates "
            + ", ".join(f"{n}={r:.4f}" for n, r in self.inner_lr_.items())
        )
        if self.verbose:
            print(self.summary_)
        self.history_ = {"loss": losses, "test_metric": np.asarray(per_task)}
        return self.history_

    def score_tasks(self, Xs, Ys, Xt, Yt, learner: str | None = None) -> np.ndarray:
        """Per-task test accuracy (CE) or MSE on new tasks after adapting to their support sets.

        ``learner`` scores one base learner alone (all the strategy's weight on it); by
        default the kept model is scored.
        """
        if not hasattr(self, "meta_params_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("call train() before score_tasks()")
        tasks = Task(
            Batch(jnp.asarray(Xs), jnp.asarray(Ys)), Batch(jnp.asarray(Xt), jnp.asarray(Yt))
        )
        names = list(self.weights_)
        chosen = (
            learner if learner is not None else (None if self.kept_ == "strategy" else self.kept_)
        )
        meta_params = self.meta_params_
        if chosen is not None:
            meta_params = _all_weight_on(
                meta_params, names.index(check_choice("learner", chosen, names))
            )
        metric = "accuracy" if self.loss == "ce" else "loss"
        return np.asarray(
            self.meta_learner_.evaluate(meta_params, tasks, self.num_inner_steps)[metric][:, -1]
        )


def _all_weight_on(meta_params, index: int):
    """Strategy logits that put all the weight on one learner (exactly, in float32)."""
    logits = jnp.where(jnp.arange(meta_params.strategy.shape[0]) == index, 1e4, -1e4)
    return meta_params._replace(strategy=logits.astype(meta_params.strategy.dtype))
