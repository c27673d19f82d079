"""The outer step compiles once; training checkpoints, resumes exactly and is reproducible."""

import jax
import numpy as np
import pytest

import jmeta
from jmeta.benchmark import counting_compiles
from jmeta.checkpoint import load_pytree, save_pytree
from jmeta.runs import RunDir
from jmeta.training import fit
from tests.helpers import small_mlp


def _meta_step():
    meta_learner = jmeta.make_meta_learner(small_mlp(), jmeta.algorithm_config("metasgd"))
    meta_step = jmeta.make_meta_step(meta_learner, jmeta.make_sinusoid_sampler(5, 10), 4)
    return meta_learner, meta_step


def test_jitted_meta_step_does_not_retrace():
    meta_learner, meta_step = _meta_step()
    state = meta_step.init(meta_learner.init())
    key = jax.random.key(0)
    state, metrics = meta_step.step(state, key)
    with counting_compiles() as compiles:  # jax.monitoring's public trace and compile events
        for _ in range(2):
            state, metrics = meta_step.step(state, key)
    assert compiles == {"traces": 0, "compiles": 0}
    assert int(state.step) == 3 and np.isfinite(float(metrics["post/loss"]))
    with counting_compiles() as compiles:
        for _ in range(2):
            state, _ = meta_step.run(state, key, 5)
    assert compiles["compiles"] == 1  # the first run compiles once, the second reuses it


def test_step_and_run_agree():
    meta_learner, meta_step = _meta_step()
    key = jax.random.key(3)
    stepped = meta_step.init(meta_learner.init())
    for _ in range(4):
        stepped, _ = meta_step.step(stepped, key)
    scanned, _ = meta_step.run(meta_step.init(meta_learner.init()), key, 4)
    for a, b in zip(jax.tree_util.tree_leaves(stepped), jax.tree_util.tree_leaves(scanned)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


class _Crash(Exception):
    pass


def _crash_after(meta_step, calls):
    """A MetaStep whose ``run`` raises on call number ``calls`` (as if the process was killed)."""
    count = {"n": 0}

    def run(state, key, num_steps):
        count["n"] += 1
        if count["n"] == calls:
            raise _Crash()
        return meta_step.run(state, key, num_steps)

    return meta_step._replace(run=run)


def _fit(meta_learner, meta_step, run, num_steps=60):
    return fit(
        meta_step,
        meta_step.init(meta_learner.init()),
        jax.random.key(5),
        num_steps,
        log_every=10,
        checkpoint_every=20,
        run=run,
        progress=False,
    )


def test_resume_after_a_crash_gives_identical_state_and_metrics(tmp_path):
    meta_learner, meta_step = _meta_step()
    config = jmeta.MetaLearnerConfig()
    reference_run = RunDir(tmp_path / "reference", "test", config)
    reference = _fit(meta_learner, meta_step, reference_run)

    crashed_run = RunDir(tmp_path / "crashed", "test", config)
    with pytest.raises(_Crash):
        _fit(
            meta_learner, _crash_after(meta_step, 5), crashed_run
        )  # dies at step 40, last checkpoint at 40
    assert len(crashed_run.metrics()) == 4
    crashed_run.close()  # the process that died let its lock go
    with pytest.raises(_Crash), RunDir(tmp_path / "crashed", "test", config, resume=True) as run:
        _fit(meta_learner, _crash_after(meta_step, 2), run)
    resumed_run = RunDir(tmp_path / "crashed", "test", config, resume=True)
    resumed = _fit(meta_learner, meta_step, resumed_run)

    assert int(resumed.step) == 60
    for a, b in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed_run.metrics() == reference_run.metrics()


def test_same_seed_same_result():
    meta_learner, meta_step = _meta_step()
    first = _fit(meta_learner, meta_step, None, 30)
    second = _fit(meta_learner, meta_step, None, 30)
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    meta_learner, meta_step = _meta_step()
    state = meta_step.init(meta_learner.init())
    save_pytree(tmp_path / "state.npz", state)
    restored = load_pytree(tmp_path / "state.npz", state)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = jmeta.make_meta_learner(small_mlp(hidden=(3,)), jmeta.algorithm_config("metasgd"))
    other_step = jmeta.make_meta_step(other, jmeta.make_sinusoid_sampler(5, 10), 4)
    with pytest.raises(ValueError, match="different configuration"):
        load_pytree(tmp_path / "state.npz", other_step.init(other.init()))
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # no temporary file left behind


def test_run_files_get_the_permissions_of_any_new_file(tmp_path):
    # mkstemp makes private files (0600); a lab's shared results folder must stay readable.
    run = RunDir(tmp_path / "run", "sinusoid", jmeta.MetaLearnerConfig())
    run.log({"stage": "train", "step": 1, "loss": 0.5})
    run.write_results({"accuracy": 0.9})
    run.save_checkpoint("train", {"w": np.zeros(2)})
    (tmp_path / "plain").write_text("")
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} == {
        ".lock",
        "config.json",
        "metrics.jsonl",
        "results.json",
        "train.npz",
    }
    assert {p.stat().st_mode & 0o777 for p in files} == {expected}


def test_new_file_mode_follows_the_umask_with_or_without_proc(monkeypatch):
    import builtins
    import os

    from jmeta import checkpoint

    previous = os.umask(0o027)
    try:
        assert checkpoint._new_file_mode() == 0o640
        real_open = builtins.open

        def without_proc(path, *args, **kwargs):
            if path == "/proc/self/status":
                raise OSError("no /proc here")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", without_proc)
        assert checkpoint._new_file_mode() == 0o640
        assert os.umask(0o027) == 0o027  # the fallback put the umask back
    finally:
        os.umask(previous)


def test_fit_validates_its_schedule():
    meta_learner, meta_step = _meta_step()
    state = meta_step.init(meta_learner.init())
    with pytest.raises(ValueError, match="num_steps"):
        fit(meta_step, state, jax.random.key(0), 0, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        fit(
            meta_step,
            state,
            jax.random.key(0),
            10,
            log_every=3,
            checkpoint_every=10,
            progress=False,
        )


def test_a_crash_before_the_first_checkpoint_resumes_without_duplicated_metrics(tmp_path):
    meta_learner, meta_step = _meta_step()
    config = jmeta.MetaLearnerConfig()
    with RunDir(tmp_path / "reference", "test", config) as reference_run:
        _fit(meta_learner, meta_step, reference_run)
        reference = reference_run.metrics()
    with RunDir(tmp_path / "crashed", "test", config) as crashed_run:
        with pytest.raises(_Crash):  # step 10 is logged, the first checkpoint (20) never written
            _fit(meta_learner, _crash_after(meta_step, 2), crashed_run)
        with open(crashed_run.metrics_path, "a") as f:
            f.write('{"stage": "train", "st')  # and the line being written was cut off
    with RunDir(tmp_path / "crashed", "test", config, resume=True) as resumed_run:
        _fit(meta_learner, meta_step, resumed_run)
        assert resumed_run.metrics() == reference
        assert (tmp_path / "crashed" / "metrics.jsonl").read_text() == (
            tmp_path / "reference" / "metrics.jsonl"
        ).read_text()
