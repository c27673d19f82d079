"""A figure of a few few-shot episodes: the support set, then each query with its predicted
class."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jmeta.tasks import make_episode_sampler, sample_tasks


def plot_episodes(
    predict: Callable,
    images: np.ndarray,
    path: str,
    *,
    episodes: int,
    key: jax.Array,
    title: str,
    ways: int = 5,
    queries: int = 2,
) -> None:
    """Saves ``episodes`` ``ways``-way 1-shot episodes of class-indexed ``images``;
    ``predict(task)`` returns the predicted query labels of one task. Right predictions are
    green, wrong red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sample_tasks(make_episode_sampler(images, ways, 1, queries), key, episodes)
    columns = ways * (1 + queries)
    figure, axes = plt.subplots(episodes, columns, figsize=(columns, 1.3 * episodes), squeeze=False)
    for row in range(episodes):
        task = jax.tree_util.tree_map(lambda leaf: leaf[row], tasks)
        predicted = np.asarray(predict(task))
        for column, index in enumerate(np.argsort(np.asarray(task.support.y))):
            axes[row, column].imshow(np.asarray(task.support.x[index, ..., 0]), cmap="gray_r")
            axes[row, column].set_title(f"class {int(task.support.y[index])}", fontsize=7)
        for column, index in enumerate(range(len(predicted)), start=ways):
            right = predicted[index] == int(task.query.y[index])
            axes[row, column].imshow(
                np.asarray(task.query.x[index, ..., 0]), cmap="Greens" if right else "Reds"
            )
            axes[row, column].set_title(
                f"{predicted[index]} ({'ok' if right else int(task.query.y[index])})", fontsize=7
            )
    for axis in axes.ravel():
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
