"""Atomic pytree checkpoints: ``.npz`` of the leaves, restored into a template's structure.

A file is written next to its target and moved over it with ``os.replace``, which is
atomic on POSIX: a crash leaves the previous checkpoint or the new one, never half of
one. No pickle is involved, so loading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import numpy as np


def _new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under this process's umask."""
    try:  # Linux reports the umask without changing it
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere the umask is read by setting it: set a stricter one for that instant, so a
    # file another thread creates meanwhile is never more open than intended.
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


def temp_file_beside(path: str | os.PathLike, prefix: str) -> tuple[int, str]:
    """An open temporary file in ``path``'s folder (made if missing), to be moved over ``path``.

    ``mkstemp`` makes its files private (0600); this one gets the mode ``open()`` would
    give, so results, checkpoints and downloads stay readable to whoever may read the folder.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=os.path.basename(path))
    os.fchmod(fd, _new_file_mode())
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    fd, tmp = temp_file_beside(path, ".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Writes ``value`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def save_pytree(path: str | os.PathLike, tree: Any) -> None:
    """Saves the leaves of ``tree`` (arrays or numbers) to an ``.npz`` file atomically."""
    import io

    leaves = jax.tree_util.tree_leaves(jax.device_get(tree))
    buffer = io.BytesIO()
    np.savez(buffer, **{f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
    atomic_write_bytes(path, buffer.getvalue())


def load_pytree(path: str | os.PathLike, like: Any) -> Any:
    """Loads a tree saved by ``save_pytree`` into the structure of ``like``.

    Raises ``ValueError`` if the file's leaves do not match ``like`` in number, shape or
    dtype (a checkpoint from another configuration).
    """
    template, treedef = jax.tree_util.tree_flatten(like)
    with np.load(os.fspath(path), allow_pickle=False) as data:
        leaves = [data[f"leaf_{i:05d}"] for i in range(len(data.files))]
    if len(leaves) != len(template):
        raise ValueError(
            f"checkpoint {path} has {len(leaves)} arrays, expected {len(template)}: "
            "it was written by a different configuration"
        )
    for index, (leaf, reference) in enumerate(zip(leaves, template)):
        reference = np.asarray(reference)
        if leaf.shape != reference.shape or leaf.dtype != reference.dtype:
            raise ValueError(
                f"checkpoint {path} array {index} is {leaf.dtype}{list(leaf.shape)}, expected "
                f"{reference.dtype}{list(reference.shape)}: it was written by a different "
                "configuration"
            )
    return jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(leaf) for leaf in leaves])
