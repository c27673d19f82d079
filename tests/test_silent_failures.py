"""Inputs that used to give a silently wrong answer now raise an error naming the argument.

Each test holds a case that trained or scored without a word before: shapes that
broadcast, a single task read as many, labels outside the classes, a freeze path or
adapt mask that matches nothing, and non-finite losses, gradients or learning rates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from jmeta.errors import NonFiniteError
from jmeta.runs import RunDir
from tests.helpers import sinusoid_tasks, small_mlp


def _maml(loss="mse", **config):
    return jmeta.make_meta_learner(small_mlp(), jmeta.algorithm_config("maml", loss=loss, **config))


def _flat_targets(tasks):
    return tasks._replace(
        support=tasks.support._replace(y=tasks.support.y[..., 0]),
        query=tasks.query._replace(y=tasks.query.y[..., 0]),
    )


def _classification_tasks(num_tasks=3, ways=3, shots=4, features=1, labels_offset=0):
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (num_tasks, ways * shots, features))
    y = jnp.tile(jnp.arange(ways * shots) % ways, (num_tasks, 1)) + labels_offset
    return jmeta.Task(jmeta.Batch(x, y.astype(jnp.int32)), jmeta.Batch(x, y.astype(jnp.int32)))


# -- shapes that broadcast, and one task read as many ---------------------------------------


@pytest.mark.parametrize("entry", ["meta_loss", "meta_grad", "evaluate"])
def test_flat_regression_targets_are_refused_not_broadcast(entry):
    maml = _maml()
    call = {
        "meta_loss": lambda t: maml.meta_loss(maml.init(), t),
        "meta_grad": lambda t: maml.meta_grad(maml.init(), t),
        "evaluate": lambda t: jmeta.evaluate(maml, maml.init(), t, 1),
    }[entry]
    with pytest.raises(ValueError, match=r"tasks.support.y has targets of shape \(\) .* n x n"):
        call(_flat_targets(sinusoid_tasks()))


def test_flat_targets_under_jit_are_refused_at_trace_time():
    maml = _maml()
    with pytest.raises(ValueError, match="with loss='mse' they must match"):
        jax.jit(maml.meta_loss)(maml.init(), _flat_targets(sinusoid_tasks()))


def test_adapting_on_a_support_set_that_does_not_fit_is_refused():
    maml = _maml()
    support = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks()).support
    maml.adapt(maml.init(), support)  # one task's support set fits
    with pytest.raises(ValueError, match="tasks.support.y has targets of shape"):
        maml.adapt(maml.init(), support._replace(y=support.y[:, 0]))


def test_a_single_task_where_a_batch_is_expected_is_named():
    maml = _maml()
    one = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks(shots=6, queries=6))
    with pytest.raises(ValueError, match="looks like one task where a batch of tasks"):
        maml.meta_loss(maml.init(), one)


def test_inputs_of_the_wrong_width_for_the_learner_are_named():
    maml = jmeta.make_meta_learner(jmeta.mlp_learner(jax.random.key(0), in_features=3))
    with pytest.raises(
        ValueError, match=r"examples of shape \(1,\) .* takes inputs of shape \(3,\)"
    ):
        maml.meta_loss(maml.init(), sinusoid_tasks())


def test_a_learner_without_a_recorded_input_shape_still_gets_a_one_line_error():
    learner = jmeta.mlp_learner(jax.random.key(0), in_features=3)._replace(input_shape=None)
    maml = jmeta.make_meta_learner(learner)
    with pytest.raises(ValueError, match="base learner 'mlp' cannot take") as caught:
        maml.meta_loss(maml.init(), sinusoid_tasks())
    assert "\n" not in str(caught.value)


def test_a_sampler_whose_tasks_do_not_fit_is_refused_when_the_step_is_built():
    maml = _maml()
    base = jmeta.make_sinusoid_sampler(5, 5)

    def flat_sampler(key):
        return _flat_targets(base(key))

    with pytest.raises(ValueError, match="sample_task's tasks do not fit"):
        jmeta.make_meta_step(maml, flat_sampler, 4)


def test_the_supervised_meta_learner_checks_its_tasks_against_its_learners():
    from jmeta.supervised import SupervisedMetaLearner

    tasks = sinusoid_tasks()
    model = SupervisedMetaLearner(
        [jmeta.mlp_learner(jax.random.key(0), in_features=2)], loss="mse", max_iter=2
    )
    with pytest.raises(ValueError, match=r"takes inputs of shape \(2,\)"):
        model.train(*tasks.support, *tasks.query)


# -- labels for cross-entropy -----------------------------------------------------------------


def test_labels_outside_the_classes_are_refused():
    maml = jmeta.make_meta_learner(
        jmeta.mlp_learner(jax.random.key(0), out_features=3),
        jmeta.algorithm_config("maml", loss="ce"),
    )
    with pytest.raises(ValueError, match=r"labels from 1 to 3, .* scores 3 classes"):
        maml.meta_loss(maml.init(), _classification_tasks(labels_offset=1))


def test_labels_outside_the_classes_inside_jit_give_nan_not_a_clamped_loss():
    logits = jnp.zeros((2, 3))
    assert np.isnan(float(jmeta.cross_entropy(logits, jnp.array([0, -1]))))  # not the last class
    assert np.isnan(float(jmeta.cross_entropy(logits, jnp.array([0, 3]))))
    assert np.isfinite(float(jmeta.cross_entropy(logits, jnp.array([0, 2]))))


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda y: y.astype(jnp.float32), "must hold integer class labels"),
        (lambda y: jax.nn.one_hot(y, 3).astype(jnp.int32), "one integer class label per example"),
    ],
)
def test_labels_that_are_not_integer_classes_are_refused(labels, message):
    maml = jmeta.make_meta_learner(
        jmeta.mlp_learner(jax.random.key(0), out_features=3),
        jmeta.algorithm_config("maml", loss="ce"),
    )
    tasks = _classification_tasks()
    tasks = tasks._replace(
        support=tasks.support._replace(y=labels(tasks.support.y)),
        query=tasks.query._replace(y=labels(tasks.query.y)),
    )
    with pytest.raises(ValueError, match=message):
        maml.meta_loss(maml.init(), tasks)


def test_a_prototypical_network_refuses_labels_beyond_its_ways():
    embedding = jmeta.mlp_learner(jax.random.key(0), out_features=4)
    protonet = jmeta.make_protonet(embedding, 3)
    with pytest.raises(ValueError, match="scores 3 classes"):
        protonet.meta_loss(protonet.init(), _classification_tasks(labels_offset=1))


# -- freeze paths and adapt masks -------------------------------------------------------------


def test_a_freeze_path_that_matches_nothing_lists_the_valid_paths():
    with pytest.raises(ValueError, match="freeze path 'learners/0/hiden_0' matches no") as caught:
        _maml(freeze=("learners/0/hiden_0",))
    assert "learners/0/hidden_0/kernel" in str(caught.value)
    _maml(freeze=("learners/0/hidden_0",))  # the right spelling is accepted


def test_an_adapt_mask_that_adapts_nothing_or_has_another_structure_is_refused():
    learner = small_mlp()
    nothing = learner._replace(adapt_mask=jax.tree_util.tree_map(lambda _: False, learner.params))
    with pytest.raises(ValueError, match="adapts no parameter; mark at least one of head/bias"):
        jmeta.make_meta_learner(nothing)
    typo = learner._replace(adapt_mask={"haed": {"kernel": True, "bias": True}})
    with pytest.raises(ValueError, match="must have the structure of its params"):
        jmeta.make_meta_learner(typo)


# -- non-finite values --------------------------------------------------------------------


def _fit(maml, step, num_steps, run=None):
    return jmeta.fit(
        step,
        step.init(maml.init()),
        jax.random.key(0),
        num_steps,
        log_every=10,
        checkpoint_every=10,
        run=run,
        progress=False,
    )


def test_fit_stops_at_the_first_non_finite_step_and_keeps_the_last_good_checkpoint(tmp_path):
    maml = _maml()
    base = jmeta.make_sinusoid_sampler(5, 5)
    poisoned = jnp.asarray(jnp.nan)

    def sampler(key):
        task = base(key)
        # NaN for keys whose first bits happen to be small: deterministic, and met inside
        # the jitted scan rather than in data the host could check.
        bad = jax.random.uniform(key) < 0.003
        return task._replace(query=task.query._replace(y=jnp.where(bad, poisoned, task.query.y)))

    step = jmeta.make_meta_step(maml, sampler, 4)
    with RunDir(tmp_path / "run", "test", jmeta.MetaLearnerConfig()) as run:
        with pytest.raises(NonFiniteError, match=r"stopped at step (\d+): .*post/loss is nan") as e:
            _fit(maml, step, 400, run)
        bad_step = int(str(e.value).split("stopped at step ")[1].split(":")[0])
        kept = run.load_checkpoint("train", step.init(maml.init()))
    assert int(kept.step) == (bad_step - 1) // 10 * 10  # the chunk before the NaN
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(kept))
    assert f"step {int(kept.step)}) is kept in" in str(e.value)


def test_a_diverging_inner_rate_stops_training_with_the_metric_named():
    maml = _maml(inner_lr=1e8)
    step = jmeta.make_meta_step(maml, jmeta.make_sinusoid_sampler(5, 5), 4)
    with pytest.raises(NonFiniteError, match="stopped at step 1: "):
        _fit(maml, step, 20)


def test_a_nan_learning_rate_through_the_python_api_is_refused():
    maml = _maml()
    with pytest.raises(ValueError, match="outer_lr must be a positive finite number, got nan"):
        jmeta.train(
            maml,
            jmeta.make_sinusoid_sampler(5, 5),
            jax.random.key(0),
            5,
            meta_batch=2,
            outer_lr=float("nan"),
            progress=False,
        )
    with pytest.raises(ValueError, match="learning_rate must be a positive finite number"):
        jmeta.default_optimizer(float("inf"))
    from jmeta.supervised import SupervisedMetaLearner

    tasks = sinusoid_tasks()
    model = SupervisedMetaLearner([small_mlp()], loss="mse", optimizer="adam", lr=float("nan"))
    with pytest.raises(ValueError, match="lr must be a positive finite number, got nan"):
        model.train(*tasks.support, *tasks.query)


def test_the_unsupervised_meta_learner_stops_on_a_diverging_loss():
    from sklearn.datasets import make_blobs

    from jmeta.unsupervised import UnsupervisedMetaLearner

    x, _ = make_blobs(200, centers=3, n_features=4, random_state=5)
    model = UnsupervisedMetaLearner(
        n_components=2,
        n_clusters=3,
        n_partitions=1,
        ways=2,
        shots=2,
        queries=3,
        rounds=1,
        steps_per_round=20,
        meta_batch=2,
        log_every=10,
        algorithm="maml",
        inner_lr=1e8,
        progress=False,
    )
    with pytest.raises(
        NonFiniteError, match="unsupervised-round-0' stopped at step [0-9]+: outer/grad_norm is inf"
    ):
        model.fit(x.astype(np.float32))
