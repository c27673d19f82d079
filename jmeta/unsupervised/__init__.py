"""Unsupervised meta-learning and its building blocks: jitted PCA and k-means, scikit-learn
estimators over them, pseudo-labelled tasks, self-training and the unsupervised meta-learner."""

from jmeta.unsupervised.estimators import PCA, KMeans, MiniBatchKMeans
from jmeta.unsupervised.kmeans import KMeansResult, kmeans, kmeans_plusplus, kmeans_predict
from jmeta.unsupervised.meta_learner import UnsupervisedMetaLearner, plot_history
from jmeta.unsupervised.minibatch import minibatch_kmeans
from jmeta.unsupervised.pca import PCAResult, pca, pca_inverse_transform, pca_transform
from jmeta.unsupervised.self_training import (
    SelfTrainingRound,
    confident_labels,
    expected_calibration_error,
    learn_log_temperature,
    self_train_partition,
)
from jmeta.unsupervised.tasks import (
    Partitions,
    cactus_partitions,
    cluster_members,
    make_partitions,
    make_pseudo_task_sampler,
)
