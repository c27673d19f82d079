"""jmeta: meta-learning as pure functions of pytrees, in JAX.

``import jmeta`` gives the path from a class-indexed array of images to an accuracy:
learners, task samplers, algorithm configs, the meta-learner, the meta-step, ``train``
and ``evaluate``. The supervised meta-learner is ``jmeta.supervised`` and the
unsupervised one ``jmeta.unsupervised``; neither is imported here (they load scikit-learn).
"""

from jmeta.algorithms import ALGORITHMS, algorithm_config
from jmeta.evaluate import evaluate, evaluation_tasks, summarise
from jmeta.execution import Execution, execution_preset
from jmeta.finetune import make_finetune
from jmeta.losses import cross_entropy, mse
from jmeta.matching import make_matching_network
from jmeta.models import (
    Learner,
    conv4_learner,
    linear_learner,
    make_learner,
    mlp_learner,
    with_linear_head,
)
from jmeta.objective import MetaLearner, MetaLearnerConfig, MetaParams, make_meta_learner
from jmeta.outer import MetaState, MetaStep, default_optimizer, make_meta_step
from jmeta.protonet import make_protonet
from jmeta.ridge import make_ridge_head
from jmeta.sharding import task_mesh
from jmeta.stats import mean_ci95
from jmeta.strategy import strategy_weights
from jmeta.tasks import (
    Batch,
    Task,
    make_batch_sampler,
    make_episode_sampler,
    make_linear_sampler,
    make_sinusoid_sampler,
    sample_tasks,
    validate_tasks,
)
from jmeta.training import fit, train

__version__ = "0.1.0"
