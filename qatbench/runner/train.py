"""`run_one(spec)`: one run from its RunSpec to its record, and nothing a run does escapes it.

    build dataset splits -> build model -> (load the FP parent) -> quantize + calibrate
    -> Method -> `steps` updates, evaluating every split every `eval_every` steps
    -> model.pt, curve.jsonl, record.json (last)

A `switch_at: N` run (runner/protocols.py) trains its first N steps in float with the suite's
parent method and quantizes + calibrates the weights it has then, before update N + 1.

A run that raises is recorded as `failed` with its error (traceback in error.log); a run whose
loss stops being finite or rises far above its start is recorded as `diverged`
(runner/divergence.py), and keeps its last resumable checkpoint to be looked at (runner/resume.py).
Either way the sweep goes on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import platform
import random
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset
from tqdm.auto import tqdm

from qatbench.config import RunSpec
from qatbench.data import build_dataset, data_provenance, infinite_batches, split_environments
from qatbench.data.loaders import take
from qatbench.errors import UserError
from qatbench.methods import METHODS
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model
from qatbench.runner import protocols, regenerate, resume, store
from qatbench.runner.analyze import analyze_run, load_weights, needs_analysis
from qatbench.runner.compiled import compile_in_place
from qatbench.runner.divergence import Diverged, DivergenceMonitor
from qatbench.runner.ensemble import member_models
from qatbench.runner.evaluate import evaluate
from qatbench.runner.threads import intra_op_threads
from qatbench.version import __version__

log = logging.getLogger(__name__)


class CheckpointUnusable(Exception):
    """A checkpoint that passed its checksum could not be applied to the rebuilt run."""


def run_one(
    spec: RunSpec, results: Path, *, data_root: Path | None = None, device: str = "auto", progress: bool = True
) -> dict[str, Any]:
    """Train and evaluate one run; write and return its record (whatever its status)."""
    with intra_op_threads(spec.threads):  # the same numbers under every launcher
        return _run_one(spec, results, data_root=data_root, device=device, progress=progress)


def _run_one(spec: RunSpec, results: Path, *, data_root: Path | None, device: str, progress: bool) -> dict[str, Any]:
    folder = store.run_dir(results, spec.suite, spec.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    store.beat(folder, 0, spec.steps)
    checkpoint = resume.load(folder, spec.run_id) if spec.checkpoint_every else None  # a killed run goes on
    if checkpoint is None:
        (folder / store.CURVE).unlink(missing_ok=True)
        (folder / store.FLOAT_CURVE).unlink(missing_ok=True)
    (folder / store.ERROR_LOG).unlink(missing_ok=True)
    (folder / regenerate.NOTE).unlink(missing_ok=True)  # it describes weights this run replaces
    (folder / resume.BEFORE_DIVERGENCE).unlink(missing_ok=True)  # an earlier attempt's
    started = time.time()
    record = describe(spec)
    record["started_at"] = now()
    dataset_facts: dict[str, Any] = {}  # known once the data is read: a diverged or failed run keeps them too
    try:
        torch_device = resolve_device(device)
        record["device"] = str(torch_device)
        try:
            trained = _train(spec, folder, results, data_root, torch_device, progress, checkpoint, dataset_facts)
        except CheckpointUnusable as exc:  # it read back whole but does not fit: start over, never fail for it
            log.warning("run %s: checkpoint unusable (%s): removed; the run starts over", spec.run_id, exc)
            resume.discard(folder)
            (folder / store.CURVE).unlink(missing_ok=True)
            (folder / store.FLOAT_CURVE).unlink(missing_ok=True)
            trained = _train(spec, folder, results, data_root, torch_device, progress, None, dataset_facts)
        record.update(trained)
        record["status"] = "done"
    except Diverged as exc:
        record.update(status="diverged", error=str(exc), diverged_step=exc.step, diverged_loss=exc.loss)
        if (kept := resume.keep_before_divergence(folder, spec.run_id, exc.step)) is not None:
            record["checkpoint_before_divergence"] = {"file": resume.BEFORE_DIVERGENCE, "step": kept}
    except Exception as exc:  # noqa: BLE001  (a run's failure is data, not a crash)
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0] + _hint(exc))
        with contextlib.suppress(OSError):  # a full disk: the record below says what failed
            (folder / store.ERROR_LOG).write_text(traceback.format_exc())
        log.warning("run %s failed: %s", spec.run_id, record["error"])
    for key, value in dataset_facts.items():  # the tables place a diverged run in its domain's cell by them
        record.setdefault(key, value)
    record["wall_time_s"] = round(time.time() - started, 3)
    record["finished_at"] = now()
    record = _write_record(folder, store.flatten(record))
    if record["status"] in store.FINISHED:
        resume.discard(folder)
    return analyze_after(folder, spec, record, data_root=data_root, device=device, progress=progress)


def _write_record(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write the record; when the disk refuses it (full), the run is `failed` with that reason, in a
    record if that still fits, else in the sweep's summary only: a run that could not be kept is run
    again next time, and the sweep goes on."""
    try:
        store.write_json(folder / store.RECORD, record)
        return record
    except OSError as exc:
        record = {**record, "status": "failed", "error": f"cannot write {store.RECORD}: {exc.strerror or exc}"}
        log.warning("run %s failed: %s", record["run_id"], record["error"])
    try:
        store.write_json(folder / store.RECORD, record)
    except OSError:
        pass  # nothing more fits: the summary still counts the run as failed
    return record


