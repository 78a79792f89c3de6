"""The Python entry points behind `qatbench analyze` and `qatbench eval`.

analyze("results/pacs64_w4a4", suite="suites/pacs64_w4a4.yaml")   # every finished run
evaluate_checkpoint("elsewhere/lsq_w4a4.pt", dataset="PACS64", test_envs="sketch",
                    model="resnet18", bits="W4A4")                 # a foreign checkpoint as a run
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from qatbench.config.analysis import AnalysisConfig
from qatbench.config.checkpoints import trained_record
from qatbench.config.grid import check_suite
from qatbench.config.suite import apply_override, blame, parse_suite
from qatbench.data import resolve_data_root
from qatbench.errors import UserError
from qatbench.runner import store
from qatbench.runner.analyze import analyze_run, record_options
from qatbench.runner.api import load_suite, run
from qatbench.runner.catalog import CATALOG
from qatbench.runner.sweep import SweepSummary
from qatbench.runner.train import resolve_device

DEFAULT_ANALYSIS = {"hessian": {}, "landscape": [{"kind": "1d", "grid": 21}]}  # without a suite: λ_max, trace, 1D cut


def analysis_config(suite_path: str | None, overrides: Sequence[str]) -> tuple[AnalysisConfig, Any]:
    """The suite's `analysis:` section (or the default one) with `--set analysis.*` overrides."""
    if suite_path is not None:
        suite = load_suite(suite_path, overrides)
        return suite.analysis or AnalysisConfig.model_validate(DEFAULT_ANALYSIS), suite
    raw: dict[str, Any] = {"analysis": {k: v for k, v in DEFAULT_ANALYSIS.items()}}
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("analysis."):
            raise UserError(f"--set {item}: without --suite only analysis.* keys can be set")
        apply_override(raw, item)
    try:
        return AnalysisConfig.model_validate(raw["analysis"]), None
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in error["loc"])
        raise UserError(f"--set analysis.{where}: {error['msg'].removeprefix('Value error, ')}") from None


def run_folders(path: Path) -> list[Path]:
    """The run folders a path names: itself, the runs inside a suite's results folder, or the
    folder of a qatbench model.pt."""
    path = Path(path)
    if path.is_file():  # a plain state_dict's run lives under --results; draw its figures from there
        return [path.parent] if trained_record(path) is not None else []
    if (path / store.RECORD).is_file():
        return [path]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and (p / store.RECORD).is_file())
    if not folders:
        raise UserError(f"{path}: neither a run folder (with {store.RECORD}) nor a folder of runs")
    return folders


def analyze(
    path: str | os.PathLike,
    *,
    suite: str | None = None,
    overrides: Sequence[str] = (),
    results: str | os.PathLike = "results",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
) -> list[str]:
    """Analyse the runs at `path` (or, for a checkpoint file without a record, evaluate it as a run
    of `suite`'s first dataset and model); returns one line per run."""
    config, loaded = analysis_config(suite, overrides)
    path = Path(path)
    root = resolve_data_root(data_root, loaded.data_root if loaded else None)
    torch_device = resolve_device(device)
    if path.is_file():
        if trained_record(path) is not None:
            path = path.parent
        else:
            if loaded is None:
                raise UserError(f"{path}: a checkpoint without its record.json needs --suite (dataset and model)")
            dataset = loaded.datasets[0]
            summary = evaluate_checkpoint(
                path, dataset=dataset.name, test_envs=None, model=loaded.models[0].name, suite=suite,
                results=results, data_root=data_root, device=device, progress=progress, analysis=config,
            )  # fmt: skip
            return [describe(r) for r in summary.records]
    elif not path.is_dir():
        raise UserError(f"{path}: no such run folder, results folder or checkpoint file")
    folders = run_folders(path)
    lines = []
    for folder in folders:
        record = store.read_record(folder)
        if record is None or record.get("status") != "done":
            lines.append(f"{folder.name}  skipped: {'no record' if record is None else record.get('status')}")
            continue
        try:
            record = analyze_run(folder, config, data_root=root, device=torch_device, progress=progress)
        except UserError as exc:
            if len(folders) == 1:
                raise
            lines.append(f"{folder.name}  not analysed: {exc}")
            continue
        lines.append(describe(record))
    return lines


def describe(record: dict[str, Any]) -> str:
    parts = [f"{record.get('run_id')}  {record.get('label')} {record.get('bits')}"]
    if record.get("hessian.top_eigenvalue") is not None:
        parts.append(f"top eigenvalue {record['hessian.top_eigenvalue']:.4g}")
    if record.get("hessian.trace") is not None:
        parts.append(f"trace {record['hessian.trace']:.4g} ± {record['hessian.trace_stderr']:.2g}")
    if record.get("landscape.files"):
        parts.append(f"{len(record['landscape.files'])} landscape(s)")
    if record.get("analysis.error"):
        parts.append(f"analysis failed: {record['analysis.error']}")
    return "  ".join(parts)


def _env_item(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.isdigit() else text


def _entry_options(entries, name: str) -> dict[str, Any]:
    """The options of the suite's first model or dataset entry called `name`; none when it has none."""
    return next((dict(entry.options) for entry in entries if entry.name == name), {})


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    dataset: str,
    test_envs: str | None = None,
    model: str | None = None,
    bits: str | None = None,
    suite: str | None = None,
    name: str = "eval",
    results: str | os.PathLike = "results",
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    analysis: AnalysisConfig | None = None,
) -> SweepSummary:
    """A checkpoint trained elsewhere, evaluated (and analysed) as a run of method `checkpoint`."""
    record = trained_record(Path(checkpoint)) if Path(checkpoint).is_file() else None
    model = model or (record or {}).get("model")
    if model is None:
        raise UserError(f"{checkpoint}: a plain state_dict needs --model (qatbench list models)")
    raw: dict[str, Any] = {
        "name": name,
        "datasets": [{"name": dataset}],
        "models": [{"name": model, "options": record_options(record, "model_options")}],
        "methods": [{"name": "checkpoint", "checkpoint": str(checkpoint), **({"bits": bits} if bits else {})}],
    }
    if record is not None:
        raw["datasets"][0]["options"] = (
            record_options(record, "dataset_options") if record["dataset"] == dataset else {}
        )
    if test_envs is not None:
        raw["datasets"][0]["test_envs"] = [[_env_item(t) for t in str(test_envs).split(",") if t.strip()]]
    if suite is not None:
        loaded = load_suite(suite)
        raw.update(quant=loaded.quant.model_dump(), training=loaded.training.model_dump(), data_root=loaded.data_root)
        if record is None:  # a plain state_dict: the suite's options of its model and dataset
            raw["models"][0]["options"] = _entry_options(loaded.models, model)
        if record is None or record["dataset"] != dataset:
            raw["datasets"][0]["options"] = _entry_options(loaded.datasets, dataset)
        if analysis is None and loaded.analysis is not None:
            analysis = loaded.analysis
    if analysis is not None:
        raw["analysis"] = analysis.model_dump(mode="json")
    where = "qatbench eval"
    parsed = parse_suite(where, raw, set())
    check_suite(parsed, CATALOG, lambda loc: blame(where, loc, set()))
    return run(parsed, results, data_root=data_root, device=device, progress=progress)
