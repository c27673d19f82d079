"""Run folders that can always be continued or redone, and a command line that says what it
is doing: checks before the folder is made, a lock against a second writer, damaged files
named with what to do, Ctrl-C with the resume command, and kills at random points that
resume to byte-identical files."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import jmeta
from jmeta.cli import main, run_experiment
from jmeta.errors import RunLockedError
from jmeta.runs import RunDir

TINY = [
    "methods=maml",
    "shots=5",
    "num_steps=40",
    "eval_tasks=10",
    "eval_queries=10",
    "train_shots_for_anchor=5",
    "log_every=10",
    "checkpoint_every=10",
    "plot_tasks=1",
    "eval_steps=1",
    "pretrained_baseline=false",
]


# A run long enough to be caught while it trains.
LONG_RUN = ("--no-progress", "num_steps=4000", "log_every=100", "checkpoint_every=100")


def _command(out, *extra):
    """``jmeta run sinusoid`` on TINY, with ``extra`` options and fields replacing TINY's."""
    options = [e for e in extra if e.startswith("--")]
    fields = dict(f.split("=", 1) for f in TINY + [e for e in extra if "=" in e])
    overrides = [f"{k}={v}" for k, v in fields.items()]
    return [
        sys.executable,
        "-m",
        "jmeta",
        "run",
        "sinusoid",
        "--out",
        str(out),
        *options,
        *overrides,
    ]


def _resume_command(out):
    return [sys.executable, "-m", "jmeta", "run", "--resume", str(out)]


# -- checks before the folder; a folder with no progress is empty ------------------------------


def test_a_rejected_field_leaves_no_folder_and_the_corrected_run_proceeds(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "omniglot-runs", "--out", str(out), "--no-progress", "num_runs=0"]) == 2
    assert "num_runs must be a positive integer, got 0" in capsys.readouterr().err
    assert not out.exists()  # checked before the folder was made


def test_a_run_that_fails_before_any_progress_removes_what_it_wrote(tmp_path, monkeypatch):
    from jmeta.cli import load_experiment

    sinusoid = load_experiment("sinusoid")
    monkeypatch.setattr(sinusoid, "_train", lambda *a: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        run_experiment("sinusoid", str(tmp_path / "run"), TINY, progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays, empty
    with pytest.raises(ValueError, match="boom"):
        run_experiment("sinusoid", str(tmp_path / "kept"), TINY, progress=False)
    assert os.listdir(tmp_path / "kept") == []


def test_a_folder_with_only_a_config_is_taken_over_by_a_new_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"experiment": "sinusoid", "config": {"num_steps": -1}}')
    (out / "metrics.jsonl").write_text("")
    results = run_experiment("sinusoid", str(out), TINY, progress=False)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))


def test_resuming_a_folder_without_progress_says_how_to_rerun_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    record = {"experiment": "sinusoid", "config": {"num_steps": 0}}
    (out / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="made no progress; run it again with the field"):
        run_experiment(None, None, [], resume=str(out), progress=False)


# -- one writer at a time -------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    config = jmeta.MetaLearnerConfig()
    with RunDir(tmp_path / "run", "test", config) as first:
        first.log({"stage": "train", "step": 1})
        with pytest.raises(RunLockedError, match=f"being written by process {os.getpid()}"):
            RunDir(tmp_path / "run", "test", config, resume=True)
    with RunDir(tmp_path / "run", "test", config, resume=True):  # free once the first closed
        pass


