"""The unsupervised meta-learner: pseudo-labelled tasks from clusters, meta-training, self-training.

::

    X (no labels) -> PCA (or t-SNE) -> P k-means partitions (CACTUs) -> pseudo-labelled tasks
         ^                                                                     |
         |           make_meta_step (protonet, MAML, FOMAML, Meta-SGD, ANIL, Reptile)
         |                                                                     v
    self-training: re-cluster the learned features, learned temperature, confident labels

Round 0 is CACTUs (Hsu, Levine & Finn 2019) on the projection. Every later round embeds all
points with the meta-trained network, re-clusters there (``self_training``), keeps the labels
the learned temperature makes confident and meta-trains on tasks rebuilt from them. The
pseudo-tasks enter the core's ``make_meta_step`` as an ordinary ``key -> Task`` sampler, so
every algorithm of the core trains on them unchanged.

A round's sampler closes over its partitions, whose padded width changes with the cluster
sizes, so each round compiles its step once (a few seconds for conv4) rather than padding
every round to the worst case.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmeta.algorithms import ALGORITHMS, algorithm_config
from jmeta.evaluate import evaluate
from jmeta.execution import Execution
from jmeta.models import Learner, conv4_learner, mlp_learner, with_linear_head
from jmeta.objective import make_meta_learner
from jmeta.outer import MetaState, default_optimizer, make_meta_step
from jmeta.protonet import make_protonet
from jmeta.sharding import check_divides, check_mesh
from jmeta.tasks.base import Batch, Task, sample_tasks, validate_tasks
from jmeta.training import fit as fit_meta_steps
from jmeta.unsupervised.distances import map_row_chunks
from jmeta.unsupervised.pca import pca, pca_transform
from jmeta.unsupervised.self_training import centres_from_labels, self_train_partition
from jmeta.unsupervised.tasks import Partitions, cactus_partitions, make_pseudo_task_sampler
from jmeta.validation import (
    check_choice,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
)

PROJECTIONS = ("pca", "tsne")
UNSUPERVISED_ALGORITHMS = ("protonet",) + tuple(ALGORITHMS)


def _check_fraction(name: str, value: Any, *, inclusive_high: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"{name} must be a number in [0, 1{']' if inclusive_high else ')'}, got {value!r}"
        )
    value = float(value)
    if not (0.0 <= value <= 1.0) or (value == 1.0 and not inclusive_high):
        raise ValueError(f"{name} must be in [0, 1{']' if inclusive_high else ')'}, got {value!r}")
    return value


def as_model_inputs(x: Any, name: str = "X") -> np.ndarray:
    """``x`` as float32 model inputs: ``(n, d)`` features or ``(n, H, W, C)`` images
    (``(n, H, W)`` gains a channel axis); refused if empty, not numeric or not finite."""
    try:
        array = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim not in (2, 4) or array.shape[0] == 0 or array.size == 0:
        raise ValueError(
            f"{name} must be (n, features), (n, height, width) or (n, height, width, channels) "
            f"with n > 0, got shape {np.shape(x)}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"{name} contains NaN or inf at {int(np.sum(~np.isfinite(array)))} entries; expected "
            "finite values"
        )
    return array


def default_learner(key: jax.Array, sample: np.ndarray) -> Learner:
    """conv4 with stride-2 convolutions (an embedding, ``ways=0``) for images; a 256-64 MLP for
    features."""
    if sample.ndim == 4:
        return conv4_learner(key, sample.shape[1:], ways=0, strided=True)
    return mlp_learner(key, sample.shape[1], hidden=(256,), out_features=64, name="mlp")


class UnsupervisedMetaLearner:
    """Meta-learns from unlabelled data, then adapts to labelled few-shot tasks.

    ``fit(X)`` runs round 0 (CACTUs: PCA, ``n_partitions`` k-means partitions,
    pseudo-labelled ``ways``-way ``shots``-shot tasks, ``steps_per_round`` meta-steps) and up
    to ``rounds - 1`` self-training rounds (see ``jmeta.unsupervised.self_training``).

    Args:
      learner: the network, a ``jmeta.Learner`` that maps inputs to features (an embedding,
        such as ``conv4_learner(key, shape, ways=0)``); ``None`` picks ``default_learner``.
        Algorithms other than ``"protonet"`` add a linear head of ``ways`` outputs.
      algorithm: ``"protonet"`` or a ``jmeta.algorithms`` name (``"maml"``, ``"fomaml"``,
        ``"metasgd"``, ``"anil"``, ``"reptile"``, ...).
      projection: ``"pca"`` (jmeta's jitted PCA, not whitened: whitening cost MNIST nearest
        neighbour 16 points) or ``"tsne"`` (scikit-learn's, transductive: it embeds only the
        points it is fitted on; ``n_components`` at most 3).
      n_components: dimensions of the projection.
      n_clusters: k of every k-means; ``None`` is ``max(2 * ways, n // 20)``: about one
        cluster per 20 points, Omniglot's drawings per character.
      n_partitions: CACTUs' P.
      ways, shots, queries: the pseudo-labelled training tasks (and the temperature's).
      rounds: the most rounds (1 = CACTUs alone).
      steps_per_round: meta-training steps per round.
      meta_batch: tasks per meta-step.
      outer_lr: Adam's learning rate.
      num_inner_steps, inner_lr: inner loop of the MAML family (ignored by protonet).
      threshold: the least ``softmax(logits / T)`` confidence that keeps a pseudo-label.
      change_tol: stop when fewer than this fraction of partition 0's labels changed.
      nmi_tol: stop when the NMI between successive partitions 0 exceeds this.
      max_shift: translate every training image by up to this many pixels
        (``jmeta.unsupervised.tasks.make_pseudo_task_sampler``); ``None`` is ``side / 14``
        rounded, at least 1, for images (2 at 28x28) and 0 for features. Without it the
        network learns the pixel layout PCA clustered on, and self-training only confirms it
        (the README has the numbers).
      seed: every key derives from it: same seed, same result.
      progress: show progress bars.
      log_every: meta-steps per jitted chunk (and per progress update).
      mesh: a one-axis ``jax.sharding.Mesh`` (``jmeta.task_mesh(n)``): meta-batches, k-means
        and PCA are split over its devices (``meta_batch`` a multiple of its size). On a
        mesh PCA always uses its exact covariance solver.

    Attributes (after ``fit``):
      meta_params_: the meta-trained ``MetaParams``.
      partitions_: the last round's ``Partitions``.
      pseudo_labels_: ``(n,)`` partition 0's labels in the last round (``-1``: rejected).
      history_: one dict per round (see ``fit``).
      projection_: the ``PCAResult`` of the projection (``None`` for t-SNE).
      shift_: the ``max_shift`` used.
      learner_: the embedding ``Learner`` (``learner`` or the default one) at its initial
        parameters; ``learner_.apply_fn(body, x)`` embeds with meta-trained ones.

    Example::

      model = UnsupervisedMetaLearner(ways=5, shots=1, rounds=3).fit(images)
      adapted = model.adapt(support_x, support_y)
      predicted = model.predict(query_x, adapted)
    """

    def __init__(
        self,
        learner: Learner | None = None,
        algorithm: str = "protonet",
        projection: str = "pca",
        n_components: int = 32,
        n_clusters: int | None = None,
        n_partitions: int = 8,
        ways: int = 5,
        shots: int = 1,
        queries: int = 5,
        rounds: int = 4,
        steps_per_round: int = 600,
        meta_batch: int = 4,
        outer_lr: float = 1e-3,
        num_inner_steps: int = 1,
        inner_lr: float = 0.4,
        threshold: float = 0.1,
        change_tol: float = 0.01,
        nmi_tol: float = 0.99,
        max_shift: int | None = None,
        seed: int = 0,
        progress: bool = True,
        log_every: int = 50,
        mesh: Any = None,
    ):
        self.learner = learner
        self.algorithm = algorithm
        self.projection = projection
        self.n_components = n_components
        self.n_clusters = n_clusters
        self.n_partitions = n_partitions
        self.ways = ways
        self.shots = shots
        self.queries = queries
        self.rounds = rounds
        self.steps_per_round = steps_per_round
        self.meta_batch = meta_batch
        self.outer_lr = outer_lr
        self.num_inner_steps = num_inner_steps
        self.inner_lr = inner_lr
        self.threshold = threshold
        self.change_tol = change_tol
        self.nmi_tol = nmi_tol
        self.max_shift = max_shift
        self.seed = seed
        self.progress = progress
        self.log_every = log_every
        self.mesh = mesh

    # ---- checks ---------------------------------------------------------------------

    def _check_params(self, num_points: int) -> int:
        """Every field checked before any work; returns the number of clusters."""
        check_choice("algorithm", self.algorithm, UNSUPERVISED_ALGORITHMS)
        check_choice("projection", self.projection, PROJECTIONS)
        for name in (
            "n_components",
            "n_partitions",
            "ways",
            "shots",
            "queries",
            "rounds",
            "steps_per_round",
            "meta_batch",
            "num_inner_steps",
            "log_every",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("outer_lr", "inner_lr"):
            check_positive_float(name, getattr(self, name))
        _check_fraction("threshold", self.threshold, inclusive_high=False)
        _check_fraction("change_tol", self.change_tol, inclusive_high=True)
        _check_fraction("nmi_tol", self.nmi_tol, inclusive_high=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.learner is not None and not isinstance(self.learner, Learner):
            raise TypeError(
                f"learner must be a jmeta.Learner or None, got {type(self.learner).__name__}"
            )
        if self.max_shift is not None:
            check_non_negative_int("max_shift", self.max_shift)
            if self.max_shift and len(self._feature_shape) != 3:
                raise ValueError(
                    f"max_shift = {self.max_shift} translates images; X holds feature vectors"
                )
        if self.ways < 2:
            raise ValueError(f"ways must be at least 2, got {self.ways}")
        if self.mesh is not None:
            check_mesh(self.mesh)
            check_divides("meta_batch", self.meta_batch, self.mesh)
        if self.projection == "tsne" and self.n_components > 3:
            raise ValueError(
                f"projection='tsne' embeds into at most 3 dimensions, got n_components = "
                f"{self.n_components}"
            )
        per_task = self.ways * (self.shots + self.queries)
        if num_points < per_task:
            raise ValueError(
                f"X has {num_points} points but one task needs ways * (shots + queries) = "
                f"{self.ways} * ({self.shots} + {self.queries}) = {per_task}"
            )
        clusters = (
            self.n_clusters if self.n_clusters is not None else max(2 * self.ways, num_points // 20)
        )
        check_positive_int("n_clusters", clusters)
        if clusters < self.ways:
            raise ValueError(
                f"n_clusters = {clusters} is below ways = {self.ways}: a task needs ways distinct "
                "clusters"
            )
        if clusters * (self.shots + self.queries) > num_points and self.n_clusters is not None:
            raise ValueError(
                f"n_clusters = {clusters} clusters of shots + queries = "
                f"{self.shots + self.queries} points need "
                f"{clusters * (self.shots + self.queries)} points, X has {num_points}"
            )
        if self.n_components > int(np.prod(self._feature_shape)):
            raise ValueError(
                f"n_components = {self.n_components} exceeds the "
                f"{int(np.prod(self._feature_shape))} input features"
            )
        return int(clusters)

    # ---- building blocks ------------------------------------------------------------

    def _project(self, flat: np.ndarray):
        if self.projection == "pca":
            result = pca(flat, self.n_components, key=self.seed, mesh=self.mesh)
            return result, np.asarray(pca_transform(result, jnp.asarray(flat)))
        from sklearn.manifold import TSNE

        return None, TSNE(self.n_components, random_state=self.seed, init="pca").fit_transform(
            flat
        ).astype(np.float32)

    def _build(self, key: jax.Array, sample: np.ndarray):
        """``(meta_learner, embedding learner, body(meta_params) -> embedding params)``."""
        embedding = self.learner if self.learner is not None else default_learner(key, sample)
        if self.algorithm == "protonet":
            return (
                make_protonet(embedding, self.ways),
                embedding,
                lambda meta_params: meta_params.learners[0],
            )
        learner = with_linear_head(embedding, jnp.asarray(sample[:2]), self.ways)
        config = algorithm_config(
            self.algorithm, loss="ce", num_inner_steps=self.num_inner_steps, inner_lr=self.inner_lr
        )
        # conv4's several inner steps compile faster in one scan (jmeta.execution).
        return (
            make_meta_learner(learner, config, Execution(peel_first_step=False)),
            embedding,
            lambda meta_params: meta_params.learners[0]["body"],
        )

    def _make_embed(self):
        embedding, body = self.learner_, self._body

        @jax.jit
        def embed(meta_params, x):
            return map_row_chunks(lambda rows: embedding.apply_fn(body(meta_params), rows), x, 500)

        return embed

    def embed(self, X: Any) -> np.ndarray:
        """Features of the meta-trained network for ``X`` (same layout as ``fit``'s input)."""
        self._check_fitted()
        x = as_model_inputs(X)
        self._check_input_shape(x)
        return np.asarray(self._embed(self.meta_params_, jnp.asarray(x)))

    # ---- fit ------------------------------------------------------------------------

    def fit(self, X: Any, eval_labels: Any = None, eval_tasks: Task | None = None, *, run=None):
        """Meta-trains on ``X`` without labels; returns ``self``.

        Args:
          X: unlabelled ``(n, features)`` or images ``(n, H, W[, C])``.
          eval_labels: optional true labels ``(n,)``, used only to score the pseudo-labels
            (ARI and majority-label accuracy in ``history_``); they never reach training.
          eval_tasks: optional labelled few-shot ``Task`` batch (of points not in ``X``),
            scored after every round (``history_[r]["eval_accuracy"]``); never trained on.
          run: optional ``jmeta.runs.RunDir``: each round's meta-training checkpoints there
            (stage ``unsupervised-round-R``) and a resumed fit continues exactly.

        ``history_`` holds, per round: ``labels_changed`` (fraction of points whose partition-0
        label changed), ``mask_rate`` (fraction accepted), ``temperature``, ``nmi`` (against the
        previous round), ``meta_loss`` and ``pseudo_accuracy`` (query loss and accuracy on
        fresh pseudo-tasks after training), ``ari`` / ``label_accuracy`` (with
        ``eval_labels``), ``eval_accuracy`` (with ``eval_tasks``) and seconds spent in
        ``embed_s``, ``cluster_s``, ``train_s``.
        """
        x = as_model_inputs(X)
        self._feature_shape = x.shape[1:]
        num_clusters = self._check_params(x.shape[0])
        self.shift_ = (
            self.max_shift
            if self.max_shift is not None
            else (max(1, round(min(x.shape[1:3]) / 14)) if x.ndim == 4 else 0)
        )
        if eval_labels is not None:
            eval_labels = np.asarray(eval_labels)
            if eval_labels.shape != (x.shape[0],):
                raise ValueError(
                    f"eval_labels must have shape ({x.shape[0]},), one label per point, got "
                    f"{eval_labels.shape}"
                )
        if eval_tasks is not None:
            validate_tasks(eval_tasks)
            if np.shape(eval_tasks.support.x)[2:] != x.shape[1:]:
                raise ValueError(
                    f"eval_tasks hold examples of shape {np.shape(eval_tasks.support.x)[2:]} "
                    f"but X's are {x.shape[1:]}"
                )
        key = jax.random.key(self.seed)
        partition_key, model_key, train_key, round_key, score_key = jax.random.split(key, 5)
        self._meta_learner, self.learner_, self._body = self._build(model_key, x)
        self._embed = self._make_embed()
        self._protonets = {}
        data = jnp.asarray(x)
        min_size = self.shots + self.queries

        started = time.perf_counter()
        self.projection_, projected = self._project(x.reshape(x.shape[0], -1))
        partitions, _ = cactus_partitions(
            partition_key,
            projected,
            num_clusters,
            self.n_partitions,
            min_size,
            self.ways,
            mesh=self.mesh,
        )
        cluster_s = time.perf_counter() - started
        meta_params = self._meta_learner.init()
        opt_state, step = None, 0
        self.history_ = []
        previous = None
        for round_index in range(self.rounds):
            record = {"round": round_index, "embed_s": 0.0}
            if round_index > 0:
                started = time.perf_counter()
                features = self._embed(meta_params, data)
                features.block_until_ready()
                record["embed_s"] = time.perf_counter() - started
                started = time.perf_counter()
                partitions, rounds = self._self_train(
                    jax.random.fold_in(round_key, round_index), features, partitions, num_clusters
                )
                cluster_s = time.perf_counter() - started
                record["temperature"] = float(np.exp(rounds[0].log_temperature))
            labels = np.asarray(partitions.labels[0])
            record["cluster_s"] = cluster_s
            record["mask_rate"] = float(np.mean(labels >= 0))
            if previous is not None:
                record["labels_changed"] = float(np.mean(labels != previous))
                record["nmi"] = _nmi(previous, labels)
            if eval_labels is not None:
                record.update(_label_scores(labels, eval_labels))
            if previous is not None and (
                record["labels_changed"] < self.change_tol or record["nmi"] > self.nmi_tol
            ):
                record["stopped"] = (
                    "labels_changed" if record["labels_changed"] < self.change_tol else "nmi"
                )
                self.history_.append(record)
                break
            started = time.perf_counter()
            meta_params, opt_state, step = self._train(
                partitions, data, meta_params, opt_state, step, train_key, run, round_index
            )
            record["train_s"] = time.perf_counter() - started
            record.update(
                self._pseudo_task_scores(
                    jax.random.fold_in(score_key, round_index), partitions, data, meta_params
                )
            )
            self.meta_params_ = meta_params
            if eval_tasks is not None:
                record["eval_accuracy"] = float(np.mean(self.score_tasks(eval_tasks)))
            self.history_.append(record)
            previous = labels
        self.meta_params_ = meta_params
        self.partitions_ = partitions
        self.pseudo_labels_ = np.asarray(partitions.labels[0])
        return self

    def _train(
        self, partitions: Partitions, data, meta_params, opt_state, step, key, run, round_index
    ):
        sampler = make_pseudo_task_sampler(
            data, partitions, self.ways, self.shots, self.queries, max_shift=self.shift_
        )
        meta_step = make_meta_step(
            self._meta_learner,
            sampler,
            self.meta_batch,
            default_optimizer(self.outer_lr),
            self.mesh,
            # An annealed algorithm (MAML++) anneals over every round's steps together.
            num_steps=self.rounds * self.steps_per_round,
        )
        state = meta_step.init(meta_params)
        if opt_state is not None:
            # The optimizer carries over between rounds: only the tasks change.
            state = MetaState(state.meta_params, opt_state, jnp.asarray(step, jnp.int32))
        total = step + self.steps_per_round
        state = fit_meta_steps(
            meta_step,
            state,
            key,
            total,
            log_every=min(self.log_every, self.steps_per_round),
            checkpoint_every=self._checkpoint_every(),
            run=run,
            stage=f"unsupervised-round-{round_index}",
            progress=self.progress,
        )
        return state.meta_params, state.opt_state, total

    def _checkpoint_every(self) -> int:
        log_every = min(self.log_every, self.steps_per_round)
        return log_every * max(1, self.steps_per_round // log_every)

    def _self_train(self, key, features, partitions: Partitions, num_clusters: int):
        """Partitions of the learned features: partition 0 continues the previous round's
        (its centres recomputed in the new features), the others are CACTUs-rescaled."""
        fallback = features[
            jax.random.choice(
                jax.random.fold_in(key, 0), features.shape[0], (num_clusters,), replace=False
            )
        ]
        init = centres_from_labels(features, partitions.labels[0], fallback)
        rounds = []

        def cluster(cluster_key, scaled, partition):
            result = self_train_partition(
                cluster_key,
                scaled,
                num_clusters,
                self.ways,
                self.shots,
                self.queries,
                self.threshold,
                init=init if partition == 0 else "k-means++",
                mesh=self.mesh,
            )
            rounds.append(result)
            return result.labels

        new_partitions, _ = cactus_partitions(
            key,
            features,
            num_clusters,
            self.n_partitions,
            self.shots + self.queries,
            self.ways,
            cluster=cluster,
        )
        return new_partitions, rounds

    def _pseudo_task_scores(self, key, partitions, data, meta_params) -> dict:
        sampler = make_pseudo_task_sampler(data, partitions, self.ways, self.shots, self.queries)
        tasks = sample_tasks(sampler, key, 64)
        metrics = evaluate(
            self._meta_learner_for(self.ways), meta_params, tasks, self.num_inner_steps, chunk=0
        )
        # Means taken by XLA (jnp), as this history has always been written: NumPy's pairwise
        # float32 sum differs in the last bits.
        return {
            "meta_loss": float(jnp.mean(metrics["loss"][:, -1])),
            "pseudo_accuracy": float(jnp.mean(metrics["accuracy"][:, -1])),
        }

    # ---- adapting to labelled tasks ---------------------------------------------------

    def _check_fitted(self):
        if not hasattr(self, "meta_params_"):
            raise RuntimeError("this UnsupervisedMetaLearner is not fitted yet; call fit(X) first")

    def _check_input_shape(self, x: np.ndarray, name: str = "X"):
        if x.shape[1:] != tuple(self._feature_shape):
            raise ValueError(
                f"{name} has per-example shape {x.shape[1:]} but the model was fitted on "
                f"{tuple(self._feature_shape)}"
            )

    def _meta_learner_for(self, ways: int):
        if self.algorithm == "protonet":
            if ways == self.ways:
                return self._meta_learner
            # One per number of ways, so that jmeta.evaluate's cached evaluator is found again.
            return self._protonets.setdefault(ways, make_protonet(self.learner_, ways))
        if ways != self.ways:
            raise ValueError(
                f"algorithm={self.algorithm!r} has a head of ways = {self.ways} outputs; got a "
                "task of "
                f"{ways} classes (prototypical networks take any number)"
            )
        return self._meta_learner

    def adapt(self, support_x: Any, support_y: Any):
        """Adapts to one labelled task: labels ``0..ways-1``. Returns what ``predict`` takes."""
        self._check_fitted()
        x = as_model_inputs(support_x, "support_x")
        self._check_input_shape(x, "support_x")
        y = np.asarray(support_y)
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise ValueError(
                f"support_y must be {x.shape[0]} integer labels, got shape {y.shape} dtype "
                f"{y.dtype}"
            )
        ways = int(y.max()) + 1
        if y.min() < 0 or set(np.unique(y)) != set(range(ways)):
            raise ValueError(
                "support_y must use every label 0..ways-1, got "
                f"{sorted(set(np.unique(y).tolist()))}"
            )
        meta_learner = self._meta_learner_for(ways)
        adapted, _ = meta_learner.adapt(
            self.meta_params_,
            Batch(jnp.asarray(x), jnp.asarray(y, jnp.int32)),
            self.num_inner_steps,
        )
        return ways, adapted

    def predict(self, query_x: Any, adapted) -> np.ndarray:
        """Predicted labels ``0..ways-1`` for ``query_x`` after ``adapt``."""
        self._check_fitted()
        x = as_model_inputs(query_x, "query_x")
        self._check_input_shape(x, "query_x")
        ways, state = adapted
        outputs = self._meta_learner_for(ways).predict(self.meta_params_, state, jnp.asarray(x))
        return np.asarray(jnp.argmax(outputs, axis=-1))

    def score_tasks(self, tasks: Task, chunk: int = 100) -> np.ndarray:
        """Query accuracy of every task of a batched ``Task`` (``(num_tasks,)``), after adapting on
        its support; ways from the labels. Chunks of ``chunk`` tasks bound the memory."""
        self._check_fitted()
        validate_tasks(tasks)
        ways = int(np.max(np.asarray(tasks.support.y))) + 1
        return evaluate(
            self._meta_learner_for(ways),
            self.meta_params_,
            tasks,
            self.num_inner_steps,
            chunk=chunk,
        )["accuracy"][:, -1]

    def plot_history(self, path: str | None = None):
        """The per-round history as a figure (saved to ``path`` if given); returns the figure."""
        self._check_fitted()
        return plot_history(self.history_, path)


def _nmi(previous: np.ndarray, labels: np.ndarray) -> float:
    """NMI of two partitions on the points both label."""
    from sklearn.metrics import normalized_mutual_info_score

    both = (previous >= 0) & (labels >= 0)
    return float(normalized_mutual_info_score(previous[both], labels[both])) if both.any() else 0.0


def _label_scores(labels: np.ndarray, truth: np.ndarray) -> dict:
    """ARI and majority-label accuracy (each cluster predicts its most common true label) of the
    accepted pseudo-labels against true labels given for evaluation."""
    from sklearn.metrics import adjusted_rand_score

    accepted = labels >= 0
    if not accepted.any():
        return {"ari": 0.0, "label_accuracy": 0.0}
    pseudo, true = labels[accepted], np.unique(truth, return_inverse=True)[1][accepted]
    table = np.zeros((pseudo.max() + 1, true.max() + 1), np.int64)
    np.add.at(table, (pseudo, true), 1)
    return {
        "ari": float(adjusted_rand_score(true, pseudo)),
        "label_accuracy": float(table.max(axis=1).sum() / len(pseudo)),
    }


def plot_history(history: list[dict], path: str | None = None):
    """Per-round curves of ``UnsupervisedMetaLearner.history_``: held-out and pseudo-task
    accuracy, pseudo-label quality, labels changed / accepted, temperature."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in history]
    panels = [
        ("accuracy", ["eval_accuracy", "pseudo_accuracy"]),
        ("pseudo-labels vs truth", ["ari", "label_accuracy"]),
        ("labels", ["mask_rate", "labels_changed", "nmi"]),
        ("temperature T", ["temperature"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(r["round"], r[key]) for r in history if key in r]
            if points:
                axis.plot(*zip(*points), marker="o", label=key)
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.set_xticks(rounds)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=100)
        plt.close(figure)
    return figure
