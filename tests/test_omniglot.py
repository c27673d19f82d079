"""Omniglot from the official zip layout, the one-shot runs format, and archive safety."""

import hashlib
import os
import pathlib
import shutil
import zipfile

import numpy as np
import pytest

from jmeta.data import extract_zip, load_omniglot, load_oneshot_runs, omniglot
from jmeta.data.archives import download
from jmeta.data.omniglot import concatenate
from tests.omniglot_fixture import answers_from, build_runs_zip, png_bytes

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
SMALL1, SMALL2 = DATA / "images_background_small1.zip", DATA / "images_background_small2.zip"


def test_reads_the_real_background_sets():
    small1 = load_omniglot(SMALL1, cache=False)
    small2 = load_omniglot(SMALL2, cache=False)
    assert small1.images.shape == (136, 20, 28, 28, 1) and small1.images.size // (28 * 28) == 2720
    assert small2.images.shape == (156, 20, 28, 28, 1) and small2.images.size // (28 * 28) == 3120
    assert small1.group_names == ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin")
    assert np.bincount(small1.groups).tolist() == [24, 22, 24, 40, 26]
    assert 0.0 <= small1.images.min() and small1.images.max() <= 1.0
    assert 0.02 < small1.images.mean() < 0.3  # strokes (1.0) are a small part of each drawing
    both = concatenate([small1, small2])
    assert both.images.shape[0] == 136 + 156 - 24 - 26  # Greek and Latin are in both sets
    unseen = [g for g in both.group_names if g not in small1.group_names]
    assert unseen == ["Japanese_(katakana)", "Sanskrit", "Tagalog"]


def test_cache_is_written_beside_the_data_and_reused(tmp_path, monkeypatch):
    copy = shutil.copy(SMALL1, tmp_path / "set.zip")
    first = load_omniglot(copy, image_size=20)
    assert (tmp_path / "set.zip.20px.npz").exists()
    # The archive is unchanged, so the cache answers without a drawing being read.
    monkeypatch.setattr(omniglot, "_read_all", lambda *a: pytest.fail("read the archive"))
    second = load_omniglot(copy, image_size=20)
    np.testing.assert_array_equal(first.images, second.images)
    assert first.class_names == second.class_names


def test_a_replaced_archive_is_read_again_whatever_its_date(tmp_path):
    copy = shutil.copy(SMALL1, tmp_path / "set.zip")
    first = load_omniglot(copy, image_size=20)
    shutil.copy(SMALL2, copy)
    os.utime(copy, (0, 0))  # older than the cache: a date-keyed cache would answer
    replaced = load_omniglot(copy, image_size=20)
    assert replaced.class_names == load_omniglot(SMALL2, image_size=20, cache=False).class_names
    assert replaced.class_names != first.class_names


def test_a_damaged_cache_is_rebuilt(tmp_path):
    copy = shutil.copy(SMALL1, tmp_path / "set.zip")
    first = load_omniglot(copy, image_size=20)
    cache = tmp_path / "set.zip.20px.npz"
    cache.write_bytes(cache.read_bytes()[:100])  # cut off
    with pytest.warns(UserWarning, match="set.zip.20px.npz is damaged"):
        again = load_omniglot(copy, image_size=20)
    np.testing.assert_array_equal(first.images, again.images)
    assert load_omniglot(copy, image_size=20).class_names == first.class_names  # rewritten


def test_a_drawing_that_cannot_be_decoded_is_named(tmp_path):
    with zipfile.ZipFile(SMALL1) as source, zipfile.ZipFile(tmp_path / "bad.zip", "w") as target:
        names = [n for n in source.namelist() if n.endswith(".png")]
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, b"not a png" if name == names[3] else data)
    with pytest.raises(ValueError, match=f"drawing {names[3]} cannot be decoded"):
        load_omniglot(tmp_path / "bad.zip", cache=False)


def test_one_shot_runs_format_on_a_fixture(tmp_path):
    runs_zip = build_runs_zip(SMALL2, tmp_path / "all_runs.zip")
    runs = load_oneshot_runs(runs_zip)
    assert len(runs) == 20 and runs[0].name == "run01"
    for number, run in enumerate(runs, start=1):
        assert run.training.shape == (20, 28, 28, 1) and run.test.shape == (20, 28, 28, 1)
        assert sorted(run.answers.tolist()) == list(range(20))
        assert run.answers.tolist() == answers_from(runs_zip, number)
    extracted = extract_zip(runs_zip, tmp_path / "folder")
    from_folder = load_oneshot_runs(extracted)
    np.testing.assert_array_equal(from_folder[3].test, runs[3].test)


def _zip_with(tmp_path, names):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, png_bytes())
    return path


@pytest.mark.parametrize("name", ["../escape.png", "a/../../escape.png", "/absolute.png"])
def test_members_that_escape_are_refused(tmp_path, name):
    path = _zip_with(tmp_path, ["set/Alphabet/character01/ok.png", name])
    with pytest.raises(ValueError, match="refusing archive member"):
        extract_zip(path, tmp_path / "out")
    with pytest.raises(ValueError, match="refusing archive member"):
        load_omniglot(path, cache=False)
    assert not (tmp_path / "escape.png").exists()


def test_corrupt_and_truncated_archives_give_clear_errors(tmp_path):
    good = _zip_with(
        tmp_path, [f"set/Alphabet/character{c:02d}/{d}.png" for c in (1, 2) for d in range(3)]
    )
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable zip archive"):
        load_omniglot(truncated, cache=False)
    damaged = tmp_path / "damaged.zip"
    data = bytearray(good.read_bytes())
    offset = data.find(b"IDAT")  # corrupt one drawing's bytes: its CRC no longer matches
    data[offset + 8 : offset + 12] = b"\x00\x01\x02\x03"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_omniglot(damaged, cache=False)
    loaded = load_omniglot(good, image_size=8, cache=False)
    assert (
        loaded.images.shape == (2, 3, 8, 8, 1) and float(loaded.images.max()) == 0.0
    )  # white = background


def test_layout_errors(tmp_path):
    uneven = _zip_with(
        tmp_path, ["set/A/character01/1.png", "set/A/character01/2.png", "set/A/character02/1.png"]
    )
    with pytest.raises(ValueError, match="different numbers of drawings"):
        load_omniglot(uneven, cache=False)
    with pytest.raises(FileNotFoundError, match="no Omniglot archive"):
        load_omniglot(tmp_path / "missing.zip")


def test_download_checks_the_md5(tmp_path):
    source = tmp_path / "source.zip"
    source.write_bytes(b"pretend archive")
    digest = hashlib.md5(b"pretend archive").hexdigest()
    with pytest.raises(ValueError, match="expected 0+"):
        download(source.as_uri(), tmp_path / "out" / "a.zip", "0" * 32)
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind
    path = download(source.as_uri(), tmp_path / "out" / "a.zip", digest)
    assert pathlib.Path(path).read_bytes() == b"pretend archive"
    # Readable as any new file would be, not private as mkstemp makes its files.
    (tmp_path / "plain").write_bytes(b"")
    assert pathlib.Path(path).stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