def test_two_processes_cannot_both_write_a_run_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    writer = subprocess.Popen(
        _command(out, *LONG_RUN),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").stat().st_size:
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run(_resume_command(out), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"being written by process {writer.pid}" in second.stderr
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == len(set(lines))  # no duplicated metrics from a second writer
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    with RunDir(out, "sinusoid", _saved_config(out), resume=True):  # the dead writer's lock is gone
        pass


def _saved_config(out):
    from jmeta.cli import load_experiment
    from jmeta.config import from_record

    record = json.loads((out / "config.json").read_text())
    return from_record(load_experiment(record["experiment"]).Config, record["config"])


# -- damaged files are named with what to do ----------------------------------------------


def _finished_run(tmp_path, name="run"):
    out = tmp_path / name
    results = run_experiment("sinusoid", str(out), TINY, progress=False)
    return out, results


def _forget_results(out):
    """What a run killed after its training stage's last checkpoint still lacks."""
    os.unlink(out / "results.json")
    for stage in (out / "stages").iterdir():
        os.unlink(stage)


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 cut off"])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_resumes_exactly(tmp_path, damage):
    reference, expected = _finished_run(tmp_path, "reference")
    out, _ = _finished_run(tmp_path)
    _forget_results(out)
    checkpoint = out / "checkpoints" / "maml-k5.npz"
    assert (out / "checkpoints" / "maml-k5.previous.npz").exists()
    checkpoint.write_bytes(damage)
    with pytest.raises(ValueError, match="maml-k5.npz is damaged .* previous checkpoint") as e:
        run_experiment(None, None, [], resume=str(out), progress=False)
    assert f"rm {checkpoint} && jmeta run --resume {out}" in str(e.value)
    os.unlink(checkpoint)
    assert run_experiment(None, None, [], resume=str(out), progress=False) == expected
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()


def test_a_damaged_stage_result_and_config_are_named(tmp_path, capsys):
    out, expected = _finished_run(tmp_path)
    os.unlink(out / "results.json")
    stage = next((out / "stages").iterdir())
    stage.write_text("")
    with pytest.raises(ValueError, match=f"stage result {stage} is empty .* rm {stage}"):
        run_experiment(None, None, [], resume=str(out), progress=False)
    os.unlink(stage)
    assert run_experiment(None, None, [], resume=str(out), progress=False) == expected
    (out / "config.json").write_text('{"experiment": "sinus')
    assert main(["run", "--resume", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"config {out / 'config.json'} is not valid JSON" in error
    assert "Traceback" not in error


def test_an_out_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file" / "run", "/proc/jmeta-cannot-write-here/run"):
        assert main(["run", "sinusoid", "--out", str(out), *TINY]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"jmeta: error: --out {out}: cannot write the run folder")
        assert error.count("\n") == 1


# -- the command line: fields, progress, Ctrl-C --------------------------------------------


@pytest.mark.parametrize(
    "field, message",
    [
        ("methods=", "'methods' is empty"),
        ("eval_steps=", "'eval_steps' is empty"),
        ("shots=", "'shots' is empty"),
        ("shots=5,,10", "'shots' has an empty entry"),
        ("num_steps=", "'num_steps' is empty; expected int"),
        ("shots=5,5", "'shots' lists 5 more than once"),
        ("methods=maml,metasgd,maml", "'methods' lists maml more than once"),
    ],
)
def test_empty_and_repeated_fields_are_refused_before_any_work(
    tmp_path, monkeypatch, field, message
):
    from tests.helpers import assert_refused_before_work

    assert_refused_before_work(tmp_path, monkeypatch, "sinusoid", field, message, "_train")
    assert not (tmp_path / "run").exists()


def test_a_field_given_twice_is_refused(tmp_path, capsys):
    assert (
        main(["run", "sinusoid", "--out", str(tmp_path / "run"), "num_steps=5", "num_steps=7"]) == 2
    )
    assert "'num_steps' is given twice" in capsys.readouterr().err


def test_the_terminal_shows_the_folder_compiling_stage_k_of_n_and_a_line_per_stage(
    tmp_path, capsys
):
    out = tmp_path / "run"
    run_experiment("sinusoid", str(out), TINY[1:] + ["methods=maml,fomaml"], report=True)
    error = capsys.readouterr().err
    assert error.startswith(f"run folder: {out}\n")
    assert "[1/2] maml-k5 (compiling)" in error and "[2/2] fomaml-k5" in error
    assert "~" in error and " left" in error  # the whole run's estimate while stage 1 runs
    assert "[1/2] maml-k5: 40 steps, done in" in error  # the line kept per finished stage


def test_ctrl_c_stops_cleanly_with_the_resume_command(tmp_path):
    out = tmp_path / "run"
    # A shell's background job inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: under a test run started with `&` the Ctrl-C would be lost.
    # The child puts Python's handler back itself (a preexec_fn would fork a JAX process).
    python, _, _, *arguments = _command(out, *LONG_RUN)
    with_handler = (
        "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "runpy.run_module('jmeta', run_name='__main__', alter_sys=True)"
    )
    process = subprocess.Popen(
        [python, "-c", with_handler, *arguments],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    first = process.stderr.readline()
    assert first == f"run folder: {out}\n"  # printed as the run starts
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").stat().st_size:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 130
    assert f"jmeta: interrupted; continue it with: jmeta run --resume {out}" in rest
    assert "Traceback" not in rest


# -- kills at random points resume to byte-identical files ---------------------------------


def _files(out):
    return {
        name: (out / name).read_bytes()
        for name in ("results.json", "metrics.jsonl", "table.md", "table.csv")
    } | {f"stages/{p.name}": p.read_bytes() for p in sorted((out / "stages").iterdir())}


def _run_until_killed(command, delay):
    """Starts ``command``; ``delay`` seconds after it printed its run folder (None: never),
    kills it with SIGKILL. Returns the seconds from the run folder line to the end."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    line = process.stderr.readline()  # "run folder: DIR", once the fields were checked
    started = time.monotonic()
    if delay is None:
        process.stderr.read()
        assert process.wait(timeout=600) == 0, line
    else:
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    process.stderr.close()
    return time.monotonic() - started


def test_runs_killed_at_random_points_resume_to_byte_identical_files(tmp_path):
    # Metrics lines every 5 steps, checkpoints every 20: a kill can fall between a logged
    # line and the checkpoint that covers it, the window where lines used to be duplicated.
    fields = ("--no-progress", "log_every=5", "checkpoint_every=20")
    reference = tmp_path / "reference"
    work = _run_until_killed(_command(reference, *fields), None)
    expected = _files(reference)
    for seed in range(3):
        out = tmp_path / f"killed-{seed}"
        _run_until_killed(_command(out, *fields), random.Random(seed).uniform(0, work))
        _run_until_killed([*_resume_command(out), "--no-progress"], None)
        assert _files(out) == expected, seed
