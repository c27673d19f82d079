"""scikit-learn's "A demo of K-Means clustering on the handwritten digits data", jmeta beside
scikit-learn.

Command:  jmeta run kmeans-digits
Runtime:  about 20 seconds on a 2-core laptop CPU (most of it compiling).
Expected: the same pipeline (StandardScaler, then k-means with 10 clusters) with the same
          three initialisations: k-means++ and random (4 restarts each, random_state=0)
          and the PCA components as initial centres. jmeta's and scikit-learn's rows
          agree in inertia to about 1% and in the label metrics within their spread
          across seeds; the PCA-initialised rows, which start from the same centres, agree
          exactly. scikit-learn 1.9.1 prints k-means++ 69545 / ARI 0.469, random
          69735 / 0.574, PCA-based 69513 / 0.468.

The metrics are scikit-learn's own functions on both sides (homogeneity, completeness,
V-measure, adjusted Rand and adjusted mutual information against the true digits, and
the silhouette on 300 samples drawn with ``seed``). Fit times include jmeta's compilation
on its first fit of each shape; ``fit s (warm)`` is a second fit of the same shape.
The two libraries draw different random numbers, so only the PCA-initialised rows can
match to the digit; the random-init rows differ as much as two seeds of either do.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from sklearn import metrics
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from jmeta.runs import RunDir
from jmeta.stats import markdown_table
from jmeta.validation import check_fields

METRICS = {
    "homogeneity": metrics.homogeneity_score,
    "completeness": metrics.completeness_score,
    "v_measure": metrics.v_measure_score,
    "ari": metrics.adjusted_rand_score,
    "ami": metrics.adjusted_mutual_info_score,
}


@dataclasses.dataclass(frozen=True)
class Config:
    n_init: int = 4
    silhouette_samples: int = 300
    seed: int = 0
    plot: bool = True


def _estimators(library: str, data: np.ndarray, n_digits: int, config: Config) -> dict:
    """The example's three k-means set-ups, from ``library`` ("jmeta" or "scikit-learn")."""
    if library == "jmeta":
        from jmeta.unsupervised import PCA, KMeans
    else:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
    # The example fits its PCA on the unscaled data and uses the components as centres.
    components = PCA(n_components=n_digits).fit(data).components_
    return {
        "k-means++": KMeans(
            init="k-means++", n_clusters=n_digits, n_init=config.n_init, random_state=config.seed
        ),
        "random": KMeans(
            init="random", n_clusters=n_digits, n_init=config.n_init, random_state=config.seed
        ),
        "PCA-based": KMeans(init=components, n_clusters=n_digits, n_init=1),
    }


def _bench(estimator, data: np.ndarray, labels: np.ndarray, config: Config) -> dict:
    from sklearn.base import clone

    start = time.perf_counter()
    pipeline = make_pipeline(StandardScaler(), estimator).fit(data)
    first = time.perf_counter() - start
    start = time.perf_counter()
    make_pipeline(StandardScaler(), clone(estimator)).fit(data)
    warm = time.perf_counter() - start
    fitted = pipeline[-1]
    row = {
        "fit_seconds": first,
        "fit_seconds_warm": warm,
        "inertia": float(fitted.inertia_),
        "n_iter": int(fitted.n_iter_),
    }
    row.update({name: float(score(labels, fitted.labels_)) for name, score in METRICS.items()})
    row["silhouette"] = float(
        metrics.silhouette_score(
            data,
            fitted.labels_,
            metric="euclidean",
            sample_size=config.silhouette_samples,
            random_state=config.seed,
        )
    )
    return row


def _plot(data: np.ndarray, n_digits: int, config: Config, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.cluster import KMeans as SklearnKMeans
    from sklearn.decomposition import PCA

    from jmeta.unsupervised import KMeans

    reduced = PCA(n_components=2).fit_transform(data)
    step = 0.02 * (reduced.max() - reduced.min()) / 2
    x_min, x_max = reduced[:, 0].min() - 1, reduced[:, 0].max() + 1
    y_min, y_max = reduced[:, 1].min() - 1, reduced[:, 1].max() + 1
    xx, yy = np.meshgrid(np.arange(x_min, x_max, step), np.arange(y_min, y_max, step))
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for axis, (name, cls) in zip(axes, [("jmeta", KMeans), ("scikit-learn", SklearnKMeans)]):
        model = cls(
            init="k-means++", n_clusters=n_digits, n_init=config.n_init, random_state=config.seed
        ).fit(reduced)
        regions = model.predict(np.c_[xx.ravel(), yy.ravel()]).reshape(xx.shape)
        axis.imshow(
            regions,
            interpolation="nearest",
            extent=(xx.min(), xx.max(), yy.min(), yy.max()),
            cmap=plt.cm.Paired,
            aspect="auto",
            origin="lower",
        )
        axis.plot(reduced[:, 0], reduced[:, 1], "k.", markersize=2)
        axis.scatter(
            *model.cluster_centers_.T, marker="x", s=169, linewidths=3, color="w", zorder=10
        )
        axis.set_title(f"{name}: k-means++ on the 2-D PCA projection\n(centres as white crosses)")
        axis.set_xticks(())
        axis.set_yticks(())
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def check(config: Config) -> None:
    """Every field checked before the run folder is made or any data read."""
    check_fields(config, positive_ints=("n_init",), at_least_two=("silhouette_samples",))


def main(config: Config, run: RunDir, progress: bool = True) -> dict:
    check(config)
    data, labels = load_digits(return_X_y=True)
    n_digits = np.unique(labels).size
    estimators = {
        library: _estimators(library, data, n_digits, config)
        for library in ("jmeta", "scikit-learn")
    }
    results = {library: {} for library in estimators}
    for init in estimators["jmeta"]:
        # Rows alternate between the libraries, so a drift in this machine's speed hits both.
        for library in estimators:
            results[library][init] = _bench(estimators[library][init], data, labels, config)
            run.log(
                {
                    "stage": "bench",
                    "step": 0,
                    "library": library,
                    "init": init,
                    **results[library][init],
                }
            )
    header = [
        "init",
        "library",
        "fit s",
        "fit s (warm)",
        "inertia",
        "homo",
        "compl",
        "v-meas",
        "ARI",
        "AMI",
        "silhouette",
    ]
    rows = [
        [
            init,
            library,
            f"{r['fit_seconds']:.3f}",
            f"{r['fit_seconds_warm']:.3f}",
            f"{r['inertia']:.0f}",
            *(
                f"{r[m]:.3f}"
                for m in ("homogeneity", "completeness", "v_measure", "ari", "ami", "silhouette")
            ),
        ]
        for init in estimators["jmeta"]
        for library, r in ((lib, results[lib][init]) for lib in estimators)
    ]
    table = (
        f"K-means on scikit-learn's digits (n_digits: {n_digits}; n_samples {len(data)}, "
        f"n_features {data.shape[1]})\n\n" + markdown_table(header, rows)
    )
    with open(run.file("table.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    if config.plot:
        _plot(data, n_digits, config, run.file("clusters.png"))
    pca_rows = results["jmeta"]["PCA-based"], results["scikit-learn"]["PCA-based"]
    return {
        "results": results,
        "checks": {
            "pca_init_inertia_relative_difference": abs(
                pca_rows[0]["inertia"] / pca_rows[1]["inertia"] - 1
            ),
            "kmeanspp_inertia_ratio": results["jmeta"]["k-means++"]["inertia"]
            / results["scikit-learn"]["k-means++"]["inertia"],
        },
    }
