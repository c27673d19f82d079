"""The supervised meta-learner: a learned learning strategy over base learners.

``SuperLearnerClassifier`` / ``SuperLearnerRegressor`` stack fixed scikit-learn estimators
(the Super Learner); ``SupervisedMetaLearner`` also meta-trains differentiable jmeta
learners across tasks. Imported on its own: ``import jmeta`` does not load scikit-learn.
"""

from jmeta.supervised.meta_learner import SupervisedMetaLearner
from jmeta.supervised.stacking import fit_strategy, stacked_prediction, strategy_loss
from jmeta.supervised.super_learner import (
    SuperLearnerClassifier,
    SuperLearnerRegressor,
    default_classifiers,
    default_regressors,
)
