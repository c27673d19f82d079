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


# The whole background set as one .npz (964 characters x 20 drawers); its README says
# row r is character CCCC = r + 1 of the official file names.
WHOLE = DATA / "images_background.npz"


def test_the_whole_background_npz_holds_character_r_plus_1_at_row_r():
    whole = load_omniglot(WHOLE, cache=False)
    assert whole.images.shape == (964, 20, 28, 28, 1)
    np.testing.assert_array_equal(whole.numbers, np.arange(1, 965))
    assert whole.class_names[708] == "images_background/0709"
    for small in (load_omniglot(SMALL1, cache=False), load_omniglot(SMALL2, cache=False)):
        # The zips' file names CCCC_DD.png give each of their characters its number ...
        assert small.numbers is not None and len(set(small.numbers.tolist())) == len(small.numbers)
        # ... and every one of their 2,720 / 3,120 drawings is that row's, pixel for pixel.
        np.testing.assert_array_equal(whole.images[small.numbers - 1], small.images)


def test_npz_rows_at_full_size_equal_the_zip_pngs(tmp_path):
    with zipfile.ZipFile(SMALL2) as archive:
        names = sorted(
            n for n in archive.namelist() if "/Sanskrit/character07/" in n and n.endswith(".png")
        )
        drawings = [omniglot.decode_image(archive.read(n), 105) for n in names]
    number = int(names[0].split("/")[-1][:4])
    row = load_omniglot(WHOLE, image_size=105, cache=False)  # no resize at 105: the raw pixels
    np.testing.assert_array_equal(row.images[number - 1], np.stack(drawings))
    assert 850 <= number - 1 <= 891  # Sanskrit's block of rows (the data README)
    only = omniglot.load_omniglot_arrays(WHOLE, 105, rows=[number - 1], cache=False)
    np.testing.assert_array_equal(only.images[0], np.stack(drawings))
    assert only.numbers.tolist() == [number]


def test_npz_cache_is_written_reused_and_rows_are_selected_after_it(tmp_path, monkeypatch):
    images = np.ones((5, 3, 105, 105), bool)
    images[2, :, :40] = False  # character 3 has strokes on its top rows
    path = tmp_path / "set.npz"
    np.savez(path, images=images, labels=np.repeat(np.arange(5), 3).reshape(5, 3))
    first = load_omniglot(path, image_size=14)
    assert (tmp_path / "set.npz.14px.npz").exists()
    monkeypatch.setattr(omniglot, "_resize_arrays", lambda *a: pytest.fail("resized again"))
    again = omniglot.load_omniglot_arrays(path, 14, rows=[2, 0])
    np.testing.assert_array_equal(again.images, first.images[[2, 0]])
    assert again.class_names == ("set/0003", "set/0001") and again.numbers.tolist() == [3, 1]
    assert again.images[0, 0, 0, 0, 0] == 1.0 and again.images[1].max() == 0.0
    with pytest.raises(ValueError, match=r"rows must be indices in \[0, 5\), got 5..5"):
        omniglot.load_omniglot_arrays(path, 14, rows=[5])


def test_a_cache_from_before_character_numbers_is_rebuilt(tmp_path):
    copy = shutil.copy(SMALL1, tmp_path / "set.zip")
    fresh = load_omniglot(copy, image_size=12)
    cache = tmp_path / "set.zip.12px.npz"
    with np.load(cache) as stored:  # the older format: no numbers, no format in the source
        old = {k: stored[k] for k in stored.files if k != "numbers"}
    old["source"] = np.array(omniglot.source_key(str(copy)))
    np.savez(cache, **old)
    again = load_omniglot(copy, image_size=12)
    np.testing.assert_array_equal(again.numbers, fresh.numbers)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"labels": np.zeros((2, 2))}, "it holds no 'images'"),
        ({"images": np.ones((2, 2, 8, 8), np.uint8)}, r"it holds images \(2, 2, 8, 8\) uint8"),
        ({"images": np.ones((2, 8, 8), bool)}, r"it holds images \(2, 8, 8\) bool"),
    ],
)
def test_npz_of_another_layout_is_refused_by_name(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_omniglot(tmp_path / "bad.npz", cache=False)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "bad.npz").read_bytes()[:30])
    with pytest.raises(ValueError, match="cannot be read as an .npz"):
        load_omniglot(tmp_path / "cut.npz", cache=False)


