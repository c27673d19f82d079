"""The public API: the README's "MAML on your own data" runs as written, and ``import jmeta``
stays light."""

import pathlib
import re
import subprocess
import sys

import numpy as np

from jmeta.data import load_omniglot

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL1 = ROOT.parent / "shared" / "data" / "omniglot" / "images_background_small1.zip"


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## MAML on your own data", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_example_is_short_and_learns_omniglot_from_a_class_indexed_array(
    tmp_path, capsys
):
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 15
    np.save(tmp_path / "my_images.npy", load_omniglot(SMALL1, cache=False).images)
    code = code.replace('"my_images.npy"', repr(str(tmp_path / "my_images.npy")))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    mean, ci = map(float, re.search(r"accuracy: ([\d.]+) ± ([\d.]+)", printed).groups())
    assert mean > 0.45 and 0 < ci < 0.05  # chance is 0.2; 200 tasks give an interval of about 0.02


def test_import_jmeta_does_not_load_scikit_learn_and_exports_the_training_path():
    script = (
        "import sys, jmeta; assert not any(m.startswith('sklearn') for m in sys.modules); "
        "print(all(callable(getattr(jmeta, n)) for n in ('conv4_learner', 'make_episode_sampler', "
        "'algorithm_config', 'make_meta_learner', 'make_meta_step', 'train', 'evaluate')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True"


def test_the_evaluator_is_built_once_per_meta_learner_and_let_go_with_it():
    import gc
    import weakref

    import jax

    import jmeta
    from jmeta.evaluate import make_evaluator

    meta_learner = jmeta.make_meta_learner(jmeta.mlp_learner(jax.random.key(0), hidden=(4,)))
    assert make_evaluator(meta_learner, 2) is make_evaluator(meta_learner, 2)
    tasks = jmeta.sample_tasks(jmeta.make_sinusoid_sampler(3, 4), jax.random.key(1), 5)
    assert jmeta.evaluate(meta_learner, meta_learner.init(), tasks, 2)["loss"].shape == (5, 3)
    alive = weakref.ref(meta_learner.evaluate)
    del meta_learner
    gc.collect()
    assert alive() is None  # the cache does not keep a dropped meta-learner (or its code) alive
