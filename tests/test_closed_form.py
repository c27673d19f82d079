"""One-step MAML on linear regression against its closed-form meta-gradient."""

import jax
import jax.numpy as jnp
import numpy as np

import jmeta


def test_one_step_maml_linear_regression_closed_form(x64):
    rng = np.random.default_rng(0)
    num_tasks, shots, queries, dim, alpha = 3, 6, 9, 2, 0.07
    xs, xq = rng.normal(size=(num_tasks, shots, dim)), rng.normal(size=(num_tasks, queries, dim))
    ys, yq = rng.normal(size=(num_tasks, shots, 1)), rng.normal(size=(num_tasks, queries, 1))
    tasks = jmeta.Task(
        jmeta.Batch(jnp.asarray(xs), jnp.asarray(ys)), jmeta.Batch(jnp.asarray(xq), jnp.asarray(yq))
    )
    learner = jmeta.linear_learner(jax.random.key(0), in_features=dim)
    learner = learner._replace(
        params=jax.tree_util.tree_map(
            lambda p: jnp.asarray(rng.normal(size=p.shape)), learner.params
        )
    )
    meta_learner = jmeta.make_meta_learner(
        learner, jmeta.MetaLearnerConfig(inner_lr=alpha, inner_rate="scalar")
    )
    meta_params = meta_learner.init()
    grads, _ = meta_learner.meta_grad(meta_params, tasks)

    # theta = [w; b]; support loss mean((X theta - y)^2) has gradient A theta - c with
    # A = 2/n X^T X and c = 2/n X^T y; theta' = theta - alpha (A_s theta - c_s), and the
    # meta-gradient is (I - alpha A_s) (A_q theta' - c_q), averaged over tasks.
    params = meta_params.learners[0]["head"]
    theta = np.concatenate([np.asarray(params["kernel"])[:, 0], np.asarray(params["bias"])])
    expected_theta, expected_log_alpha = np.zeros_like(theta), 0.0
    for t in range(num_tasks):
        design_s = np.hstack([xs[t], np.ones((shots, 1))])
        design_q = np.hstack([xq[t], np.ones((queries, 1))])
        a_s, c_s = 2 / shots * design_s.T @ design_s, 2 / shots * design_s.T @ ys[t, :, 0]
        a_q, c_q = 2 / queries * design_q.T @ design_q, 2 / queries * design_q.T @ yq[t, :, 0]
        inner_grad = a_s @ theta - c_s
        adapted = theta - alpha * inner_grad
        outer = a_q @ adapted - c_q
        expected_theta += (np.eye(dim + 1) - alpha * a_s) @ outer / num_tasks
        expected_log_alpha += (
            -alpha * outer @ inner_grad / num_tasks
        )  # d/d(log alpha) = alpha d/d(alpha)

    head = grads.learners[0]["head"]
    got = np.concatenate([np.asarray(head["kernel"])[:, 0], np.asarray(head["bias"])])
    np.testing.assert_allclose(got, expected_theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(grads.log_inner_lr[0]), expected_log_alpha, rtol=1e-10)
