"""Conv4 and prototypical networks; MAML on classification through the same core."""

import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmeta
from jmeta.models import conv4_learner
from jmeta.protonet import make_protonet, prototype_logits, prototypes
from jmeta.tasks import make_episode_sampler
from jmeta.training import fit


def test_prototype_logits_against_a_hand_computation():
    embeddings = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]])
    labels = jnp.array([0, 0, 1, 1])
    centres = prototypes(embeddings, labels, 2)
    np.testing.assert_allclose(centres, [[1.0, 0.0], [0.0, 3.0]])
    query = jnp.array([[1.0, 1.0], [3.0, 3.0]])
    # |(1,1)-(1,0)|^2 = 1, |(1,1)-(0,3)|^2 = 1 + 4 = 5; |(3,3)-(1,0)|^2 = 4 + 9, |(3,3)-(0,3)|^2 = 9
    np.testing.assert_allclose(prototype_logits(query, centres), [[-1.0, -5.0], [-13.0, -9.0]])


def test_conv4_shapes():
    images = jnp.zeros((6, 28, 28, 1))
    for strided in (False, True):
        classifier = conv4_learner(jax.random.key(0), ways=5, filters=8, strided=strided)
        chex.assert_shape(classifier.apply_fn(classifier.params, images), (6, 5))
        embedding = conv4_learner(jax.random.key(0), ways=0, filters=8, strided=strided)
        chex.assert_shape(embedding.apply_fn(embedding.params, images), (6, 8))  # 28 -> 1x1 after 4 halvings
    assert "head" in classifier.params and "norm_3" in classifier.params
    with pytest.raises(ValueError, match="at least 16x16 images"):
        conv4_learner(jax.random.key(0), (12, 12, 1))


