"""The README's quick start is two commands, and CI runs the second one verbatim."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quick_start_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = _quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    assert "jmeta run sinusoid" in commands[0]
    assert "pytest" in commands[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci_lines
    assert "set -euo pipefail" in ci_lines


def _header_runtimes() -> dict[str, str]:
    """Each experiment's runtime as its module header states it: the one place it is written."""
    found = {}
    for path in sorted((ROOT / "experiments").glob("[a-z]*.py")):
        match = re.search(r"^Runtime:\s+(about .+?) on a 2-core", path.read_text(), re.M)
        assert match, f"{path.name} has no 'Runtime:  about ... on a 2-core' header line"
        found[path.stem.replace("_", "-")] = match.group(1)
    return found


def test_every_runtime_mentioned_agrees_with_the_experiment_header():
    runtimes = _header_runtimes()
    rows = dict(
        re.findall(
            r"^\| `([a-z-]+)` \| [^|]+ \| ([^|]+?) \|$", (ROOT / "README.md").read_text(), re.M
        )
    )
    assert rows == runtimes
    results = (ROOT / "experiments" / "README.md").read_text()
    sections = re.findall(r"^## .*?`jmeta run ([a-z-]+)`\n\nRuntime: (.+?)\.\n", results, re.M)
    assert len(sections) == len(runtimes) and dict(sections) == runtimes
