"""Several processes on one host (``jax.distributed`` over 127.0.0.1): the same command in
each gives the one-process result, process 0 alone writes the run folder, and the
checkpoints are orbax checkpoints of the global state. Bounded in time, on a free port.
"""

import json
import os
import socket
import subprocess
import sys

TINY = [
    "methods=maml",
    "shots=5",
    "num_steps=8",
    "meta_batch=4",
    "eval_tasks=4",
    "pretrained_baseline=false",
    "eval_queries=5",
    "train_shots_for_anchor=5",
    "log_every=4",
    "checkpoint_every=4",
    "plot_tasks=1",
    "eval_steps=1",
    "devices=0",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def jmeta(*args) -> list[str]:
    return [sys.executable, "-m", "jmeta", "run", "sinusoid", "--no-progress", *args, *TINY]


def assert_close(a, b, path=""):
    """Equal structure and strings; numbers within float32 rounding (the all-reduce adds
    the devices' partial sums in another order across processes)."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for key in a:
            assert_close(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for index, (u, v) in enumerate(zip(a, b)):
            assert_close(u, v, f"{path}/{index}")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (path, a, b)
    elif isinstance(a, str) and "±" in a:  # a formatted "mean ± ci" cell
        assert_close([float(x) for x in a.split("±")], [float(x) for x in b.split("±")], path)
    else:
        assert a == b, (path, a, b)


def results(folder) -> dict:
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def two_processes(where: list[str]) -> list[tuple[str, str]]:
    """Runs the tiny sinusoid command as processes 0 and 1 of one run on a free port."""
    port = free_port()
    hosts = [
        subprocess.Popen(
            jmeta(
                "--cpu-devices",
                "2",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(index),
                *where,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    try:
        outputs = [host.communicate(timeout=300) for host in hosts]
    finally:
        for host in hosts:
            host.kill()
    for host, (_, err) in zip(hosts, outputs):
        assert host.returncode == 0, err[-3000:]
    return outputs


def test_two_processes_equal_one(tmp_path):
    one = tmp_path / "one"
    # One process with 4 simulated devices: the same 4-device mesh as 2 processes x 2.
    done = subprocess.run(
        jmeta("--cpu-devices", "4", "--out", str(one)), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    two = tmp_path / "two"
    outputs = two_processes(["--out", str(two)])

    assert_close(results(two), results(one))
    # Process 0 alone logged: each step's line once.
    with open(two / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if line.strip()]
    with open(one / "metrics.jsonl") as f:
        assert steps == [json.loads(line)["step"] for line in f if line.strip()]
    checkpoints = sorted(os.listdir(two / "checkpoints"))
    assert checkpoints and all(name.endswith(".orbax") for name in checkpoints)
    assert any(name.endswith(".npz") for name in os.listdir(one / "checkpoints"))
    assert "run folder" in outputs[0][1] and "run folder" not in outputs[1][1]

    # Without its evaluation results, the run resumed by both processes restores its last
    # orbax checkpoint (the global state, on the two processes' devices), evaluates the
    # restored meta-parameters again and writes the same numbers.
    before = results(two)
    with open(two / "metrics.jsonl") as f:
        metrics = f.read()
    saved = {name: os.stat(two / "checkpoints" / name).st_mtime_ns for name in checkpoints}
    for name in os.listdir(two / "stages"):
        os.unlink(two / "stages" / name)
    os.unlink(two / "results.json")
    two_processes(["--resume", str(two)])
    assert_close(results(two), before)
    # Restored, not trained again: no checkpoint was written anew.
    assert {
        name: os.stat(two / "checkpoints" / name).st_mtime_ns
        for name in os.listdir(two / "checkpoints")
    } == saved
    with open(two / "metrics.jsonl") as f:
        assert f.read() == metrics
