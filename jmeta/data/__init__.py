"""Data sets as class-indexed arrays ``(classes, examples, H, W, C)`` for the episode sampler."""

from jmeta.data.archives import download
from jmeta.data.archives import extract_zip
from jmeta.data.omniglot import ClassImages
from jmeta.data.omniglot import load_omniglot
from jmeta.data.omniglot import load_oneshot_runs
from jmeta.data.omniglot import write_oneshot_runs
from jmeta.data.classes import class_indexed
from jmeta.data.classes import load_digits_classes
from jmeta.data.classes import load_mnist
from jmeta.data.classes import read_idx
