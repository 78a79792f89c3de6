"""The `analysis:` section of a suite: which sharpness analyses run after training, on how much
data, with what precision. One value, recorded (by its hash) with each analysed run.

Defaults follow the tools people use: PyHessian's tolerance 1e-3 for eigenvalues, Li et al.'s
(2018) filter-normalised directions on a 21x21 grid over [-1, 1] with biases and BN ignored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HessianConfig(_Strict):
    backend: Literal["fast", "pyhessian"] = "fast"  # pyhessian: the PyPI package, as the reference
    top_k: int = Field(default=1, ge=1, le=100)  # eigenvalues reported, largest first
    tol: float = Field(default=1e-3, gt=0, lt=1)  # relative, per eigenvalue (PyHessian's default)
    max_steps: int = Field(default=100, ge=2)  # Lanczos steps (Hessian-vector products) at most
    trace: bool = True
    rel_stderr: float = Field(default=0.02, gt=0, lt=1)  # stop the trace at this standard error / |trace|
    min_probes: int = Field(default=10, ge=2)
    max_probes: int = Field(default=1000, ge=2)
    deflate: int = Field(default=10, ge=0)  # top Ritz pairs taken out of the trace exactly (0: plain Hutchinson)
    density: bool = False  # spectral density by stochastic Lanczos quadrature
    density_runs: int = Field(default=1, ge=1)  # PyHessian's n_v
    density_steps: int = Field(default=80, ge=2)  # PyHessian's iter (100); 80 resolve the bulk on ResNets
    probes_per_pass: int = Field(default=1, ge=1)  # trace probes batched into one double backward (GPU)
    cache_graph: bool = True  # keep each batch's first-order graph (memory: about two forwards per batch)

    @model_validator(mode="after")
    def _probes(self):
        if self.min_probes > self.max_probes:
            raise ValueError(f"min_probes ({self.min_probes}) is more than max_probes ({self.max_probes})")
        return self


class LandscapeConfig(_Strict):
    kind: Literal["1d", "2d"] = "2d"
    # 2d: two random directions; 1d: random, the top Hessian eigenvector (unit norm), or the line
    # through the run's FP parent (alpha = -1) and the run itself (alpha = 0)
    direction: Literal["random", "eigenvector", "interpolation"] = "random"
    grid: int = Field(default=21, ge=3, le=401)  # points per axis
    span: float = Field(default=1.0, gt=0)  # coordinates from -span to span (interpolation: -span..1+span)
    # random directions only: Li et al. 2018 scale each filter to its weights' norm, and move no bias or BN
    normalization: Literal["filter", "none"] = "filter"
    ignore: Literal["biasbn", "none"] = "biasbn"
    bn: Literal["eval", "batch"] = "eval"  # BN running statistics of the centre, or each batch's own
    seed: int = Field(default=0, ge=0)  # directions are seeded per suite and architecture
    subset: int = Field(default=1024, ge=1)  # evaluation images
    points_per_forward: int = Field(default=1, ge=1)  # grid points vmapped into one forward (GPU)
    # which runs get this landscape: those of these run seeds (null: every run). A grid of a few hundred
    # runs on a CPU affords a landscape of one seed per method and bit width, not of every run
    run_seeds: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _direction(self):
        if self.kind == "2d" and self.direction != "random":
            raise ValueError(f"a 2d landscape takes direction 'random', got '{self.direction}'")
        if self.bn == "batch" and self.points_per_forward > 1:
            raise ValueError("bn 'batch' evaluates one point per forward; set points_per_forward to 1")
        return self


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class AnalysisConfig(_Strict):
    subset: int = Field(default=512, ge=1)  # curvature subset: images the Hessian's loss averages over
    split: Literal["id", "ood"] = "id"  # training environments' `in` splits, or the test environments
    batch_size: int = Field(default=128, ge=1)  # the subset goes through the model in batches of this size
    seed: int = Field(default=0, ge=0)  # which images, and the probes
    hessian: HessianConfig | None = None
    landscape: Annotated[list[LandscapeConfig], BeforeValidator(_as_list)] = Field(default_factory=list)

    def digest(self) -> str:
        """A short hash of the settings: a finished run analysed with other settings is analysed again."""
        settings = self.model_dump(mode="json")
        for cut in settings["landscape"]:  # left at its default, a newer field keeps older digests as they were
            if cut["run_seeds"] is None:
                del cut["run_seeds"]
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def empty(self) -> bool:
        return self.hessian is None and not self.landscape
