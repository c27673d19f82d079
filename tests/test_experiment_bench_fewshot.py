"""The few-shot benchmark (bench-fewshot) and its PyTorch baselines."""

import shutil
import sys

import pytest

# Conv4 at 16x16 with 4 filters, 2-way 1-query episodes: every row compiles in seconds.
TINY = ["ways=2", "queries=1", "meta_batch=2", "image_size=16", "filters=4", "matmul_size=64"]


def test_fewshot_benchmark_writes_json(tmp_path):
    import json

    from jmeta.cli import run_experiment

    overrides = TINY + [
        "num_inner_steps=1",
        "min_seconds=0.05",
        "torch_baseline=false",
        "task_chunk=1",
    ]
    results = run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    written = json.loads((tmp_path / "bench" / "bench_fewshot.json").read_text())
    names = {
        f"{method}, chunks of 1 tasks" for method in ("maml 1 step", "fomaml 1 step", "protonet")
    }
    assert set(written["jmeta"]) == names == set(results["jmeta"])
    # The measurement history lives in experiments/results/BENCHMARK_NOTES.md, not in every JSON.
    assert "notes" not in written and written["config"]["task_chunk"] == [1]
    for measured in written["jmeta"].values():
        assert measured["meta_steps_per_second"] > 0 and measured["flops_per_step"] > 0
        assert measured["compile_seconds"] == pytest.approx(
            measured["trace_lower_seconds"] + measured["xla_compile_seconds"]
        )
        assert measured["trace_lower_seconds"] > 0 and measured["xla_compile_seconds"] > 0
        assert 0 < measured["fraction_of_matmul_peak"]
    assert written["machine"]["matmul_flops_per_second"] > 0


def test_fewshot_benchmark_alternates_jmeta_rows_with_the_pytorch_loop(tmp_path, monkeypatch):
    # The PyTorch loop is timed in the same rounds as the jmeta rows; a stand-in replaces it
    # (PyTorch is not a test dependency). "maml 1 step" names both a jmeta row and the loop.
    import time

    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")  # the module run_experiment runs
    calls = []

    def stand_in(config, num_inner_steps):
        return (lambda: (calls.append(num_inner_steps), time.sleep(0.01))), {"device": "stand-in"}

    monkeypatch.setattr(bench_fewshot, "conv4_maml_loop", stand_in)
    # learn2learn's MAML gets a row of its own in the same rounds when it loads.
    learn2learn_calls = []
    monkeypatch.setattr(bench_fewshot, "load_maml", lambda source: object)
    monkeypatch.setattr(
        bench_fewshot,
        "learn2learn_conv4_maml",
        lambda config, num_inner_steps, maml_class: (
            (lambda: (learn2learn_calls.append(maml_class), time.sleep(0.02))),
            {"device": "learn2learn stand-in"},
        ),
    )
    overrides = TINY + ["num_inner_steps=1", "min_seconds=0", "task_chunk=0"]
    results = run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    torch_row, jmeta_row = results["torch_loop"]["maml 1 step"], results["jmeta"]["maml 1 step"]
    assert torch_row["device"] == "stand-in" and torch_row["timed_steps"] == len(calls) - 1 >= 3
    assert torch_row["seconds_per_step"] >= 0.01 and jmeta_row["timed_steps"] >= 3
    assert (
        jmeta_row["seconds_min"] != torch_row["seconds_min"]
    )  # timed separately, not one row twice
    assert jmeta_row["over_torch_loop"] == pytest.approx(
        torch_row["seconds_per_step"] / jmeta_row["seconds_per_step"]
    )
    learn2learn_row = results["learn2learn"]["maml 1 step"]
    assert (
        learn2learn_row["device"] == "learn2learn stand-in"
        and learn2learn_row["seconds_per_step"] >= 0.02
    )
    assert learn2learn_row["timed_steps"] == len(learn2learn_calls) - 1 and set(
        learn2learn_calls
    ) == {object}
    assert jmeta_row["over_learn2learn"] == pytest.approx(
        learn2learn_row["seconds_per_step"] / jmeta_row["seconds_per_step"]
    )
    assert "learn2learn, maml 1 step" in (tmp_path / "bench" / "bench_fewshot.md").read_text()


@pytest.mark.parametrize(
    "field, message",
    [
        ("meta_batch=0", "meta_batch must be a positive integer, got 0"),
        ("matmul_size=0", "matmul_size must be a positive integer, got 0"),
        ("ways=1", "ways must be an integer >= 2, got 1"),
        ("num_inner_steps=1,0", "num_inner_steps must be a positive integer, got 0"),
        ("task_chunk=-2", "task_chunk must be a non-negative integer, got -2"),
        ("min_seconds=-1", "min_seconds must be a finite number >= 0, got -1"),
        ("conv=cudnn", "unknown conv 'cudnn'; expected one of 'im2col', 'xla'"),
    ],
)
def test_fewshot_benchmark_refuses_a_bad_field_before_measuring(
    tmp_path, monkeypatch, field, message
):
    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")
    monkeypatch.setattr(
        bench_fewshot, "matmul_peak", lambda size: pytest.fail("measured before checking")
    )
    with pytest.raises(ValueError, match=message):
        run_experiment(
            "bench-fewshot",
            str(tmp_path / "bench"),
            [field, "torch_baseline=false"],
            progress=False,
        )


