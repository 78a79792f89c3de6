"""Shared fixtures: a tiny suite that trains in seconds, and a CLI runner."""

from __future__ import annotations

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