def _numbered(rows: int, drawers: int = 3) -> omniglot.ClassImages:
    """``rows`` characters whose every pixel holds the character's row (to trace them)."""
    images = np.broadcast_to(
        np.arange(rows, dtype=np.float32)[:, None, None, None, None], (rows, drawers, 2, 2, 1)
    ).copy()
    names = tuple(f"set/{r + 1:04d}" for r in range(rows))
    return omniglot.ClassImages(
        images, names, np.zeros(rows, np.int32), ("set",), np.arange(1, rows + 1, dtype=np.int32)
    )


def test_select_alphabets_groups_named_blocks_of_rows():
    data = _numbered(30)
    named = omniglot.select_alphabets(
        data, omniglot.parse_alphabets(["B=20-24", "A=2-5", "Unused=40-49"])
    )
    assert named.group_names == ("A", "B")
    assert named.numbers.tolist() == [3, 4, 5, 6, 21, 22, 23, 24, 25]
    assert named.groups.tolist() == [0] * 4 + [1] * 5
    assert named.images[:, 0, 0, 0, 0].tolist() == [2, 3, 4, 5, 20, 21, 22, 23, 24]
    with pytest.raises(ValueError, match=r"A \(rows 2-5\) overlaps B \(rows 4-9\)"):
        omniglot.select_alphabets(data, {"A": (2, 5), "B": (4, 9)})
    with pytest.raises(ValueError, match="none of the alphabets C has a character"):
        omniglot.select_alphabets(data, {"C": (100, 120)})
    with pytest.raises(ValueError, match="'Greek:1-2' is not NAME=FIRST-LAST"):
        omniglot.parse_alphabets(["Greek:1-2"])
    with pytest.raises(ValueError, match="needs character numbers"):
        omniglot.select_alphabets(data._replace(numbers=None), {"A": (2, 5)})


def test_built_oneshot_runs_stay_within_one_alphabet_with_one_pair_of_drawers():
    data = omniglot.select_alphabets(
        _numbered(70, drawers=4), {"Small": (0, 9), "A": (10, 39), "B": (40, 69)}
    )
    # a drawer's images carry the drawer too, to check the pair
    images = data.images + np.arange(4, dtype=np.float32)[None, :, None, None, None] / 10
    runs = omniglot.make_oneshot_runs(data._replace(images=images), num_runs=6, ways=20, seed=3)
    assert [r.name.split(" ")[1] for r in runs] == ["(A)", "(B)"] * 3  # Small has 10 < 20
    for run in runs:
        train_rows, train_drawer = np.divmod(np.round(run.training[:, 0, 0, 0] * 10), 10)
        test_rows, test_drawer = np.divmod(np.round(run.test[:, 0, 0, 0] * 10), 10)
        assert len(set(train_drawer)) == 1 and len(set(test_drawer)) == 1
        assert train_drawer[0] != test_drawer[0]
        assert (
            len(set(train_rows)) == 20
            and ((train_rows - 10) // 30 == (train_rows[0] - 10) // 30).all()
        )
        np.testing.assert_array_equal(train_rows[run.answers], test_rows)
    with pytest.raises(ValueError, match="no alphabet of this set has 40 characters"):
        omniglot.make_oneshot_runs(data, ways=40)


def test_an_evaluation_set_in_the_same_layout_loads_the_same_way(tmp_path):
    # images_evaluation.npz's shape: 659 characters of 20 other alphabets x 20 drawers.
    images = np.random.default_rng(0).random((659, 20, 105, 105)) > 0.05
    np.savez(tmp_path / "images_evaluation.npz", images=images)
    evaluation = load_omniglot(tmp_path / "images_evaluation.npz", cache=False)
    assert evaluation.images.shape == (659, 20, 28, 28, 1)
    assert evaluation.class_names[0] == "images_evaluation/0001"
    assert evaluation.group_names == ("images_evaluation",)
    # distinct from the background set's names: concatenating keeps every character
    both = concatenate([evaluation, load_omniglot(WHOLE, cache=False)])
    assert both.images.shape[0] == 659 + 964 and both.numbers is not None
