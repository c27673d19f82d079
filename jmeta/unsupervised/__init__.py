"""Unsupervised meta-learning and its building blocks: jitted PCA and k-means, scikit-learn
estimators over them, pseudo-labelled tasks, self-training and the unsupervised meta-learner."""

from jmeta.unsupervised.estimators import KMeans
from jmeta.unsupervised.estimators import MiniBatchKMeans
from jmeta.unsupervised.estimators import PCA
from jmeta.unsupervised.kmeans import KMeansResult
from jmeta.unsupervised.kmeans import kmeans
from jmeta.unsupervised.kmeans import kmeans_plusplus
from jmeta.unsupervised.kmeans import kmeans_predict
from jmeta.unsupervised.meta_learner import UnsupervisedMetaLearner
from jmeta.unsupervised.meta_learner import plot_history
from jmeta.unsupervised.minibatch import minibatch_kmeans
from jmeta.unsupervised.pca import PCAResult
from jmeta.unsupervised.pca import pca
from jmeta.unsupervised.pca import pca_inverse_transform
from jmeta.unsupervised.pca import pca_transform
from jmeta.unsupervised.self_training import SelfTrainingRound
from jmeta.unsupervised.self_training import confident_labels
from jmeta.unsupervised.self_training import expected_calibration_error
from jmeta.unsupervised.self_training import learn_log_temperature
from jmeta.unsupervised.self_training import self_train_partition
from jmeta.unsupervised.tasks import Partitions
from jmeta.unsupervised.tasks import cactus_partitions
from jmeta.unsupervised.tasks import cluster_members
from jmeta.unsupervised.tasks import make_partitions
from jmeta.unsupervised.tasks import make_pseudo_task_sampler
