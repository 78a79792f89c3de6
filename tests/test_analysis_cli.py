"""`qatbench run` with an `analysis:` section, `qatbench analyze`, and `qatbench eval` of a
checkpoint, end to end as a user types them; bad input is one line and exit code 2."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from qatbench.cli import main
from tests.conftest import TINY_SUITE, run_cli, write_suite

ANALYSIS = """\
analysis:
  subset: 64
  batch_size: 32
  hessian: {top_k: 2, rel_stderr: 0.2, max_probes: 40, density: true, density_steps: 8}
  landscape:
    - {kind: 1d, grid: 5, subset: 64}
    - {kind: 1d, direction: interpolation, grid: 5, span: 0.5, subset: 64}
"""


def _records(results: Path) -> dict[str, dict]:
    records = [json.loads(p.read_text()) for p in results.glob("*/*/record.json")]
    return {(r["label"], r["test_envs"][0]): r for r in records}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> Path:
    """The tiny suite (erm and lsq, two test domains) trained and analysed once for this module."""
    tmp = tmp_path_factory.mktemp("analysed")
    suite = write_suite(tmp, TINY_SUITE.replace("seeds: [0]", "seeds: [0]\n" + ANALYSIS), "tiny.yaml")
    done = run_cli("run", str(suite), "--results", str(tmp / "results"), "--set", "datasets[0].test_envs=[0]")
    assert done.returncode == 0, done.stderr
    return tmp


def test_run_with_analysis_writes_hessian_and_landscapes_into_every_record(analysed):
    records = _records(analysed / "results")
    assert set(records) == {("erm", 0), ("lsq", 0)}
    for (label, _), record in records.items():
        folder = analysed / "results" / "tiny" / record["run_id"]
        assert record["status"] == "done"
        assert record["hessian.backend"] == "fast" and len(record["hessian.eigenvalues"]) == 2
        assert record["hessian.eigenvalues"][0] >= record["hessian.eigenvalues"][1] > 0
        assert record["hessian.trace_stderr"] > 0 and record["hessian.trace_probes"] >= 10
        assert record["analysis.subset_n"] == 64 and len(record["analysis.subset_hash"]) == 16
        details = json.loads((folder / "hessian.json").read_text())
        # error bars named for what they are: an eigenvalue within each residual (lanczos.GUARANTEE)
        assert len(record["hessian.eigen_residuals"]) == 2 and "some eigenvalue" in details["eigen_residuals_bound"]
        layer_sum = sum(mean for mean, _ in details["layer_trace"].values())
        assert layer_sum == pytest.approx(record["hessian.trace"], rel=1e-6)  # per-layer traces add up
        assert np.allclose(np.sum(details["density"]["weights"], axis=1), 1.0)
        files = record["landscape.files"]
        assert len(files) == (2 if label == "lsq" else 1)  # the FP run has no parent to interpolate from
        for name in files:
            with np.load(folder / name) as surface:
                assert np.isfinite(surface["loss"]).all() and surface["loss"].shape == (5,)
            sidecar = json.loads((folder / name).with_suffix(".json").read_text())
            assert sidecar["complete"] and sidecar["subset_n"] == 64 and sidecar["bn"] == "eval"
            # the centre of a cut is the analysed model itself: same loss as the Hessian's subset loss
            assert sidecar["center_loss"] == pytest.approx(record["hessian.loss"], rel=1e-4)
    # every run of the suite is cut along the same raw random direction, saved once per architecture
    assert len(list((analysed / "results" / "tiny" / "directions").glob("*.pt"))) == 1
    # the same subset for every run: same hash
    assert len({r["analysis.subset_hash"] for r in records.values()}) == 1


def test_report_shows_the_sharpness_table(analysed):
    report = run_cli("report", str(analysed / "results"))
    assert report.returncode == 0, report.stderr
    assert "sharpness" in report.stdout and "λ_max" in report.stdout and "Tr(H)" in report.stdout


def test_rerun_with_the_same_analysis_skips_and_with_new_settings_reanalyses(analysed, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(analysed / "results", results)
    suite = write_suite(tmp_path, TINY_SUITE.replace("seeds: [0]", "seeds: [0]\n" + ANALYSIS), "tiny.yaml")
    before = _records(results)
    again = run_cli("run", str(suite), "--results", str(results), "--set", "datasets[0].test_envs=[0]")
    assert again.returncode == 0 and "2 already finished" in again.stdout
    assert _records(results) == before  # nothing analysed twice
    changed = run_cli(
        "run", str(suite), "--results", str(results), "--set", "datasets[0].test_envs=[0]",
        "--set", "analysis.hessian.top_k=3",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    after = _records(results)
    assert all(len(r["hessian.eigenvalues"]) == 3 for r in after.values())
    assert all(after[k]["run_id"] == before[k]["run_id"] and after[k]["id_acc"] == before[k]["id_acc"] for k in after)


def test_a_landscape_asked_of_other_seeds_is_left_out_of_these_runs(analysed, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(analysed / "results", results)
    suite = write_suite(tmp_path, TINY_SUITE.replace("seeds: [0]", "seeds: [0]\n" + ANALYSIS), "tiny.yaml")
    before = _records(results)
    other = run_cli(
        "run", str(suite), "--results", str(results), "--set", "datasets[0].test_envs=[0]",
        "--set", "analysis.landscape[0].run_seeds=[1]",
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    after = _records(results)
    assert after[("erm", 0)]["landscape.files"] == []  # its only landscape is asked of seed 1's runs
    assert after[("lsq", 0)]["landscape.files"] == [f for f in before[("lsq", 0)]["landscape.files"] if "interp" in f]
    assert after[("lsq", 0)]["hessian.eigenvalues"] == pytest.approx(before[("lsq", 0)]["hessian.eigenvalues"])


def test_analyze_a_results_folder_draws_figures(analysed, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(analysed / "results", results)
    out = run_cli(
        "analyze", str(results / "tiny"), "--set", "analysis.hessian.top_k=1", "--set", "analysis.subset=32",
        "--figures", str(tmp_path / "figures"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("top eigenvalue") == 2
    records = _records(results)
    assert all(r["analysis.subset_n"] == 32 and len(r["hessian.eigenvalues"]) == 1 for r in records.values())
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert {"landscape_1d_random_loss.png", "landscape_1d_random_loss.pdf", "layer_trace.png"} <= names


def test_eval_of_a_qatbench_checkpoint_reproduces_its_run(analysed, tmp_path):
    lsq = _records(analysed / "results")[("lsq", 0)]
    model = analysed / "results" / "tiny" / lsq["run_id"] / "model.pt"
    out = run_cli("eval", str(model), "--dataset", "RotatedMNIST", "--test-envs", "0", "--results", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("eval/*/record.json")]
    assert record["method"] == "checkpoint" and record["bits"] == "W4A4" and record["steps"] == 0
    assert record["checkpoint.sha256"] == record["hparams.sha256"] and len(record["hparams.sha256"]) == 64
    # the same weights, split and quantizers: the same accuracies as the run that trained them
    assert record["id_acc"] == pytest.approx(lsq["id_acc"], abs=1e-9)
    assert record["ood_acc"] == pytest.approx(lsq["ood_acc"], abs=1e-9)


def test_eval_of_a_plain_state_dict_with_named_architecture(analysed, tmp_path):
    erm = _records(analysed / "results")[("erm", 0)]
    plain = tmp_path / "weights.pt"
    torch.save(torch.load(analysed / "results" / "tiny" / erm["run_id"] / "model.pt"), plain)
    out = run_cli(
        "eval", str(plain), "--dataset", "RotatedMNIST", "--test-envs", "0", "--model", "small_cnn",
        "--results", str(tmp_path / "r"),
    )  # fmt: skip
    # the tiny suite's small_cnn has width 8; the default width does not fit these weights
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "weights.pt: does not fit the architecture" in out.stderr and "shape mismatches" in out.stderr
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("*/*/record.json"))
    # --suite brings the suite's options of that model (width 8): the run's own accuracies
    suite = write_suite(tmp_path, TINY_SUITE, "tiny.yaml")
    argv = ["eval", str(plain), "--dataset", "RotatedMNIST", "--test-envs", "0", "--model", "small_cnn"]
    assert main([*argv, "--suite", str(suite), "--results", str(tmp_path / "r"), "--quiet"]) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("eval/*/record.json")]
    assert record["model_options.width"] == 8
    assert (record["id_acc"], record["ood_acc"]) == pytest.approx((erm["id_acc"], erm["ood_acc"]), abs=1e-9)


def test_analyze_refuses_a_subset_larger_than_the_data_and_writes_nothing(analysed, tmp_path, capsys, caplog):
    results = tmp_path / "results"
    shutil.copytree(analysed / "results", results)
    run = next(iter(_records(results).values()))
    folder = results / "tiny" / run["run_id"]
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(["analyze", str(folder), "--set", "analysis.subset=1000000"]) == 2  # in process: main, as the CLI
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1000000 examples is asked" in err and "holds" in err, err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # in process, logs go to caplog
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_analyze_refuses_a_non_finite_loss_and_writes_nothing(analysed, tmp_path, capsys, caplog):
    results = tmp_path / "results"
    shutil.copytree(analysed / "results", results)
    run = _records(results)[("erm", 0)]
    folder = results / "tiny" / run["run_id"]
    state = torch.load(folder / "model.pt")
    state = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(state, folder / "model.pt")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(["analyze", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not finite" in err and "nothing was analysed" in err, err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_bad_analysis_settings_are_one_line_at_load(tmp_path, capsys):
    """The first as a user types it (a fresh interpreter); the others through the same `main`
    in this process, which is what the fresh interpreter runs (4 s of torch import saved each)."""
    for k, (bad, expected) in enumerate(
        (
            ("analysis: {hessian: {backend: scipy}}", "analysis.hessian.backend"),
            ("analysis: {landscape: {kind: 2d, direction: eigenvector}}", "a 2d landscape takes direction 'random'"),
            ("analysis: {subset: 0}", "analysis.subset"),
            ("analysis: {hessian: {min_probes: 50, max_probes: 10}}", "min_probes (50) is more than max_probes"),
        )
    ):
        suite = write_suite(tmp_path, TINY_SUITE + bad + "\n")
        if k == 0:
            out = run_cli("run", str(suite), "--dry-run")
            code, err = out.returncode, out.stderr
        else:
            code, err = main(["run", str(suite), "--dry-run"]), capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (bad, err)
        assert expected in err, (bad, err)
