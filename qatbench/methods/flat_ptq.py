"""Flat pre-training before post-training quantization (`dnq`): noise that models the
quantization errors of the target bit width, injected while the float model trains, then PTQ.

Xia, Pang, Cai (v1 HTML: Xia, Pang, Deng), "Efficiently Training A Flat Neural Network Before It
has been Quantizated", arXiv:2511.01462 (2025). Known from its abstract only: a flat FP network
is crucial for low-bit PTQ; the activation and weight quantization errors (AQE, WQE) are modelled
as independent Gaussian noises, injected while training the FP network. Everything below that is
not in that sentence is a RECONSTRUCTION (shared/papers.md 7), each choice an hparam:

1. the float model starts from the FP parent (the network "before it has been quantized")
2. WQE: per step, every quantized layer's weight gets eps_w ~ N(0, sigma_w^2), sigma_w = Delta_w
   / sqrt(12), Delta_w the step of the target quantizer on the current weights (per output
   channel when `quant.w_per_channel`): the variance of a uniform rounding error of one step
3. AQE: each layer's input, with probability `act_p` per layer per step, gets eps_a ~ N(0,
   sigma_a^2), sigma_a = Delta_a / sqrt(12), Delta_a = range / (2^b_a - 1) of a running
   min/max of that input (momentum `range_momentum`, zero always inside the range)
4. loss = CE at the noisy point; the gradient updates the clean weights (noise removed before
   the step), SGD with FPQ's CIFAR recipe (same group; the paper's is not known)
5. after training the runner quantizes and calibrates like `ptq` (qatbench/methods/ptq.py)

Layers and bits follow the run's QuantSpec exactly (first/last layers 8-bit or float), so the
noise is the error of the min-max quantizer the model will meet (with the `percentile` observer
the real activation step is smaller than the one sized here from min/max). The paper's "differential" weight noise
is not specified anywhere it could be read, and is not reproduced.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.config.spec import OBSERVERS
from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.registry import METHODS
from qatbench.quant import layer_bits, range_step


@dataclass(frozen=True)
class DnqHParams:
    optimizer: Optimizer = hparam("sgd", "RECONSTRUCTION: FPQ's CIFAR recipe (same group); the paper's is not known")
    lr: float = hparam(0.01, "FPQ Sec. 4")
    weight_decay: float = hparam(5e-4, "FPQ Sec. 4")
    momentum: float = hparam(0.9, "FPQ Sec. 4")
    schedule: Schedule = hparam("cosine", "FPQ Sec. 4")
    weight_noise: bool = hparam(True, "WQE (abstract)")
    act_noise: bool = hparam(True, "AQE (abstract)")
    act_p: float = hparam(0.5, 'RECONSTRUCTION: "stochastic activation noise" (AI summary); FPQ\'s p is 0.1-0.5')
    noise_scale: float = hparam(1.0, "RECONSTRUCTION: sigma = noise_scale * Delta / sqrt(12)")
    range_momentum: float = hparam(0.1, "RECONSTRUCTION: running min/max of each layer's input, as BN's")

    def __post_init__(self):
        require(self, "act_p", low=0.0, high=1.0)
        require(self, "noise_scale", low=0.0)
        require(self, "range_momentum", low=0.0, high=1.0)


def weight_step(weight: torch.Tensor, bits: int, per_channel: bool, symmetric: bool) -> torch.Tensor:
    """Delta_w of the min-max quantizer `ptq` will use on this weight (broadcastable to it)."""
    flat = weight.detach().flatten(1) if per_channel else weight.detach().reshape(1, -1)
    step = range_step(flat.amin(dim=1), flat.amax(dim=1), bits, symmetric)
    return step.view(-1, *[1] * (weight.dim() - 1)) if per_channel else step.reshape(())


@METHODS.register(
    "dnq",
    summary="FP training with Gaussian noise modelling W/A quantization errors, then PTQ",
    paper="Xia, Pang et al. 2025, arXiv:2511.01462 (reconstruction)",
)
class DNQ(ERM):
    kind = "ptq"
    HParams = DnqHParams
    quantizers_allowed = OBSERVERS
    compilable = False  # the activation noise hooks live for one forward pass

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.quant is None:
            raise ValueError("dnq models the quantization error of a target bit width; its run needs bits")
        self.bits = layer_bits(self.model, self.quant)
        self.ranges: dict[str, torch.Tensor] = {}  # running (min, max) of each layer's input
        self.perturbed_layers = self.layer_steps = 0

    def weight_noise(self) -> dict[str, torch.Tensor]:
        """WQE: eps_w ~ N(0, (noise_scale Delta_w)^2 / 12) for every quantized layer (step 2)."""
        noise = {}
        for name, (w_bits, _) in self.bits.items():
            weight = self.model.get_submodule(name).weight
            step = weight_step(weight, w_bits, self.quant.w_per_channel, self.quant.w_symmetric)
            noise[name] = torch.randn_like(weight) * step * (self.hparams.noise_scale / math.sqrt(12))
        return noise

    def _act_hook(self, name: str, a_bits: int, perturb: bool):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            with torch.no_grad():
                low, high = x.min().clamp_max(0), x.max().clamp_min(0)
                seen = torch.stack([low, high])
                previous = self.ranges.get(name)
                m = self.hparams.range_momentum
                self.ranges[name] = seen if previous is None else (1 - m) * previous + m * seen
            if not perturb:
                return args
            low, high = self.ranges[name]
            sigma = range_step(low, high, a_bits, False) * (self.hparams.noise_scale / math.sqrt(12))
            return (x + torch.randn_like(x) * sigma, *args[1:])

        return hook

    @contextlib.contextmanager
    def activation_noise(self):
        """AQE on each layer's input with probability act_p (step 3), for one forward pass."""
        handles = []
        for name, (_, a_bits) in self.bits.items():
            perturb = self.hparams.act_noise and bool(torch.rand(()) < self.hparams.act_p)
            self.perturbed_layers += perturb
            self.layer_steps += 1
            hook = self._act_hook(name, a_bits, perturb)
            handles.append(self.model.get_submodule(name).register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        noise = self.weight_noise() if self.hparams.weight_noise else {}
        clean = {name: self.model.get_submodule(name).weight.detach().clone() for name in noise}
        with torch.no_grad():
            for name, eps in noise.items():
                self.model.get_submodule(name).weight.add_(eps)
        with self.activation_noise():
            loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # step 4: the gradient at the noisy point moves the clean weights
            for name, weight in clean.items():
                self.model.get_submodule(name).weight.copy_(weight)
        self.optimizer.step()
        self.schedule.step()
        return {"loss": loss.item()}

    def summary(self) -> dict[str, Any]:
        return {"act_noise_rate": self.perturbed_layers / self.layer_steps if self.layer_steps else 0.0}
