"""Claims about a paper row's Avg: it means what ours means. On a table with two of PACS's four test
domains, a paper that prints every domain gets the mean of its values on those two (computed here
by hand); a paper that prints only its own 4-domain mean keeps it, marked ‡ and explained."""

from __future__ import annotations

import pandas as pd
import pytest

from qatbench import report
from tests.test_report_references import BASE, ENVS, _columns, _notes, _render, _rows, _write_run

SAGM = [  # SAGM's README numbers for PACS (suites/references/gaqat.csv)
    "sagm,PACS,resnet18,FP,art_painting,ood_acc,88.90,,SAGM README,,,64,300",
    "sagm,PACS,resnet18,FP,cartoon,ood_acc,80.70,,SAGM README,,,64,300",
    "sagm,PACS,resnet18,FP,photo,ood_acc,97.61,,SAGM README,,,64,300",
    "sagm,PACS,resnet18,FP,sketch,ood_acc,80.47,,SAGM README,,,64,300",
    "sagm,PACS,resnet18,FP,avg,ood_acc,86.92,,SAGM README,,,64,300",
    "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.05,,Paper A Table 1,,,64,300",
]


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """erm (FP) and lsq (W4A4) with only photo (2) and sketch (3) held out, one seed."""
    results = tmp_path_factory.mktemp("results")
    for label, bits in (("erm", "FP"), ("lsq", "W4A4")):
        for env in (2, 3):
            _write_run(results, f"{label}-{env}", label=label, bits=bits, seed=0, test_env=env, ood=BASE[label])
    return report.load_records(results)


def test_a_papers_avg_is_the_mean_of_its_values_on_our_test_domains(two_domains, tmp_path):
    text = _render(two_domains, tmp_path, *SAGM)
    columns = _columns(text)
    assert columns[:4] == ["Bits", "OOD photo", "OOD sketch", "OOD Avg"]
    sagm = dict(zip(columns, _rows(text)["sagm [paper]"]))
    assert sagm["OOD photo"] == "97.61" and sagm["OOD sketch"] == "80.47"
    assert sagm["OOD Avg"] == "89.04"  # (97.61 + 80.47) / 2 = 89.04, not the paper's 4-domain 86.92
    notes = _notes(text)
    assert any(
        "[paper] rows' OOD Avg here is the mean of the paper's values on this table's test domain(s) "
        "(photo, sketch), as ours; the paper's own mean over " + ", ".join(ENVS) + ": sagm [paper] FP 86.92." in n
        for n in notes
    ), notes


def test_a_papers_own_mean_over_other_domains_is_marked_and_explained(two_domains, tmp_path):
    text = _render(two_domains, tmp_path, *SAGM)
    lsq = dict(zip(_columns(text), _rows(text)["lsq [paper]"]))
    assert lsq["OOD Avg"] == "80.05‡"
    assert any(
        "lsq [paper] W4A4: ‡ its OOD Avg is the paper's own mean over 4 test domains" in n
        and "not over this table's (photo, sketch)" in n
        for n in _notes(text)
    )


def test_paper_values_on_domains_without_a_column_are_one_note_per_domain(two_domains, tmp_path):
    text = _render(
        two_domains,
        tmp_path,
        *SAGM,
        "erm,PACS,resnet18,FP,art_painting,ood_acc,89.8,,QT-DoG README,,,64,300",
        "erm,PACS,resnet18,FP,sketch,ood_acc,79.0,,QT-DoG README,,,64,300",
    )
    notes = _notes(text)
    art = [n for n in notes if "'art_painting'" in n]
    assert art == [
        "This table has no OOD column for test domain 'art_painting'; the paper rows' values there: "
        "sagm [paper] FP 88.90, erm [paper] FP 89.8."
    ]
    assert [n for n in notes if "'cartoon'" in n] == [
        "This table has no OOD column for test domain 'cartoon'; the paper rows' values there: sagm [paper] FP 80.70."
    ]
    assert not any("has no column" in n for n in notes)  # the old one-note-per-value wording


def test_the_steps_difference_ignores_runs_that_train_no_steps(two_domains, tmp_path):
    """An ensemble or a PTQ run records 0 steps; the setting note names only the training runs' steps."""
    results = tmp_path / "results"
    for env in (2, 3):
        _write_run(results, f"erm-{env}", label="erm", bits="FP", seed=0, test_env=env, ood=0.7)
        _write_run(results, f"ens-{env}", label="erm_ensemble", bits="FP", seed=0, test_env=env, ood=0.75, steps=0)
    text = _render(report.load_records(results), tmp_path / "refs", SAGM[0].replace(",300", ",5000"))
    assert "Setting differs: the paper trains 5000 steps; here 300." in _notes(text)
