"""The unsupervised building blocks: jitted PCA and k-means, and scikit-learn estimators over them."""

from jmeta.unsupervised.estimators import KMeans
from jmeta.unsupervised.estimators import MiniBatchKMeans
from jmeta.unsupervised.estimators import PCA
from jmeta.unsupervised.kmeans import KMeansResult
from jmeta.unsupervised.kmeans import kmeans
from jmeta.unsupervised.kmeans import kmeans_plusplus
from jmeta.unsupervised.kmeans import kmeans_predict
from jmeta.unsupervised.minibatch import minibatch_kmeans
from jmeta.unsupervised.pca import PCAResult
from jmeta.unsupervised.pca import pca
from jmeta.unsupervised.pca import pca_inverse_transform
from jmeta.unsupervised.pca import pca_transform
