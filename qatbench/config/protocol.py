"""How quantization meets training: the protocol of a quantized run, chosen in the suite.

- `from_fp_run` (the default, and every run before protocols existed): a full-precision run of
  the suite's parent method trains for its steps; the QAT run starts from its final weights
  (LSQ Sec. 3 fine-tunes from a trained FP network; FQAT and GAQAT do the same).
- `from_pretrained`: the model as built (its ImageNet weights when its options say
  `pretrained`) is quantized at step 0 and trained with the method's objective from there, domain
  generalization and QAT together (GAQAT's protocol according to its public OpenReview reviews).
- `switch_at: N`: one run. The suite's parent method trains the float model for N steps, update
  for update what its own FP run does; then the current weights are quantized, the step sizes
  calibrated on them, and the QAT method trains the quantized model for the remaining
  `steps - N` steps with a fresh optimiser of its own (QT-DoG's `q_steps`: saqibjaved1/QT-DoG,
  domainbed/trainer.py, `if step == q_steps and quant == 1: replace_module_by_names(...)`).

A protocol enters a run's id only when it is not `from_fp_run`, so finished runs keep their ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FROM_FP_RUN, FROM_PRETRAINED, SWITCH_AT = "from_fp_run", "from_pretrained", "switch_at"
PROTOCOLS = (FROM_FP_RUN, FROM_PRETRAINED, SWITCH_AT)
SHAPES = "'from_fp_run', 'from_pretrained' or {switch_at: N} (N >= 1 full-precision steps)"


def parse_protocol(value: Any) -> tuple[str, int]:
    """A suite's `protocol` value as (name, N): 'from_pretrained' -> ('from_pretrained', 0),
    {switch_at: 200} -> ('switch_at', 200). Anything else is a ValueError naming the shapes."""
    if value in (FROM_FP_RUN, FROM_PRETRAINED):
        return value, 0
    if isinstance(value, dict) and list(value) == [SWITCH_AT]:
        steps = value[SWITCH_AT]
        if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
            return SWITCH_AT, steps
    raise ValueError(f"protocol must be {SHAPES}, got {value!r}")


@dataclass(frozen=True)
class Protocol:
    """The protocol of one run. For `switch_at`, the full-precision phase's method and its full
    hparams are part of the value: they change the run's numbers, so they enter its id."""

    name: str = FROM_FP_RUN
    switch_at: int = 0  # switch_at only: full-precision steps before quantization starts
    fp_method: str = ""  # switch_at only: the method of the full-precision steps (the suite's parent)
    fp_hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.name!r}")
        if (self.name == SWITCH_AT) != (self.switch_at >= 1):
            raise ValueError(f"switch_at must be >= 1 for protocol switch_at and 0 otherwise, got {self.switch_at}")

    @property
    def default(self) -> bool:
        return self.name == FROM_FP_RUN

    @property
    def needs_parent(self) -> bool:
        """Only `from_fp_run` starts from another run's weights."""
        return self.name == FROM_FP_RUN

    @property
    def label(self) -> str:
        return f"{SWITCH_AT}:{self.switch_at}" if self.name == SWITCH_AT else self.name

    def identity(self) -> dict[str, Any] | None:
        """What enters the run id: nothing for the default (finished runs keep their ids)."""
        if self.default:
            return None
        if self.name == FROM_PRETRAINED:
            return {"name": self.name}
        return {
            "name": self.name,
            "switch_at": self.switch_at,
            "fp_method": self.fp_method,
            "fp_hparams": dict(self.fp_hparams),
        }
