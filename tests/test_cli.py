"""The ``jmeta`` command and the sinusoid experiment at a tiny size."""

from jmeta.cli import experiment_names, main


def test_list_shows_the_experiments(capsys):
    assert {"sinusoid", "bench-core"} <= set(experiment_names())
    assert main(["list"]) == 0
    assert "sinusoid: Sinusoid regression" in capsys.readouterr().out


def test_bad_command_lines_exit_2_with_a_message(tmp_path, capsys):
    assert main(["run", "sinusiod", "--out", str(tmp_path / "a")]) == 2
    assert "unknown experiment 'sinusiod'" in capsys.readouterr().err
    assert main(["run", "sinusoid", "--out", str(tmp_path / "b"), "num_step=3"]) == 2
    assert "unknown config field 'num_step'" in capsys.readouterr().err
    assert main(["run", "sinusoid", "--out", str(tmp_path / "c"), "methods=mamll"]) == 2
    assert "unknown algorithm 'mamll'" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
