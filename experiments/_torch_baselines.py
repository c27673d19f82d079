"""The PyTorch baselines of the benchmarks: learn2learn-style loops and learn2learn's own MAML.

* ``sinusoid_maml_loop`` (``bench-core``) and ``conv4_maml_loop`` (``bench-fewshot``): what
  learn2learn's ``MAML.clone().adapt()`` does, written out in plain PyTorch: a Python loop
  over tasks with ``torch.autograd.grad(create_graph=True)``.
* ``learn2learn_conv4_maml``: learn2learn's own ``MAML`` class on the conv4 workload,
  loaded by ``load_maml``.

PyTorch is not a dependency of jmeta: without it every baseline is ``None``.

learn2learn's own ``MAML`` class, installed or from its unpacked source: learn2learn 0.2.0
does not install on Python 3.11 (the Cython output it ships includes ``longintrepr.h``),
and importing the package runs ``learn2learn/__init__.py``, which pulls in torchvision,
gym and those extensions. Its MAML is pure Python, in ``algorithms/maml.py``,
``algorithms/base_learner.py`` and ``utils/__init__.py``; given the source folder (the
unpacked sdist: ``pip download --no-deps --no-build-isolation learn2learn==0.2.0``),
``load_maml`` loads exactly those files under their own module names, without the package
``__init__`` files, so the benchmark times learn2learn's code unchanged.
"""

from __future__ import annotations

import importlib
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np


def load_maml(source: str = "") -> type | None:
    """learn2learn's ``MAML`` class, or None when ``source`` is empty and no installed one imports.

    Args:
      source: a learn2learn source folder: the unpacked sdist, or its ``learn2learn``
        package folder. Empty: ``learn2learn.algorithms.MAML`` of an installed package.
    """
    if not source:
        try:
            from learn2learn.algorithms import MAML
        except (
            ImportError,
            OSError,
            RuntimeError,
        ):  # absent, or its torchvision / extensions broken
            return None
        return MAML
    root = Path(source).expanduser()
    package = root / "learn2learn" if (root / "learn2learn" / "algorithms").is_dir() else root
    if (
        not (package / "algorithms" / "maml.py").is_file()
        or not (package / "utils" / "__init__.py").is_file()
    ):
        raise ValueError(
            "learn2learn must be a learn2learn source folder holding "
            "learn2learn/algorithms/maml.py "
            f"and learn2learn/utils/__init__.py (the unpacked sdist), got {source!r}"
        )
    loaded = sys.modules.get("learn2learn")
    if loaded is not None and list(getattr(loaded, "__path__", [])) != [str(package)]:
        raise ValueError(
            f"learn2learn is already imported from {list(getattr(loaded, '__path__', []))}; "
            f"cannot load it again from {str(package)!r} in this process"
        )
    # Package stubs whose __path__ points into the source: submodules import from there,
    # while the package __init__ files (torchvision, gym, Cython extensions) never run.
    for name, path in (
        ("learn2learn", package),
        ("learn2learn.algorithms", package / "algorithms"),
    ):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(path)]
            sys.modules[name] = stub
    return importlib.import_module("learn2learn.algorithms.maml").MAML


def _episode(torch, config, device: str):
    """One random episode as PyTorch tensors: support images and labels, query images and labels."""
    size = config.image_size
    return (
        torch.randn(config.ways * config.shots, 1, size, size, device=device),
        torch.arange(config.ways, device=device).repeat_interleave(config.shots),
        torch.randn(config.ways * config.queries, 1, size, size, device=device),
        torch.arange(config.ways, device=device).repeat_interleave(config.queries),
    )


