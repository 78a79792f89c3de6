"""Sharpness analyses of a finished run, written into its folder and its record.

    analyze_run(results/<suite>/<run_id>, AnalysisConfig(...))

The run is rebuilt from its record (dataset, architecture, QuantSpec) and its model.pt; the
Hessian and landscapes are measured on a fixed, seeded subset whose size, split and content
hash are recorded. Results go to hessian.json and landscape/*.npz (+ .json sidecars), and their
scalars into record.json, rewritten atomically. A record whose `analysis.digest` matches the
settings asked for is not analysed again; a landscape cut short resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from qatbench.analysis.measure import hessian, landscape
from qatbench.config import QuantSpec
from qatbench.config.analysis import AnalysisConfig, HessianConfig, LandscapeConfig
from qatbench.data import build_dataset, split_environments
from qatbench.data.loaders import take
from qatbench.errors import UserError
from qatbench.models import build_model
from qatbench.quant import quantize_model
from qatbench.runner import store

log = logging.getLogger(__name__)

HESSIAN_FILE = "hessian.json"
LANDSCAPE_DIR = "landscape"
DIRECTIONS_DIR = "directions"  # results/<suite>/directions: one raw draw per architecture


def quant_of(record: dict[str, Any]) -> QuantSpec | None:
    if record.get("bits", "FP") == "FP":
        return None
    return QuantSpec(**{k.removeprefix("quant."): v for k, v in record.items() if k.startswith("quant.")})


def load_run_model(record: dict[str, Any], weights: Path, dataset, device: torch.device) -> torch.nn.Module:
    """The run's architecture (quantized as it was trained) holding the weights of `weights`."""
    model = build_model(
        record["model"], dataset.input_shape, dataset.num_classes, record_options(record, "model_options")
    )
    quant = quant_of(record)
    if quant is not None:
        model = quantize_model(model, quant)
    load_weights(model, weights)
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Strict loading, with a mismatch explained in one line (the first missing, unexpected or
    misshapen key) instead of torch's page of keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (unreadable, truncated, not a torch file)
        raise UserError(
            f"{path}: not a readable state_dict ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # the common {"state_dict": ..., "epoch": ...} wrapping
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state_dict (a mapping of tensor names), got {type(state).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and hasattr(state[k], "shape") and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatches (first: {k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
            )
        raise UserError(f"{path}: does not fit the architecture: {'; '.join(parts)}")
    model.load_state_dict(state)


def record_options(record: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
    """{'model_options.width': 8} -> {'width': 8}: a record's flat keys under `prefix`, as given."""
    return {k.removeprefix(prefix + "."): v for k, v in (record or {}).items() if k.startswith(prefix + ".")}


def subset_pool(dataset, splits, test_envs, split: str):
    if split == "id":
        return ConcatDataset([splits[i].in_split for i in dataset.train_envs(list(test_envs))])
    if not test_envs:
        raise UserError("analysis.split: 'ood' needs test environments; this run has none (use split: id)")
    return ConcatDataset([part for i in test_envs for part in (splits[i].in_split, splits[i].out_split)])


def check_subset_size(available: int, size: int, split: str, dataset: str, test_envs) -> None:
    if size > available:
        raise UserError(
            f"analysis: a subset of {size} examples is asked, but the '{split}' data of {dataset} "
            f"(test_envs {list(test_envs)}) holds {available}; set analysis.subset (or landscape subset) lower"
        )


def fixed_subset(dataset, splits, test_envs, config: AnalysisConfig, size: int, device):
    """`size` examples drawn once (seeded) from the split, as batches on the device, and the
    hash of their content: two runs measured on the same subset say the same hash. Subsets of one
    seed are nested (the first `size` of one permutation): a landscape on 1,024 images holds the
    Hessian's 512."""
    pool = subset_pool(dataset, splits, test_envs, config.split)
    check_subset_size(len(pool), size, config.split, dataset.name, test_envs)
    generator = torch.Generator().manual_seed(config.seed)
    index = sorted(torch.randperm(len(pool), generator=generator)[:size].tolist())
    x, y = take(pool, index)
    digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
    batches = []
    for start in range(0, size, config.batch_size):
        xb = x[start : start + config.batch_size].to(device)
        if dataset.eval_transform is not None:
            xb = dataset.eval_transform(xb)
        batches.append((xb, y[start : start + config.batch_size].to(device)))
    return batches, digest


def needs_analysis(record: dict[str, Any] | None, config: AnalysisConfig | None) -> bool:
    return (
        config is not None
        and not config.empty
        and record is not None
        and record.get("status") == "done"
        and not record.get("members")  # an ensemble has no single model whose Hessian to measure
        and record.get("analysis.digest") != config.digest()
    )


def analyze_run(
    folder: Path,
    config: AnalysisConfig,
    *,
    data_root: Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Measure `config` on the finished run in `folder`; returns the updated record. Input
    mistakes (subset too large, a non-finite loss) raise UserError before anything is written."""
    folder = Path(folder)
    record = store.read_record(folder)
    if record is None or record.get("status") != "done":
        state = "no record" if record is None else f"status {record.get('status')}"
        raise UserError(f"{folder}: not a finished run ({state}); only finished runs can be analysed")
    if record.get("members"):
        raise UserError(
            f"{folder}: an ensemble of {len(record['members'])} runs has no single model to analyse; analyse its members"
        )
    device = torch.device(device)
    started = time.time()
    dataset = build_dataset(
        record["dataset"], data_root, record["data_seed"], record_options(record, "dataset_options")
    )
    splits = split_environments(dataset, record["holdout_fraction"], record["data_seed"])
    test_envs = tuple(record.get("test_envs") or ())
    model = load_run_model(record, folder / store.MODEL, dataset, device)
    batches, digest = fixed_subset(dataset, splits, test_envs, config, config.subset, device)
    loss = _mean_loss(model, batches)
    if not torch.isfinite(torch.tensor(loss)):
        raise UserError(f"{folder}: the loss on the analysis subset is not finite ({loss}); nothing was analysed")
    landscape_batches = {}
    for cut in config.landscape:  # subset sizes checked before any file is written
        if cut.subset not in landscape_batches:
            landscape_batches[cut.subset] = fixed_subset(dataset, splits, test_envs, config, cut.subset, device)

    names = {"label": record.get("label"), "method": record.get("method"), "bits": record.get("bits")}
    names["run_id"] = record.get("run_id")
    environments = record.get("environments") or []
    names["domain"] = " + ".join(environments[i] for i in test_envs if i < len(environments)) or "no test domain"
    names["run_seed"] = record.get("seed")
    updates: dict[str, Any] = {
        "analysis.digest": config.digest(),
        "analysis.subset_n": config.subset,
        "analysis.subset_hash": digest,
        "analysis.split": config.split,
    }
    top_vector = None
    if config.hessian is not None:
        result = hessian(model, batches, config.hessian, seed=config.seed)
        top_vector = result.top_vector
        store.write_json(
            folder / HESSIAN_FILE, {**names, "subset_n": config.subset, "subset_hash": digest, **result.details()}
        )
        updates.update({f"hessian.{k}": v for k, v in result.record().items()})
        updates["hessian.file"] = HESSIAN_FILE
    else:
        (folder / HESSIAN_FILE).unlink(missing_ok=True)  # a figure must never show another setting's numbers
    files = []
    for cut in config.landscape:
        if cut.run_seeds is not None and record.get("seed") not in cut.run_seeds:
            continue  # this landscape is asked of other seeds' runs
        cut_batches, cut_digest = landscape_batches[cut.subset]
        files.append(
            _landscape(folder, record, model, cut, cut_batches, cut_digest, names, top_vector, device, progress)
        )
    if config.landscape:
        updates["landscape.files"] = [f for f in files if f]
    updates["analysis.time_s"] = round(time.time() - started, 3)
    fresh = store.read_record(folder) or record
    fresh = {k: v for k, v in fresh.items() if not k.startswith(("hessian.", "landscape.", "analysis."))}
    fresh.update(updates)
    store.write_json(folder / store.RECORD, fresh)
    return fresh


@torch.no_grad()
def _mean_loss(model, batches) -> float:
    n = sum(len(y) for _, y in batches)
    return sum(float(torch.nn.functional.cross_entropy(model(x), y)) * len(y) for x, y in batches) / n


def _landscape(folder, record, model, cut: LandscapeConfig, batches, digest, names, top_vector, device, progress):
    settings = cut.model_dump(mode="json")
    settings.pop("points_per_forward")  # how fast, not what
    settings.pop("run_seeds")  # which runs, not what
    key = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:8]
    path = folder / LANDSCAPE_DIR / f"{cut.kind}_{cut.direction}_{key}.npz"
    setup = {**names, **settings, "subset_n": cut.subset, "subset_hash": digest}
    start = None
    if cut.direction == "interpolation":
        parent = record.get("parent_run_id")
        if not parent:
            log.info("%s: an interpolation landscape needs an FP parent; this run has none", folder)
            return None
        start = torch.load(folder.parent / parent / store.MODEL, map_location=device, weights_only=True)
    if cut.direction == "eigenvector" and top_vector is None:
        top_vector = hessian(model, batches, HessianConfig(trace=False)).top_vector
    landscape(
        model,
        batches,
        cut,
        model_name=record["model"],
        directions_folder=folder.parent / DIRECTIONS_DIR,
        eigenvector=top_vector,
        start=start,
        path=path,
        setup=setup,
        progress=progress,
    )
    return str(path.relative_to(folder))
