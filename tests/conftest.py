"""Shared fixtures: a tiny suite that trains in seconds, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_SUITE = """\
name: tiny
datasets:
  - name: RotatedMNIST
    test_envs: [0, 5]
models:
  - {name: small_cnn, options: {width: 8}}
methods:
  - name: erm
    hparams: {lr: 0.01}
  - name: lsq
    steps: 10
bits: [W4A4]
seeds: [0]
training:
  steps: 80
  batch_size: 16
  eval_every: 40
  eval_batch_size: 2048
"""


@pytest.fixture(autouse=True)
def _image_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoded images go to this session's temporary folder, never to ~/.cache."""
    monkeypatch.setenv("QATBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "image-cache"))


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Products of tiny float64 tensors: a second intra-op thread only adds contention (30x
    slower on a busy CPU). Use as `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_suite(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`qatbench ARGS` in a fresh interpreter, exactly as a user types it."""
    env = {**os.environ, "QATBENCH_QUIET": "1"}
    env.pop("QATBENCH_DATA", None)
    return subprocess.run(
        [sys.executable, "-m", "qatbench.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
    )


def write_run_folder(
    results: Path,
    run_id: str,
    *,
    label: str,
    bits: str,
    seed: int,
    test_envs: list[int],
    environments: list[str],
    curve_rows: list[dict],
    suite: str = "suite",
    dataset: str = "RotatedMNIST",
    model: str = "small_cnn",
    status: str = "done",
    error: str = "",
    finished_at: str = "2026-01-01T00:00:00+00:00",
    **extra,
) -> Path:
    """A run folder in the runner's real format (record.json, curve.jsonl) from synthetic numbers."""
    folder = results / suite / run_id
    folder.mkdir(parents=True)
    (folder / "curve.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve_rows))
    record = {
        "run_id": run_id,
        "suite": suite,
        "dataset": dataset,
        "model": model,
        "label": label,
        "method": label,
        "bits": bits,
        "w_bits": 32 if bits == "FP" else int(bits[1]),
        "seed": seed,
        "test_envs": test_envs,
        "environments": environments,
        "status": status,
        "error": error,
        "curve_file": "curve.jsonl",
        "finished_at": finished_at,
        **extra,
    }
    (folder / "record.json").write_text(json.dumps(record))
    return folder
