"""The supervised meta-learner: stacking on out-of-fold predictions and its differentiable form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.tree import DecisionTreeRegressor

import jmeta
from jmeta.supervised import SupervisedMetaLearner
from jmeta.supervised.stacking import fit_strategy, strategy_loss
from jmeta.supervised.super_learner import SuperLearnerClassifier, SuperLearnerRegressor


def _blobs(seed=0, rows=120, noise=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] + noise * rng.normal(size=rows) > 0).astype(int)
    return X, y


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_weights_follow_the_activation(activation):
    X, y = _blobs()
    model = SuperLearnerClassifier(activation=activation).fit(X, y)
    weights = np.array(list(model.weights_.values()))
    assert set(model.weights_) == {
        "decision_tree",
        "logistic_regression",
        "k_nearest_neighbours",
        "naive_bayes",
    }
    if activation == "softmax":
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
    assert np.all((weights > 0) & (weights < 1))
    assert model.kept_ in ("strategy", *model.weights_)
    assert "wins" in model.summary_ and model.predict(X).shape == y.shape


def test_the_true_function_takes_almost_all_the_weight():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    y = 3 * X[:, 0] - 2 * X[:, 1] + 1
    model = SuperLearnerRegressor(
        [
            ("linear", LinearRegression()),
            ("tree", DecisionTreeRegressor(random_state=0)),
            ("knn", KNeighborsRegressor()),
        ]
    ).fit(X, y)
    assert model.weights_["linear"] > 0.98
    assert model.kept_ in ("strategy", "linear")
    logits, _ = fit_strategy(
        np.stack([y, y + rng.normal(size=200), y + 2 * rng.normal(size=200)]), y
    )
    assert jax.nn.softmax(logits)[0] > 0.98


def test_a_memorising_learner_does_not_take_the_weight():
    X, y = _blobs(seed=2, rows=300, noise=1.0)  # noisy labels: 1-NN memorises the noise
    base = [("logistic", LogisticRegression()), ("one_nn", KNeighborsClassifier(n_neighbors=1))]
    model = SuperLearnerClassifier(base).fit(X, y)
    assert model.weights_["logistic"] > 0.8
    # Fitted on in-sample predictions instead, the strategy would hand 1-NN all the weight.
    in_sample = np.stack([e.fit(X, y).predict_proba(X) for _, e in base])
    logits, _ = fit_strategy(in_sample, y, loss="ce")
    assert jax.nn.softmax(logits)[1] > 0.9


@pytest.mark.parametrize(
    "loss,activation",
    [("mse", "softmax"), ("mse", "sigmoid"), ("ce", "softmax"), ("ce", "sigmoid")],
)
def test_strategy_loss_gradient_matches_finite_differences(x64, loss, activation):
    rng = np.random.default_rng(3)
    probabilities = jnp.asarray(rng.dirichlet(np.ones(4), size=(3, 20)))
    targets = jnp.asarray(rng.integers(0, 4, 20))
    weights = jnp.ones(20, jnp.float64)
    objective = lambda logits: strategy_loss(
        logits, probabilities, targets, weights, activation, loss
    )
    check_grads(
        objective,
        (jnp.array([0.2, -0.4, 0.1]),),
        order=1,
        modes=["rev"],
        eps=1e-6,
        atol=1e-6,
        rtol=1e-5,
    )
    values = jnp.asarray(rng.normal(size=(3, 20)))
    regression = lambda logits: strategy_loss(
        logits, values, values[0] + 0.1, weights, activation, "mse"
    )
    check_grads(
        regression,
        (jnp.array([0.2, -0.4, 0.1]),),
        order=1,
        modes=["rev"],
        eps=1e-6,
        atol=1e-6,
        rtol=1e-5,
    )


def test_lbfgs_and_adam_reach_the_same_optimum():
    rng = np.random.default_rng(4)
    y = rng.normal(size=300)
    predictions = np.stack([y + rng.normal(scale=s, size=300) for s in (0.5, 1.0, 2.0)])
    weights = {}
    for optimizer, steps in (("lbfgs", 50), ("adam", 2000)):
        logits, losses = fit_strategy(
            predictions, y, optimizer=optimizer, num_iterations=steps, learning_rate=0.05
        )
        weights[optimizer] = np.asarray(jax.nn.softmax(logits))
        assert losses[-1] < losses[0]
    np.testing.assert_allclose(weights["lbfgs"], weights["adam"], atol=2e-3)
    # The optimum of this convex problem in the weights is the inverse-variance weighting.
    inverse_variance = 1 / np.array([0.25, 1.0, 4.0])
    np.testing.assert_allclose(
        weights["lbfgs"], inverse_variance / inverse_variance.sum(), atol=0.05
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "estimator", [SuperLearnerClassifier(), SuperLearnerRegressor()], ids=lambda e: type(e).__name__
)
def test_scikit_learn_estimator_checks(estimator):
    from sklearn.utils.estimator_checks import check_estimator

    # No check is exempted. The array-API check skips itself unless SCIPY_ARRAY_API is set
    # (jmeta's estimators take NumPy input); pandas comes with the test extra so that the
    # pandas-input checks run.
    results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])) for r in results if r["status"] == "failed"]
    assert not failed, failed
    assert len(results) > 40


def test_predict_before_fit_raises_not_fitted():
    for model in (
        SuperLearnerClassifier(),
        SuperLearnerRegressor(),
        SupervisedMetaLearner([LogisticRegression()]),
    ):
        with pytest.raises(NotFittedError):
            model.predict(np.zeros((2, 3)))


def test_bad_input_gives_clear_errors():
    X, y = _blobs()
    with pytest.raises(ValueError, match="at least one estimator"):
        SuperLearnerClassifier(base_learners=[]).fit(X, y)
    with pytest.raises(ValueError, match="at least one base learner"):
        SupervisedMetaLearner([])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        SuperLearnerClassifier().fit(X, y[:-3])
    with pytest.raises(ValueError, match="NaN"):
        SuperLearnerClassifier().fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match="1 class"):
        SuperLearnerClassifier().fit(X, np.zeros_like(y))
    with pytest.raises(ValueError, match="activation must be 'softmax' or 'sigmoid'"):
        SuperLearnerClassifier(activation="relu").fit(X, y)
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        SuperLearnerRegressor(n_folds=1).fit(X, y.astype(float))
    with pytest.raises(ValueError, match="unknown optimizer 'bfgs'"):
        SuperLearnerRegressor(optimizer="bfgs").fit(X, y.astype(float))
    with pytest.raises(ValueError, match="targets must have shape"):
        fit_strategy(np.zeros((2, 5)), np.zeros(4))
    with pytest.raises(TypeError, match="use train"):
        SupervisedMetaLearner([jmeta.linear_learner(jax.random.key(0))]).fit(X, y)


def _line_tasks(num_tasks, seed):
    sampler = jmeta.tasks.make_linear_sampler(10, 10, noise=0.1)
    return jmeta.sample_tasks(sampler, jax.random.key(seed), num_tasks)


def _sine_tasks(num_tasks, seed):
    return jmeta.sample_tasks(jmeta.make_sinusoid_sampler(10, 10), jax.random.key(seed), num_tasks)


def _train_mlp_and_linear(tasks):
    learners = [
        jmeta.mlp_learner(jax.random.key(1), hidden=(16,)),
        jmeta.linear_learner(jax.random.key(2)),
    ]
    model = SupervisedMetaLearner(learners, loss="mse", optimizer="adam", lr=0.03, max_iter=150)
    return model, model.train(*tasks.support, *tasks.query)


def test_differentiable_form_moves_the_weight_to_the_learner_that_suits_the_tasks():
    on_lines, history = _train_mlp_and_linear(_line_tasks(40, 0))
    on_sines, _ = _train_mlp_and_linear(_sine_tasks(40, 0))
    assert history["test_metric"].shape == (150, 40) and history["loss"].shape == (150,)
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert on_sines.weights_["mlp"] > 0.7
    assert on_lines.weights_["linear"] > on_sines.weights_["linear"] + 0.2
    assert set(on_lines.inner_lr_) == {"mlp", "linear"} and on_lines.inner_lr_[
        "linear"
    ] != pytest.approx(0.01)
    held_out = _line_tasks(30, 5)
    assert (
        on_lines.score_tasks(*held_out.support, *held_out.query, learner="linear").mean()
        < on_lines.score_tasks(*held_out.support, *held_out.query, learner="mlp").mean()
    )


def test_differentiable_form_reports_divergence():
    tasks = _line_tasks(8, 0)
    model = SupervisedMetaLearner(
        [jmeta.linear_learner(jax.random.key(0))],
        loss="mse",
        optimizer="sgd",
        lr=10.0,
        max_iter=30,
        inner_lr=0.5,
    )
    with pytest.raises(FloatingPointError, match="diverged"):
        model.train(*tasks.support, *tasks.query)


def test_differentiable_form_classification_records_accuracy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 2, 3)) * 3  # 6 tasks, 2 classes, 3 features
    labels = np.tile(np.arange(2), 10)
    X = centres[:, labels] + rng.normal(size=(6, 20, 3))
    Y = np.broadcast_to(labels, (6, 20))
    learners = [
        jmeta.mlp_learner(jax.random.key(0), in_features=3, hidden=(8,), out_features=2),
        jmeta.linear_learner(jax.random.key(1), in_features=3, out_features=2),
    ]
    model = SupervisedMetaLearner(
        learners, loss="ce", optimizer="adam", lr=0.02, max_iter=60, inner_lr=0.1
    )
    history = model.train(X[:, :10], Y[:, :10], X[:, 10:], Y[:, 10:])
    accuracy = history["test_metric"]
    assert accuracy.shape == (60, 6) and np.all((accuracy >= 0) & (accuracy <= 1))
    assert accuracy[-1].mean() > 0.8
