"""Omniglot (Lake et al. 2015) from the official zips or one ``.npz``, and the one-shot runs.

The official archives hold ``alphabet/characterNN/CCCC_DD.png``: 105x105 binary drawings,
20 per character, usually under a top folder such as ``images_background/``. They are read
straight from the zip (or from an extracted folder). A whole set also comes as one ``.npz``
of ``images`` ``(characters, drawers, 105, 105)`` bool, ``True`` = background (the layout
of ``images_background.npz``, whose row ``r`` is character number ``CCCC = r + 1``). Either
is resized by area averaging and inverted so that strokes are 1.0 on a 0.0 background, and
the result is cached as ``<source>.<size>px.npz`` beside the data when that folder is
writable. Every class keeps its character number (``ClassImages.numbers``).

The cache records what it was made from (the archive's size and SHA-256; for a folder, the
names, sizes and times of its files) and is used only while that still holds: a replaced
archive, whatever its timestamp, is read again, and a damaged cache is rebuilt.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import warnings
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from jmeta.checkpoint import atomic_write_bytes
from jmeta.data.archives import download, open_zip, read_member
from jmeta.validation import check_positive_int

OFFICIAL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
OFFICIAL_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}


class ClassImages(NamedTuple):
    """Images indexed by class: ``images`` is ``(classes, examples, H, W, 1)`` float32.

    ``class_names`` are ``"alphabet/character"`` (``"stem/CCCC"`` for an ``.npz``);
    ``groups`` gives each class's alphabet as an index into ``group_names``; ``numbers``,
    where known, each class's character number (``CCCC`` of the official file names; an
    ``.npz``'s row + 1).
    """

    images: np.ndarray
    class_names: tuple
    groups: np.ndarray
    group_names: tuple
    numbers: np.ndarray | None = None


def download_omniglot(directory: str | os.PathLike, name: str = "images_background") -> str:
    """Downloads an official Omniglot zip into ``directory`` (MD5-checked); returns its path."""
    if name not in OFFICIAL_MD5:
        raise ValueError(
            f"unknown Omniglot archive {name!r}; expected one of {', '.join(OFFICIAL_MD5)}"
        )
    return download(
        OFFICIAL_URL.format(name=name),
        os.path.join(os.fspath(directory), f"{name}.zip"),
        OFFICIAL_MD5[name],
    )


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """A PNG drawing as ``(size, size, 1)`` float32 with strokes 1.0 and background 0.0."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return _resize_grey(np.asarray(image.convert("L")), image_size)


