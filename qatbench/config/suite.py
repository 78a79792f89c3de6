"""The suite file: its schema, how it is read, overridden with --set, and explained when wrong.

Every mistake in a suite becomes one line that names the file (or the --set option), the key
path and what is allowed, with the nearest allowed name when there is one: a researcher
scaling a paper-size suite down at 2 a.m. should never have to read a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from qatbench.config import yaml_input
from qatbench.config.analysis import AnalysisConfig
from qatbench.config.protocol import parse_protocol
from qatbench.config.spec import (
    A_INITS,
    DEFAULT_PERCENTILE,
    FIRST_LAST_CHOICES,
    FLOAT_BITS,
    GRAD_COUNTS,
    LAYER_POLICIES,
    MAX_BITS,
    MIN_BITS,
    QUANTIZERS,
    STEP_INITS,
    parse_bits,
)
from qatbench.errors import UserError, allowed_list, did_you_mean, excerpt


def _check_bits(text: str) -> str:
    w, a = parse_bits(text)
    if not (MIN_BITS <= w <= MAX_BITS and (MIN_BITS <= a <= MAX_BITS or a == FLOAT_BITS)):
        raise ValueError(
            f"bit widths must be from {MIN_BITS} to {MAX_BITS} (activations also A{FLOAT_BITS}: float inputs, "
            f"weight-only quantization), got {text!r}"
        )
    return text.upper()


# "W4A4": 4-bit weights, 4-bit activations; "W7A32": 7-bit weights, float (32-bit) inputs
Bits = Annotated[str, AfterValidator(_check_bits)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


NAME_CHARS = 100  # suite names and labels: folder and file names, well inside the 255 bytes of NAME_MAX


def _name_only(value: Any) -> Any:
    """Allow `- erm` as shorthand for `- {name: erm}` in lists of entries."""
    return {"name": value} if isinstance(value, str) else value


def _check_protocol(value: Any) -> Any:
    if value is not None:
        parse_protocol(value)
    return value


# 'from_fp_run' | 'from_pretrained' | {switch_at: N}: how quantization meets training (config/protocol.py)
ProtocolSetting = Annotated[Any, BeforeValidator(_check_protocol)]


class QuantOverrides(_Strict):
    """Per-method changes to the suite's `quant` section (to compare LSQ's switches, say)."""

    quantizer: Literal[QUANTIZERS] | None = None  # type: ignore[valid-type]
    w_per_channel: bool | None = None
    first_last: Literal[FIRST_LAST_CHOICES] | None = None  # type: ignore[valid-type]
    w_symmetric: bool | None = None
    a_symmetric: bool | None = None
    grad_scale: Literal[GRAD_COUNTS] | None = None  # type: ignore[valid-type]
    a_init: Literal[A_INITS] | None = None  # type: ignore[valid-type]
    step_init: Literal[STEP_INITS] | None = None  # type: ignore[valid-type]
    calib_images: int | None = Field(default=None, ge=0)
    percentile: float | None = Field(default=None, gt=50, le=100)
    depthwise_per_channel: bool | None = None
    layers: Literal[LAYER_POLICIES] | None = None  # type: ignore[valid-type]


class MethodEntry(_Strict):
    name: str
    label: str | None = Field(default=None, min_length=1, max_length=NAME_CHARS)  # row name in reports
    hparams: dict[str, Any] = Field(default_factory=dict)
    steps: int | None = Field(default=None, ge=0)  # overrides training.steps for this method
    quant: QuantOverrides = Field(default_factory=QuantOverrides)  # overrides the suite's quant section
    protocol: ProtocolSetting = None  # QAT methods: overrides the suite's `protocol`; FP methods: from_fp_run only (fine-tune the parent run)
    # method `checkpoint` only: a model trained elsewhere, evaluated (and analysed) like a run. One
    # file, or one per seed of the suite; a qatbench model.pt brings its QuantSpec in its record.json
    checkpoint: str | list[str] | None = None
    # `checkpoint` entries: the bits of the weights (FP or one W<w>A<a>); QAT and PTQ entries: the bit
    # widths of this entry instead of the suite's `bits` (one or a list)
    bits: Annotated[str, AfterValidator(lambda b: b.upper() if b.upper() == "FP" else _check_bits(b))] | list[Bits] | None = None


def _check_test_envs(value: Any) -> Any:
    """One message for every wrong shape, instead of one per branch of a type union."""

    def is_env(item: Any) -> bool:
        return isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool) and item >= 0)

    if value in ("all", "none", None):
        return value
    if (
        isinstance(value, list)
        and value
        and all(is_env(item) or (isinstance(item, list) and item and all(is_env(i) for i in item)) for item in value)
    ):
        return value
    raise ValueError(
        f"test_envs must be 'all', 'none' or a non-empty list whose items are environment indices, names "
        f"(glob patterns such as '*/5' allowed), or non-empty lists of them; got {value!r}"
    )


SEED = Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)]  # numpy and torch take seeds in [0, 2**32)


class DatasetEntry(_Strict):
    name: str
    # "all": leave-one-domain-out over every environment; "none": in-distribution only; a list: one
    # run per item, each an environment index, a name or glob pattern, or a list of them (several
    # test envs at once)
    test_envs: Annotated[Any, BeforeValidator(_check_test_envs)] = None  # None: the dataset's default
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)  # DomainBed's default
    data_seed: SEED | None = None  # None: the run's seed, as DomainBed's trial seed
    options: dict[str, Any] = Field(default_factory=dict)


class ModelEntry(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


def _check_compile(value: Any) -> Any:
    if value in ("auto",) or isinstance(value, bool):
        return value
    raise ValueError(f"compile must be true, false or 'auto', got {value!r}")


class TrainingConfig(_Strict):
    steps: int = Field(default=5000, ge=0)  # DomainBed / SAGM: 5,000 steps
    batch_size: int = Field(default=32, ge=1)  # per training environment, DomainBed's default
    eval_every: int = Field(default=200, ge=1)  # SAGM's checkpoint frequency
    eval_batch_size: int = Field(default=256, ge=1)
    # torch.compile the model: "auto" does it for runs of 1,000 steps or more, which repay the
    # compilation (about a minute on 2 CPU cores); same numbers up to float rounding
    compile: Annotated[bool | Literal["auto"], BeforeValidator(_check_compile)] = "auto"
    # a resumable checkpoint every N steps (0: none); a killed run resumes from its last one with
    # exactly the numbers of an uninterrupted run, so it never enters the run id
    checkpoint_every: int = Field(default=500, ge=0)
    # torch intra-op threads of every run, whatever launches it (`run`, `--workers`, Slurm): the
    # thread count changes float sums, so a launcher that chose it would change the numbers of a run
    # id. 1 (a project choice, no paper's): the count every launcher can give each worker without
    # oversubscribing (a 2-thread LSQ run took 53 s beside other processes on 2 cores, 8 s with 1);
    # a sweep's parallelism is its runs (`--workers`, Slurm tasks). Not in the run id; in the record.
    threads: int = Field(default=1, ge=1)
    # a run whose smoothed loss rises over this factor x its start is `diverged` (0: only a NaN/inf
    # loss is): fastai's and Lightning's lr finders stop at 4 x; see runner/divergence.py
    diverge_factor: float = Field(default=4.0, ge=0, allow_inf_nan=False)
    # a finished parent whose model.pt is gone (not committed) is trained again for its from_fp_run
    # children; its weights are kept when the new curve reproduces the committed one, or, with a
    # tolerance above 0, when its final I.D. and OOD accuracies are within this many points (fraction)
    # of the record's: float kernels differ between CPUs, so a parent trained again elsewhere is a
    # different network of the same seed. The children's records say so (runner/regenerate.py).
    # 0 (default): exact reproduction only. Not in the run id.
    parent_tolerance: float = Field(default=0.0, ge=0, le=1, allow_inf_nan=False)


class QuantConfig(_Strict):
    """QuantSpec fields shared by every bit width of the suite."""

    quantizer: Literal[QUANTIZERS] = "lsq"  # type: ignore[valid-type]
    w_per_channel: bool = False
    first_last: Literal[FIRST_LAST_CHOICES] = "8bit"  # type: ignore[valid-type]
    w_symmetric: bool = True
    a_symmetric: bool = True  # False: asymmetric activations, zero point from min/max (lsq; FPQ)
    grad_scale: Literal[GRAD_COUNTS] = "layer"  # type: ignore[valid-type]
    a_init: Literal[A_INITS] = "batch"  # type: ignore[valid-type]
    step_init: Literal[STEP_INITS] = "lsq"  # type: ignore[valid-type]  # "minmax": steps start at max|v| / Q_P
    calib_images: int = Field(default=0, ge=0)  # 0: one training minibatch per domain; N: N unaugmented images
    percentile: float = Field(default=DEFAULT_PERCENTILE, gt=50, le=100)  # the `percentile` observer's p
    depthwise_per_channel: bool = False  # depthwise convs: one weight step per channel (QuantSpec)
    layers: Literal[LAYER_POLICIES] = "all"  # type: ignore[valid-type]  # "conv": Linear layers stay float


class SlurmConfig(_Strict):
    """Resources of `qatbench run --launcher slurm` (submitit): one job array of `tasks` workers that
    share the sweep through the run locks, each with these resources. `cluster: local` runs the same
    submission path on this machine (submitit's local executor), for trying a suite before a cluster."""

    partition: str | None = None
    tasks: int = Field(default=1, ge=1)  # array tasks (workers)
    gpus_per_task: int = Field(default=1, ge=0)
    cpus_per_task: int = Field(default=8, ge=1)
    mem_gb: int = Field(default=32, ge=1)
    timeout_min: int = Field(default=24 * 60, ge=1)
    cluster: Literal["auto", "local"] = "auto"


class Suite(_Strict):
    # a folder name under results/ (file systems allow 255 bytes; job names and figure files add to it)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=NAME_CHARS)
    description: str = ""
    datasets: list[DatasetEntry] = Field(min_length=1)
    models: list[ModelEntry] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    bits: list[Bits] = Field(default_factory=lambda: ["W4A4"], min_length=1)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    seeds: list[SEED] = Field(default_factory=lambda: [0], min_length=1)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    # the full-precision run a QAT method starts from; default: the suite's `erm` entry
    parent: MethodEntry | None = None
    # how QAT entries meet training (config/protocol.py); None: from_fp_run. PTQ entries always
    # quantize their FP parent after training, whatever this says
    protocol: ProtocolSetting = None
    data_root: str | None = None
    analysis: AnalysisConfig | None = None  # sharpness analyses of every finished run
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)  # resources of `--launcher slurm`

    _as_entries = field_validator("datasets", "models", "methods", mode="before")(
        lambda value: [_name_only(v) for v in value] if isinstance(value, list) else value
    )
    _parent_as_entry = field_validator("parent", mode="before")(_name_only)


