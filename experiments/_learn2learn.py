"""learn2learn's own ``MAML`` class for the benchmarks, installed or from its unpacked source.

The few-shot issue sets its speed target against learn2learn. learn2learn 0.2.0 does not
install on Python 3.11 (the Cython output it ships includes ``longintrepr.h``), and
importing the package runs ``learn2learn/__init__.py``, which pulls in torchvision, gym and
those extensions. Its MAML is pure Python, in ``algorithms/maml.py``,
``algorithms/base_learner.py`` and ``utils/__init__.py``; given the source folder (the
unpacked sdist: ``pip download --no-deps --no-build-isolation learn2learn==0.2.0``), this
loads exactly those files under their own module names, without the package ``__init__``
files, so the benchmark times learn2learn's code unchanged.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path


def load_maml(source: str = "") -> type | None:
    """learn2learn's ``MAML`` class, or None when ``source`` is empty and no installed one imports.

    Args:
      source: a learn2learn source folder: the unpacked sdist, or its ``learn2learn``
        package folder. Empty: ``learn2learn.algorithms.MAML`` of an installed package.
    """
    if not source:
        try:
            from learn2learn.algorithms import MAML
        except (ImportError, OSError, RuntimeError):  # absent, or its torchvision / extensions broken
            return None
        return MAML
    root = Path(source).expanduser()
    package = root / "learn2learn" if (root / "learn2learn" / "algorithms").is_dir() else root
    if not (package / "algorithms" / "maml.py").is_file() or not (package / "utils" / "__init__.py").is_file():
        raise ValueError(f"learn2learn must be a learn2learn source folder holding learn2learn/algorithms/maml.py "
                         f"and learn2learn/utils/__init__.py (the unpacked sdist), got {source!r}")
    loaded = sys.modules.get("learn2learn")
    if loaded is not None and list(getattr(loaded, "__path__", [])) != [str(package)]:
        raise ValueError(f"learn2learn is already imported from {list(getattr(loaded, '__path__', []))}; "
                         f"cannot load it again from {str(package)!r} in this process")
    # Package stubs whose __path__ points into the source: submodules import from there,
    # while the package __init__ files (torchvision, gym, Cython extensions) never run.
    for name, path in (("learn2learn", package), ("learn2learn.algorithms", package / "algorithms")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(path)]
            sys.modules[name] = stub
    return importlib.import_module("learn2learn.algorithms.maml").MAML
