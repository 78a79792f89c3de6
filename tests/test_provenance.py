"""Claims about data provenance: the fingerprint of a data folder, the data root and fingerprints a
record carries, and what `status`, `run --dry-run`, `run`, `run --rerun-stale` and `report` do
with a finished run whose data has changed on disk since it read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qatbench.cli import main
from qatbench.provenance import FINGERPRINTS_KEY, ROOT_KEY, fingerprint, stale_reason
from tests.conftest import write_suite
from tests.test_image_folders import PACS_DOMAINS, make_pacs

SUITE = """
name: pacs-prov
datasets: [{name: PACS, test_envs: [2], options: {image_size: 8}}]
models: [{name: small_cnn, options: {width: 4}}]
methods: [erm]
training: {steps: 2, batch_size: 4, eval_every: 2, eval_batch_size: 64}
"""


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QATBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("QATBENCH_DATA", raising=False)


def test_fingerprint_counts_files_and_bytes_and_changes_only_when_the_data_does(tmp_path):
    folder = tmp_path / "env"
    (folder / "dog").mkdir(parents=True)
    (folder / "dog" / "a.png").write_bytes(b"x" * 10)
    (folder / "dog" / "b.png").write_bytes(b"y" * 7)
    first = fingerprint(folder)
    assert first["files"] == 2 and first["bytes"] == 17
    assert fingerprint(folder) == first  # nothing changed: the same fingerprint
    (folder / ".lock").write_bytes(b"")  # hidden files (locks, temporaries) are not data
    assert fingerprint(folder) == first
    (folder / "dog" / "c.png").write_bytes(b"z")
    added = fingerprint(folder)
    assert added["files"] == 3 and added["hash"] != first["hash"]
    (folder / "dog" / "c.png").unlink()
    assert fingerprint(folder) == first  # removed again: back to the same data
    (folder / "dog" / "b.png").unlink()
    assert fingerprint(folder)["files"] == 1 and fingerprint(folder)["hash"] != first["hash"]
    (folder / "dog" / "b.png").write_bytes(b"y" * 7)
    with open(folder / "dog" / "a.png", "r+b") as f:
        f.truncate(3)
    truncated = fingerprint(folder)
    assert truncated["files"] == 2 and truncated["bytes"] == 10 and truncated["hash"] != first["hash"]


def test_an_embedded_record_or_one_without_fingerprints_is_never_stale():
    assert stale_reason({ROOT_KEY: "embedded", FINGERPRINTS_KEY: []}) is None
    assert stale_reason({"status": "done"}) is None


def _run(*args: str) -> int:
    return main([*args, "--quiet"]) if args[0] == "run" else main(list(args))


def test_a_stale_record_is_flagged_and_retrained_only_with_rerun_stale(tmp_path, capsys):
    root = make_pacs(tmp_path / "data")
    (root / "PACS" / "sketch" / "dog" / "broken.png").write_bytes(b"not a png")  # skipped, and said so
    suite, results = write_suite(tmp_path, SUITE), tmp_path / "results"
    common = ["--data-root", str(root), "--results", str(results)]
    assert _run("run", str(suite), *common, "--device", "cpu") == 0
    (record_path,) = results.rglob("record.json")
    record = json.loads(record_path.read_text())
    assert record[ROOT_KEY] == str(root.resolve())
    prints = {p["env"]: p for p in record[FINGERPRINTS_KEY]}
    assert list(prints) == PACS_DOMAINS
    assert prints["photo"]["source"] == "PACS/photo" and prints["photo"]["files"] == 7 * 4
    capsys.readouterr()

    assert _run("status", str(suite), *common) == 0
    assert "stale" not in capsys.readouterr().out

    (root / "PACS" / "photo" / "dog" / "a.png").unlink()  # the data changes under the finished run
    assert _run("status", str(suite), *common) == 0
    out = capsys.readouterr().out
    assert f"stale: 1 finished run(s)" in out and record["run_id"] in out
    assert "photo: 28 files" in out and "27 files" in out

    assert _run("run", str(suite), *common, "--dry-run") == 0
    assert f"{record['run_id']}  stale" in capsys.readouterr().out

    assert _run("run", str(suite), *common, "--device", "cpu") == 0  # kept: finished, and flagged
    assert "kept and flagged" in capsys.readouterr().out
    assert json.loads(record_path.read_text())["finished_at"] == record["finished_at"]

    assert _run("report", str(results), "--references", "none") == 0
    out = capsys.readouterr().out  # under the table: the stale run, and the file its data skipped
    assert "stale: 1 run(s) read data that differs" in out
    assert "1 unreadable image file(s) were skipped by these runs (e.g. broken.png" in out

    assert _run("run", str(suite), *common, "--device", "cpu", "--rerun-stale") == 0
    capsys.readouterr()
    again = json.loads(record_path.read_text())
    assert again["finished_at"] != record["finished_at"]
    assert {p["env"]: p for p in again[FINGERPRINTS_KEY]}["photo"]["files"] == 27
    assert _run("status", str(suite), *common) == 0
    assert "stale" not in capsys.readouterr().out


def test_dry_run_refuses_a_missing_data_root_in_one_line_exit_2(tmp_path, capsys):
    suite = write_suite(tmp_path, SUITE)
    missing = tmp_path / "no-such-data"
    assert main(["run", str(suite), "--dry-run", "--data-root", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "not a directory" in err


def test_dry_run_names_the_test_domains_and_the_data_root(tmp_path, capsys):
    root = make_pacs(tmp_path / "data")
    suite = write_suite(tmp_path, SUITE)
    assert main(["run", str(suite), "--dry-run", "--data-root", str(root), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "test_envs=[2] (photo)" in out and f"data root: {root}" in out and "1 runs in suite 'pacs-prov': 1 to run" in out
