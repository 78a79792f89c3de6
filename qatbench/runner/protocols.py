"""The two moves of a `switch_at: N` run (config/protocol.py): float steps, then the switch.

Before the switch the run is its parent FP run: the suite's parent method with its hparams, built
over the same model with the same seed, data streams and `total_steps` (the schedule's length) as
that FP run would be, so its first N updates and evaluations are that run's, bit for bit.

At the switch (before update N + 1) the current float weights are quantized, the step sizes
calibrated on them and on a calibration minibatch per training domain (LSQ's initialisation at the
moment quantization starts, as at step 0 of the other protocols), and the run's own method takes
over with a FRESH optimiser and schedule of its own over the quantized model's parameters, step
sizes included, for the remaining `steps - N` steps. Carrying the float optimiser's state over
would need a rule for the step sizes it never saw; a fresh one is exactly what `from_fp_run` gives
a QAT method, so the two protocols differ only in where the float weights come from. (QT-DoG's
code keeps its DomainBed optimiser, whose parameter list still names the replaced float convs:
saqibjaved1/QT-DoG, domainbed/trainer.py and quan/func.py, `nn.Parameter(m.weight.detach())`.)
"""

from __future__ import annotations

import torch
from torch import nn

from qatbench.config import RunSpec
from qatbench.methods import METHODS
from qatbench.methods.base import Method
from qatbench.quant import calibrate, quantize_model
from qatbench.runner.compiled import compile_in_place


def float_method(spec: RunSpec, model: nn.Module, num_classes: int) -> Method:
    """The method of the float steps: the suite's parent method as its own FP run builds it."""
    return METHODS.get(spec.protocol.fp_method)(
        model, num_classes, spec.protocol.fp_hparams, quant=None, total_steps=spec.steps
    )


def switch(
    float_run: Method, spec: RunSpec, num_classes: int, calibration: list[torch.Tensor], compiled: bool
) -> Method:
    """Quantize the float method's model as it is now, calibrate it, and hand it to the run's
    method with a fresh optimiser; the float model and its optimiser are dropped."""
    model = float_run.model
    if compiled:
        model._compiled_call_impl = None  # undo nn.Module.compile: the quantized copy compiles anew
    quantized = quantize_model(model, spec.quant)
    calibrate(quantized, calibration)
    method = METHODS.get(spec.method)(
        quantized, num_classes, spec.hparams, quant=spec.quant, total_steps=spec.steps - spec.protocol.switch_at
    )
    if compiled:
        compile_in_place(quantized)
    method.train()
    return method
