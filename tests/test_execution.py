"""Execution settings change how XLA runs a meta-learner, never what it computes."""

import chex
import jax
import pytest

import jmeta
from jmeta.execution import CPU, CPU_CONV, GPU, Execution, execution_preset
from jmeta.training import fit


def test_presets_are_named_and_a_bad_name_or_field_is_refused():
    assert execution_preset("cpu") == CPU and execution_preset("cpu-conv") == CPU_CONV
    assert execution_preset("gpu") == GPU and GPU.conv == "xla" and GPU.task_chunk == 0
    with pytest.raises(
        ValueError, match="unknown execution 'tpu'; expected one of 'cpu', 'cpu-conv', 'gpu'"
    ):
        execution_preset("tpu")
    with pytest.raises(ValueError, match="unknown conv 'cudnn'"):
        Execution(conv="cudnn")
    with pytest.raises(ValueError, match="scan must be True or False, got 1"):
        Execution(scan=1)


def test_every_preset_trains_to_the_same_meta_parameters():
    sampler = jmeta.make_sinusoid_sampler(shots=5, queries=5)
    learner = jmeta.mlp_learner(jax.random.key(0), hidden=(8,))
    finals = []
    for execution in (CPU, CPU_CONV, GPU):
        meta_learner = jmeta.make_meta_learner(
            learner, jmeta.algorithm_config("maml", num_inner_steps=2), execution
        )
        meta_step = jmeta.make_meta_step(meta_learner, sampler, 4)
        state = fit(
            meta_step,
            meta_step.init(meta_learner.init()),
            jax.random.key(1),
            6,
            log_every=3,
            checkpoint_every=3,
            progress=False,
        )
        assert meta_step.execution == execution  # fit takes scan from the meta-learner
        finals.append(state.meta_params)
    chex.assert_trees_all_close(finals[0], finals[1], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(finals[0], finals[2], rtol=1e-5, atol=1e-6)
