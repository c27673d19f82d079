"""jmeta: meta-learning as pure functions of pytrees, in JAX."""

from jmeta.algorithms import ALGORITHMS
from jmeta.algorithms import algorithm_config
from jmeta.losses import cross_entropy
from jmeta.losses import mse
from jmeta.models import Learner
from jmeta.models import linear_learner
from jmeta.models import make_learner
from jmeta.models import mlp_learner
from jmeta.objective import MetaLearner
from jmeta.objective import MetaLearnerConfig
from jmeta.objective import MetaParams
from jmeta.objective import make_meta_learner
from jmeta.outer import MetaState
from jmeta.outer import MetaStep
from jmeta.outer import default_optimizer
from jmeta.outer import make_meta_step
from jmeta.strategy import strategy_weights
from jmeta.super_learner import SuperLearnerClassifier
from jmeta.super_learner import SuperLearnerRegressor
from jmeta.supervised import SupervisedMetaLearner
from jmeta.tasks import Batch
from jmeta.tasks import Task
from jmeta.tasks import make_linear_sampler
from jmeta.tasks import make_sinusoid_sampler
from jmeta.tasks import sample_tasks
from jmeta.tasks import validate_tasks

__version__ = "0.1.0"
