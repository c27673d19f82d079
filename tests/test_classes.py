"""Class-indexed arrays from labelled data: digits, MNIST IDX files."""

import gzip
import struct

import numpy as np
import pytest

from jmeta.data import class_indexed, load_digits_classes, load_mnist, read_idx


def _write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = (
        header
        + array.astype(
            array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
        ).tobytes()
    )
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def test_mnist_idx_files_gzipped_or_not(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 3)
    rng.shuffle(labels)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels, 0x08)
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    data = load_mnist(tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte")
    assert data.images.shape == (10, 3, 28, 28, 1) and data.class_names[0] == "0"
    first_seven = images[np.flatnonzero(labels == 7)[0]]
    np.testing.assert_allclose(data.images[7, 0, ..., 0], first_seven / 255.0, rtol=1e-6)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    truncated = (tmp_path / "train-labels-idx1-ubyte").read_bytes()[:-5]
    (tmp_path / "short").write_bytes(truncated)
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


def test_digits_and_class_indexing():
    digits = load_digits_classes()
    assert digits.images.shape[0] == 10 and digits.images.shape[2:] == (8, 8, 1)
    assert digits.images.shape[1] == 174  # the smallest digit class of scikit-learn's set
    assert 0.0 <= digits.images.min() and digits.images.max() <= 1.0
    with pytest.raises(ValueError, match="has only 174 examples"):
        load_digits_classes(examples_per_class=200)
    with pytest.raises(ValueError, match="equal length"):
        class_indexed(np.zeros((3, 2)), np.zeros(2))


def test_a_cut_off_gzip_or_idx_header_is_named(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    _write_idx(tmp_path / "images.gz", images, 0x08)
    (tmp_path / "cut.gz").write_bytes((tmp_path / "images.gz").read_bytes()[:30])
    with pytest.raises(ValueError, match="cut.gz is a damaged gzip file"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "header").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="header is cut off"):
        read_idx(tmp_path / "header")
