"""The README's promises: CI runs its test command and checks the leaderboard, and the quickstart suite
it names exists."""

from __future__ import annotations

from tests.conftest import ROOT


def _ci_commands() -> list[str]:
    return [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd ", "export "))
    ]


def _ci_command() -> str:
    """The install-and-test line; the only other command is the leaderboard check."""
    lines = _ci_commands()
    assert len(lines) == 2 and lines[1] == "qatbench report --check", lines
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
    assert quickstart.endswith("qatbench report results/quickstart")  # not the committed leaderboard's runs