def _easy_images(classes=20, examples=8, seed=0):
    """Each class is a fixed random 12x12 pattern plus a little noise: easy to tell apart."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((classes, 1, 12, 12, 1)) > 0.5
    return (patterns + 0.2 * rng.normal(size=(classes, examples, 12, 12, 1))).astype(np.float32)


def _accuracy(meta_learner, meta_params, sampler, steps):
    tasks = jmeta.sample_tasks(sampler, jax.random.key(99), 50)
    return float(meta_learner.evaluate(meta_params, tasks, steps)["accuracy"][:, -1].mean())


def test_tiny_protonet_training_beats_chance():
    sampler = make_episode_sampler(_easy_images(), ways=5, shots=1, queries=3)
    protonet = make_protonet(conv4_learner(jax.random.key(0), (12, 12, 1), ways=0, filters=8, strided=True), 5)
    meta_step = jmeta.make_meta_step(protonet, sampler, 4, jmeta.default_optimizer(3e-3))
    state = fit(meta_step, meta_step.init(protonet.init()), jax.random.key(1), 30, log_every=10,
                checkpoint_every=10, progress=False, scan=False)
    assert _accuracy(protonet, state.meta_params, sampler, 0) > 0.6  # chance is 0.2


@pytest.mark.parametrize("algorithm", ["maml", pytest.param("fomaml", marks=pytest.mark.slow),
                                       pytest.param("metasgd", marks=pytest.mark.slow),
                                       pytest.param("anil", marks=pytest.mark.slow)])
def test_tiny_gradient_based_classification_beats_chance(algorithm):
    sampler = make_episode_sampler(_easy_images(), ways=5, shots=1, queries=3)
    learner = conv4_learner(jax.random.key(0), (12, 12, 1), ways=5, filters=8, strided=True)
    meta_learner = jmeta.make_meta_learner(learner, jmeta.algorithm_config(algorithm, loss="ce", inner_lr=0.4,
                                                                           num_inner_steps=2))
    meta_step = jmeta.make_meta_step(meta_learner, sampler, 4, jmeta.default_optimizer(3e-3))
    state = fit(meta_step, meta_step.init(meta_learner.init()), jax.random.key(1), 40, log_every=10,
                checkpoint_every=10, progress=False, scan=False)
    assert _accuracy(meta_learner, state.meta_params, sampler, 2) > 0.5


def test_fewshot_benchmark_writes_json(tmp_path):
    import json

    from jmeta.cli import run_experiment

    overrides = ["ways=2", "queries=1", "meta_batch=2", "inner_steps=1", "image_size=16", "filters=4",
                 "min_seconds=0.05", "matmul_size=64", "torch_baseline=false", "task_chunks=1"]
    results = run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    written = json.loads((tmp_path / "bench" / "bench_fewshot.json").read_text())
    names = {f"{method}, chunks of 1 tasks" for method in ("maml 1 step", "fomaml 1 step", "protonet")}
    assert set(written["jmeta"]) == names == set(results["jmeta"])
    assert written["notes"] and written["config"]["task_chunks"] == [1]
    for measured in written["jmeta"].values():
        assert measured["meta_steps_per_second"] > 0 and measured["flops_per_step"] > 0
        assert 0 < measured["fraction_of_matmul_peak"]
    assert written["machine"]["matmul_flops_per_second"] > 0


def test_fewshot_benchmark_alternates_jmeta_rows_with_the_pytorch_loop(tmp_path, monkeypatch):
    # The PyTorch loop is timed in the same rounds as the jmeta rows; a stand-in replaces it
    # (PyTorch is not a test dependency). "maml 1 step" names both a jmeta row and the loop.
    import time

    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")  # the module run_experiment runs
    calls = []

    def stand_in(config, inner_steps):
        return (lambda: (calls.append(inner_steps), time.sleep(0.01))), {"device": "stand-in"}
    monkeypatch.setattr(bench_fewshot, "_torch_maml", stand_in)
    # learn2learn's MAML gets a row of its own in the same rounds when it loads.
    learn2learn_calls = []
    monkeypatch.setattr(bench_fewshot, "load_maml", lambda source: object)
    monkeypatch.setattr(bench_fewshot, "_learn2learn_maml", lambda config, inner_steps, maml_class: (
        (lambda: (learn2learn_calls.append(maml_class), time.sleep(0.02))), {"device": "learn2learn stand-in"}))
    overrides = ["ways=2", "queries=1", "meta_batch=2", "inner_steps=1", "image_size=16", "filters=4",
                 "min_seconds=0", "matmul_size=64", "task_chunks=0"]
    results = run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    torch_row, jmeta_row = results["torch_loop"]["maml 1 step"], results["jmeta"]["maml 1 step"]
    assert torch_row["device"] == "stand-in" and torch_row["timed_steps"] == len(calls) - 1 >= 3
    assert torch_row["seconds_per_step"] >= 0.01 and jmeta_row["timed_steps"] >= 3
    assert jmeta_row["seconds_min"] != torch_row["seconds_min"]  # timed separately, not one row twice
    assert jmeta_row["over_torch_loop"] == pytest.approx(torch_row["seconds_per_step"] / jmeta_row["seconds_per_step"])
    learn2learn_row = results["learn2learn"]["maml 1 step"]
    assert learn2learn_row["device"] == "learn2learn stand-in" and learn2learn_row["seconds_per_step"] >= 0.02
    assert learn2learn_row["timed_steps"] == len(learn2learn_calls) - 1 and set(learn2learn_calls) == {object}
    assert jmeta_row["over_learn2learn"] == pytest.approx(
        learn2learn_row["seconds_per_step"] / jmeta_row["seconds_per_step"])
    assert "learn2learn, maml 1 step" in (tmp_path / "bench" / "bench_fewshot.md").read_text()


@pytest.mark.parametrize("field, message", [
    ("meta_batch=0", "meta_batch must be a positive integer, got 0"),
    ("matmul_size=0", "matmul_size must be a positive integer, got 0"),
    ("ways=1", "ways must be an integer >= 2, got 1"),
    ("inner_steps=1,0", "inner_steps must be a positive integer, got 0"),
    ("task_chunks=-2", "task_chunks must be a non-negative integer, got -2"),
    ("min_seconds=-1", "min_seconds must be a finite number >= 0, got -1"),
    ("convs=cudnn", "unknown convs 'cudnn'; expected one of 'im2col', 'xla'"),
])
def test_fewshot_benchmark_refuses_a_bad_field_before_measuring(tmp_path, monkeypatch, field, message):
    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")
    monkeypatch.setattr(bench_fewshot, "_matmul_peak", lambda size: pytest.fail("measured before checking"))
    with pytest.raises(ValueError, match=message):
        run_experiment("bench-fewshot", str(tmp_path / "bench"), [field, "torch_baseline=false"], progress=False)


def test_fewshot_benchmark_stops_timing_a_slow_row_once_it_has_its_timings(monkeypatch):
    # On a GPU jmeta's step is 150x faster than the PyTorch loop: rounds that reran every row
    # until the fast one had its seconds ran the loop for ten minutes. A fake clock stands in
    # (steps of 1/64 s add up exactly in binary).
    from jmeta.cli import load_experiment

    bench_fewshot = load_experiment("bench-fewshot")
    clock, runs = [0.0], {"fast": 0, "slow": 0}

    def call(name, seconds):
        def run():
            runs[name] += 1
            clock[0] += seconds
        return run
    monkeypatch.setattr(bench_fewshot, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    seconds = bench_fewshot._alternating({"fast": call("fast", 1 / 64), "slow": call("slow", 1.0)}, min_seconds=2.0)
    assert len(seconds["slow"]) == 3 and runs["slow"] == 4  # three timings after one warm-up
    assert sum(seconds["fast"]) >= 2.0 and runs["fast"] == len(seconds["fast"]) + 1 == 129
    assert seconds["slow"] == pytest.approx([1.0] * 3) and max(seconds["fast"]) == 1 / 64


def test_fewshot_benchmark_times_learn2learn_from_a_source_without_the_pytorch_loop(tmp_path, monkeypatch):
    # learn2learn=PATH asks for its row; torch_baseline=false drops only the PyTorch loop.
    import time

    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")
    sources = []
    monkeypatch.setattr(bench_fewshot, "_torch_maml", lambda config, inner_steps: pytest.fail("loop not asked for"))
    monkeypatch.setattr(bench_fewshot, "load_maml", lambda source: (sources.append(source), object)[1])
    monkeypatch.setattr(bench_fewshot, "_learn2learn_maml", lambda config, inner_steps, maml_class: (
        (lambda: time.sleep(0.01)), {"device": "learn2learn stand-in"}))
    overrides = ["ways=2", "queries=1", "meta_batch=2", "inner_steps=1", "image_size=16", "filters=4",
                 "min_seconds=0", "matmul_size=64", "task_chunks=0", "torch_baseline=false",
                 "learn2learn=/src/learn2learn-0.2.0"]
    results = run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    assert sources == ["/src/learn2learn-0.2.0"] and results["torch_loop"] == {}
    learn2learn_row, jmeta_row = results["learn2learn"]["maml 1 step"], results["jmeta"]["maml 1 step"]
    assert learn2learn_row["device"] == "learn2learn stand-in" and jmeta_row["over_torch_loop"] is None
    assert jmeta_row["over_learn2learn"] == pytest.approx(
        learn2learn_row["seconds_per_step"] / jmeta_row["seconds_per_step"])


def test_fewshot_benchmark_keeps_the_groups_it_timed_when_a_later_group_fails(tmp_path, monkeypatch):
    # A device run cut off in its 5-step group must not lose the 1-step rows it already timed.
    import json

    from jmeta.cli import load_experiment, run_experiment

    bench_fewshot = load_experiment("bench-fewshot")
    built = bench_fewshot.make_meta_learner

    def fails_at_two_steps(learner, config):
        if config.num_inner_steps == 2:
            raise RuntimeError("stopped in the second group")
        return built(learner, config)
    monkeypatch.setattr(bench_fewshot, "make_meta_learner", fails_at_two_steps)
    overrides = ["ways=2", "queries=1", "meta_batch=2", "inner_steps=1,2", "image_size=16", "filters=4",
                 "min_seconds=0", "matmul_size=64", "task_chunks=0", "torch_baseline=false"]
    with pytest.raises(RuntimeError, match="second group"):
        run_experiment("bench-fewshot", str(tmp_path / "bench"), overrides, progress=False)
    written = json.loads((tmp_path / "bench" / "bench_fewshot.json").read_text())
    assert set(written["jmeta"]) == {"maml 1 step", "fomaml 1 step"}
    assert all(row["timed_steps"] >= 3 for row in written["jmeta"].values())
    assert "fomaml 1 step" in (tmp_path / "bench" / "bench_fewshot.md").read_text()


@pytest.fixture
def fake_learn2learn(tmp_path):
    """A learn2learn source tree in the sdist's layout whose package ``__init__`` files refuse to run."""
    root = tmp_path / "learn2learn-0.2.0"
    package = root / "learn2learn"
    for folder in (package / "algorithms", package / "utils"):
        folder.mkdir(parents=True)
    refuse = "raise ImportError('the package __init__ must not run')\n"
    (package / "__init__.py").write_text(refuse)
    (package / "algorithms" / "__init__.py").write_text(refuse)
    (package / "algorithms" / "maml.py").write_text("from learn2learn.utils import origin\n\nclass MAML:\n"
                                                    "    origin = origin\n")
    (package / "utils" / "__init__.py").write_text("origin = 'the fake source tree'\n")
    yield root
    for name in [name for name in sys.modules if name == "learn2learn" or name.startswith("learn2learn.")]:
        del sys.modules[name]


