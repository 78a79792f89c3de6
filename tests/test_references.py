"""Claims about the papers' reference numbers (suites/references/*.csv): one shared header, numbers
that parse, settings that qatbench can name, and FPQ's five tables complete and as printed
(checked against the differences the paper's own text states)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from qatbench.data import DATASETS
from qatbench.methods import METHODS
from qatbench.models import MODELS

REFERENCES = Path(__file__).resolve().parents[1] / "suites" / "references"
CSVS = sorted(REFERENCES.glob("*.csv"))
HEADER = ["method", "dataset", "model", "bits", "test_env", "metric", "value", "baseline", "source", "note"]
SETTING = ["variant", "image_size", "steps"]  # read by qatbench.report.references
METRICS = {"ood_acc", "id_acc", "ood_acc_delta", "ood_acc_delta_max", "id_acc_delta"}

# Names that are in the papers but will not be in qatbench, and why.
NOT_IMPLEMENTED_METHODS: dict[str, str] = {
    "swad": "QT-DoG's README table; SWAD (weight averaging along training) is not a qatbench method",
    "eoa": "QT-DoG's README table; Ensemble of Averages needs SWA-averaged members (qatbench's FP ensemble: ensemble)",
    "diwa": "QT-DoG's README table; DiWA averages the weights of 60 runs",
}
NOT_IMPLEMENTED_MODELS = {
    "mobilenetv1_cifar": "FPQ Tables 4-5 report MobileNetV1; qatbench has no MobileNetV1",
    "mobilenet_cifar": "CR's abstract says only 'MobileNet', not which version",
}
# `bits`: W<n>A<n>, `FP` for full precision (the label qatbench's own records use), or `unknown`
# where the source does not say (CR's abstract)
BITS = re.compile(r"W\d+A\d+|FP|unknown")


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def fpq() -> pd.DataFrame:
    frame = _read(REFERENCES / "fpq.csv")
    frame["table"] = frame["source"].str.extract(r"Table (\d)$", expand=False).astype(int)
    frame["number"] = frame["value"].astype(float)
    return frame


def _value(frame: pd.DataFrame, table: int, method: str, dataset: str, model: str, bits: str) -> float:
    hit = frame[
        (frame.table == table)
        & (frame.method == method)
        & (frame.dataset == dataset)
        & (frame.model == model)
        & (frame.bits == bits)
    ]
    assert len(hit) == 1, (table, method, dataset, model, bits, len(hit))
    return float(hit.number.iloc[0])


# --------------------------------------------------------------------------------------------- every file


def test_the_reference_files_are_there():
    assert {"gaqat.csv", "fpq.csv", "cr.csv"} <= {p.name for p in CSVS}


@pytest.mark.parametrize("path", CSVS, ids=lambda p: p.stem)
def test_reference_file_has_the_shared_header_and_numeric_values(path):
    frame = _read(path)
    assert list(frame.columns) == HEADER + SETTING
    assert len(frame) > 0
    values = pd.to_numeric(frame["value"], errors="coerce")
    assert values.notna().all(), frame.loc[values.isna(), "value"].tolist()
    assert (frame["source"] != "").all()
    assert set(frame["metric"]) <= METRICS


@pytest.mark.parametrize("path", CSVS, ids=lambda p: p.stem)
def test_reference_bits_are_wnan_fp_or_unknown(path):
    bits = _read(path)["bits"]
    bad = [b for b in bits if not BITS.fullmatch(b)]
    assert not bad


@pytest.mark.parametrize("path", CSVS, ids=lambda p: p.stem)
def test_reference_methods_are_registered_landing_or_listed_with_a_reason(path):
    frame = _read(path)
    known = set(METHODS.names()) | set(NOT_IMPLEMENTED_METHODS)
    assert set(frame["method"]) <= known, set(frame["method"]) - known
    baselines = set(frame["baseline"]) - {"", "unknown"}
    assert baselines <= known, baselines - known


@pytest.mark.parametrize("path", CSVS, ids=lambda p: p.stem)
def test_reference_models_and_datasets_are_registered_or_listed_with_a_reason(path):
    frame = _read(path)
    models = set(frame["model"]) - set(MODELS.names()) - set(NOT_IMPLEMENTED_MODELS)
    assert not models
    assert set(frame["dataset"]) <= set(DATASETS.names())


# --------------------------------------------------------------------------------------------- FPQ


def test_fpq_has_every_number_of_its_five_tables(fpq):
    # Table 1: 3 methods x 2 models; 2: 4 ablation rows; 3: 7 values of p; 4, 5: 16 rows x 4 models
    assert fpq.table.value_counts().sort_index().to_dict() == {1: 6, 2: 4, 3: 7, 4: 64, 5: 64}
    assert len(fpq) == 145
    assert set(fpq.source) == {f"arXiv:2503.11159 Table {n}" for n in range(1, 6)}
    assert set(fpq.test_env) == {"none"} and set(fpq.metric) == {"id_acc"} and set(fpq.baseline) == {""}


@pytest.mark.parametrize("table, dataset", [(4, "CIFAR10"), (5, "CIFAR100")])
def test_fpq_tables_4_and_5_are_full_grids(fpq, table, dataset):
    rows = fpq[fpq.table == table]
    assert set(rows.dataset) == {dataset}
    quantized = {(m, b) for m in ("pact", "lsq", "lsq_plus", "kd", "fpq") for b in ("W4A4", "W2A4", "W2A2")}
    settings = {("erm", "FP")} | quantized
    models = {"resnet18_cifar", "resnet50_cifar", "mobilenetv1_cifar", "mobilenetv2_cifar"}
    cells = list(zip(rows.method, rows.bits, rows.model))
    assert len(cells) == len(set(cells)) == 64
    assert set(cells) == {(m, b, model) for m, b in settings for model in models}


def test_fpq_tables_1_to_3_settings(fpq):
    one = fpq[fpq.table == 1]
    assert set(zip(one.method, one.bits)) == {("erm", "FP"), ("lsq_sam", "W4A4"), ("fpq", "W4A4")}
    assert set(one.model) == {"resnet18_cifar", "mobilenetv2_cifar"} and set(one.dataset) == {"CIFAR10"}
    for table in (2, 3):
        rows = fpq[fpq.table == table]
        assert set(rows.dataset) == {"CIFAR10"} and set(rows.model) == {"resnet18_cifar"} and set(rows.bits) == {"W2A4"}
    three = fpq[fpq.table == 3]
    assert set(three.method) == {"fpq"}
    p = [re.search(r"p = ([\d.]+)", note).group(1) for note in three.note]
    assert p == ["0", "0.1", "0.3", "0.5", "0.7", "0.9", "1"]
    assert "CSD only" in three.note.iloc[0]


@pytest.mark.parametrize(
    "table, method, dataset, model, bits, value",
    [
        (1, "lsq_sam", "CIFAR10", "resnet18_cifar", "W4A4", 89.75),
        (1, "lsq_sam", "CIFAR10", "mobilenetv2_cifar", "W4A4", 84.72),
        (4, "fpq", "CIFAR10", "resnet18_cifar", "W4A4", 90.16),
        (4, "erm", "CIFAR10", "resnet50_cifar", "FP", 89.95),
        (4, "pact", "CIFAR10", "mobilenetv1_cifar", "W2A2", 11.71),
        (4, "kd", "CIFAR10", "mobilenetv2_cifar", "W2A4", 75.56),
        (4, "lsq_plus", "CIFAR10", "resnet50_cifar", "W2A2", 86.10),
        (5, "pact", "CIFAR100", "resnet50_cifar", "W2A2", 4.26),
        (5, "fpq", "CIFAR100", "mobilenetv2_cifar", "W2A2", 33.16),
        (5, "kd", "CIFAR100", "mobilenetv1_cifar", "W4A4", 70.96),
        (5, "lsq", "CIFAR100", "mobilenetv2_cifar", "W2A2", 31.08),
        (5, "erm", "CIFAR100", "resnet18_cifar", "FP", 75.40),
    ],
)
def test_fpq_spot_values(fpq, table, method, dataset, model, bits, value):
    assert _value(fpq, table, method, dataset, model, bits) == value


def test_fpq_ablation_and_p_rows(fpq):
    two = fpq[fpq.table == 2]
    assert list(zip(two.method, two.number)) == [("lsq", 88.36), ("fpq", 89.30), ("fpq", 89.66), ("fpq", 89.92)]
    assert ["SFP only" in n for n in two.note] == [False, True, False, False]
    assert ["CSD only" in n for n in two.note] == [False, False, True, False]
    assert fpq[fpq.table == 3].number.tolist() == [89.66, 89.92, 89.90, 89.83, 89.59, 89.68, 89.48]


def test_fpq_numbers_repeated_across_tables_agree(fpq):
    for model in ("resnet18_cifar", "mobilenetv2_cifar"):
        for method, bits in (("erm", "FP"), ("fpq", "W4A4")):
            assert _value(fpq, 1, method, "CIFAR10", model, bits) == _value(fpq, 4, method, "CIFAR10", model, bits)
    two, three = fpq[fpq.table == 2].number.tolist(), fpq[fpq.table == 3].number.tolist()
    assert two[0] == _value(fpq, 4, "lsq", "CIFAR10", "resnet18_cifar", "W2A4")  # LSQ baseline
    assert two[2] == three[0]  # CSD only = p 0
    assert two[3] == three[1] == _value(fpq, 4, "fpq", "CIFAR10", "resnet18_cifar", "W2A4")  # FPQ = p 0.1


@pytest.mark.parametrize(
    "dataset, a, b, stated",
    [
        # (method, model, bits) of a and b; stated: a - b as the paper's text gives it (Sec. 4.1, 4.2)
        ("CIFAR10", ("fpq", "resnet18_cifar", "W4A4"), ("erm", "resnet18_cifar", "FP"), 1.44),
        ("CIFAR10", ("fpq", "resnet50_cifar", "W4A4"), ("erm", "resnet50_cifar", "FP"), 0.67),
        ("CIFAR10", ("lsq", "resnet50_cifar", "W4A4"), ("lsq", "resnet50_cifar", "W2A2"), 2.22),
        ("CIFAR10", ("fpq", "resnet50_cifar", "W4A4"), ("fpq", "resnet50_cifar", "W2A2"), 1.22),
        ("CIFAR10", ("lsq_plus", "mobilenetv1_cifar", "W4A4"), ("lsq_plus", "mobilenetv1_cifar", "W2A2"), 10.1),
        ("CIFAR10", ("fpq", "mobilenetv1_cifar", "W4A4"), ("fpq", "mobilenetv1_cifar", "W2A2"), 8.69),
        ("CIFAR100", ("fpq", "resnet18_cifar", "W4A4"), ("lsq", "resnet18_cifar", "W4A4"), 0.54),
        ("CIFAR100", ("fpq", "resnet50_cifar", "W4A4"), ("lsq", "resnet50_cifar", "W4A4"), 0.6),
        ("CIFAR100", ("fpq", "resnet18_cifar", "W4A4"), ("erm", "resnet18_cifar", "FP"), 0.44),
        ("CIFAR100", ("fpq", "resnet18_cifar", "W2A4"), ("lsq", "resnet18_cifar", "W2A4"), 0.84),
        ("CIFAR100", ("fpq", "resnet50_cifar", "W2A4"), ("lsq", "resnet50_cifar", "W2A4"), 0.29),
    ],
)
def test_fpq_tables_agree_with_the_differences_the_text_states(fpq, dataset, a, b, stated):
    table = 4 if dataset == "CIFAR10" else 5
    (ma, moa, ba), (mb, mob, bb) = a, b
    difference = _value(fpq, table, ma, dataset, moa, ba) - _value(fpq, table, mb, dataset, mob, bb)
    assert difference == pytest.approx(stated, abs=1e-9)


def test_fpq_ablation_agrees_with_the_gains_the_text_states(fpq):
    lsq, sfp, csd, both = fpq[fpq.table == 2].number.tolist()
    assert [sfp - lsq, csd - lsq, both - lsq] == pytest.approx([0.94, 1.3, 1.56], abs=1e-9)


def test_fpq_keeps_the_papers_suspicious_numbers_as_printed_and_flags_them(fpq):
    lsq_w2a4 = {m: _value(fpq, 4, "lsq", "CIFAR10", m, "W2A4") for m in ("mobilenetv1_cifar", "mobilenetv2_cifar")}
    assert lsq_w2a4 == {"mobilenetv1_cifar": 78.15, "mobilenetv2_cifar": 78.15}
    assert _value(fpq, 4, "lsq", "CIFAR10", "resnet18_cifar", "W4A4") == 86.69  # below its own W2A4, 88.36
    flagged = fpq[fpq.note.str.contains("suspicious")]
    assert len(flagged) == 4
    assert set(zip(flagged.method, flagged.bits, flagged.model)) == {
        ("lsq", "W4A4", "resnet18_cifar"),
        ("lsq", "W2A4", "resnet18_cifar"),
        ("lsq", "W2A4", "mobilenetv1_cifar"),
        ("lsq", "W2A4", "mobilenetv2_cifar"),
    }
    # printed with one decimal: the text keeps it so
    hit = fpq[(fpq.table == 5) & (fpq.method == "fpq") & (fpq.model == "resnet50_cifar") & (fpq.bits == "W4A4")]
    assert hit.value.tolist() == ["78.8"]


def test_fpq_mobilenetv1_rows_say_qatbench_has_no_such_model(fpq):
    mbv1 = fpq[fpq.model == "mobilenetv1_cifar"]
    assert len(mbv1) == 32
    assert mbv1.note.str.contains("not in qatbench").all()


# --------------------------------------------------------------------------------------------- CR


def test_cr_holds_the_two_abstract_deltas_with_unknown_baseline_and_bits():
    frame = _read(REFERENCES / "cr.csv")
    assert dict(zip(frame.model, frame.value.astype(float))) == {"resnet18_cifar": 3.79, "mobilenet_cifar": 3.84}
    assert set(frame.method) == {"cr"} and set(frame.dataset) == {"CIFAR10"}
    assert set(frame.metric) == {"id_acc_delta"}
    assert set(frame.bits) == set(frame.baseline) == {"unknown"}
    assert set(frame.source) == {"arXiv:2402.13497 abstract (v2)"}
    assert frame.note.str.contains("baseline").all()


# --------------------------------------------------------------------------------------------- QT-DoG


def test_qtdog_reference_is_its_readme_table_with_photo_as_p():
    frame = _read(REFERENCES / "qtdog.csv")
    table = {
        (m, e): float(v) for m, e, v in zip(frame.method, frame.test_env, frame.value)
    }  # README.md of saqibjaved1/QT-DoG, "Example results on PACS with ResNet-50"
    domains = ["art_painting", "cartoon", "photo", "sketch", "avg"]
    assert [table[("erm", d)] for d in domains] == [89.8, 79.7, 96.8, 72.5, 84.7]
    assert [table[("qtdog", d)] for d in domains] == [89.1, 82.4, 96.9, 82.3, 87.8]
    assert [table[("eoq", d)] for d in domains] == [90.7, 83.7, 98.2, 84.8, 89.3]
    # each Avg is the mean of its 4 domains up to rounding (at most 0.1), except QT-DoG's, as printed
    off = {
        method
        for method in ("erm", "swad", "eoa", "diwa", "qtdog", "eoq")
        if abs(sum(table[(method, d)] for d in domains[:4]) / 4 - table[(method, "avg")]) > 0.1 + 1e-9
    }
    assert off == {"qtdog"}  # 87.8 printed, 87.675 from its domains: noted in the file
    assert "87.675" in frame[(frame.method == "qtdog") & (frame.test_env == "avg")].note.iloc[0]
    bits = dict(zip(frame.method, frame.bits))
    assert bits["qtdog"] == bits["eoq"] == "W7A32" and bits["erm"] == "FP"
    assert set(frame.image_size) == {"224"} and set(frame.steps) == {"5000"} and set(frame.model) == {"resnet50"}
