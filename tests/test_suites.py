"""The committed suites, the README's suite example and the papers' reference numbers load as a
user would load them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from qatbench.runner import api
from tests.conftest import TINY_SUITE, run_cli

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").glob("*.yaml"))
REFERENCE_COLUMNS = ["method", "dataset", "model", "bits", "test_env", "metric", "value", "baseline", "source", "note"]


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_committed_suite_loads_and_expands(path):
    suite = api.load_suite(path)
    specs = api.expand(suite)
    assert specs and all(s.suite == suite.name for s in specs)
    assert {m.name for m in suite.methods} <= {s.method for s in specs}


def test_papers_scale_pacs_suites_run_the_whole_zoo_at_their_bits():
    zoo = {"erm", "sam", "asam", "sagm", "gam", "lsq", "lsq_plus", "pact", "dorefa", "kd", "lsq_sam", "lsq_sagm"}
    zoo |= {"gaqat", "fqat"}
    for name, bits in (("pacs_w4a4", "W4A4"), ("pacs_w3a3", "W3A3"), ("pacs64_w4a4", "W4A4")):
        specs = api.expand(api.load_suite(ROOT / "suites" / f"{name}.yaml"))
        assert {s.method for s in specs} == zoo
        assert {s.bits_label for s in specs if s.quant} == {bits}
        # 4 PACS domains x 3 seeds, each method once per domain and seed
        assert len(specs) == len(zoo) * 4 * 3


def test_quantizer_methods_get_their_own_quantizer_in_the_pacs_suite():
    specs = api.expand(api.load_suite(ROOT / "suites" / "pacs_w4a4.yaml"))
    quantizer = {s.method: s.quant.quantizer for s in specs if s.quant}
    assert quantizer["pact"] == "pact" and quantizer["lsq_plus"] == "lsq_plus" and quantizer["dorefa"] == "dorefa"
    assert quantizer["gaqat"] == quantizer["lsq"] == "lsq"


def test_readme_suite_example_is_a_valid_suite(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Suite format\n+```yaml\n(.*?)```", readme, re.S).group(1)
    path = tmp_path / "example.yaml"
    path.write_text(block)
    specs = api.expand(api.load_suite(path))
    fork = [s for s in specs if s.label == "lsq-fork"]
    assert fork and fork[0].quant.grad_scale == "tensor" and fork[0].quant.a_init == "one"
    assert fork[0].run_id != next(s for s in specs if s.label == "lsq").run_id


def test_gaqat_reference_holds_the_abstracts_deltas():
    with open(ROOT / "suites" / "references" / "gaqat.csv", newline="") as handle:
        rows = {(r["dataset"], r["bits"], r["metric"]): float(r["value"]) for r in csv.DictReader(handle)}
    assert rows[("PACS", "W4A4", "ood_acc_delta_max")] == 4.5
    assert rows[("DomainNet", "W4A4", "ood_acc_delta_max")] == 1.39
    assert rows[("DomainNet", "W3A3", "ood_acc_delta_max")] == 1.06


def test_quant_overrides_on_a_full_precision_method_are_one_line_exit_2(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(TINY_SUITE.replace("  - name: erm\n", "  - name: erm\n    quant: {w_per_channel: true}\n"))
    result = run_cli("run", str(path), "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"qatbench: error: {path}: methods[0].quant: method 'erm' trains in full precision; "
        "`quant` applies to QAT methods only"
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        ("methods[1]={name: gaqat, hparams: {window: 1}}", "--set methods[1]: window must be >= 2, got 1"),
        ("methods[1]={name: fqat, hparams: {max_frozen: 2}}", "--set methods[1]: max_frozen must be >= 0.0 and <= 1.0"),
        ("methods[1]={name: lsq_sam, hparams: {rho: -0.1}}", "--set methods[1]: rho must be >= 0.0, got -0.1"),
        (
            "methods[1]={name: fqat, hparams: {freeze: all}}",
            "--set methods[1]: hparam 'freeze': Input should be 'layer', 'flat' or 'task'",
        ),
        ("training.compile=maybe", "--set training.compile: compile must be true, false or 'auto', got 'maybe'"),
        (
            "quant.quantizer=int4",
            "--set quant.quantizer: Input should be 'lsq', 'lsq_plus', 'pact', 'dorefa', 'minmax' or 'percentile'",
        ),
        (
            "methods[1]={name: gaqat, quant: {quantizer: pact}}",
            "--set methods[1]: method 'gaqat' trains the quantizers lsq, lsq_plus, not 'pact'",
        ),
        ("parent={name: erm, quant: {w_bits: 4}}", "--set parent: unknown key"),
        ("parent={name: erm, quant: {quantizer: pact}}", "--set parent: the parent trains in full precision"),
        ("methods[1]={name: kd, hparams: {temperature: 0}}", "--set methods[1]: temperature must be >= 0.01, got 0"),
        ("methods[1]={name: kd, hparams: {alpha: 1.5}}", "--set methods[1]: alpha must be >= 0.0 and <= 1.0"),
    ],
)
def test_bad_new_settings_are_one_line_at_load(tmp_path, capsys, override, message):
    from qatbench.cli import main

    path = tmp_path / "suite.yaml"
    path.write_text(TINY_SUITE)
    assert main(["run", str(path), "--dry-run", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"qatbench: error: {message}"), err


def test_suite_level_lsq_switches_do_not_reach_methods_with_their_own_quantizer(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(
        TINY_SUITE.replace("  - name: lsq\n", "  - name: pact\n  - name: lsq\n") + "quant: {grad_scale: tensor}\n"
    )
    quant = {s.method: s.quant for s in api.expand(api.load_suite(path)) if s.quant}
    assert quant["lsq"].grad_scale == "tensor"
    assert quant["pact"].quantizer == "pact" and quant["pact"].grad_scale == "layer"
