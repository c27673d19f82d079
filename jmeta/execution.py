"""Execution settings: how XLA schedules a meta-learner, never what it computes.

Every field here gives the same numbers whatever its value (the tests check each against
its default); what changes is speed, compile time and memory traffic on one backend or
another. They are kept apart from ``MetaLearnerConfig``, whose fields change results, so
that an experiment picks its hardware once, by a preset name, and its algorithm separately
(the way flax's example configs override a few fields per accelerator). The measurements
behind each preset are in ``experiments/results/BENCHMARK_NOTES.md``.

==============  ==========  ===============  =====  ======  ===============================
preset          task_chunk  peel_first_step  scan   conv    for
==============  ==========  ===============  =====  ======  ===============================
``"cpu"``       0           True             True   im2col  small nets on CPU (sinusoid MLP)
``"cpu-conv"``  2           False            False  im2col  conv4 on CPU (Omniglot)
``"gpu"``       0           False            True   xla     any net on a GPU
==============  ==========  ===============  =====  ======  ===============================
"""

from __future__ import annotations

import dataclasses

from jmeta.validation import check_choice, check_non_negative_int

CONV_IMPLEMENTATIONS = ("im2col", "xla")


@dataclasses.dataclass(frozen=True)
class Execution:
    """How a meta-learner runs; no field changes a value it computes.

    Attributes:
      task_chunk: ``0`` vmaps the meta-batch's tasks at once; ``k > 0`` vmaps ``k`` at a
        time and runs the chunks in sequence (``lax.map``), each differentiated inside the
        map, so a conv net's working set stays in a CPU's cache.
      peel_first_step: with several inner steps, run the first outside the ``lax.scan``
        (``jmeta.inner.peeled_scan``), where the initial weights are shared by all tasks and
        its products are single large ones; ``False`` scans every step, so XLA compiles
        one copy of the step instead of two.
      scan: ``jmeta.training.fit`` runs each logging chunk of meta-steps as one jitted
        ``lax.scan`` (no per-step Python work) or, with ``False``, one jitted call per
        step (XLA:CPU differentiates ``lax.conv`` inside a scan slowly, jax-ml/jax#12868).
      conv: how conv4 computes its 3x3 convolutions (``jmeta.models.conv4_learner``):
        ``"im2col"`` (``jmeta.ops``, one matmul with hand-written VJPs, the fast path on
        CPU) or ``"xla"`` (``lax.conv``, the plain reference, fast on a GPU).
    """

    task_chunk: int = 0
    peel_first_step: bool = True
    scan: bool = True
    conv: str = "im2col"

    def __post_init__(self):
        check_non_negative_int("task_chunk", self.task_chunk)
        for name in ("peel_first_step", "scan"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_choice("conv", self.conv, CONV_IMPLEMENTATIONS)


CPU = Execution()
CPU_CONV = Execution(task_chunk=2, peel_first_step=False, scan=False)
GPU = Execution(task_chunk=0, peel_first_step=False, scan=True, conv="xla")

PRESETS: dict[str, Execution] = {"cpu": CPU, "cpu-conv": CPU_CONV, "gpu": GPU}


def execution_preset(name: str) -> Execution:
    """The ``Execution`` of a preset name (``"cpu"``, ``"cpu-conv"`` or ``"gpu"``)."""
    check_choice("execution", name, tuple(PRESETS))
    return PRESETS[name]
