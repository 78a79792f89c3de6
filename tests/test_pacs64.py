"""The real PACS (all 9,991 images, 64x64, DomainBed's layout) through the whole pipeline, when
the development copy is on this machine (../shared/data/PACS-64, or $QATBENCH_DATA/PACS-64)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, write_suite

DOMAIN_SIZES = {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}  # Li et al. 2017


def _data_root() -> Path | None:
    for root in (os.environ.get("QATBENCH_DATA"), ROOT.parent / "shared" / "data"):
        if root and (Path(root) / "PACS-64").is_dir():
            return Path(root)
    return None


DATA_ROOT = _data_root()
pytestmark = pytest.mark.skipif(DATA_ROOT is None, reason="PACS-64 is not on this machine")

SUITE = """\
name: pacs64_tiny
datasets:
  - name: PACS
    test_envs: [sketch]
    options: {folder: PACS-64, image_size: 32}
models:
  - {name: small_cnn, options: {width: 8}}
methods:
  - name: erm
    hparams: {lr: 0.003}
  - name: lsq
    steps: 5
bits: [W4A4]
seeds: [0]
training: {steps: 30, batch_size: 16, eval_every: 30, eval_batch_size: 1024}
"""


def test_tiny_suite_runs_on_real_pacs_and_reports_the_sketch_domain(tmp_path):
    suite = write_suite(tmp_path, SUITE)
    results = tmp_path / "results"
    done = run_cli("run", str(suite), "--data-root", str(DATA_ROOT), "--results", str(results))
    assert done.returncode == 0, done.stderr
    records = [json.loads(p.read_text()) for p in results.glob("pacs64_tiny/*/record.json")]
    assert sorted(r["method"] for r in records) == ["erm", "lsq"]
    for record in records:
        assert record["status"] == "done"
        assert record["environments"] == list(DOMAIN_SIZES)
        assert record["data_skipped_n"] == 0
        sizes = [record[f"env{i}_in_n"] + record[f"env{i}_out_n"] for i in range(4)]
        assert sizes == list(DOMAIN_SIZES.values())
        assert record["env3_out_n"] == int(3929 * 0.2)
        assert record["ood_acc"] == record["env3_acc"]
    # the FP run and its QAT child trained on the same images: the splits are the data seed's
    erm, lsq = sorted(records, key=lambda r: r["method"])
    assert [erm[f"env{i}_out_n"] for i in range(4)] == [lsq[f"env{i}_out_n"] for i in range(4)]

    report = run_cli("report", str(results))
    assert report.returncode == 0, report.stderr
    assert "sketch" in report.stdout and "W4A4" in report.stdout
