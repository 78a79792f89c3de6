"""When a training run counts as diverged: its loss became NaN or infinite, or its smoothed loss rose
far above where it started.

The rise is measured as the learning-rate finders of fastai (`LRFinder`, `stop_div`) and PyTorch
Lightning (`lr_find`, `early_stop_threshold=4.0`) measure it: an exponential moving average of the
training loss (beta 0.98, bias-corrected) against a reference, with a factor of 4. Those finders
compare with the best loss so far; a run here compares with max(its first step's loss, ln(classes)),
the loss of a uniform guess (RECONSTRUCTION): a QAT run that starts from a fine-tuned parent near
zero loss and ends near chance is a bad quantized model, a result, not an explosion; only a loss
several times worse than guessing is. `training.diverge_factor` sets the factor (0: only non-finite).
"""

from __future__ import annotations

import math
from typing import Any

BETA = 0.98  # fastai / Lightning lr finders' smoothing


class Diverged(Exception):
    """The training loss became NaN or infinite, or rose far above its start."""

    def __init__(self, message: str, step: int, loss: float):
        super().__init__(message)
        self.step, self.loss = step, loss


class DivergenceMonitor:
    """Fed every step's losses; raises `Diverged`. Its state travels in resume checkpoints."""

    def __init__(self, factor: float, num_classes: int):
        self.factor = factor
        self.floor = math.log(max(num_classes, 2))
        self.state: dict[str, Any] = {"reference": None, "average": 0.0, "steps": 0}

    def update(self, step: int, losses: dict[str, float]) -> None:
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad:
            name, value = next(iter(bad.items()))
            raise Diverged(f"loss became {losses} at step {step}", step, value)
        loss = losses.get("loss")
        if loss is None or not self.factor:
            return
        state = self.state
        if state["reference"] is None:
            state["reference"] = max(loss, self.floor)
        state["steps"] += 1
        state["average"] = BETA * state["average"] + (1 - BETA) * loss
        smoothed = state["average"] / (1 - BETA ** state["steps"])
        if smoothed > self.factor * state["reference"]:
            raise Diverged(
                f"smoothed training loss {smoothed:.4g} at step {step} is over {self.factor:g} x its start "
                f"{state['reference']:.4g} (training.diverge_factor)",
                step,
                loss,
            )

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {**self.state, **state}  # a checkpoint without it: the monitor starts afresh