OOM_HINT = " (hint: out of memory; lower training.batch_size or training.eval_batch_size, or use a larger device)"


def _hint(exc: Exception) -> str:
    """What to do about a failure a user can fix without reading the traceback."""
    out_of_memory = isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower()
    return OOM_HINT if out_of_memory else ""


def analyze_after(
    folder: Path, spec: RunSpec, record: dict[str, Any], *, data_root, device, progress: bool
) -> dict[str, Any]:
    """The suite's analyses of a finished run that lacks them. A failing analysis is written into
    the record (`analysis.error`) and leaves the run's own results as they are."""
    if not needs_analysis(record, spec.analysis):
        return record
    try:
        return analyze_run(folder, spec.analysis, data_root=data_root, device=resolve_device(device), progress=progress)
    except Exception as exc:  # noqa: BLE001  (an analysis failure is data, not a crash)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        log.warning("analysis of run %s failed: %s", spec.run_id, message)
        record = {**(store.read_record(folder) or record), "analysis.error": message}
        (folder / store.ERROR_LOG).write_text(traceback.format_exc())
        store.write_json(folder / store.RECORD, record)
        return record


def describe(spec: RunSpec) -> dict[str, Any]:
    """The record's spec part: what was asked for, in flat keys."""
    return store.flatten(
        {
            "run_id": spec.run_id,
            "suite": spec.suite,
            "label": spec.label,
            "method": spec.method,
            "dataset": spec.dataset,
            "test_envs": list(spec.test_envs),
            "model": spec.model,
            "seed": spec.seed,
            "data_seed": spec.data_seed,
            "holdout_fraction": spec.holdout_fraction,
            "steps": spec.steps,
            "batch_size": spec.batch_size,
            "eval_every": spec.eval_every,
            "bits": spec.bits_label,
            "w_bits": spec.quant.w_bits if spec.quant else 32,
            "a_bits": spec.quant.a_bits if spec.quant else 32,
            "quant": spec.quant.to_dict() if spec.quant else {},
            "hparams": dict(spec.hparams),
            "dataset_options": dict(spec.dataset_options),
            "model_options": dict(spec.model_options),
            "parent_run_id": spec.parent.run_id if spec.parent else None,
            "protocol": spec.protocol.label,
            **({"members": [m.run_id for m in spec.members]} if spec.members else {}),
            "checkpoint": {"path": spec.checkpoint, "sha256": spec.hparams.get("sha256")} if spec.checkpoint else {},
            "curve_file": store.CURVE,
            "threads": spec.threads,
            "diverge_factor": spec.diverge_factor,
            "versions": {
                "qatbench": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
    )


def resolve_device(device: str) -> torch.device:
    """'auto' is the GPU when there is one; anything else must name a device that is here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{device}'; allowed: auto, cpu, cuda, cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    if resolved.type not in ("cpu", "cuda"):
        raise UserError(f"--device: unsupported device '{device}'; allowed: auto, cpu, cuda, cuda:N")
    return resolved


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _train(
    spec: RunSpec,
    folder: Path,
    results: Path,
    data_root: Path | None,
    device: torch.device,
    progress: bool,
    checkpoint: dict[str, Any] | None = None,
    dataset_facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    seed_everything(spec.seed)
    dataset = build_dataset(spec.dataset, data_root, spec.data_seed, dict(spec.dataset_options))
    if dataset_facts is not None:
        dataset_facts.update(environments=dataset.environments, num_classes=dataset.num_classes)
    splits = split_environments(dataset, spec.holdout_fraction, spec.data_seed)
    train_envs = dataset.train_envs(spec.test_envs)
    if not train_envs:
        raise ValueError(f"every environment of {spec.dataset} is a test environment; none is left to train on")
    workers = loader_workers(device, len(train_envs)) if dataset.train_transform else 0
    iterators = [train_stream(dataset, splits[i], spec, spec.seed * 1000 + i, device, workers) for i in train_envs]

    method_class = METHODS.get(spec.method)
    ensemble = method_class.kind == "ensemble"
    parent_note: dict[str, Any] = {}
    if ensemble:  # its members' finished models, each as it was trained (quantized or not)
        model = torch.nn.ModuleList(member_models(spec, results, dataset, device))
    else:
        model = build_model(spec.model, dataset.input_shape, dataset.num_classes, dict(spec.model_options))
        if spec.parent is not None:
            model.load_state_dict(_parent_weights(spec.parent, results))
            parent_note = regenerate.child_fields(store.run_dir(results, spec.parent.suite, spec.parent.run_id))
        model = model.to(device)
    teacher = None
    if method_class.needs_teacher:  # the frozen FP parent, before quantization
        if spec.parent is None:
            raise ValueError(f"method {spec.method} distils from a full-precision parent, and this run has none")
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    post_training = method_class.kind == "ptq"  # trains (or not) in float; quantized after training
    switch_at = spec.protocol.switch_at  # 0: quantized from the start (PTQ: after training)
    float_first = switch_at > 0 and (checkpoint is None or int(checkpoint["step"]) <= switch_at)
    calibration = lambda: calibration_data(dataset, splits, train_envs, spec, device)  # noqa: E731
    if spec.quant is not None and not post_training and not float_first and not ensemble:
        model = quantize_model(model, spec.quant)
        calibrate(model, calibration())
    if spec.checkpoint is not None:  # trained elsewhere: its weights (and step sizes) replace all of the above
        load_weights(model, Path(spec.checkpoint))
        model = model.to(device)
    if float_first:
        method = protocols.float_method(spec, model, dataset.num_classes)
    else:
        method = method_class(
            model,
            dataset.num_classes,
            spec.hparams,
            teacher=teacher,
            quant=spec.quant,
            total_steps=spec.steps - switch_at,
        )
    start = 0
    monitor = DivergenceMonitor(spec.diverge_factor, dataset.num_classes)
    if checkpoint is not None:  # weights and method state now; the data is replayed, then the RNG set
        try:
            resume.apply(checkpoint, model, method)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointUnusable(f"{type(exc).__name__}: {exc}") from exc
        start = int(checkpoint["step"])
        monitor.load_state_dict(checkpoint.get("divergence") or {})
        for it in iterators:
            for _ in range(start):
                next(it)
        resume.set_rng_state(checkpoint["rng"])
    compiled = should_compile(spec, device) and method_class.compilable and type(method).compilable
    if compiled:
        compile_in_place(model)  # in place: the module, its names and its state_dict stay as they are
    method.train()
    first_compiled_step = start + 1

    curve_path = folder / (store.FLOAT_CURVE if post_training else store.CURVE)
    step_times: list[float] = list(checkpoint["step_times"]) if checkpoint is not None else []
    eval_steps = set(range(spec.eval_every, spec.steps + 1, spec.eval_every)) | {spec.steps}
    last_eval: dict[str, Any] = {}
    bar = tqdm(
        total=spec.steps,
        desc=f"{spec.label} {spec.bits_label} {spec.run_id[:8]}",
        leave=False,
        disable=not progress,
        unit="step",
    )
    last_beat = time.monotonic()
    store.beat(folder, start, spec.steps)
    if start:  # the evaluations after the checkpoint are made again
        _truncate_curve(curve_path, start)
        bar.update(start)
    with bar, open(curve_path, "a" if start else "w") as curve:
        if spec.steps == 0:
            last_eval = _log_eval(curve, 0, {}, method, dataset, splits, spec, device)
        for step in range(start + 1, spec.steps + 1):
            if float_first and step == switch_at + 1:
                method = protocols.switch(method, spec, dataset.num_classes, calibration(), compiled)
                float_first, first_compiled_step = False, step
            t0 = time.perf_counter()
            minibatches = [tuple(t.to(device, non_blocking=True) for t in next(it)) for it in iterators]
            if compiled and step == first_compiled_step:
                losses, compiled = _first_compiled_update(method, minibatches)
            else:
                losses = method.update(minibatches)
            step_times.append(time.perf_counter() - t0)
            monitor.update(step, losses)
            bar.update(1)
            if time.monotonic() - last_beat > store.HEARTBEAT_S:
                store.beat(folder, step, spec.steps)
                last_beat = time.monotonic()
            if step in eval_steps:
                last_eval = _log_eval(curve, step, losses, method, dataset, splits, spec, device)
                shown = {k: last_eval.get(k) for k in ("id_acc", "ood_acc")}
                bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if v is not None})
            if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < spec.steps:
                resume.save(folder, step, method.model, method, step_times, spec.run_id, monitor.state_dict())
    float_metrics = {}
    if post_training:
        float_metrics = {f"float.{k}": v for k, v in last_eval.items() if k.endswith("_acc")}
        method.model = quantize_model(method.model, spec.quant)
        calibrate(method.model, calibration_data(dataset, splits, train_envs, spec, device))
        with open(folder / store.CURVE, "w") as curve:
            last_eval = _log_eval(curve, spec.steps, {}, method, dataset, splits, spec, device)
    if not ensemble:  # an ensemble is its members' model.pt files
        store.save_model(folder / store.MODEL, method.model)
    accuracies = {k: v for k, v in last_eval.items() if k.endswith("_acc")}
    losses = {k: v for k, v in last_eval.items() if k not in accuracies and k != "step"}
    sizes = {
        f"env{i}_{part}_n": len(getattr(split, f"{part}_split"))
        for i, split in enumerate(splits)
        for part in ("in", "out")
    }
    return {
        **parent_note,  # a parent trained again that differs from its record: how (runner/regenerate.py)
        **accuracies,  # at the last evaluation; reports select among all of curve.jsonl
        **float_metrics,  # PTQ runs: the float model's accuracies before quantization
        **sizes,
        "final_step": last_eval.get("step", 0),
        "resumed_from_step": start or None,  # a killed run that went on from its last checkpoint
        "model_file": None if ensemble else store.MODEL,
        "train": losses,
        "environments": dataset.environments,
        "num_classes": dataset.num_classes,  # the figures' chance line
        "n_params": sum(p.numel() for p in method.model.parameters()),
        "effective_hparams": method.effective_hparams(),
        "method_state": method.summary(),
        "compiled": compiled,
        "switched_at_step": switch_at or None,  # switch_at runs: float updates before quantization
        "step_time_s": float(np.median(step_times)) if step_times else 0.0,
        "loader_workers": workers,
        "data_skipped_n": len(dataset.skipped),  # unreadable image files left out
        "data_skipped": dataset.skipped[:20],
        **data_provenance(dataset, data_root),  # data_root, data_fingerprints: `status` flags changed data
    }


COMPILE_MIN_STEPS = 1000  # torch.compile costs about a minute on 2 CPU cores and saves ~0.4 s per LSQ step


def should_compile(spec: RunSpec, device: torch.device) -> bool:
    """`training.compile`: "auto" compiles runs long enough to pay back the compilation."""
    if spec.compile == "auto":
        return spec.steps >= COMPILE_MIN_STEPS
    return bool(spec.compile)


def _first_compiled_update(method, minibatches) -> tuple[dict[str, float], bool]:
    """The first step compiles; where torch.compile cannot work (no C++ compiler, an operator
    it does not support), the run goes on in eager mode from the same state, and says so. (A
    later recompilation, such as the first evaluation in eval mode, is not covered.)"""
    before = copy.deepcopy(method.model.state_dict())  # a pass may have run before the failing one
    try:
        return method.update(minibatches), True
    except Exception as exc:
        if not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
            raise
        log.warning("torch.compile failed (%s); training in eager mode", str(exc).splitlines()[0][:200])
        method.model._compiled_call_impl = None  # undo nn.Module.compile
        method.model.load_state_dict(before)  # BN statistics as they were: the step runs once
        return method.update(minibatches), False


def train_stream(dataset, split, spec: RunSpec, seed: int, device: torch.device, workers: int = 0):
    """Training minibatches of one environment, augmented by the dataset's train transform."""
    return infinite_batches(
        split.in_split,
        spec.batch_size,
        seed=seed,
        transform=dataset.train_transform,
        workers=workers,
        pin_memory=device.type == "cuda",
    )


def loader_workers(device: torch.device, streams: int) -> int:
    """Augmentation runs in the training process on CPU (2 cores are busy training); on a GPU,
    the cores are shared among the training environments' loaders, as DomainBed's 8 per loader."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, (cores - 1) // max(streams, 1)))


def calibration_data(dataset, splits, train_envs: list[int], spec: RunSpec, device: torch.device) -> list[torch.Tensor]:
    """The images quantizer ranges start from. `quant.calib_images: 0`: one augmented minibatch
    per training environment, each from its own seeded stream so that calibrating never shifts
    the training data order. N > 0: N images drawn once (seeded by the run) from the training
    environments, unaugmented as evaluation sees them (FPQ's 100 random training images; PTQ's
    calibration set): one batch for quantizers that start from one, chunks of the evaluation batch
    size for observers, which see them all."""
    if spec.quant.calib_images == 0:
        streams = [train_stream(dataset, splits[i], spec, spec.seed * 1000 + 500 + i, device) for i in train_envs]
        return [torch.cat([next(stream)[0] for stream in streams]).to(device)]
    pool = ConcatDataset([splits[i].in_split for i in train_envs])
    if spec.quant.calib_images > len(pool):
        raise UserError(
            f"quant.calib_images: {spec.quant.calib_images} calibration images asked, but the training "
            f"environments of {dataset.name} hold {len(pool)}; set quant.calib_images lower"
        )
    generator = torch.Generator().manual_seed(spec.seed * 1000 + 500)
    index = sorted(torch.randperm(len(pool), generator=generator)[: spec.quant.calib_images].tolist())
    chunk = spec.eval_batch_size if spec.quant.observed else len(index)  # learned steps start from one batch
    chunks = []
    for start in range(0, len(index), chunk):
        x = take(pool, index[start : start + chunk])[0].to(device)
        chunks.append(dataset.eval_transform(x) if dataset.eval_transform is not None else x)
    return chunks


def _truncate_curve(path: Path, step: int) -> None:
    """Keep the evaluations up to the checkpoint's step: those after it are made again."""
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line torn by the crash
            continue
    path.write_text("".join(line + "\n" for line in kept))


def _log_eval(curve, step: int, losses, method, dataset, splits, spec: RunSpec, device) -> dict[str, Any]:
    metrics = evaluate(
        method, splits, spec.test_envs, spec.eval_batch_size, device, dataset.eval_transform, dataset.train_envs
    )
    row = {"step": step, **losses, **metrics}
    curve.write(json.dumps(row) + "\n")
    curve.flush()
    return row


def _parent_weights(parent: RunSpec, results: Path) -> dict[str, torch.Tensor]:
    folder = store.run_dir(results, parent.suite, parent.run_id)
    record = store.read_record(folder)
    if record is None or record.get("status") != "done":
        state = "missing" if record is None else f"{record.get('status')}: {record.get('error', '')}"
        raise RuntimeError(f"full-precision parent run {parent.run_id} is {state}")
    problem = store.model_problem(folder)
    if problem is not None:  # `qatbench status` lists it as damaged, with the command that retrains it
        refused = regenerate.refusal(folder)  # the sweep trained it again, and kept the weights out
        why = f"; trained again, it differs from its record: {refused}" if refused else ""
        raise RuntimeError(
            f"full-precision parent run {parent.run_id}: {folder / store.MODEL} is damaged ({problem}){why}"
        )
    return torch.load(folder / store.MODEL, map_location="cpu", weights_only=True)


def now() -> str:
    """An ISO time in microseconds: records and sweeps compare their times as strings."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