# ---------------------------------------------------------------------------------- loading


def load_suite_dict(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], set[str]]:
    """Read the YAML and apply `--set key=value` overrides; returns the raw dict and which key
    paths the overrides touched (so errors can blame the right source)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: suite file not found")
    try:
        raw = yaml_input.load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {excerpt(problem, 300)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the suite file: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a suite must be a YAML mapping of keys (name, datasets, models, methods, ...)")
    yaml_input.check_values(raw, str(path))
    raw.setdefault("name", path.stem)
    touched = set()
    for item in overrides:
        touched.add(apply_override(raw, item))
    return raw, touched


_INDEX = re.compile(r"\[(\d+)\]")


def split_key_path(key: str) -> list[str | int]:
    """'methods[1].hparams.lr' or 'methods.1.hparams.lr' -> ['methods', 1, 'hparams', 'lr']."""
    parts: list[str | int] = []
    for piece in _INDEX.sub(r".\1", key).split("."):
        if piece == "" or not re.fullmatch(r"[A-Za-z0-9_]+", piece):
            raise UserError(f"--set {key}: a key path is names and list indices, e.g. methods[1].hparams.lr")
        parts.append(int(piece) if piece.isdigit() else piece)
    return parts


def apply_override(raw: dict[str, Any], item: str) -> str:
    """Set one dotted key path in the raw suite dict from 'key=value' (value parsed as YAML)."""
    if "=" not in item:
        raise UserError(f"--set {item}: expected key=value, e.g. --set training.steps=100")
    key, text = item.split("=", 1)
    try:
        value = yaml_input.load(text)
    except yaml.YAMLError:
        value = text
    yaml_input.check_values(value, f"--set {excerpt(key, 100)}")
    parts = split_key_path(key.strip())
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _descend(node, part, parts[: depth + 1], item)
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise UserError(f"--set {item}: '{format_loc(parts)}' is not an index of a list of {len(node)} items")
        node[last] = value
    elif isinstance(node, dict):
        node[str(last)] = value
    else:
        raise UserError(f"--set {item}: '{format_loc(parts[:-1])}' holds a value, not keys")
    return format_loc(parts)


def _descend(node: Any, part: str | int, loc: list[str | int], item: str) -> Any:
    if isinstance(node, list):
        if not isinstance(part, int) or part >= len(node):
            raise UserError(f"--set {item}: '{format_loc(loc)}' is not an index of a list of {len(node)} items")
        if isinstance(node[part], str):  # `- lsq` shorthand gains keys: {name: lsq, ...}
            node[part] = {"name": node[part]}
        return node[part]
    if isinstance(node, dict):
        key = str(part)
        if node.get(key) is None:
            node[key] = {}
        return node[key]
    raise UserError(f"--set {item}: '{format_loc(loc[:-1])}' holds a value, not keys")


def format_loc(loc: Iterable[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def blame(path: str | os.PathLike, loc: Sequence[str | int], touched: set[str]) -> str:
    """'suites/x.yaml: methods[1].name' or '--set methods[1].name' when an override set it."""
    where = format_loc(loc)
    for key in touched:
        if _within(where, key) or _within(key, where):  # the override set this key, or keys below it
            return f"--set {key}"
    return f"{path}: {where}"


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer + ".") or inner.startswith(outer + "[")


def parse_suite(path: str | os.PathLike, raw: dict[str, Any], touched: set[str]) -> Suite:
    try:
        return Suite.model_validate(raw)
    except ValidationError as exc:
        raise UserError(explain_validation_error(exc, path, raw, touched)) from None


def explain_validation_error(exc: ValidationError, path, raw: dict[str, Any], touched: set[str]) -> str:
    error = exc.errors(include_url=False)[0]
    loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        key = str(loc[-1])
        hint = did_you_mean(key, allowed)
        return f"{blame(path, loc, touched)}: unknown key '{key}'{hint}; allowed: {allowed_list(allowed)}"
    if error["type"] == "missing":
        return f"{blame(path, loc, touched)}: required key is missing"
    if error["type"] == "value_error":  # our own validators name the bad value themselves
        return f"{blame(path, loc, touched)}: {excerpt(error['msg'].removeprefix('Value error, '), 500)}"
    return f"{blame(path, loc, touched)}: {error['msg']} (got {excerpt(repr(error.get('input')))})"


def _allowed_keys(loc: Sequence[str | int]) -> list[str]:
    """Field names of the schema model found at `loc` inside a Suite."""
    model: type[BaseModel] = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation
        model = next((t for t in _model_types(annotation)), model)
    return list(model.model_fields)


def _model_types(annotation: Any):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _model_types(arg)