def _resize_grey(grey: np.ndarray, image_size: int) -> np.ndarray:
    """An 8-bit grey drawing (255 = background) as ``(size, size, 1)`` float32 strokes."""
    from PIL import Image

    image = Image.fromarray(grey, mode="L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return (1.0 - np.asarray(image, np.float32) / 255.0)[..., None]


def _png_names(path: str) -> list[str]:
    """Relative names of every PNG in a zip archive or folder."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Omniglot archive or folder at {path}")
    return [name for name in _list_names(path) if name.lower().endswith(".png")]


def _read_all(path: str, names: list[str]) -> dict[str, bytes]:
    """All the named members in one pass over the archive (or folder)."""
    if os.path.isdir(path):
        return {name: pathlib.Path(path, name).read_bytes() for name in names}
    with open_zip(path) as archive:
        return {name: read_member(archive, name) for name in names}


def load_omniglot(path: str | os.PathLike, image_size: int = 28, cache: bool = True) -> ClassImages:
    """Reads one Omniglot background or evaluation set.

    Args:
      path: an official zip (``images_background.zip``, ``images_evaluation.zip`` or a
        subset in the same layout), the folder it extracts to, or an ``.npz`` in the layout
        of ``images_background.npz`` (read by ``load_omniglot_arrays``).
      image_size: side of the resized square images.
      cache: read and write ``<path>.<size>px.npz`` beside the data.

    Raises ``ValueError`` for a corrupt archive, an unsafe member name, a layout that is
    not ``alphabet/character/*.png`` or characters with different numbers of drawings.

    Example::

      background = load_omniglot("images_background.npz")  # 964 characters, (964, 20, 28, 28, 1)
    """
    path = os.fspath(path)
    image_size = check_positive_int("image_size", image_size)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Omniglot archive or folder at {path}")
    if path.lower().endswith(".npz"):
        return load_omniglot_arrays(path, image_size, cache=cache)
    cache_path = f"{path.rstrip(os.sep)}.{image_size}px.npz"
    source = _cache_source(path)
    if cache and os.path.exists(cache_path):
        cached = _read_cache(cache_path, source)
        if cached is not None:
            return cached
    by_character: dict[tuple[str, str], list[str]] = {}
    for name in _png_names(path):
        parts = name.split("/")
        if len(parts) < 3:
            raise ValueError(
                f"{path}: {name!r} is not in the alphabet/character/drawing.png layout"
            )
        by_character.setdefault((parts[-3], parts[-2]), []).append(name)
    if not by_character:
        raise ValueError(f"{path} holds no PNG drawings")
    counts = {len(names) for names in by_character.values()}
    if len(counts) != 1:
        fewest = min(by_character, key=lambda c: len(by_character[c]))
        raise ValueError(
            f"{path}: characters have different numbers of drawings {sorted(counts)}; "
            f"{'/'.join(fewest)} has {len(by_character[fewest])}"
        )
    characters = sorted(by_character)
    contents = _read_all(path, [n for c in characters for n in sorted(by_character[c])])
    images = np.stack(
        [
            np.stack([_decode(path, n, contents[n], image_size) for n in sorted(by_character[c])])
            for c in characters
        ]
    )
    group_names = tuple(sorted({alphabet for alphabet, _ in characters}))
    result = ClassImages(
        images,
        tuple(f"{a}/{c}" for a, c in characters),
        np.array([group_names.index(a) for a, _ in characters], np.int32),
        group_names,
        _character_numbers([sorted(by_character[c])[0] for c in characters]),
    )
    if cache:
        _write_cache(cache_path, result, source)
    return result


def _character_numbers(first_drawings: list[str]) -> np.ndarray | None:
    """Each character's number from the name of one of its drawings (``CCCC_DD.png``), or
    ``None`` where a name is not in that form (a subset renamed by hand)."""
    matches = [_OFFICIAL_NAME.fullmatch(name.split("/")[-1]) for name in first_drawings]
    if not all(matches):
        return None
    return np.array([int(m.group(1)) for m in matches], np.int32)


_OFFICIAL_NAME = re.compile(r"(\d+)_\d+\.png", re.IGNORECASE)


def _decode(path: str, name: str, data: bytes, image_size: int) -> np.ndarray:
    """``decode_image``, with a file PIL cannot read named rather than PIL's traceback."""
    try:
        return decode_image(data, image_size)
    except Exception as error:  # PIL.UnidentifiedImageError, a truncated PNG, ...
        raise ValueError(
            f"{path}: drawing {name} cannot be decoded as an image ({type(error).__name__}: "
            f"{error}); replace the archive with an intact copy"
        ) from None


def source_key(path: str) -> str:
    """What a cache of ``path`` was made from: for a file its size and SHA-256, for a folder
    a SHA-256 of its files' names, sizes and modification times."""
    import hashlib

    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, folders, files in os.walk(path):
            folders.sort()
            for name in sorted(files):
                stat = os.stat(os.path.join(root, name))
                relative = os.path.relpath(os.path.join(root, name), path)
                digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return f"folder sha256:{digest.hexdigest()}"
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{os.path.getsize(path)} bytes sha256:{digest.hexdigest()}"


def _cache_source(path: str) -> str:
    # The format number makes caches written before character numbers were kept stale.
    return f"format 2; {source_key(path)}"


def _read_cache(cache_path: str, source: str) -> ClassImages | None:
    """The cached set if ``cache_path`` is intact and was made from ``source``; else None
    (a damaged cache is reported and will be rebuilt)."""
    try:
        with np.load(cache_path, allow_pickle=False) as stored:
            if "source" not in stored.files or str(stored["source"]) != source:
                return None
            return ClassImages(
                stored["images"],
                tuple(stored["class_names"].tolist()),
                stored["groups"],
                tuple(stored["group_names"].tolist()),
                stored["numbers"] if "numbers" in stored.files else None,
            )
    except Exception as error:  # a truncated or overwritten file
        warnings.warn(
            f"the Omniglot cache {cache_path} is damaged ({type(error).__name__}: {error}); "
            "rebuilding it from the archive"
        )
        return None


def _write_cache(cache_path: str, data: ClassImages, source: str) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        source=np.array(source),
        images=data.images,
        class_names=np.array(data.class_names),
        groups=data.groups,
        group_names=np.array(data.group_names),
        **({} if data.numbers is None else {"numbers": data.numbers}),
    )
    try:
        atomic_write_bytes(cache_path, buffer.getvalue())
    except OSError as error:
        warnings.warn(
            f"could not write the Omniglot cache {cache_path} ({error}); reading from the archive "
            "each time"
        )


def concatenate(sets: Sequence[ClassImages]) -> ClassImages:
    """Several sets as one; a character present in more than one set (the same class name)
    is kept once. Character numbers are kept where every set has them."""
    seen, images, names, group_names, groups, numbers = set(), [], [], [], [], []
    for data in sets:
        for index, name in enumerate(data.class_names):
            if name in seen:
                continue
            seen.add(name)
            alphabet = data.group_names[data.groups[index]]
            if alphabet not in group_names:
                group_names.append(alphabet)
            images.append(data.images[index])
            names.append(name)
            groups.append(group_names.index(alphabet))
            numbers.append(-1 if data.numbers is None else data.numbers[index])
    return ClassImages(
        np.stack(images),
        tuple(names),
        np.array(groups, np.int32),
        tuple(group_names),
        None if -1 in numbers else np.array(numbers, np.int32),
    )


class OneShotRun(NamedTuple):
    """One run of the one-shot challenge: 20 training images (one per class), 20 test
    images, and for each test image the index of its training class."""

    name: str
    training: np.ndarray
    test: np.ndarray
    answers: np.ndarray


def load_oneshot_runs(path: str | os.PathLike, image_size: int = 28) -> list[OneShotRun]:
    """Reads the runs of Lake et al.'s one-shot classification challenge.

    ``path`` is a zip or folder holding ``runNN/training/classNN.png``,
    ``runNN/test/itemNN.png`` and ``runNN/class_labels.txt`` whose lines read
    ``runNN/test/itemNN.png runNN/training/classNN.png`` (possibly under a top folder).
    """
    path = os.fspath(path)
    image_size = check_positive_int("image_size", image_size)
    files = _png_names(path)
    label_files = [n for n in _list_names(path) if n.endswith("class_labels.txt")]
    if not label_files:
        raise ValueError(f"{path} holds no runNN/class_labels.txt: not the one-shot runs format")
    contents = _read_all(path, files + label_files)
    runs = []
    for label_file in sorted(label_files):
        prefix = label_file[: -len("class_labels.txt")]
        run_name = prefix.rstrip("/").split("/")[-1]
        root = prefix[: -len(run_name) - 1] if prefix.endswith(run_name + "/") else ""
        training = sorted(n for n in files if n.startswith(prefix + "training/"))
        test = sorted(n for n in files if n.startswith(prefix + "test/"))
        pairs = [
            line.split() for line in contents[label_file].decode().splitlines() if line.strip()
        ]
        if any(len(pair) != 2 for pair in pairs) or len(pairs) != len(test):
            raise ValueError(
                f"{label_file}: expected {len(test)} lines 'runNN/test/item.png "
                "runNN/training/class.png'"
            )
        answer_of = {
            root + item: training.index(root + cls) for item, cls in pairs if root + cls in training
        }
        if len(answer_of) != len(test):
            raise ValueError(f"{label_file} names images that are not in {path}")
        runs.append(
            OneShotRun(
                run_name,
                np.stack([_decode(path, n, contents[n], image_size) for n in training]),
                np.stack([_decode(path, n, contents[n], image_size) for n in test]),
                np.array([answer_of[n] for n in test], np.int32),
            )
        )
    return runs


def _list_names(path: str) -> list[str]:
    if os.path.isdir(path):
        return [
            os.path.relpath(os.path.join(r, n), path).replace(os.sep, "/")
            for r, _, ns in os.walk(path)
            for n in ns
        ]
    with open_zip(path) as archive:
        return archive.namelist()


def write_oneshot_runs(
    background: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    alphabets=None,
    num_runs: int = 20,
    ways: int = 20,
    seed: int = 0,
) -> str:
    """Writes one-shot runs in the challenge's format from an Omniglot zip or folder.

    Each run takes ``ways`` characters of one alphabet (the eligible alphabets in turn),
    one drawing of each as ``training/classNN.png`` and a drawing by another drawer as
    ``test/itemNN.png`` in a shuffled order, and ``class_labels.txt`` lines
    ``runNN/test/itemNN.png runNN/training/classNN.png``.

    Args:
      background: the set to draw from; ``alphabets`` limits it (say to alphabets a model
        never saw), otherwise every alphabet with at least ``ways`` characters is used.
    """
    import zipfile

    background = os.fspath(background)
    rng = np.random.default_rng(seed)
    characters: dict[str, dict[str, list[str]]] = {}
    for name in _png_names(background):
        alphabet, character = name.split("/")[-3:-1]
        characters.setdefault(alphabet, {}).setdefault(character, []).append(name)
    eligible = sorted(
        a
        for a, chars in characters.items()
        if len(chars) >= ways and (alphabets is None or a in alphabets)
    )
    if not eligible:
        raise ValueError(
            f"no alphabet of {background} has {ways} characters"
            f"{'' if alphabets is None else f' among {sorted(alphabets)}'}"
        )
    drawings = _read_all(
        background, [n for a in eligible for c in characters[a].values() for n in c]
    )
    with zipfile.ZipFile(destination, "w") as out:
        for run in range(1, check_positive_int("num_runs", num_runs) + 1):
            alphabet = eligible[(run - 1) % len(eligible)]
            chosen = rng.choice(sorted(characters[alphabet]), ways, replace=False)
            order = rng.permutation(ways)
            lines = []
            for index, character in enumerate(chosen):
                names = sorted(characters[alphabet][character])
                first, second = rng.choice(len(names), 2, replace=False)
                class_name = f"run{run:02d}/training/class{index + 1:02d}.png"
                item_name = f"run{run:02d}/test/item{order[index] + 1:02d}.png"
                out.writestr(class_name, drawings[names[first]])
                out.writestr(item_name, drawings[names[second]])
                lines.append((item_name, class_name))
            out.writestr(
                f"run{run:02d}/class_labels.txt", "".join(f"{i} {c}\n" for i, c in sorted(lines))
            )
    return os.fspath(destination)


def load_omniglot_arrays(
    path: str | os.PathLike,
    image_size: int = 28,
    rows: Sequence[int] | None = None,
    cache: bool = True,
) -> ClassImages:
    """Omniglot as one ``.npz`` of ``images`` ``(characters, drawers, H, W)`` bool (``True`` =
    background, as in the PNGs): the layout of ``images_background.npz``.

    Each image is resized and inverted exactly as ``load_omniglot`` decodes a PNG (Pillow's
    box filter on the 8-bit grey image, strokes 1.0), so both readers give the same pixels,
    and cached the same way (``<path>.<size>px.npz``). Row ``r`` is character number
    ``r + 1`` (``numbers``; in ``images_background.npz`` the official ``CCCC``) and class
    ``"STEM/CCCC"`` (``STEM`` the file's name without ``.npz``). The file names no
    alphabets: every class is in one group named ``STEM`` (``select_alphabets`` names
    blocks of rows).

    Args:
      path: the ``.npz``.
      image_size: side of the resized square images.
      rows: keep those characters only, in that order.
      cache: read and write the resized cache beside the file.
    """
    path = os.fspath(path)
    image_size = check_positive_int("image_size", image_size)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Omniglot arrays at {path}")
    if not cache:  # only the rows asked for are resized
        return _resize_arrays(path, image_size, rows)
    cache_path = f"{path}.{image_size}px.npz"
    source = _cache_source(path)
    data = _read_cache(cache_path, source) if os.path.exists(cache_path) else None
    if data is None:
        data = _resize_arrays(path, image_size)
        _write_cache(cache_path, data, source)
    if rows is None:
        return data
    index = _check_rows(rows, len(data.class_names))
    return data._replace(
        images=data.images[index],
        class_names=tuple(data.class_names[r] for r in index),
        groups=data.groups[index],
        numbers=data.numbers[index],
    )


def _check_rows(rows: Sequence[int], total: int) -> np.ndarray:
    index = np.asarray(rows, np.int64)
    if index.ndim != 1 or index.size == 0 or index.min() < 0 or index.max() >= total:
        shown = f"{index.min()}..{index.max()}" if index.size else "none"
        raise ValueError(f"rows must be indices in [0, {total}), got {shown}")
    return index


def _resize_arrays(path: str, image_size: int, rows: Sequence[int] | None = None) -> ClassImages:
    """The ``.npz`` at ``path`` checked, resized and inverted (no cache): all its rows, or
    ``rows`` in that order."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            names = sorted(stored.files)
            images = stored["images"] if "images" in stored.files else None
    except Exception as error:  # not a zip, a truncated file, a pickled array
        raise ValueError(
            f"{path} cannot be read as an .npz ({type(error).__name__}: {error})"
        ) from None
    if images is None or images.ndim != 4 or images.dtype != np.bool_ or not images.size:
        got = "no 'images'" if images is None else f"images {images.shape} {images.dtype}"
        raise ValueError(
            f"{path} must hold 'images' of shape (characters, drawers, height, width), bool "
            f"with True = background (as images_background.npz); it holds {got} (arrays: "
            f"{', '.join(names)})"
        )
    index = np.arange(len(images)) if rows is None else _check_rows(rows, len(images))
    resized = np.stack(
        [
            np.stack([_resize_grey(drawing.astype(np.uint8) * 255, image_size) for drawing in row])
            for row in images[index]
        ]
    )
    stem = os.path.basename(path)[: -len(".npz")] if path.lower().endswith(".npz") else path
    numbers = (index + 1).astype(np.int32)
    return ClassImages(
        resized,
        tuple(f"{stem}/{n:04d}" for n in numbers),
        np.zeros(len(index), np.int32),
        (stem,),
        numbers,
    )


def select_alphabets(data: ClassImages, alphabets: Mapping[str, tuple[int, int]]) -> ClassImages:
    """The classes of ``data`` that lie in the named blocks of rows, grouped by block.

    ``images_background.npz`` names no alphabet, but its characters are contiguous within
    an alphabet; ``alphabets`` maps a name to its first and last row (inclusive, row =
    character number - 1), say ``{"Sanskrit": (850, 891)}``. Blocks with no class in
    ``data`` are dropped; classes outside every block too.

    Raises ``ValueError`` if ``data`` has no character numbers, a block is empty or blocks
    overlap, or no class of ``data`` is in any block.
    """
    if data.numbers is None:
        raise ValueError(
            "select_alphabets needs character numbers (ClassImages.numbers); this set has none"
        )
    row_of = np.asarray(data.numbers) - 1
    blocks = sorted((int(first), int(last), name) for name, (first, last) in alphabets.items())
    for (first, last, name), following in zip(blocks, blocks[1:] + [None]):
        if last < first:
            raise ValueError(f"alphabets: {name} spans rows {first}-{last}, which is empty")
        if following is not None and following[0] <= last:
            raise ValueError(
                f"alphabets: {name} (rows {first}-{last}) overlaps {following[2]} "
                f"(rows {following[0]}-{following[1]})"
            )
    present = [
        (name, np.flatnonzero((row_of >= first) & (row_of <= last))) for first, last, name in blocks
    ]
    present = [(name, index) for name, index in present if index.size]
    if not present:
        raise ValueError(
            f"none of the alphabets {', '.join(sorted(alphabets))} has a character in this set "
            f"(rows {row_of.min()}-{row_of.max()})"
        )
    keep = np.concatenate([index for _, index in present])
    return ClassImages(
        data.images[keep],
        tuple(data.class_names[i] for i in keep),
        np.concatenate([np.full(len(index), g, np.int32) for g, (_, index) in enumerate(present)]),
        tuple(name for name, _ in present),
        np.asarray(data.numbers)[keep],
    )


def parse_alphabets(blocks: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``("Sanskrit=850-891", ...)`` as ``{"Sanskrit": (850, 891)}``, or a ``ValueError``
    naming ``alphabets`` and the entry."""
    parsed = {}
    for block in blocks:
        name, _, span = block.partition("=")
        first, _, last = span.partition("-")
        if not (name and first.strip().isdigit() and last.strip().isdigit()):
            raise ValueError(
                f"alphabets: {block!r} is not NAME=FIRST-LAST (rows, e.g. Greek=393-416)"
            )
        parsed[name.strip()] = (int(first), int(last))
    return parsed


def make_oneshot_runs(
    data: ClassImages, *, num_runs: int = 20, ways: int = 20, seed: int = 0
) -> list[OneShotRun]:
    """One-shot runs in the challenge's form, in memory, from the alphabets of ``data``.

    Each run takes ``ways`` characters of one alphabet (the alphabets with at least ``ways``
    characters in turn) and one pair of drawers: the first drawer's images are the
    training images (class ``i`` is the ``i``-th character), the second's, shuffled, the
    test images. ``data.groups`` are the alphabets (``select_alphabets`` names them for an
    ``.npz``).
    """
    num_runs = check_positive_int("num_runs", num_runs)
    ways = check_positive_int("ways", ways)
    sizes = np.bincount(data.groups, minlength=len(data.group_names))
    eligible = np.flatnonzero(sizes >= ways)
    if not eligible.size or data.images.shape[1] < 2:
        raise ValueError(
            f"no alphabet of this set has {ways} characters and two drawers (alphabets: "
            + ", ".join(f"{n} {c}" for n, c in zip(data.group_names, sizes))
            + ")"
        )
    rng = np.random.default_rng(seed)
    runs = []
    for run in range(num_runs):
        alphabet = eligible[run % len(eligible)]
        chosen = rng.choice(np.flatnonzero(data.groups == alphabet), ways, replace=False)
        first, second = rng.choice(data.images.shape[1], 2, replace=False)
        order = rng.permutation(ways)
        runs.append(
            OneShotRun(
                f"run{run + 1:02d} ({data.group_names[alphabet]})",
                data.images[chosen, first],
                data.images[chosen[order], second],
                order.astype(np.int32),
            )
        )
    return runs
