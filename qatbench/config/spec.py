"""The values that name a run: `QuantSpec` (how a model is quantized) and `RunSpec` (one run).

A run is a pure function of its RunSpec, so the RunSpec's hash is the run id: the same
experiment gets the same folder in every sweep, on every machine, and is never trained twice.
Only semantic fields enter the hash; names of folders, devices and labels never do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import PurePath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from qatbench.config.protocol import Protocol

if TYPE_CHECKING:
    from qatbench.config.analysis import AnalysisConfig

FirstLast = Literal["8bit", "fp", "same"]
FIRST_LAST_CHOICES = ("8bit", "fp", "same")
QUANTIZERS = ("lsq", "lsq_plus", "pact", "dorefa", "minmax", "percentile")
OBSERVERS = ("minmax", "percentile")  # post-training quantizers: ranges observed on calibration images, then fixed
FIRST_RELEASE = ("w_bits", "a_bits", "quantizer", "w_per_channel", "first_last")  # always in run ids
GRAD_COUNTS = ("layer", "tensor")
A_INITS = ("batch", "one")
STEP_INITS = ("lsq", "minmax")
DEFAULT_PERCENTILE = 99.99
# switches that only some quantizers have: (their default, the quantizers that have them)
SWITCHES = {
    "w_symmetric": (True, ("lsq", *OBSERVERS)),
    "a_symmetric": (True, ("lsq",)),
    "grad_scale": ("layer", ("lsq",)),
    "a_init": ("batch", ("lsq",)),
    "step_init": ("lsq", ("lsq",)),
    "percentile": (DEFAULT_PERCENTILE, ("percentile",)),
}
MIN_BITS, MAX_BITS = 2, 8
FLOAT_BITS = 32  # a_bits 32: weight-only quantization, inputs stay float ("W7A32", QT-DoG)
LAYER_POLICIES = ("all", "conv")  # which layers are quantized: Conv2d and Linear, or Conv2d only


@dataclass(frozen=True)
class QuantSpec:
    """How to fake-quantize a model: one immutable value, recorded whole with every run.

    Defaults follow LSQ (Esser et al., ICLR 2020, "Learned Step Size Quantization"): one step
    size per tensor, symmetric signed weights, first and last layers at 8 bits, gradient scale
    counted per layer, activation steps initialised from the first batch. The other values are
    the conventions of the papers that disagree with LSQ (shared/papers.md 9.1).

    Layer policy (quant/convert.py): every Conv2d and Linear is quantized, weights and input. The
    first is the stem conv (its input is the image) and the last the classifier; `first_last`
    applies to those two only. EfficientNet's 1x1 head conv (320 -> 1280 channels) is an interior
    layer at the spec's bits, as LSQ quantizes every layer but the first and last; BN, ReLU6,
    pooling and residual additions stay in float.
    """

    w_bits: int
    a_bits: int
    quantizer: str = "lsq"  # lsq | lsq_plus (Bhalgat 2020) | pact (Choi 2018) | dorefa (Zhou 2016)
    w_per_channel: bool = False  # LSQ paper: per tensor; FQAT/GAQAT authors' code and FPQ: per channel
    first_last: FirstLast = "8bit"  # LSQ paper: 8-bit; "fp" keeps them float; "same" quantizes them like the rest
    w_symmetric: bool = True  # LSQ: signed levels around 0; False: zero point fixed at init (FPQ via MQBench)
    a_symmetric: bool = True  # LSQ: levels from 0 (or signed); False: zero point, min/max start (FPQ Eqs. 3-6)
    grad_scale: str = "layer"  # LSQ: N = weights / features per sample; "tensor": numel incl. batch (lsq-net fork)
    a_init: str = "batch"  # LSQ: 2 mean|x| / sqrt(Q_P) on the first batch; "one": 1.0 (lsq-net fork)
    # where every learned step starts (a_init "one" still sets activations to 1.0): LSQ's 2 mean|v| /
    # sqrt(Q_P), or "minmax", max|v| / Q_P, the range of the weights (per channel when they are) and of
    # the first batch's activations, so that no value is clipped at the start: the min/max range
    # setting of PTQ (Nagel et al. 2021, arXiv:2106.08295, Sec. 3.1; MQBench's, which FPQ calibrates
    # with). At 4 bits LSQ's start clips the outlier weights and activations of an EfficientNet-Lite0
    # and starts it at chance; min/max keeps half its accuracy (benchmarks/quant_start.py).
    step_init: str = "lsq"
    calib_images: int = 0  # 0: ranges from a training minibatch per domain; N: N seeded unaugmented images (FPQ: 100)
    percentile: float = DEFAULT_PERCENTILE  # `percentile` observer: activation range [100 - p, p] percentiles
    # depthwise convs (MobileNet, EfficientNet): one weight step per channel even when w_per_channel
    # is false. Per-tensor ranges fail there: one 3x3 filter per channel, ranges differing by orders
    # of magnitude (Krishnamoorthi 2018, arXiv:1806.08342, Sec. 3.1 and Table 2; Nagel et al. 2021,
    # arXiv:2106.08295, Sec. 2.4). Default false: networks without depthwise convs are unchanged.
    depthwise_per_channel: bool = False
    # "all": every Conv2d and Linear (LSQ); "conv": Conv2d only, Linear layers stay float (QT-DoG's
    # `QuanModuleMapping` maps nn.Conv2d alone, saqibjaved1/QT-DoG domainbed/quan/func.py l. 49-52)
    layers: str = "all"

    def __post_init__(self):
        if not (isinstance(self.w_bits, int) and MIN_BITS <= self.w_bits <= MAX_BITS):
            raise ValueError(f"w_bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {self.w_bits!r}")
        if not (isinstance(self.a_bits, int) and (MIN_BITS <= self.a_bits <= MAX_BITS or self.a_bits == FLOAT_BITS)):
            raise ValueError(
                f"a_bits must be an integer from {MIN_BITS} to {MAX_BITS}, or {FLOAT_BITS} (float inputs, "
                f"weight-only quantization), got {self.a_bits!r}"
            )
        if self.layers not in LAYER_POLICIES:
            raise ValueError(f"layers must be one of {LAYER_POLICIES}, got {self.layers!r}")
        if self.first_last not in FIRST_LAST_CHOICES:
            raise ValueError(f"first_last must be one of {FIRST_LAST_CHOICES}, got {self.first_last!r}")
        choices = (("quantizer", QUANTIZERS), ("grad_scale", GRAD_COUNTS), ("a_init", A_INITS), ("step_init", STEP_INITS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not (isinstance(self.calib_images, int) and self.calib_images >= 0):
            raise ValueError(f"calib_images must be an integer >= 0, got {self.calib_images!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile!r}")
        for name, (default, owners) in SWITCHES.items():
            if getattr(self, name) != default and self.quantizer not in owners:
                owned = f"the {owners[0]} quantizer" if len(owners) == 1 else f"the quantizers {', '.join(owners)}"
                raise ValueError(f"{name} applies to {owned} only, not {self.quantizer!r}")

    @property
    def observed(self) -> bool:
        """Post-training quantization: ranges observed on calibration images, nothing learned."""
        return self.quantizer in OBSERVERS

    @property
    def weight_only(self) -> bool:
        """Inputs stay float: the quantized layers pass their input through unchanged."""
        return self.a_bits == FLOAT_BITS

    @property
    def label(self) -> str:
        """The papers' notation; weight-only quantization is `W7A32` (32-bit float inputs)."""
        return f"W{self.w_bits}A{self.a_bits}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that enter run ids: a field added after the first release enters only
        when it differs from its default, so adding a switch never orphans finished runs."""
        defaults = {f.name: f.default for f in fields(self) if f.name not in FIRST_RELEASE}
        return {k: v for k, v in self.to_dict().items() if k in FIRST_RELEASE or v != defaults[k]}


def parse_bits(text: str) -> tuple[int, int]:
    """'W4A4' -> (4, 4); the notation of the papers' tables ('W7A32': weight-only, float inputs)."""
    upper = text.strip().upper()
    if upper.startswith("W") and "A" in upper:
        w, a = upper[1:].split("A", 1)
        if w.isdigit() and a.isdigit():
            return int(w), int(a)
    raise ValueError(f"bits must look like 'W4A4', got {text!r}")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