def test_learn2learn_maml_loads_from_its_source_without_the_package_init(fake_learn2learn):
    from jmeta.experiments._learn2learn import load_maml

    for source in (fake_learn2learn, fake_learn2learn / "learn2learn"):  # the sdist or its package folder
        assert load_maml(str(source)).origin == "the fake source tree"


def test_learn2learn_source_errors(tmp_path, fake_learn2learn):
    from jmeta.experiments._learn2learn import load_maml

    with pytest.raises(ValueError, match=r"learn2learn must be a learn2learn source folder.*got '.*nowhere'"):
        load_maml(str(tmp_path / "nowhere"))
    load_maml(str(fake_learn2learn))
    other = tmp_path / "other"
    shutil.copytree(fake_learn2learn, other)
    with pytest.raises(ValueError, match="already imported from"):
        load_maml(str(other))


def test_conv3x3_matches_flax_conv():
    import flax.linen as nn

    from jmeta.models import Conv3x3

    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    for stride in (1, 2):
        ours = Conv3x3(5, stride)
        params = ours.init(jax.random.key(1), x)
        reference = nn.Conv(5, (3, 3), strides=stride, padding="SAME")
        np.testing.assert_allclose(ours.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride, max_row_patch_positions, keep_patches",
                         [(1, 0, False), (1, 0, True), (1, 10_000, False), (2, 0, False)],
                         ids=["im2col", "im2col-kept-patches", "row-patches", "stride-2"])
