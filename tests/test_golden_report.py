"""The report, byte for byte, on a committed folder of synthetic records (tests/golden: every case a
table must explain), and the leaderboard's staleness check.

After an intended change of the report's output, regenerate and review the diff:
    QATBENCH_REGENERATE_GOLDEN=1 pytest tests/test_golden_report.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qatbench import report
from qatbench.report import leaderboard
from tests.conftest import ROOT, run_cli
from tests.golden import make_records

GOLDEN = ROOT / "tests" / "golden"
REGENERATE = bool(os.environ.get("QATBENCH_REGENERATE_GOLDEN"))


def _render(fmt: str, selection: str = "training_domain") -> str:
    records = report.load_records(GOLDEN / "results")
    references = report.load_references(GOLDEN / "references")
    return report.render(records, fmt, selection, references=references)


@pytest.mark.parametrize(
    "fmt, selection, expected",
    [
        ("md", "training_domain", "report.md"),
        ("latex", "training_domain", "report.tex"),
        ("md", "oracle", "report_oracle.md"),
    ],
)
def test_report_matches_the_golden_file_byte_for_byte(fmt, selection, expected):
    text = _render(fmt, selection)
    if REGENERATE:
        (GOLDEN / expected).write_text(text)
    assert text == (GOLDEN / expected).read_text()


def test_the_golden_records_are_what_their_generator_writes(tmp_path):
    """The committed records are reproducible: a hand edit of one would be caught here."""
    make_records.write(tmp_path / "results")
    written = sorted(p.relative_to(tmp_path / "results") for p in (tmp_path / "results").rglob("*") if p.is_file())
    committed = sorted(p.relative_to(GOLDEN / "results") for p in (GOLDEN / "results").rglob("*") if p.is_file())
    assert written == committed and len(committed) == 45 + 43  # 45 records, 43 curves (2 runs did not finish)
    for path in written:
        assert (tmp_path / "results" / path).read_bytes() == (GOLDEN / "results" / path).read_bytes(), path


def test_the_golden_report_says_why_every_cell_is_missing():
    text = _render("md")
    assert "46.5 ± 4.7 (2/3 seeds; diverged)" in text
    assert "(2/3 seeds; failed: RuntimeError: CUDA out of memory (hint: lower...)" in text
    assert "| not run " in text and "| 30: not run " in text
    assert "| lsq [paper]        | W4A4   |" in text and "fpq [paper, lenet]" in text
    assert "p = 0.5" not in text and "99.99" not in text  # the variant row is never joined


def _repo_with_results(tmp_path: Path) -> Path:
    """A git repository holding the golden records as its committed results/."""
    repo = tmp_path / "repo"
    shutil.copytree(GOLDEN / "results", repo / "results")
    shutil.copytree(GOLDEN / "references", repo / "suites" / "references")
    env = {**os.environ, "GIT_AUTHOR_DATE": "2026-11-20T12:00:00Z", "GIT_COMMITTER_DATE": "2026-11-20T12:00:00Z"}
    for args in (
        ["init", "-q"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "add", "results"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "records"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)
    return repo


@pytest.fixture(scope="module")
def generated_repo(tmp_path_factory) -> Path:
    """The golden repository with its leaderboard written once (figures are the slow part); each
    test works on its own copy. A local run sits beside the committed ones (a quickstart, an
    unfinished sweep): it never reaches the leaderboard."""
    repo = _repo_with_results(tmp_path_factory.mktemp("generated"))
    shutil.copytree(GOLDEN / "results" / "golden" / "gfpq-W4A4-0-0", repo / "results" / "local" / "gfpq-local")
    written = run_cli("report", "--leaderboard", cwd=repo)
    assert written.returncode == 0, written.stderr
    return repo


def _copy(generated_repo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(generated_repo, tmp_path / "repo", symlinks=True))


def test_leaderboard_is_written_with_its_provenance_and_check_passes(generated_repo, tmp_path):
    repo = _copy(generated_repo, tmp_path)  # with a local run, uncommitted: not in the footer's count
    md, tex = (repo / "reports" / "leaderboard.md").read_text(), (repo / "reports" / "leaderboard.tex").read_text()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout[:10]
    footer = [
        "Generated from 45 record(s) (43 finished) under results/ by `qatbench report --leaderboard`.",
        f"Records as of commit {commit} (2026-11-20).",
    ]
    assert md.startswith("# qatbench leaderboard\n") and md.splitlines()[-2:] == footer
    assert tex.startswith("% # qatbench leaderboard") and r"\begin{table}" in tex
    assert tex.splitlines()[-2:] == [f"% {line}" for line in footer]
    assert "lsq [paper]" in md  # the references of suites/references sit beside the measured rows
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", md)  # every linked figure is drawn, and only those
    assert len(links) == 3 and all((repo / "reports" / link).stat().st_size > 10_000 for link in links)
    assert sorted(p.relative_to(repo / "reports").as_posix() for p in (repo / "reports").rglob("*.png")) == sorted(links)
    assert "### golden · RotatedMNIST · small_cnn · claims" in md and "| contradicted " in md  # its claims.yaml
    check = run_cli("report", "--check", cwd=repo)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "match the records" in check.stdout
    record = repo / "results" / "golden" / "gfpq-W4A4-0-0" / "record.json"
    record.write_text(record.read_text().replace('"seed": 0', '"seed": 7'))
    assert run_cli("report", "--leaderboard", cwd=repo).returncode == 0
    assert (
        f"Records as of commit {commit} (2026-11-20), with uncommitted changes."
        in (repo / "reports" / "leaderboard.md").read_text()
    )
    # the same records from another cwd, or given as an absolute path: the same leaderboard
    elsewhere = run_cli("report", str(repo / "results"), "--check", "--out", str(repo / "reports"), cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr


@pytest.mark.parametrize("change", ["edit_leaderboard", "edit_record", "delete_leaderboard"])
def test_check_fails_on_a_stale_leaderboard(generated_repo, tmp_path, change):
    repo = _copy(generated_repo, tmp_path)
    board = repo / "reports" / "leaderboard.md"
    if change == "edit_leaderboard":
        board.write_text(board.read_text().replace("63.2 ± 1.1", "64.2 ± 1.1"))
    elif change == "edit_record":
        record = repo / "results" / "golden" / "gfpq-W4A4-0-0" / "record.json"
        record.write_text(record.read_text().replace('"seed": 0', '"seed": 5'))
    else:
        board.unlink()
    check = run_cli("report", "--check", cwd=repo)
    assert check.returncode == 1
    assert "reports/leaderboard.md" in check.stdout
    assert ("missing" if change == "delete_leaderboard" else "regenerate it with") in check.stdout


def test_provenance_outside_git_says_so(tmp_path):
    assert leaderboard.provenance(tmp_path) == "no git history"


def test_check_ignores_only_the_provenance_line(generated_repo, tmp_path):
    """A leaderboard committed together with its records, a squash merge or a shallow clone moves the commit
    the footer names; that alone never makes it stale."""
    repo = _copy(generated_repo, tmp_path)
    board = repo / "reports" / "leaderboard.md"
    lines = board.read_text().splitlines()
    assert lines[-1].startswith("Records as of commit ")
    board.write_text("\n".join([*lines[:-1], "Records as of commit 0123456789 (2020-01-01)."]) + "\n")
    assert run_cli("report", "--check", cwd=repo).returncode == 0
    board.write_text("\n".join([*lines[:-2], "Generated from 44 record(s)", lines[-1]]) + "\n")
    assert run_cli("report", "--check", cwd=repo).returncode == 1


def test_report_figures_are_written_with_out(tmp_path):
    shutil.copytree(GOLDEN / "results", tmp_path / "results")
    result = run_cli("report", str(tmp_path / "results"), "--out", str(tmp_path / "out"), "--references", "none")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "figures" / "golden_RotatedMNIST_small_cnn"
    for stem in ("accuracy_vs_bits", "id_vs_ood", "sharpness_vs_ood"):
        for suffix in (".png", ".pdf"):
            assert (folder / stem).with_suffix(suffix).stat().st_size > 1000, stem
    assert result.stdout == (tmp_path / "out" / "report.md").read_text() + "\n"  # print's newline
