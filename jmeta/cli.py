"""The ``jmeta`` command: ``jmeta list`` and ``jmeta run EXPERIMENT [--out DIR] [field=value ...]``.

Experiments are the modules of ``jmeta.experiments`` (the repository's ``experiments/``
folder); each defines a ``Config`` dataclass and ``main(config, run) -> results``. Module
names use underscores and commands use hyphens: ``bench_core`` runs as ``bench-core``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import sys
import time
from types import ModuleType

import jax

from jmeta.config import from_record, override
from jmeta.errors import NonFiniteError, RunLockedError
from jmeta.runs import RunDir, has_progress, read_run_record
from jmeta.sharding import start_processes


def _experiments_package() -> ModuleType:
    """``jmeta.experiments``: installed, or the ``experiments/`` folder of a source checkout.

    An installed jmeta maps ``experiments/`` to ``jmeta.experiments``; running from the
    repository root without installing (``python -m jmeta``) finds the folder beside the
    ``jmeta`` package instead.
    """
    try:
        return importlib.import_module("jmeta.experiments")
    except ModuleNotFoundError:
        folder = os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"
        )
        spec = importlib.util.spec_from_file_location(
            "jmeta.experiments",
            os.path.join(folder, "__init__.py"),
            submodule_search_locations=[folder],
        )
        if spec is None or not os.path.isdir(folder):
            raise
        package = importlib.util.module_from_spec(spec)
        sys.modules["jmeta.experiments"] = package
        spec.loader.exec_module(package)
        return package


def experiment_names() -> list[str]:
    """Names of the available experiments, as typed on the command line."""
    package = _experiments_package()
    return sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_")
    )


def load_experiment(name: str) -> ModuleType:
    """The module of experiment ``name``; raises ``ValueError`` listing the known ones."""
    names = experiment_names()
    if name not in names:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(names)}")
    _experiments_package()
    return importlib.import_module(f"jmeta.experiments.{name.replace('-', '_')}")


def run_experiment(
    name: str,
    out: str | None = None,
    assignments: list[str] = (),
    *,
    resume: str | None = None,
    progress: bool = True,
    report: bool = False,
) -> dict:
    """Runs an experiment as the command line does and returns its results.

    With ``resume`` the run in that directory continues from its checkpoints with its saved
    config; overrides are then refused unless they match it. Every field is checked before
    the run folder is made; a run that fails before it made any progress removes what it
    wrote, so the corrected command can be run as it is. With ``report`` (the command line)
    the run folder is printed first and each finished stage gets a line.
    """
    if resume is not None:
        saved = read_run_record(resume)
        if name is not None and name != saved["experiment"]:
            raise ValueError(f"--resume {resume} holds a {saved['experiment']!r} run, not {name!r}")
        name, out = saved["experiment"], resume
    module = load_experiment(name)
    if resume is None:
        config = override(module.Config(), list(assignments))
    else:
        try:
            config = from_record(module.Config, saved["config"])
        except ValueError as error:
            if has_progress(resume):
                raise
            raise ValueError(
                f"--resume {resume}: {error}. The run made no progress; run it again with the "
                f"field corrected: jmeta run {name} --out {resume} FIELD=VALUE"
            ) from None
        if override(config, list(assignments)) != config:
            raise ValueError(
                f"--resume {resume}: overrides {list(assignments)} differ from the saved config"
            )
    check = getattr(module, "check", None)
    if check is not None:
        check(config)  # what an experiment checks beyond its fields' own checks
    out = out or os.path.join("runs", name, time.strftime("%Y%m%d-%H%M%S"))
    with RunDir(out, name, config, resume=resume is not None) as run:
        run.report = report
        run.say(f"run folder: {run.path}")
        try:
            results = module.main(config, run, progress=progress)
        except KeyboardInterrupt as interrupt:
            interrupt.run_folder = run.path  # for the command line's resume hint
            raise
        except Exception:
            run.discard_if_empty()
            raise
        run.write_results(results)
    if report:
        print(f"\nwrote {run.path}/results.json", file=sys.stderr)
    return results


def _describe(name: str) -> str:
    module = load_experiment(name)
    doc = (module.__doc__ or "").strip().splitlines()
    fields = ", ".join(
        f"{f.name}={getattr(module.Config(), f.name)!r}" for f in dataclasses.fields(module.Config)
    )
    return f"{name}: {doc[0] if doc else ''}\n    {fields}"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["bench"]:  # its own parser: jmeta bench --help lists its options
        from jmeta.bench import main as bench

        return bench(arguments[1:])
    parser = argparse.ArgumentParser(prog="jmeta", description="Run jmeta experiments.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="show the experiments and their config fields")
    commands.add_parser("bench", help="benchmark the workloads on this machine's devices")
    run_parser = commands.add_parser("run", help="run an experiment")
    run_parser.add_argument("experiment", nargs="?", help="experiment name (see `jmeta list`)")
    run_parser.add_argument(
        "overrides", nargs="*", metavar="field=value", help="config fields to override"
    )
    # Overrides may stand before or after --out/--resume, so the run command parses intermixed.
    run_parser.add_argument("--out", help="run directory (default: runs/EXPERIMENT/TIMESTAMP)")
    run_parser.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its checkpoints"
    )
    run_parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    hosts = run_parser.add_argument_group(
        "several processes (jax.distributed; the same command in each, and the same --out)"
    )
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process's index")
    hosts.add_argument(
        "--distributed",
        action="store_true",
        help="take the three from the cluster's environment (SLURM, Open MPI, Kubernetes, TPU)",
    )
    hosts.add_argument(
        "--cpu-devices", type=int, metavar="N", help="simulate N CPU devices in this process"
    )
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "run" or any(arg.startswith("-") for arg in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        if args.command == "list":
            print("\n".join(_describe(name) for name in experiment_names()))
            return 0
        if args.experiment is None and args.resume is None:
            parser.error("run needs an EXPERIMENT or --resume DIR")
        start_processes(
            args.coordinator,
            args.num_processes,
            args.process_id,
            detect=args.distributed,
            cpu_devices=args.cpu_devices,
        )
        if jax.process_count() > 1 and args.out is None and args.resume is None:
            parser.error(
                f"with {jax.process_count()} processes pass --out DIR, the same folder in each"
            )
        if args.experiment is not None and "=" in args.experiment:
            parser.error(
                f"expected an experiment name before the overrides, got {args.experiment!r}"
            )
        run_experiment(
            args.experiment,
            args.out,
            args.overrides,
            resume=args.resume,
            progress=not args.no_progress,
            report=True,
        )
    except KeyboardInterrupt as interrupt:
        folder = getattr(interrupt, "run_folder", None)
        hint = f"; continue it with: jmeta run --resume {folder}" if folder else ""
        print(f"\njmeta: interrupted{hint}", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
        RunLockedError,
        NonFiniteError,
    ) as error:
        print(f"jmeta: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path the user chose cannot be read or written
        where = f"{error.filename}: " if error.filename else ""
        print(f"jmeta: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    return 0