def test_conv3x3_derivatives_to_third_order_match_lax_conv(x64, monkeypatch, stride, max_row_patch_positions,
                                                           keep_patches):
    # Float64 at a small shape: the hand-written VJPs of the stride-1 convolution (and of its
    # kernel gradient) must agree with lax.conv's autodiff to the first, the second (as
    # second-order MAML needs) and the third order, on the im2col and the row-patch path,
    # with the forward's patches recomputed in the backward pass or kept for it.
    from jmeta import models
    from jmeta.models import conv3x3

    monkeypatch.setattr(models, "ROW_PATCH_MAX_POSITIONS", max_row_patch_positions)

    x = jax.random.normal(jax.random.key(0), (3, 7, 8, 4), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5), jnp.float64)
    assert models._uses_row_patches(x) == (max_row_patch_positions > 3 * 7 * 8)

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def gradient_norm(conv):
        def loss(x, kernel):
            return jnp.sum(jnp.sin(conv(x, kernel)) ** 2)

        def norm(x, kernel):
            gx, gk = jax.grad(loss, (0, 1))(x, kernel)
            return jnp.sum(gx ** 2) + jnp.sum(gk ** 2)

        def second_norm(x, kernel):  # the kernel gradient's own VJP, differentiated once more
            gx, gk = jax.grad(norm, (0, 1))(x, kernel)
            return jnp.sum(gx ** 2) + jnp.sum(gk ** 2)
        return (jax.grad(loss, (0, 1))(x, kernel), jax.grad(norm, (0, 1))(x, kernel),
                jax.grad(second_norm, (0, 1))(x, kernel))

    ours = gradient_norm(lambda x, k: conv3x3(x, k, stride, keep_patches=keep_patches))
    chex.assert_trees_all_close(ours, gradient_norm(reference), rtol=1e-9, atol=1e-9)


