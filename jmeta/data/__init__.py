"""Data sets as class-indexed arrays ``(classes, examples, H, W, C)`` for the episode sampler."""

from jmeta.data.archives import download, extract_zip
from jmeta.data.classes import class_indexed, load_digits_classes, load_mnist, read_idx
from jmeta.data.omniglot import (
    ClassImages,
    load_omniglot,
    load_omniglot_arrays,
    load_oneshot_runs,
    make_oneshot_runs,
    parse_alphabets,
    select_alphabets,
    write_oneshot_runs,
)
