"""Experiments run by ``jmeta run NAME``: each module has ``Config`` and ``main(config, run)``,
and may have ``check(config)``, which ``jmeta run`` calls before it makes the run folder (what
the config's own ``__post_init__`` cannot check alone: names of methods, data paths). An
experiment that trains calls ``run.expect_stages(N)`` for the "stage k of N" display."""