def test_kept_patches_change_no_gradient_under_vmap_with_a_shared_kernel():
    # Prototypical networks' shape of use: tasks vmapped, one kernel for all of them.
    from jmeta.models import conv3x3

    x = jax.random.normal(jax.random.key(0), (2, 3, 6, 6, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))

    def gradients(keep_patches):
        def loss(x, kernel):
            out = jax.vmap(lambda task: conv3x3(task, kernel, keep_patches=keep_patches))(x)
            return jnp.sum(jnp.tanh(out) ** 2)
        return jax.jit(jax.grad(loss, (0, 1)))(x, kernel)
    chex.assert_trees_all_close(gradients(True), gradients(False), rtol=1e-5, atol=1e-5)


def test_conv4_keeps_patches_for_the_embedding_network_only():
    x = jax.random.normal(jax.random.key(2), (3, 16, 16, 1))

    def keeps_patches(learner):  # the kept patches sit behind an optimisation barrier
        gradient = jax.grad(lambda params: jnp.sum(learner.apply_fn(params, x)))
        return "optimization_barrier" in str(jax.make_jaxpr(gradient)(learner.params))

    embedding = conv4_learner(jax.random.key(0), (16, 16, 1), ways=0)
    recomputing = conv4_learner(jax.random.key(0), (16, 16, 1), ways=0, keep_patches=False)
    assert keeps_patches(embedding) and not keeps_patches(recomputing)
    assert not keeps_patches(conv4_learner(jax.random.key(0), (16, 16, 1), ways=5))
    assert keeps_patches(conv4_learner(jax.random.key(0), (16, 16, 1), ways=5, keep_patches=True))
    np.testing.assert_allclose(embedding.apply_fn(embedding.params, x), recomputing.apply_fn(recomputing.params, x),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="keep_patches must be True, False or None, got 'yes'"):
        conv4_learner(jax.random.key(0), (16, 16, 1), ways=0, keep_patches="yes")


def test_pool_first_block_matches_normalise_relu_then_pool(x64):
    # Pooling before the per-channel affine map is exact, also where the learned scale is
    # negative (those channels pool by their minimum); checked on values and gradients.
    import flax.linen as nn

    from jmeta.models import TaskBatchNorm, max_pool2x2

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            return max_pool2x2(nn.relu(TaskBatchNorm(name="norm")(x)))

    class PoolFirst(nn.Module):
        @nn.compact
        def __call__(self, x):
            return TaskBatchNorm(relu_pool=True, name="norm")(x)

    x = jax.random.normal(jax.random.key(0), (4, 9, 7, 6), jnp.float64)  # odd sizes: last row/column dropped
    params = {"params": {"norm": {"scale": jnp.array([1.5, -0.5, 0.2, -2.0, 1.0, -1.0]),
                                  "bias": jnp.array([0.1, 0.3, -0.2, 0.0, -1.0, 0.5])}}}
    np.testing.assert_allclose(nn.max_pool(x, (2, 2), (2, 2), "VALID"), max_pool2x2(x))
    expected = Reference().apply(params, x)
    chex.assert_shape(expected, (4, 4, 3, 6))
    np.testing.assert_allclose(PoolFirst().apply(params, x), expected, rtol=1e-12, atol=1e-12)

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
    chex.assert_trees_all_close(jax.grad(loss(PoolFirst()), (0, 1))(params, x),
                                jax.grad(loss(Reference()), (0, 1))(params, x), rtol=1e-10, atol=1e-10)


