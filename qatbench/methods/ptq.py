"""Post-training quantization of the full-precision parent (`ptq`): no training at all.

The pipeline the flat-pre-training paper (Xia, Pang et al., arXiv:2511.01462) builds on, in its
plainest form (Nagel et al., "A White Paper on Neural Network Quantization", arXiv:2106.08295,
Sec. 3):

1. take the trained full-precision parent as it is
2. quantize it (`quant.quantizer`: `minmax`, or `percentile` for activations; per-channel
   weights with `quant.w_per_channel`)
3. calibrate the ranges on `quant.calib_images` unaugmented training images (left at 0: on one
   augmented training minibatch per domain, as QAT's ranges start; PTQ suites set it)
4. evaluate; nothing is learned

The runner does 2-4 for every method of kind "ptq" once its training (none here) is over, so
this class only declares that nothing is trained. Methods that train the float model first
(`dnq`, qatbench/methods/flat_ptq.py) are compared against it at the same bits and calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

from qatbench.config.spec import OBSERVERS
from qatbench.methods.base import Method, Minibatches
from qatbench.methods.registry import METHODS


@dataclass(frozen=True)
class PtqHParams:
    """Nothing to set: the observers and the calibration set are the suite's `quant` fields."""


@METHODS.register(
    "ptq",
    summary="post-training quantization of the FP parent (min-max / percentile calibration)",
    paper="Nagel et al. 2021, arXiv:2106.08295",
)
class PTQ(Method):
    kind = "ptq"
    trains = False
    HParams = PtqHParams
    quantizers_allowed = OBSERVERS

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        raise RuntimeError("ptq does not train: its runs have 0 steps")
