"""Writes the golden results folder: synthetic run records in qatbench's real on-disk format
(record.json + curve.jsonl per run), with every case a report must explain: full cells, a failed
run, a diverged run, a cell that was never run, Hessian metrics, two bit widths and FP rows; each QAT
run names its FP parent (`erm`, same seed and test domain) as the runner does.

    python -m tests.golden.make_records     # rewrites tests/golden/results (then re-run the golden test
                                            # with QATBENCH_REGENERATE_GOLDEN=1 and review the diff)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RESULTS = HERE / "results"
ENVIRONMENTS = ["0", "15", "30"]
TEST_ENVS = [0, 2]
SEEDS = [0, 1, 2]
# (label, bits, w_bits, OOD level, I.D. level, sharpness level)
ROWS = [
    ("erm", "FP", 32, 0.70, 0.95, 1.0),
    ("sam", "FP", 32, 0.72, 0.95, 0.6),
    ("lsq", "W4A4", 4, 0.60, 0.92, 2.0),
    ("fpq", "W4A4", 4, 0.66, 0.93, 1.2),
    ("pact", "W4A4", 4, 0.55, 0.90, 2.5),
    ("lsq", "W2A2", 2, 0.40, 0.80, 6.0),
    ("fpq", "W2A2", 2, 0.47, 0.83, 4.0),
    ("pact", "W2A2", 2, 0.38, 0.78, 7.0),
]
FAILED = ("pact", "W2A2", 2, 0)  # label, bits, seed, test env
DIVERGED = ("pact", "W4A4", 1, 2)
NOT_RUN = ("fpq", "W2A2", 2)  # label, bits, test env: never attempted


def _run_id(*parts) -> str:
    return "g" + "-".join(str(p) for p in parts).replace("/", "")


def write(results: Path = RESULTS) -> None:
    shutil.rmtree(results, ignore_errors=True)
    rng = np.random.default_rng(0)
    for label, bits, w_bits, ood, iid, sharp in ROWS:
        for env in TEST_ENVS:
            for seed in SEEDS:
                noise = rng.normal(0, 0.02, size=5)
                if (label, bits, env) == NOT_RUN:
                    continue
                run_id = _run_id(label, bits, env, seed)
                status, error = "done", None
                if (label, bits, seed, env) == FAILED:
                    status, error = "failed", "RuntimeError: CUDA out of memory (hint: lower training.batch_size)"
                if (label, bits, seed, env) == DIVERGED:
                    status, error = "diverged", "loss is nan at step 40"
                domain_shift = 0.08 if env == 2 else 0.0
                curve = []
                for k, step in enumerate((50, 100, 150)):
                    id_acc = round(iid - 0.03 * (2 - k) ** 2 + noise[0] * (k == 1) + noise[4] * 0.3, 4)
                    ood_acc = round(ood - domain_shift - 0.02 * (2 - k) + noise[1], 4)
                    row = {"step": step, "loss": round(1.0 / (k + 1), 4), "id_acc": id_acc, "ood_acc": ood_acc}
                    row[f"env{env}_in_acc"] = round(ood_acc + 0.005, 4)
                    row[f"env{env}_out_acc"] = round(ood_acc - 0.005 + noise[2] * 0.1, 4)
                    curve.append(row)
                record = {
                    "run_id": run_id,
                    "suite": "golden",
                    "dataset": "RotatedMNIST",
                    "model": "small_cnn",
                    "label": label,
                    "method": label,
                    "bits": bits,
                    "w_bits": w_bits,
                    "a_bits": w_bits,
                    "seed": seed,
                    "test_envs": [env],
                    "environments": ENVIRONMENTS,
                    "steps": 150,
                    "status": status,
                    "error": error,
                    "curve_file": "curve.jsonl",
                    "finished_at": f"2026-11-22T10:{seed:02d}:{env:02d}+00:00",
                    # QAT from the FP run of the same seed and test domain (protocol from_fp_run)
                    "parent_run_id": None if bits == "FP" else _run_id("erm", "FP", env, seed),
                }
                if status == "done":
                    final = curve[-1]
                    record |= {
                        "id_acc": final["id_acc"],
                        "ood_acc": final["ood_acc"],
                        "hessian.top_eigenvalue": round(100 * sharp * (1 + noise[3]), 3),
                        "hessian.trace": round(700 * sharp * (1 + 2 * noise[3]), 2),
                        "hessian.loss": round(0.1 * sharp, 4),
                        "analysis.split": "id",
                        "analysis.subset_n": 128,
                    }
                folder = results / "golden" / run_id
                folder.mkdir(parents=True)
                if status == "done":
                    (folder / "curve.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
                (folder / "record.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    write()