def test_first_block_from_patch_statistics_matches_the_plain_block(x64):
    # conv4's first pooled block takes batch-norm statistics from the patch covariance and
    # pools before the bias; it must equal conv -> batch norm -> ReLU -> pool, values and
    # gradients, including channels with a negative scale.
    import flax.linen as nn

    from jmeta.models import batch_affine, conv3x3, conv_norm_relu_pool, max_pool2x2

    x = jax.random.normal(jax.random.key(0), (4, 9, 8, 1), jnp.float64)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 6), jnp.float64)
    bias = jax.random.normal(jax.random.key(2), (6,), jnp.float64)
    scale = jnp.array([1.5, -0.5, 0.2, -2.0, 1.0, -1.0])
    norm_bias = jnp.array([0.1, 0.3, -0.2, 0.0, -1.0, 0.5])

    def plain(x, kernel, bias, scale, norm_bias):
        y = conv3x3(x, kernel) + bias.reshape((1, 1, 1, -1))
        multiplier, offset = batch_affine(y, scale, norm_bias, 1e-5)
        return max_pool2x2(nn.relu(y * multiplier + offset))

    args = (x, kernel, bias, scale, norm_bias)
    np.testing.assert_allclose(conv_norm_relu_pool(*args), plain(*args), rtol=1e-12, atol=1e-12)
    loss = lambda block: lambda *a: jnp.sum(jnp.sin(block(*a)))
    chex.assert_trees_all_close(jax.grad(loss(conv_norm_relu_pool), range(5))(*args),
                                jax.grad(loss(plain), range(5))(*args), rtol=1e-10, atol=1e-10)


def test_pooled_conv4_keeps_the_parameter_tree_of_its_blocks():
    learner = conv4_learner(jax.random.key(0), (28, 28, 1), ways=5, filters=8)
    shapes = jax.tree_util.tree_map(jnp.shape, learner.params)
    for block in range(4):
        assert shapes[f"conv_{block}"] == {"kernel": (3, 3, 1 if block == 0 else 8, 8), "bias": (8,)}
        assert shapes[f"norm_{block}"] == {"scale": (8,), "bias": (8,)}
    assert shapes["head"] == {"kernel": (8, 5), "bias": (5,)}


def test_conv4_with_lax_conv_is_the_same_network():
    # conv="xla" (lax.conv, for GPUs) and the default im2col path: same parameters, same outputs.
    images = jax.random.normal(jax.random.key(3), (6, 28, 28, 1))
    for strided in (False, True):
        im2col = conv4_learner(jax.random.key(0), ways=5, filters=8, strided=strided)
        xla = conv4_learner(jax.random.key(0), ways=5, filters=8, strided=strided, conv="xla")
        chex.assert_trees_all_equal(im2col.params, xla.params)
        np.testing.assert_allclose(xla.apply_fn(im2col.params, images), im2col.apply_fn(im2col.params, images),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown conv 'cudnn'"):
        conv4_learner(jax.random.key(0), conv="cudnn")


def test_task_chunks_give_the_same_protonet_gradient():
    sampler = make_episode_sampler(_easy_images(), ways=3, shots=1, queries=2)
    embedding = conv4_learner(jax.random.key(0), (12, 12, 1), ways=0, filters=4, strided=True)
    tasks = jmeta.sample_tasks(sampler, jax.random.key(1), 5)
    whole = make_protonet(embedding, 3)
    chunked = make_protonet(embedding, 3, task_chunk=2)  # 5 tasks: two chunks and a remainder
    # float32 sums in a different order: gradients of size ~1 agree to ~1e-6
    chex.assert_trees_all_close(jax.jit(chunked.meta_grad)(chunked.init(), tasks),
                                jax.jit(whole.meta_grad)(whole.init(), tasks), rtol=1e-4, atol=1e-5)
