"""The README's promises: CI runs its test command, and the quickstart suite it names exists."""

from __future__ import annotations

from tests.conftest import ROOT


def _ci_command() -> str:
    lines = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "export "))
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert _ci_command() in readme.splitlines()
    assert _ci_command().endswith("pytest")


def test_readme_quickstart_command_names_a_suite_that_exists():
    readme = (ROOT / "README.md").read_text().splitlines()
    quickstart = next(line for line in readme if "qatbench run suites/" in line and line.startswith("python3 -m venv"))
    suite = quickstart.split("qatbench run ")[1].split()[0]
    assert (ROOT / suite).is_file()
    assert quickstart.endswith("qatbench report")