@pytest.mark.slow
def test_fewshot_benchmark_times_learn2learn_from_a_source_without_the_pytorch_loop(
    tmp_path, monkeypatch
):
    # learn2learn=PATH asks for its row; torch_baseline=false drops only the PyTorch loop.
    import time

    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")
    sources = []
    monkeypatch.setattr(
        bench_fewshot,
        "conv4_maml_loop",
        lambda config, num_inner_steps: pytest.fail("loop not asked for"),
    )
    monkeypatch.setattr(
        bench_fewshot, "load_maml", lambda source: (sources.append(source), object)[1]
    )
    monkeypatch.setattr(
        bench_fewshot,
        "learn2learn_conv4_maml",
        lambda config, num_inner_steps, maml_class: (
            (lambda: time.sleep(0.01)),
            {"device": "learn2learn stand-in"},
        ),
    )
    overrides = TINY + [
        "num_inner_steps=1",
        "min_seconds=0",
        "task_chunk=0",
        "torch_baseline=false",
        "learn2learn=/src/learn2learn-0.2.0",
    ]
    results = run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    assert sources == ["/src/learn2learn-0.2.0"] and results["torch_loop"] == {}
    learn2learn_row, jmeta_row = (
        results["learn2learn"]["maml 1 step"],
        results["jmeta"]["maml 1 step"],
    )
    assert (
        learn2learn_row["device"] == "learn2learn stand-in" and jmeta_row["over_torch_loop"] is None
    )
    assert jmeta_row["over_learn2learn"] == pytest.approx(
        learn2learn_row["seconds_per_step"] / jmeta_row["seconds_per_step"]
    )


def test_fewshot_benchmark_keeps_the_groups_it_timed_when_a_later_group_fails(
    tmp_path, monkeypatch
):
    # A device run cut off in its 5-step group must not lose the 1-step rows it already timed.
    import json

    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")
    built = bench_fewshot.make_meta_learner

    def fails_at_two_steps(learner, config, *execution):
        if config.num_inner_steps == 2:
            raise RuntimeError("stopped in the second group")
        return built(learner, config, *execution)

    monkeypatch.setattr(bench_fewshot, "make_meta_learner", fails_at_two_steps)
    overrides = TINY + [
        "num_inner_steps=1,2",
        "min_seconds=0",
        "task_chunk=0",
        "torch_baseline=false",
    ]
    with pytest.raises(RuntimeError, match="second group"):
        run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    written = json.loads((tmp_path / "bench" / "bench_fewshot.json").read_text())
    assert set(written["jmeta"]) == {"maml 1 step", "fomaml 1 step"}
    assert all(row["timed_steps"] >= 3 for row in written["jmeta"].values())
    assert "fomaml 1 step" in (tmp_path / "bench" / "bench_fewshot.md").read_text()


@pytest.fixture
def fake_learn2learn(tmp_path):
    """A learn2learn source tree in the sdist's layout whose package ``__init__`` files refuse to
    run."""
    root = tmp_path / "learn2learn-0.2.0"
    package = root / "learn2learn"
    for folder in (package / "algorithms", package / "utils"):
        folder.mkdir(parents=True)
    refuse = "raise ImportError('the package __init__ must not run')\n"
    (package / "__init__.py").write_text(refuse)
    (package / "algorithms" / "__init__.py").write_text(refuse)
    (package / "algorithms" / "maml.py").write_text(
        "from learn2learn.utils import origin\n\nclass MAML:\n    origin = origin\n"
    )
    (package / "utils" / "__init__.py").write_text("origin = 'the fake source tree'\n")
    yield root
    for name in [
        name for name in sys.modules if name == "learn2learn" or name.startswith("learn2learn.")
    ]:
        del sys.modules[name]


def test_learn2learn_maml_loads_from_its_source_without_the_package_init(fake_learn2learn):
    from jmeta.experiments._torch_baselines import load_maml

    for source in (
        fake_learn2learn,
        fake_learn2learn / "learn2learn",
    ):  # the sdist or its package folder
        assert load_maml(str(source)).origin == "the fake source tree"


def test_learn2learn_source_errors(tmp_path, fake_learn2learn):
    from jmeta.experiments._torch_baselines import load_maml

    with pytest.raises(
        ValueError, match=r"learn2learn must be a learn2learn source folder.*got '.*nowhere'"
    ):
        load_maml(str(tmp_path / "nowhere"))
    load_maml(str(fake_learn2learn))
    other = tmp_path / "other"
    shutil.copytree(fake_learn2learn, other)
    with pytest.raises(ValueError, match="already imported from"):
        load_maml(str(other))
