"""QT-DoG (`qtdog`): ERM domain generalization whose conv weights are quantized from step `q_steps` on.

Javed, Le, Salzmann, "QT-DoG: Quantization-aware Training for Domain Generalization", ICML 2025
(arXiv:2410.06020). Official code: saqibjaved1/QT-DoG at commit e9d55eb (a DomainBed/SWAD fork with
zhutmost/lsq-net's LSQ); file and line numbers below are of that commit.

1. steps 1..q_steps: ERM in full precision (the suite's parent entry, `erm`), one run: the
   protocol `switch_at: q_steps` (qatbench/config/protocol.py), which `q_steps` sets
2. at step q_steps every nn.Conv2d becomes a quantized conv (trainer.py l. 163-167; func.py
   l. 49-52 maps nn.Conv2d alone, Linear stays float): LSQ weights, 7 bits, one step per output
   channel (config_q.yaml l. 23-27), started at 2 mean|w| / sqrt(Q_P) from the weights at the
   switch (quantizer/lsq.py l. 41-44); the conv's input passes through unchanged (func.py l. 22-26)
3. steps q_steps+1..steps: ERM's loss and optimiser on the quantized model, the latent weights
   trained through the straight-through estimator and the step sizes with them (LSQ training;
   the code's optimiser sees neither, below)

How the code was read, and where qatbench departs from it:
- `symmetric: false` in config_q.yaml is lsq-net's name for the full two's-complement range
  [-2^(b-1), 2^(b-1) - 1] with no zero point (quantizer/lsq.py l. 29-36): qatbench's LSQ signed
  levels, `w_symmetric: true`, not its zero-point `w_symmetric: false`.
- config_q.yaml's `excepts` (conv1, fc) name modules that do not exist under those names
  (`featurizer.network.conv1`), so the stem is quantized like every conv: `first_last: same`.
- the code builds its optimiser once, before the switch; the quantized convs hold new Parameter
  objects (func.py l. 17, `Parameter(m.weight.detach())`) and new step sizes that it never sees, so
  after the switch only BN and the classifier train (under the README's PyTorch 1.10, zero_grad
  leaves zero gradients on the old conv weights, which then move by Adam's decaying momentum only). qatbench follows the paper: a fresh optimiser over every parameter at the
  switch (RECONSTRUCTION: the paper does not say whether the optimiser's state carries over).
- config.yaml turns SWAD on (`swad: LossValley`) and trainer.py l. 168-172 restarts it at the
  switch; qatbench has no SWAD, so `qtdog` is the plain model after `steps` (suites/references/qtdog.csv
  says so beside the README's numbers).
- ERM's hparams are DomainBed's ResNet defaults (Adam, lr 5e-5, no weight decay:
  domainbed/hparams_registry.py l. 20-38); the code's steps: 5,001 for PACS (datasets.py l. 41).

EoQ, the ensemble of 5 such models, is `eoq` (qatbench/methods/ensemble.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from qatbench.config.protocol import SWITCH_AT
from qatbench.methods.base import require
from qatbench.methods.erm import ERM
from qatbench.methods.hparams import hparam
from qatbench.methods.registry import METHODS

# the QuantSpec fields QT-DoG fixes; its bit widths are the suite's `bits` (the paper's: W7A32)
QTDOG_QUANT = {
    "quantizer": "lsq",  # zhutmost/lsq-net (config_q.yaml l. 21: mode lsq)
    "w_per_channel": True,  # config_q.yaml l. 25
    "w_symmetric": True,  # lsq-net's `symmetric: false` = signed [-2^(b-1), 2^(b-1)-1] (lsq.py l. 33-36)
    "first_last": "same",  # the `excepts` never match a module name: the stem is 7-bit too
    "layers": "conv",  # QuanModuleMapping = {nn.Conv2d: QuanConv2d} (func.py l. 49-52)
}


@dataclass(frozen=True)
class QtdogHParams:
    q_steps: int = hparam(2000, "QT-DoG code train_all.py l. 43 (--q_steps; the README example uses 100)")
    optimizer: Literal["adam", "sgd"] = hparam("adam", "QT-DoG code (DomainBed fork) hparams_registry.py l. 20")
    lr: float = hparam(5e-5, "QT-DoG code hparams_registry.py l. 26 (ResNet)")
    weight_decay: float = hparam(0.0, "QT-DoG code hparams_registry.py l. 38")
    momentum: float = hparam(0.9, "used by sgd only; LSQ Sec. 3's value")
    schedule: Literal["constant", "cosine"] = hparam("constant", "DomainBed: no schedule")

    def __post_init__(self):
        require(self, "q_steps", low=1)


@METHODS.register(
    "qtdog",
    summary="ERM whose conv weights are LSQ-quantized from step q_steps on (weight-only, per channel)",
    paper="Javed et al., ICML 2025, arXiv:2410.06020",
)
class QTDoG(ERM):
    """Steps after the switch: ERM's update on the quantized model (steps before it are the
    protocol's: the suite's FP parent method, update for update)."""

    kind = "qat"
    HParams = QtdogHParams
    quant_fixed = QTDOG_QUANT
    quantizers_allowed = ("lsq",)
    switch_hparam = "q_steps"  # protocol switch_at: q_steps (qatbench/config/protocol.py)

    @classmethod
    def protocols(cls) -> tuple[str, ...]:
        return (SWITCH_AT,)

    def effective_hparams(self) -> dict[str, Any]:
        return {**super().effective_hparams(), "q_steps": self.hparams.q_steps}
