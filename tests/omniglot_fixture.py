"""One-shot challenge runs (Lake et al. 2015 format) built from an Omniglot background zip."""

import io
import zipfile

import numpy as np

from jmeta.data import write_oneshot_runs


def build_runs_zip(background_zip, destination, **kwargs):
    """The test fixture: 20 runs in the challenge's format, written by the library."""
    return write_oneshot_runs(background_zip, destination, **kwargs)


def answers_from(runs_zip, run):
    """The training class index of each test item, read back from class_labels.txt."""
    with zipfile.ZipFile(runs_zip) as archive:
        text = archive.read(f"run{run:02d}/class_labels.txt").decode()
    return [
        int(c.split("class")[1][:2]) - 1 for _, c in (line.split() for line in text.splitlines())
    ]


def png_bytes(value=255, size=8):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
