"""The papers' numbers beside ours (qatbench.report.references): reference CSVs load as printed or
fail with one line naming the file, and `report.render(..., references=...)` joins them to synthetic
records with hand-computed numbers: "[paper]" rows, delta notes, setting differences, sources."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from qatbench import report
from qatbench.errors import UserError
from qatbench.report import load_references
from tests.conftest import ROOT, run_cli, write_run_folder

REFERENCES = ROOT / "suites" / "references"
HEADER = "method,dataset,model,bits,test_env,metric,value,baseline,source,note,variant,image_size,steps"
REQUIRED = "method, dataset, model, bits, test_env, metric, value, baseline, source, note"
ALLOWED = "id_acc, id_acc_delta, ood_acc, ood_acc_delta, ood_acc_delta_max"

ENVS = ["art_painting", "cartoon", "photo", "sketch"]
# OOD accuracy of a run = BASE[label] + SHIFT[test domain] + SEED_SHIFT[label][seed]; I.D. always 0.9.
# Per seed, Avg over the 4 domains = BASE + 0.02 (mean of SHIFT) + SEED_SHIFT:
#   erm:   72.0, 74.0 -> 73.0      lsq:   52.0, 53.0 -> 52.5      gaqat: 57.3, 58.3 -> 57.8
# so gaqat - lsq at W4A4, OOD Avg = 57.8 - 52.5 = +5.3 pp.
BASE = {"erm": 0.70, "lsq": 0.50, "gaqat": 0.553}
SHIFT = [0.00, 0.04, 0.10, -0.06]
SEED_SHIFT = {"erm": [0.0, 0.02], "lsq": [0.0, 0.01], "gaqat": [0.0, 0.01]}
BITS = {"erm": "FP", "lsq": "W4A4", "gaqat": "W4A4"}


def _write_run(
    results: Path,
    run_id: str,
    *,
    label: str,
    bits: str,
    seed: int,
    test_env: int,
    ood: float,
    suite: str = "pacs",
    dataset: str = "PACS",
    model: str = "resnet18",
    environments: list[str] = ENVS,
    steps: int = 300,
    image_size: int | None = 64,
) -> None:
    """One finished run with a one-evaluation curve (what any selection picks), flat keys as records have."""
    row = {"step": steps, "loss": 1.0, "id_acc": 0.9, "ood_acc": ood, f"env{test_env}_out_acc": 0.9}
    extra = {"steps": steps} | ({"dataset_options.image_size": image_size} if image_size is not None else {})
    write_run_folder(
        results, run_id, label=label, bits=bits, seed=seed, test_envs=[test_env], environments=environments,
        curve_rows=[row], suite=suite, dataset=dataset, model=model, **extra,
    )  # fmt: skip


def _write_pacs(results: Path) -> Path:
    """erm (FP), lsq and gaqat (W4A4) on PACS, resnet18, each domain held out, seeds 0 and 1."""
    for label, base in BASE.items():
        for seed in (0, 1):
            for env, shift in enumerate(SHIFT):
                ood = base + shift + SEED_SHIFT[label][seed]
                run_id = f"{label}-{env}-{seed}"
                _write_run(results, run_id, label=label, bits=BITS[label], seed=seed, test_env=env, ood=ood)
    return results


def _csv(folder: Path, name: str, *rows: str, header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return report.load_records(_write_pacs(tmp_path_factory.mktemp("results")))


def _render(records: pd.DataFrame, folder: Path, *rows: str) -> str:
    _csv(folder, "paper.csv", *rows)
    return report.render(records, references=load_references(folder))


def _first_table(text: str) -> str:
    return text.split("\n### ")[0]


def _rows(text: str) -> dict[str, list[str]]:
    """Markdown rows of the first table by their first cell (bold marks kept), header and rule skipped."""
    lines = [line for line in _first_table(text).splitlines() if line.startswith("|")][2:]
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in cells}


def _notes(text: str) -> list[str]:
    return [line[2:] for line in _first_table(text).splitlines() if line.startswith("- ")]


def _columns(text: str) -> list[str]:
    header = next(line for line in text.splitlines() if line.startswith("| Method"))
    return [cell.strip() for cell in header.strip().strip("|").split("|")][1:]


# --------------------------------------------------------------------------------------------- loading


def test_load_references_reads_every_csv_as_printed_text_with_optional_columns_defaulted(tmp_path):
    _csv(
        tmp_path,
        "b.csv",
        "lsq,PACS,resnet18,W4A4,art_painting,ood_acc,88.70,,Paper B Table 1,as printed,,224,5000",
        "gaqat,PACS,resnet18,W4A4,avg,ood_acc_delta_max,4.50,lsq,Paper B abstract,,,,",
    )
    _csv(
        tmp_path,
        "a.csv",
        "erm,PACS,resnet18,FP,avg,id_acc,95.00,,Paper A,no optional columns",
        header=HEADER.split(",variant")[0],
    )
    (tmp_path / "README.md").write_text("not a reference file\n")
    (tmp_path / "notes.txt").write_text("a,b\n1,2\n")
    frame = load_references(tmp_path)
    assert frame["file"].tolist() == ["a.csv", "b.csv", "b.csv"]  # sorted by file name, nothing else read
    assert frame["value"].tolist() == ["95.00", "88.70", "4.50"]  # text as printed, never 95.0 or 88.7
    assert frame["method"].tolist() == ["erm", "lsq", "gaqat"]
    assert frame["baseline"].tolist() == ["", "", "lsq"]  # empty stays "", never NaN
    assert frame["variant"].tolist() == ["", "", ""]
    assert frame["image_size"].tolist() == ["", "224", ""]
    assert frame["steps"].tolist() == ["", "5000", ""]
    assert frame["note"].tolist() == ["no optional columns", "as printed", ""]
    assert all(frame[column].map(type).eq(str).all() for column in frame.columns)


def test_load_references_of_a_folder_without_csvs_is_empty_with_every_column(tmp_path):
    frame = load_references(tmp_path)
    assert frame.empty
    assert list(frame.columns) == [*HEADER.split(","), "file"]


def test_missing_column_is_one_line_naming_file_and_column(tmp_path):
    path = _csv(
        tmp_path,
        "paper.csv",
        "lsq,PACS,resnet18,W4A4,avg,ood_acc,,Paper,",
        header="method,dataset,model,bits,test_env,metric,baseline,source,note",
    )
    with pytest.raises(UserError) as error:
        load_references(tmp_path)
    assert str(error.value) == f"{path}: missing column(s) value; required: {REQUIRED}"


def test_unknown_metric_is_one_line_naming_it_and_the_allowed_ones(tmp_path):
    path = _csv(
        tmp_path,
        "paper.csv",
        "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.0,,Paper,,,,",
        "lsq,PACS,resnet18,W4A4,avg,ood_accuracy,80.0,,Paper,,,,",
    )
    with pytest.raises(UserError) as error:
        load_references(tmp_path)
    assert str(error.value) == f"{path}: metric 'ood_accuracy' unknown; allowed: {ALLOWED}"


@pytest.mark.parametrize("value", ["n/a", "88,7", "88.7%", ""])
def test_non_numeric_value_is_one_line_naming_row_and_value(tmp_path, value):
    path = _csv(
        tmp_path,
        "paper.csv",
        "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.0,,Paper,,,,",
        f'lsq,PACS,resnet18,W4A4,art_painting,ood_acc,"{value}",,Paper,,,,',
    )
    with pytest.raises(UserError) as error:
        load_references(tmp_path)
    # row 1 is the header: the second number is row 3
    assert str(error.value) == f"{path}: row 3, value '{value}' is not a number"


@pytest.mark.parametrize(
    "content, reason",
    [
        ("", "No columns to parse from file"),
        (
            f"{HEADER}\nlsq,PACS,resnet18,W4A4,avg,ood_acc,80.0,,P,,,,\nlsq,PACS,resnet18,W4A4,avg,ood_acc,80,,P,,,,,x,y\n",
            "Error tokenizing data. C error: Expected 13 fields in line 3, saw 15",
        ),
    ],
    ids=["empty", "ragged"],
)
def test_unreadable_csv_is_one_line_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "broken.csv"
    path.write_text(content)
    with pytest.raises(UserError) as error:
        load_references(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable CSV ({reason}")
    assert message.endswith(")") and "\n" not in message


def test_the_committed_reference_files_load_and_never_disagree_on_a_joined_number():
    frame = load_references(REFERENCES)
    counts = frame["file"].value_counts().to_dict()
    assert counts == {"fpq.csv": 145, "gaqat.csv": 9, "cr.csv": 2, "qtdog.csv": 30}
    fpq = frame[frame["file"] == "fpq.csv"]
    ablations = fpq[fpq["source"].str.contains(r"Table [23]$")]
    assert len(ablations) == 11
    assert (ablations["variant"] != "").all(), ablations.loc[ablations["variant"] == "", "value"].tolist()
    # Table 2's LSQ baseline is a variant too, so only Table 4's copy of 88.36 is ever joined
    joined = frame[frame["variant"] == ""]
    lsq = joined[(joined["method"] == "lsq") & (joined["dataset"] == "CIFAR10") & (joined["bits"] == "W2A4")]
    assert lsq[lsq["model"] == "resnet18_cifar"][["value", "source"]].values.tolist() == [
        ["88.36", "arXiv:2503.11159 Table 4"]
    ]
    key = ["method", "dataset", "model", "bits", "test_env", "metric"]
    values = joined.groupby(key)["value"].nunique()
    assert values[values > 1].empty
    # the numbers repeated across FPQ's tables (1 and 4) are the only repeated keys, with equal values
    repeated = joined[joined.duplicated(key, keep=False)]
    assert sorted(set(repeated["source"])) == ["arXiv:2503.11159 Table 1", "arXiv:2503.11159 Table 4"]


# --------------------------------------------------------------------------------------------- joining

PAPER_A = [
    "lsq,PACS,resnet18,W4A4,art_painting,ood_acc,88.70,,Paper A Table 1,,,224,5000",
    "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.05,,Paper A Table 1,,,224,5000",
    "lsq,PACS,resnet18,W4A4,avg,id_acc,95.10,,Paper A Table 1,,,224,5000",
    "erm,PACS,resnet18,FP,avg,ood_acc,85.00,,Paper A Table 1,,,224,5000",
    "sagm,PACS,resnet18,FP,sketch,ood_acc,80.47,,Paper A Table 1,,,224,5000",
    "lsq,PACS,resnet18,W4A4,avg,ood_acc,99.99,,Paper A Table 2,an ablation,no perturbation,224,5000",
    "lsq,PACS,resnet18,W3A3,avg,ood_acc,66.66,,Paper A Table 3,other bits,,224,5000",
    "lsq,VLCS,resnet18,W4A4,avg,ood_acc,77.77,,Paper C Table 1,other dataset,,224,5000",
    "gaqat,PACS,resnet18,W4A4,avg,ood_acc_delta_max,4.5,lsq,Paper B abstract,,,,",
    "gaqat,PACS,resnet18,W4A4,avg,ood_acc_delta,2.0,unknown,Paper B Table 9,,,,",
]


def test_our_table_is_as_computed_by_hand(records, tmp_path):
    rows = _rows(_render(records, tmp_path, *PAPER_A))
    assert rows["erm"][:6] == ["FP", "71.0 ± 1.4", "75.0 ± 1.4", "81.0 ± 1.4", "65.0 ± 1.4", "73.0 ± 1.4"]
    assert rows["lsq"][:6] == ["W4A4", "50.5 ± 0.7", "54.5 ± 0.7", "60.5 ± 0.7", "44.5 ± 0.7", "52.5 ± 0.7"]
    # gaqat is the best quantized row in every OOD column and differs from lsq (Welch, p < 0.05)
    assert rows["gaqat"][:6] == ["W4A4", "**55.8 ± 0.7†**", "**59.8 ± 0.7†**", "**65.8 ± 0.7†**"] + [
        "**49.8 ± 0.7†**",
        "**57.8 ± 0.7†**",
    ]


def test_absolute_references_become_paper_rows_in_their_domain_and_avg_columns(records, tmp_path):
    text = _render(records, tmp_path, *PAPER_A)
    columns = _columns(text)
    assert columns == ["Bits", *(f"OOD {d}" for d in [*ENVS, "Avg"]), *(f"I.D. {d}" for d in [*ENVS, "Avg"])]
    rows = _rows(text)
    assert list(rows) == ["erm", "gaqat", "lsq", "lsq [paper]", "erm [paper]", "sagm [paper]"]
    assert dict(zip(columns, rows["lsq [paper]"])) == {
        **dict.fromkeys(columns, ""),
        "Bits": "W4A4",
        "OOD art_painting": "88.70",  # as printed, not 88.7
        "OOD Avg": "80.05",
        "I.D. Avg": "95.10",
    }
    assert dict(zip(columns, rows["erm [paper]"])) == {**dict.fromkeys(columns, ""), "Bits": "FP", "OOD Avg": "85.00"}
    assert dict(zip(columns, rows["sagm [paper]"])) == {
        **dict.fromkeys(columns, ""),
        "Bits": "FP",
        "OOD sketch": "80.47",
    }


def test_variants_other_bits_and_other_datasets_are_never_shown(records, tmp_path):
    text = _render(records, tmp_path, *PAPER_A)
    for hidden in ("99.99", "no perturbation", "Paper A Table 2", "66.66", "Paper A Table 3", "77.77", "Paper C"):
        assert hidden not in text
    assert "VLCS" not in text and "W3A3" not in text


def test_delta_references_become_notes_beside_our_own_delta(records, tmp_path):
    notes = _notes(_render(records, tmp_path, *PAPER_A))
    assert notes[:2] == [
        # ours: OOD Avg means 57.8 (gaqat) - 52.5 (lsq), see BASE
        # "up to" is a maximum over domains: printed as a bound, our largest per-domain delta beside it
        "Paper B abstract: gaqat − lsq, OOD max over test domains, W4A4 (resnet18): up to +4.5 pp (a bound, not an "
        "average); here: largest +5.3 pp over 4 test domains, Avg +5.3 pp (gaqat − lsq, W4A4).",
        "Paper B Table 9: gaqat − unknown, OOD Avg, W4A4 (resnet18): +2.0 pp; "
        "here: not comparable (the paper names no baseline).",
    ]


def test_sources_setting_differences_and_methods_not_run_are_named(records, tmp_path):
    notes = _notes(_render(records, tmp_path, *PAPER_A))
    assert notes[2:] == [
        "[paper] rows and paper deltas as printed in: Paper A Table 1; Paper B Table 9; Paper B abstract.",
        "Setting differs: the paper's image size is 224 px; here 64.",
        "Setting differs: the paper trains 5000 steps; here 300.",
        "Methods the paper reports that this table did not run: sagm.",
    ]


def test_a_paper_in_our_setting_gets_no_setting_notes(records, tmp_path):
    text = _render(
        records,
        tmp_path,
        "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.05,,Paper A,,,64,300",
        "gaqat,PACS,resnet18,W4A4,avg,ood_acc,81.00,,Paper A,,,64,300",
    )
    assert list(_rows(text)) == ["erm", "gaqat", "lsq", "lsq [paper]", "gaqat [paper]"]
    assert _notes(text) == ["[paper] rows and paper deltas as printed in: Paper A."]


def test_another_architecture_is_named_in_the_row_and_in_a_note(records, tmp_path):
    text = _render(
        records,
        tmp_path,
        "lsq,PACS,resnet50,W4A4,avg,ood_acc,83.20,,Paper D Table 2,,,64,300",
        "gaqat,PACS,resnet50,W4A4,avg,ood_acc_delta,1.25,lsq,Paper D Table 2,,,,",
    )
    columns, rows = _columns(text), _rows(text)
    assert dict(zip(columns, rows["lsq [paper, resnet50]"])) == {
        **dict.fromkeys(columns, ""),
        "Bits": "W4A4",
        "OOD Avg": "83.20",
    }
    assert "lsq [paper]" not in rows
    assert _notes(text) == [
        "Paper D Table 2: gaqat − lsq, OOD Avg, W4A4 (resnet50): +1.25 pp; here: +5.3 pp (gaqat − lsq, W4A4).",
        "[paper] rows and paper deltas as printed in: Paper D Table 2.",
        "Setting differs: the paper's architecture is resnet50; here resnet18.",
    ]


def test_the_tables_own_architecture_is_preferred_over_another(records, tmp_path):
    rows = _rows(
        _render(
            records,
            tmp_path,
            "lsq,PACS,resnet50,W4A4,avg,ood_acc,83.20,,Paper D,,,64,300",
            "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.05,,Paper A,,,64,300",
        )
    )
    assert [name for name in rows if "[paper" in name] == ["lsq [paper]"]


def test_another_architecture_fills_in_only_for_methods_the_paper_has_no_number_for_in_ours(records, tmp_path):
    text = _render(
        records,
        tmp_path,
        "lsq,PACS,resnet50,W4A4,avg,ood_acc,83.20,,Paper D,,,64,300",
        "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.05,,Paper A,,,64,300",
        "erm,PACS,resnet50,FP,avg,ood_acc,86.10,,Paper D,,,64,300",
    )
    rows = _rows(text)
    assert [name for name in rows if "[paper" in name] == ["lsq [paper]", "erm [paper, resnet50]"]
    assert rows["lsq [paper]"][5] == "80.05" and rows["erm [paper, resnet50]"][5] == "86.10"
    assert "83.20" not in text
    assert _notes(text) == [
        "[paper] rows and paper deltas as printed in: Paper A; Paper D.",
        "Setting differs: the paper's architecture is resnet50; here resnet18.",
    ]


def test_a_paper_delta_keeps_its_printed_digits_and_sign(records, tmp_path):
    notes = _notes(
        _render(
            records,
            tmp_path,
            "gaqat,PACS,resnet18,W4A4,avg,ood_acc_delta,4.50,lsq,Paper F,,,,",
            "gaqat,PACS,resnet18,W4A4,art_painting,ood_acc_delta,-0.30,lsq,Paper F,,,,",
        )
    )
    assert notes == [
        "Paper F: gaqat − lsq, OOD Avg, W4A4 (resnet18): +4.50 pp; here: +5.3 pp (gaqat − lsq, W4A4).",
        # art_painting: 55.8 (gaqat) - 50.5 (lsq)
        "Paper F: gaqat − lsq, OOD art_painting, W4A4 (resnet18): -0.30 pp; here: +5.3 pp (gaqat − lsq, W4A4).",
        "[paper] rows and paper deltas as printed in: Paper F.",
    ]


def test_a_delta_whose_baseline_did_not_run_says_so(records, tmp_path):
    notes = _notes(_render(records, tmp_path, "gaqat,PACS,resnet18,W4A4,avg,ood_acc_delta,3.1,pact,Paper E,,,,"))
    assert notes == [
        "Paper E: gaqat − pact, OOD Avg, W4A4 (resnet18): +3.1 pp; here: not run: pact at W4A4.",
        "[paper] rows and paper deltas as printed in: Paper E.",
    ]


def test_references_of_another_dataset_only_leave_the_table_alone(records, tmp_path):
    text = _render(records, tmp_path, "lsq,VLCS,resnet18,W4A4,avg,ood_acc,77.77,,Paper C,,,,")
    assert text == report.render(records)
    assert "[paper" not in text and "Paper C" not in text


def test_reference_rows_are_never_bold_and_never_get_a_dagger(records, tmp_path):
    # the paper's numbers beat ours in every column they fill; bold stays on the best measured row
    text = _render(records, tmp_path, *PAPER_A)
    rows = _rows(text)
    for name in ("lsq [paper]", "erm [paper]", "sagm [paper]"):
        assert not any("**" in cell or "†" in cell for cell in rows[name]), rows[name]
    assert rows["gaqat"][1] == "**55.8 ± 0.7†**"  # the measured rows keep theirs
    assert "| **88.70" not in text and "88.70†" not in text


def test_latex_carries_the_paper_rows_unbolded(records, tmp_path):
    _csv(tmp_path, "paper.csv", *PAPER_A)
    tex = report.render(records, format="latex", references=load_references(tmp_path))
    line = next(line for line in tex.splitlines() if line.startswith("lsq [paper]"))
    assert line == r"lsq [paper] & W4A4 & 88.70 &  &  &  & 80.05 &  &  &  &  & 95.10 \\"
    assert "Setting differs: the paper's image size is 224 px; here 64." in tex


def test_the_committed_gaqat_references_join_a_pacs_resnet18_table(records):
    text = report.render(records, references=load_references(REFERENCES))
    columns, rows = _columns(text), _rows(text)
    assert dict(zip(columns, rows["sagm [paper, resnet50]"])) == {
        **dict.fromkeys(columns, ""),
        "Bits": "FP",
        "OOD art_painting": "88.90",
        "OOD cartoon": "80.70",
        "OOD photo": "97.61",
        "OOD sketch": "80.47",
        "OOD Avg": "86.92",
    }
    assert _notes(text) == [
        "arXiv:2412.05551 abstract: gaqat − lsq_sagm, OOD max over test domains, W4A4 (resnet50): up to +4.5 pp "
        "(a bound, not an average); "
        "here: not run: lsq_sagm at W4A4.",
        "[paper] rows and paper deltas as printed in: Wang-pengfei/SAGM README; arXiv:2412.05551 abstract; "
        "saqibjaved1/QT-DoG README.md (commit e9d55eb).",  # QT-DoG's FP rows (erm, swad, eoa, diwa)
        "Setting differs: the paper's architecture is resnet50; here resnet18.",
        "Setting differs: the paper's image size is 224 px; here 64.",
        "Setting differs: the paper trains 5000 steps; here 300.",
        "Methods the paper reports that this table did not run: diwa, eoa, sagm, swad.",
    ]


# --------------------------------------------------------------------------------------------- bugs


def test_equal_image_size_is_no_difference_when_another_suite_has_no_image_size(tmp_path):
    results = _write_pacs(tmp_path / "results")
    _write_run(
        results,
        "rot-0",
        suite="rot",
        dataset="RotatedMNIST",
        model="small_cnn",
        environments=["0", "15"],
        label="erm",
        bits="FP",
        seed=0,
        test_env=0,
        ood=0.5,
        image_size=None,
    )
    text = _render(report.load_records(results), tmp_path / "refs", "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.05,,P,,,64,")
    assert not any("image size" in note for note in _notes(text)), _notes(text)


def test_a_delta_of_unknown_bits_is_shown_beside_the_table(records, tmp_path):
    notes = _notes(_render(records, tmp_path, "gaqat,PACS,resnet18,unknown,avg,ood_acc_delta,3.79,unknown,P,,,,"))
    assert "P: gaqat − unknown, OOD Avg, unknown (resnet18): +3.79 pp; here: not comparable" in " ".join(notes)


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_pacs(tmp_path_factory.mktemp("cli-results"))


def test_cli_report_shows_the_paper_rows_of_the_named_folder(results_dir, tmp_path):
    _csv(tmp_path / "refs", "paper.csv", *PAPER_A)
    out = run_cli("report", str(results_dir), "--references", str(tmp_path / "refs"))
    assert out.returncode == 0, out.stderr
    assert list(_rows(out.stdout))[3:] == ["lsq [paper]", "erm [paper]", "sagm [paper]"]
    assert "- Setting differs: the paper trains 5000 steps; here 300." in out.stdout


def test_cli_report_references_none_shows_no_paper_rows(results_dir):
    out = run_cli("report", str(results_dir), "--references", "none")  # cwd: the repository, suites/references exists
    assert out.returncode == 0, out.stderr
    assert list(_rows(out.stdout)) == ["erm", "gaqat", "lsq"]
    assert "[paper" not in out.stdout and "Setting differs" not in out.stdout


def test_cli_report_missing_references_folder_is_one_line_exit_2(results_dir):
    out = run_cli("report", str(results_dir), "--references", "/nonexistent")
    assert out.returncode == 2
    assert out.stderr == (
        "qatbench: error: --references /nonexistent: folder not found (a folder of reference CSVs, or 'none')\n"
    )
    assert out.stdout == ""


def test_cli_report_broken_reference_csv_is_one_line_naming_the_file_exit_2(results_dir, tmp_path):
    path = _csv(tmp_path / "refs", "broken.csv", "lsq,PACS,resnet18,W4A4,avg,ood_acc,eighty,,P,,,,")
    out = run_cli("report", str(results_dir), "--references", str(tmp_path / "refs"))
    assert out.returncode == 2
    assert out.stderr == f"qatbench: error: {path}: row 2, value 'eighty' is not a number\n"
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_cli_report_non_numeric_steps_is_one_line_exit_2(results_dir, tmp_path):
    _csv(tmp_path / "refs", "paper.csv", "lsq,PACS,resnet18,W4A4,avg,ood_acc,80.05,,P,,,224,5k")
    out = run_cli("report", str(results_dir), "--references", str(tmp_path / "refs"))
    assert "Traceback" not in out.stderr, out.stderr[-300:]
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "paper.csv" in out.stderr