# options models gained after runs were finished, with their defaults: at the default they stay out of
# the id (efficientnet_lite's input_size came after the pacs64_lite0 records)
LATE_MODEL_OPTIONS = {"freeze_bn": False, "input_size": None}


def _without_folders(options: Mapping[str, Any]) -> dict[str, Any]:
    """A weights file named by path enters the id by its file name only: moving a folder must
    not orphan finished runs (torchvision's file names carry a hash of their content). An option
    a model gained later enters only when it is not its default, so finished runs keep their ids."""
    return {
        key: (PurePath(value).name if key == "pretrained" and isinstance(value, str) else value)
        for key, value in options.items()
        if not (key in LATE_MODEL_OPTIONS and value == LATE_MODEL_OPTIONS[key])
    }


@dataclass(frozen=True)
class RunSpec:
    """One training run: everything that changes its numbers, and nothing else in the id."""

    method: str
    dataset: str
    test_envs: tuple[int, ...]
    model: str
    seed: int
    steps: int
    batch_size: int
    eval_every: int
    data_seed: int
    holdout_fraction: float
    hparams: Mapping[str, Any] = field(default_factory=dict)
    quant: QuantSpec | None = None
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    parent: RunSpec | None = None
    protocol: Protocol = field(default_factory=Protocol)  # how quantization meets training (config/protocol.py)
    members: tuple[RunSpec, ...] = ()  # an ensemble's runs, whose averaged softmax it evaluates
    # not semantic: where and how it is shown, never part of the id
    suite: str = field(default="", compare=False)
    label: str = field(default="", compare=False)
    eval_batch_size: int = field(default=256, compare=False)
    compile: bool | str = field(default="auto", compare=False)  # torch.compile: True, False or "auto"
    checkpoint_every: int = field(default=0, compare=False)  # resumable checkpoints (0: none)
    threads: int = field(default=1, compare=False)  # torch intra-op threads, set by the run itself
    diverge_factor: float = field(default=4.0, compare=False)  # loss rise that makes a run `diverged`
    parent_tolerance: float = field(default=0.0, compare=False)  # a parent trained again: accuracy it may differ by
    analysis: AnalysisConfig | None = field(default=None, compare=False)  # what to measure once trained
    checkpoint: str | None = field(
        default=None, compare=False
    )  # method `checkpoint`: the file (its hash is in hparams)

    def __post_init__(self):
        object.__setattr__(self, "test_envs", tuple(self.test_envs))
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "hparams", _frozen(self.hparams))
        object.__setattr__(self, "dataset_options", _frozen(self.dataset_options))
        object.__setattr__(self, "model_options", _frozen(self.model_options))
        if not self.label:
            object.__setattr__(self, "label", self.method)

    _MAPPINGS = ("hparams", "dataset_options", "model_options")

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (local workers receive their runs by pickle): the read-only mappings as dicts."""
        return {k: dict(v) if k in self._MAPPINGS else v for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, _frozen(value) if key in self._MAPPINGS else value)

    @property
    def bits_label(self) -> str:
        return self.quant.label if self.quant else "FP"

    def semantic(self) -> dict[str, Any]:
        """The fields that define the experiment, as plain JSON-able values (the protocol only
        when it is not the default, so runs finished before protocols existed keep their ids; an
        ensemble's member run ids only for ensembles)."""
        protocol = self.protocol.identity()
        return {
            **({"protocol": protocol} if protocol is not None else {}),
            **({"members": [m.run_id for m in self.members]} if self.members else {}),
            "method": self.method,
            "hparams": dict(self.hparams),
            "dataset": self.dataset,
            "dataset_options": dict(self.dataset_options),
            "test_envs": list(self.test_envs),
            "data_seed": self.data_seed,
            "holdout_fraction": self.holdout_fraction,
            "model": self.model,
            "model_options": _without_folders(self.model_options),
            "quant": self.quant.identity() if self.quant else None,
            "seed": self.seed,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "eval_every": self.eval_every,
            "parent": self.parent.run_id if self.parent else None,
        }

    @property
    def run_id(self) -> str:
        canonical = json.dumps(self.semantic(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
