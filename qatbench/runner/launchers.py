"""Where the runs of a sweep execute. `local`: N worker processes on this machine, each walking the
same plan; the run store's locks hand every run to exactly one of them (a worker skips a run another
holds, and waits for a parent another is training), so the workers need no scheduler of their own,
and a second `qatbench run` (or a Slurm array task) over the same results folder joins in the same way.
With several GPUs, worker k uses GPU k modulo their number.

`slurm`: the same workers as the tasks of one Slurm job array, submitted through submitit with the
suite's `slurm:` resources; the tasks coordinate through the same locks on the shared results folder.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from qatbench.config import RunSpec
from qatbench.config.suite import SlurmConfig
from qatbench.errors import UserError
from qatbench.provenance import FingerprintCache, stale_reason
from qatbench.runner import store
from qatbench.runner.sweep import SweepSummary, check_analysis, check_data, finished_and_current, plan, run_specs
from qatbench.runner.train import now

log = logging.getLogger(__name__)


def worker_device(device: str, worker: int) -> str:
    """The device of worker `worker`: its own GPU when `device` is auto or cuda and several are present."""
    count = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    return f"cuda:{worker % count}" if count > 1 else device


def _work(args: tuple) -> tuple[int, int]:
    """One worker: the sweep loop over the shared plan; returns (runs it trained, runs it reused)."""
    specs, results, data_root, device, since, rerun_stale, worker, lines = args  # each run sets its own threads
    if device.startswith("cuda:"):  # this worker's GPU only: no context on the others
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":")[1]
        device = "cuda"
    summary = run_specs(
        specs,
        results,
        data_root=data_root,
        device=device,
        progress=lines,
        checked=True,
        since=since,
        rerun_stale=rerun_stale,
        worker=worker,
    )
    return summary.trained, summary.reused


def run_local(
    specs: list[RunSpec],
    results: Path,
    workers: int,
    *,
    data_root: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    rerun_stale: bool = False,
) -> SweepSummary:
    """Run the sweep on `workers` processes; the summary reads every planned run's record at the end."""
    if workers <= 1:
        return run_specs(specs, results, data_root=data_root, device=device, progress=progress, rerun_stale=rerun_stale)
    planned, finished_before = _prepare(specs, results, data_root, rerun_stale)
    since = now()
    jobs = [
        (planned, results, data_root, worker_device(device, k), since, rerun_stale, k + 1, progress) for k in range(workers)
    ]
    if progress:
        left = len(planned) - len(finished_before)
        print(
            f"suite '{specs[0].suite}': {left} run(s) to train, {len(finished_before)} already finished; "
            f"{workers} workers",
            flush=True,
        )
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool, _workers_stop_with(pool):
        try:
            trained = [count for count, _ in pool.map(_work, jobs)]
        except BrokenProcessPool:  # a worker was killed (OOM killer, kill -9): say so, keep what finished
            log.warning("a worker process died; its run is left unfinished and resumes on the next run")
            trained = []
    return _collect(planned, results, finished_before, trained, data_root)


class _Stopped(SystemExit):
    """SIGTERM to the sweep's parent process."""


@contextlib.contextmanager
def _workers_stop_with(pool: ProcessPoolExecutor):
    """`kill <pid>` (SIGTERM) or Ctrl-C on `qatbench run --workers N` stops its workers too: left alone,
    spawned workers are not in the terminal's way and would go on training the old plan. Their runs
    stay unfinished and resume on the next run."""
    main = threading.current_thread() is threading.main_thread()

    def stop(signum, frame):
        raise _Stopped(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API before 3.14
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=30)
        print(f"stopped: {len(processes)} worker(s) terminated; their runs resume on the next run", file=sys.stderr)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def submit_slurm(
    specs: list[RunSpec],
    results: Path,
    config: SlurmConfig,
    *,
    data_root: Path | None = None,
    device: str = "auto",
    rerun_stale: bool = False,
) -> tuple[list, SweepSummary | None]:
    """Submit one job array of `config.tasks` workers; with `cluster: local`, wait and summarize."""
    import submitit

    planned, finished_before = _prepare(specs, results, data_root, rerun_stale)
    suite = planned[0].suite if planned else "suite"
    if config.cluster != "local" and shutil.which("sbatch") is None:
        raise UserError(
            "--launcher slurm: no `sbatch` on this machine; run on a Slurm login node, or set slurm.cluster: local"
        )
    executor = submitit.AutoExecutor(
        folder=Path(results) / suite / ".slurm", cluster="local" if config.cluster == "local" else "slurm"
    )
    executor.update_parameters(
        timeout_min=config.timeout_min,
        cpus_per_task=config.cpus_per_task,
        gpus_per_node=config.gpus_per_task,
        mem_gb=config.mem_gb,
        name=f"qatbench-{suite}",
    )
    if config.cluster != "local":
        executor.update_parameters(slurm_array_parallelism=config.tasks)
        if config.partition:
            executor.update_parameters(slurm_partition=config.partition)
    device = "cuda" if config.gpus_per_task and config.cluster != "local" and device == "auto" else device
    since = now()
    jobs = executor.map_array(
        _work, [(planned, Path(results), data_root, device, since, rerun_stale, k + 1, True) for k in range(config.tasks)]
    )
    if config.cluster != "local":
        return jobs, None
    return jobs, _collect(planned, results, finished_before, [job.result()[0] for job in jobs], data_root)


def _prepare(
    specs: list[RunSpec], results: Path, data_root: Path | None, rerun_stale: bool = False
) -> tuple[list[RunSpec], set[str]]:
    """The plan and what is finished already; the data and analysis checks run once, before any worker."""
    planned = plan(specs)
    prints = FingerprintCache()
    finished = {
        s.run_id
        for s in planned
        if finished_and_current(store.run_dir(results, s.suite, s.run_id), data_root, rerun_stale, prints)
    }
    check_data([s for s in planned if s.run_id not in finished], data_root)
    check_analysis(planned, data_root)
    return planned, finished


def _collect(
    planned: list[RunSpec], results: Path, finished_before: set[str], trained: list[int], data_root: Path | None
) -> SweepSummary:
    """The sweep's summary from every planned run's record, once the workers are done."""
    summary = SweepSummary(reused=len(finished_before), trained_by_worker=trained)
    prints = FingerprintCache()
    for spec in planned:
        record = store.read_record(store.run_dir(results, spec.suite, spec.run_id))
        summary.records.append(record or {"run_id": spec.run_id, "status": "missing"})
        if record and record.get("status") in store.FINISHED and stale_reason(record, data_root, prints):
            summary.stale.append(spec.run_id)
    return summary
