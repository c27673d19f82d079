"""Implicit MAML: the implicit meta-gradient against the gradient unrolled through the
proximal steps, against finite differences, and its memory against the number of steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jmeta
from jmeta.benchmark import memory_record
from jmeta.conjugate import conjugate_gradient
from jmeta.inner import top_curvature
from tests.helpers import sinusoid_tasks, small_mlp


def _cosine(a, b) -> float:
    a, b = (jax.flatten_util.ravel_pytree(tree)[0] for tree in (a, b))
    return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def _learner_grads(config, learner, tasks):
    meta_learner = jmeta.make_meta_learner(learner, config)
    grads, _ = jax.jit(meta_learner.meta_grad)(meta_learner.init(), tasks)
    return grads.learners


def _episodes(ways=3, size=8, num_tasks=2):
    data = np.random.RandomState(0).rand(8, 6, size, size, 1).astype(np.float32)
    sampler = jmeta.make_episode_sampler(data, ways, 2, 2)
    return jmeta.sample_tasks(sampler, jax.random.key(1), num_tasks)


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_implicit_gradient_matches_the_gradient_unrolled_through_many_proximal_steps(adapt):
    # 600 proximal steps converge (each shrinks the error by at least 1 - 0.01 * 2); then the
    # unrolled second-order gradient is the derivative of the solution, which the implicit
    # one computes from the solution alone. ANIL's body, fixed inside, has a cotangent too.
    common = dict(num_inner_steps=600, inner_lr=0.01, proximal=2.0, adapt=adapt)
    implicit = jmeta.algorithm_config("imaml", cg_steps=20, **common)
    unrolled = jmeta.MetaLearnerConfig(**common)
    tasks = sinusoid_tasks(num_tasks=3)
    a = _learner_grads(implicit, small_mlp(), tasks)
    b = _learner_grads(unrolled, small_mlp(), tasks)
    assert _cosine(a, b) > 0.9999, _cosine(a, b)
    if adapt == "head":  # the body's cotangent comes from the frozen-leaf term alone
        assert _cosine(a[0]["hidden_0"], b[0]["hidden_0"]) > 0.999


class SmoothConv(nn.Module):
    """Two stride-2 convolutions with tanh and a linear head: a conv net whose support loss
    is smooth, so that gradient steps reach the proximal problem's solution. (Conv4's ReLU
    and batch norm make the loss piecewise smooth; on 8x8 images plain steps chatter
    around a kink and never get there, and no gradient is that of a solution.)"""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3), strides=2, name="conv_0")(x))
        x = jnp.tanh(nn.Conv(4, (3, 3), strides=2, name="conv_1")(x))
        return nn.Dense(3, name="head")(x.reshape((x.shape[0], -1)))


def test_implicit_gradient_matches_the_unrolled_one_on_a_small_conv_net():
    learner = jmeta.make_learner("conv", SmoothConv(), jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    common = dict(num_inner_steps=60, inner_lr=0.2, proximal=2.0, loss="ce")
    tasks = _episodes()
    a = _learner_grads(jmeta.algorithm_config("imaml", cg_steps=20, **common), learner, tasks)
    b = _learner_grads(jmeta.MetaLearnerConfig(**common), learner, tasks)
    assert _cosine(a, b) > 0.9999, _cosine(a, b)


def test_implicit_meta_gradient_matches_finite_differences(x64):
    # lambda = 10 and lr = 0.01 take 10% off the distance to the solution at every step:
    # 400 steps reach it to float64 precision, where the implicit gradient is exact.
    config = jmeta.algorithm_config(
        "imaml", num_inner_steps=400, inner_lr=0.01, proximal=10.0, cg_steps=40
    )
    meta_learner = jmeta.make_meta_learner(small_mlp(hidden=(4,), dtype=jnp.float64), config)
    tasks = sinusoid_tasks(num_tasks=2, dtype=jnp.float64)
    start = meta_learner.init()
    check_grads(
        jax.jit(
            lambda learners: meta_learner.meta_loss(start._replace(learners=learners), tasks)[0]
        ),
        (start.learners,),
        order=1,
        modes=["rev"],
        eps=1e-6,
        atol=1e-6,
        rtol=1e-6,
    )


def test_implicit_memory_does_not_grow_with_the_number_of_inner_steps():
    learner = small_mlp(hidden=(32, 32))
    tasks = sinusoid_tasks(num_tasks=4, shots=10)

    def temp_bytes(name, steps):
        config = jmeta.algorithm_config(name, num_inner_steps=steps, inner_lr=0.01, proximal=2.0)
        meta_learner = jmeta.make_meta_learner(learner, config)
        compiled = jax.jit(meta_learner.meta_grad).lower(meta_learner.init(), tasks).compile()
        return memory_record(compiled)["temp_bytes"]

    implicit = {steps: temp_bytes("imaml", steps) for steps in (5, 80)}
    unrolled = {steps: temp_bytes("maml", steps) for steps in (5, 80)}
    assert implicit[80] <= implicit[5] * 1.05 + 1024, implicit
    assert unrolled[80] > 4 * unrolled[5], unrolled  # the check can see growth where it is


def test_implicit_meta_gradient_trains_and_its_inner_loop_is_proximal():
    config = jmeta.algorithm_config("imaml", num_inner_steps=5, inner_lr=0.05)
    meta_learner = jmeta.make_meta_learner(small_mlp(), config)
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks())
    start = meta_learner.init()
    adapted = jax.jit(meta_learner.adapt)(start, task.support)[0]
    plain_config = jmeta.MetaLearnerConfig(num_inner_steps=5, inner_lr=0.05)
    plain_learner = jmeta.make_meta_learner(small_mlp(), plain_config)
    plain = jax.jit(plain_learner.adapt)(start, task.support)[0]
    # The proximal term pulls toward the initial weights: the adapted ones stay closer.
    distance = lambda params: float(jmeta.inner.squared_distance(params, start.learners))
    assert 0 < distance(adapted) < distance(plain)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"proximal": 0.0}, "needs proximal > 0"),
        ({"inner_rate": "scalar"}, "takes inner_rate='fixed'"),
        ({"remat": "step"}, "takes remat='none'"),
        ({"multi_step_loss": 0.1}, "takes multi_step_loss=0.0"),
    ],
)
def test_implicit_refuses_settings_it_would_ignore(overrides, message):
    with pytest.raises(ValueError, match=message):
        jmeta.algorithm_config("imaml", **overrides)


def test_conjugate_gradient_solves_a_positive_definite_system_and_stops_at_negative_curvature():
    rng = np.random.RandomState(2)
    m = rng.randn(6, 6)
    spd, b = m @ m.T + np.eye(6), rng.randn(6)
    x = conjugate_gradient(lambda v: jnp.asarray(spd, jnp.float32) @ v, jnp.asarray(b), 12)
    np.testing.assert_allclose(x, np.linalg.solve(spd, b), rtol=1e-3, atol=1e-4)
    # Negative curvature along the first direction (b itself): b comes back unchanged.
    negative = -np.eye(6)
    x = conjugate_gradient(lambda v: jnp.asarray(negative, jnp.float32) @ v, jnp.asarray(b), 5)
    np.testing.assert_allclose(x, b, rtol=1e-6)
    # A system indefinite only away from b's first directions stays finite.
    indefinite = np.diag([3.0, 2.0, 1.0, -1.0, -2.0, 0.5])
    x = conjugate_gradient(lambda v: jnp.asarray(indefinite, jnp.float32) @ v, jnp.asarray(b), 6)
    assert np.all(np.isfinite(np.asarray(x)))


def test_top_curvature_is_the_largest_hessian_eigenvalue(x64):
    learner = small_mlp(hidden=(4,), dtype=jnp.float64)
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks(dtype=jnp.float64))
    flat, unravel = jax.flatten_util.ravel_pytree(learner.params)
    loss = lambda p: jmeta.mse(learner.apply_fn(p, task.support.x), task.support.y)
    eigenvalues = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda w: loss(unravel(w)))(flat)))
    top = float(jax.jit(lambda p: top_curvature(loss, p, 30))(learner.params))
    assert top == pytest.approx(eigenvalues[-1], rel=1e-3)


def test_top_curvature_is_the_largest_eigenvalue_not_the_largest_in_magnitude(x64):
    # A saddle whose negative curvature dominates: power iteration would return -5, while
    # the rate that diverges is set by the largest positive curvature, 3.
    hessian = jnp.diag(jnp.array([-5.0, 3.0, 1.0, 0.5]))
    loss = lambda p: 0.5 * p["w"] @ hessian @ p["w"]
    params = {"w": jnp.array([1.0, 1.0, 1.0, 1.0])}
    assert float(top_curvature(loss, params, 4)) == pytest.approx(3.0, rel=1e-6)
    # Fewer iterations than distinct eigenvalues still never overshoot the spectrum.
    assert -5.0 <= float(top_curvature(loss, params, 2)) <= 3.0 + 1e-9


def test_the_curvature_cap_keeps_a_too_large_rate_from_diverging():
    # A rate of 1 on sinusoid regression diverges at once; capped at 1 / (lambda + h) every
    # proximal step lowers the proximal objective.
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_tasks())
    common = dict(num_inner_steps=30, inner_lr=1.0, proximal=2.0)
    for steps, finite in ((0, False), (10, True)):
        config = jmeta.algorithm_config("imaml", **common, curvature_steps=steps)
        meta_learner = jmeta.make_meta_learner(small_mlp(), config)
        _, trace = jax.jit(meta_learner.adapt)(meta_learner.init(), task.support)
        losses = np.asarray(trace["inner/loss"][:, 0])
        assert bool(np.all(np.isfinite(losses)) and losses[-1] < losses[0]) == finite, losses
