"""The usual meta-learning algorithms as settings of one ``MetaLearnerConfig``, not as code.

==========  ============================================================================
name        what differs from MAML
==========  ============================================================================
maml        (Finn et al. 2017) second-order meta-gradient, fixed inner rate
fomaml      first-order: the inner gradient is treated as a constant
maml_lr     the inner rate is one learned scalar, the *meta learning rate*
metasgd     one learned inner rate per parameter (Li et al. 2017)
lslr        one learned rate per inner step and layer (MAML++, Antoniou et al. 2019)
mamlpp      MAML++ (Antoniou et al. 2019): LSLR, the multi-step loss over the first 10%
            of training, first-order meta-gradients over the first 30%, per-step
            batch-norm weights and a cosine-annealed outer rate
imaml       implicit MAML (Rajeswaran et al. 2019): a proximal inner problem (lambda = 2)
            and its implicit meta-gradient by 5 conjugate-gradient steps; the inner rate
            is capped at 1 / (lambda + h), h the curvature from 10 Lanczos iterations
anil        only the head adapts in the inner loop (Raghu et al. 2020)
boil        only the body adapts, the head stays fixed in the inner loop (Oh et al. 2021)
reptile     update direction ``init - adapted`` (Nichol et al. 2018), no second order
==========  ============================================================================

Each named setting can be switched on its own (``algorithm_config("mamlpp",
per_step_norm=False)``, ``MetaLearnerConfig(multi_step_loss=0.1)``). MAML++'s fractions
follow the paper's schedule (the multi-step loss annealed over its first epochs,
first-order gradients early on); its released configs anneal the multi-step loss over 8% of
training and leave derivative-order annealing off, so both are settings to tune.
"""

from __future__ import annotations

import dataclasses

from jmeta.objective import MetaLearnerConfig

ALGORITHMS: dict[str, dict] = {
    "maml": {},
    "fomaml": {"meta_gradient": "first_order"},
    "maml_lr": {"inner_rate": "scalar"},
    "metasgd": {"inner_rate": "per_param"},
    "lslr": {"inner_rate": "per_step_layer"},
    "mamlpp": {
        "inner_rate": "per_step_layer",
        "multi_step_loss": 0.1,
        "first_order_until": 0.3,
        "per_step_norm": True,
        "outer_schedule": "cosine",
    },
    "imaml": {"meta_gradient": "implicit", "proximal": 2.0, "cg_steps": 5, "curvature_steps": 10},
    "anil": {"adapt": "head"},
    "boil": {"adapt": "body"},
    "reptile": {"meta_gradient": "reptile"},
}


def algorithm_config(name: str, **overrides) -> MetaLearnerConfig:
    """The ``MetaLearnerConfig`` of a named algorithm, with any field overridden.

    Raises ``ValueError`` for an unknown algorithm or field, listing the known ones.
    """
    if name not in ALGORITHMS:
        raise ValueError(
            f"unknown algorithm {name!r}; expected one of {', '.join(map(repr, ALGORITHMS))}"
        )
    fields = {f.name for f in dataclasses.fields(MetaLearnerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown MetaLearnerConfig field(s) {unknown}; expected some of {sorted(fields)}"
        )
    return MetaLearnerConfig(**{**ALGORITHMS[name], **overrides})


def joint_training(meta_learner):
    """The "pretrained on all tasks" baseline of the MAML paper, as a meta-learner.

    Its ``meta_grad`` is the gradient of the query loss of the *unadapted* initial weights,
    averaged over tasks: plain multi-task regression. Evaluation still fine-tunes with the
    meta-learner's inner steps, which is how the paper scores this baseline.
    """
    import jax
    import jax.numpy as jnp

    from jmeta.losses import get_loss

    loss_fn = get_loss(meta_learner.config.loss)

    def pooled_loss(meta_params, tasks):
        predict = lambda x: meta_learner.predict(meta_params, meta_params.learners, x)
        loss = jnp.mean(jax.vmap(lambda task: loss_fn(predict(task.query.x), task.query.y))(tasks))
        return loss, {"post/loss": loss}

    def meta_grad(meta_params, tasks):
        (_, metrics), grads = jax.value_and_grad(pooled_loss, has_aux=True)(meta_params, tasks)
        return grads, metrics

    return meta_learner._replace(meta_grad=meta_grad)
