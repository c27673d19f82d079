"""Labelled arrays as class-indexed arrays: scikit-learn's digits and MNIST's IDX files.

The episode sampler needs the same number of examples in every class, so classes are
cut to the size of the smallest (or to ``examples_per_class``), keeping the first
examples of each in file order.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from jmeta.data.omniglot import ClassImages

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def class_indexed(x, y, examples_per_class: int | None = None) -> ClassImages:
    """Groups ``x`` by label ``y`` into ``(classes, examples, ...)``; labels become class names."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}"
        )
    labels = np.unique(y)
    members = [np.flatnonzero(y == label) for label in labels]
    smallest = min(len(m) for m in members)
    count = smallest if examples_per_class is None else examples_per_class
    if count > smallest:
        raise ValueError(
            f"examples_per_class = {count} but class "
            f"{labels[np.argmin([len(m) for m in members])]!r} "
            f"has only {smallest} examples"
        )
    images = np.stack([x[m[:count]] for m in members])
    return ClassImages(
        images, tuple(str(label) for label in labels), np.zeros(len(labels), np.int32), ("all",)
    )


def load_digits_classes(examples_per_class: int | None = None) -> ClassImages:
    """scikit-learn's 8x8 digits as ``(10, examples, 8, 8, 1)`` float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return class_indexed(
        (digits.images / 16.0).astype(np.float32)[..., None], digits.target, examples_per_class
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (MNIST's format), gzipped or not."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"{path} is a damaged gzip file ({type(error).__name__}: {error}); download it again"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dims = data[3]
    if len(data) < 4 + 4 * dims:
        raise ValueError(f"{path}: the IDX header is cut off ({len(data)} bytes)")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * dims :]
    if len(body) != expected:
        raise ValueError(
            f"{path}: header says {shape} ({expected} bytes of data) but the file holds {len(body)}"
        )
    return np.frombuffer(body, dtype).reshape(shape)


def load_mnist(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    examples_per_class: int | None = None,
) -> ClassImages:
    """MNIST-format ``*-images-idx3-ubyte[.gz]`` and ``*-labels-idx1-ubyte[.gz]`` as class-indexed
    ``(10, examples, 28, 28, 1)`` float32 in [0, 1]."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(
            f"expected images (n, rows, columns) and labels (n,), got {images.shape} and "
            f"{labels.shape}"
        )
    return class_indexed((images / 255.0).astype(np.float32)[..., None], labels, examples_per_class)