def conv4_loop(config, build: Callable) -> tuple[Callable[[], None], dict] | None:
    """A PyTorch MAML baseline on conv4: a call that runs one meta-step (and waits for it) and
    a description, or None without PyTorch.

    ``build(torch, model)`` returns ``(query_loss, trainable)``: ``query_loss(support,
    support_y, query, query_y)`` adapts to one episode's support set and gives the query
    loss; ``trainable`` is the module whose parameters Adam updates. A meta-step draws a new
    episode per task and backpropagates each query loss over the meta-batch. It runs on CUDA
    when JAX runs on a GPU (and PyTorch sees one), else on the CPU.
    """
    try:
        import torch
    except ImportError:
        return None
    from torch import nn

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
    torch.manual_seed(config.seed)
    layers = []
    channels = 1
    for _ in range(4):
        layers += [
            nn.Conv2d(channels, config.filters, 3, padding=1),
            nn.BatchNorm2d(config.filters, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels = config.filters
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(config.filters, config.ways)).to(device)
    query_loss, trainable = build(torch, model)
    optimizer = torch.optim.Adam(trainable.parameters(), 1e-3)

    def call():
        optimizer.zero_grad()
        for _ in range(config.meta_batch):
            (query_loss(*_episode(torch, config, device)) / config.meta_batch).backward()
        optimizer.step()
        synchronize()

    info = {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
    }
    return call, info


def conv4_maml_loop(config, num_inner_steps: int) -> tuple[Callable[[], None], dict] | None:
    """learn2learn-style conv4 MAML: a Python loop over tasks, autograd.grad(create_graph=True)."""

    def build(torch, model):
        from torch.func import functional_call

        cross_entropy = torch.nn.functional.cross_entropy
        names = [n for n, _ in model.named_parameters()]

        def query_loss(support, support_y, query, query_y):
            params = dict(model.named_parameters())
            for _ in range(num_inner_steps):
                loss = cross_entropy(functional_call(model, params, (support,)), support_y)
                grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                params = {n: p - 0.4 * g for n, p, g in zip(names, params.values(), grads)}
            return cross_entropy(functional_call(model, params, (query,)), query_y)

        return query_loss, model

    return conv4_loop(config, build)


def learn2learn_conv4_maml(
    config, num_inner_steps: int, maml_class: type
) -> tuple[Callable[[], None], dict] | None:
    """learn2learn's own MAML on the same workload: ``maml.clone()``, ``adapt`` per inner step.

    ``maml_class`` is ``learn2learn.algorithms.MAML`` (see ``load_maml``).
    """

    def build(torch, model):
        cross_entropy = torch.nn.functional.cross_entropy
        maml = maml_class(model, lr=0.4, first_order=False)

        def query_loss(support, support_y, query, query_y):
            learner = maml.clone()
            for _ in range(num_inner_steps):
                learner.adapt(cross_entropy(learner(support), support_y))
            return cross_entropy(learner(query), query_y)

        return query_loss, maml

    made = conv4_loop(config, build)
    if made is None:
        return None
    call, info = made
    return call, {**info, "learn2learn": sys.modules[maml_class.__module__].__file__}


def sinusoid_maml_loop(config) -> dict | None:
    """learn2learn-style MAML: a Python loop over tasks with
    ``autograd.grad(create_graph=True)``."""
    try:
        import torch
    except ImportError:
        return None
    from torch.func import functional_call

    torch.manual_seed(config.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(1, 40),
        torch.nn.ReLU(),
        torch.nn.Linear(40, 40),
        torch.nn.ReLU(),
        torch.nn.Linear(40, 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(config.seed)
    names = [name for name, _ in model.named_parameters()]

    def meta_step(meta_batch):
        optimizer.zero_grad()
        for _ in range(meta_batch):
            amplitude, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
            x = torch.from_numpy(
                rng.uniform(-5, 5, (config.shots + config.queries, 1)).astype(np.float32)
            )
            y = amplitude * torch.sin(x - phase)
            params = list(model.parameters())
            support_loss = torch.nn.functional.mse_loss(model(x[: config.shots]), y[: config.shots])
            grads = torch.autograd.grad(support_loss, params, create_graph=True)
            adapted = {n: p - config.inner_lr * g for n, p, g in zip(names, params, grads)}
            query = functional_call(model, adapted, (x[config.shots :],))
            (torch.nn.functional.mse_loss(query, y[config.shots :]) / meta_batch).backward()
        optimizer.step()

    meta_batch = min(config.torch_tasks, config.baseline_meta_batch)
    meta_step(4)
    start = time.perf_counter()
    steps = max(1, config.torch_tasks // meta_batch)
    for _ in range(steps):
        meta_step(meta_batch)
    seconds = (time.perf_counter() - start) / steps
    return {
        "meta_batch": meta_batch,
        "meta_steps_per_second": 1 / seconds,
        "tasks_per_second": meta_batch / seconds,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
