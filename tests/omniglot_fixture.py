"""Builds one-shot challenge runs (Lake et al. 2015 format) from an Omniglot background zip."""

import io
import zipfile

import numpy as np

from jmeta.data.archives import open_zip


def build_runs_zip(background_zip, destination, num_runs=20, ways=20, seed=0):
    """Writes ``runNN/{training,test}/...png`` and ``runNN/class_labels.txt`` into a zip.

    Each run takes ``ways`` characters of one alphabet (alphabets with enough characters
    in turn), one drawing of each as its training image and a drawing by another drawer
    as the test image, with the test items in a shuffled order.
    """
    rng = np.random.default_rng(seed)
    with open_zip(background_zip) as archive:
        characters = {}
        for name in archive.namelist():
            if name.endswith(".png"):
                alphabet, character = name.split("/")[-3:-1]
                characters.setdefault(alphabet, {}).setdefault(character, []).append(name)
        alphabets = sorted(a for a, chars in characters.items() if len(chars) >= ways)
        with zipfile.ZipFile(destination, "w") as out:
            for run in range(1, num_runs + 1):
                alphabet = alphabets[(run - 1) % len(alphabets)]
                chosen = rng.choice(sorted(characters[alphabet]), ways, replace=False)
                order = rng.permutation(ways)
                lines = []
                for index, character in enumerate(chosen):
                    drawings = sorted(characters[alphabet][character])
                    first, second = rng.choice(len(drawings), 2, replace=False)
                    class_name = f"run{run:02d}/training/class{index + 1:02d}.png"
                    item_name = f"run{run:02d}/test/item{order[index] + 1:02d}.png"
                    out.writestr(class_name, archive.read(drawings[first]))
                    out.writestr(item_name, archive.read(drawings[second]))
                    lines.append((item_name, class_name))
                lines.sort()
                out.writestr(f"run{run:02d}/class_labels.txt", "".join(f"{i} {c}\n" for i, c in lines))
    return destination


def answers_from(runs_zip, run):
    """The training class index of each test item, read back from class_labels.txt."""
    with zipfile.ZipFile(runs_zip) as archive:
        text = archive.read(f"run{run:02d}/class_labels.txt").decode()
    return [int(c.split("class")[1][:2]) - 1 for _, c in (line.split() for line in text.splitlines())]


def png_bytes(value=255, size=8):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
