"""QAT with the other quantizers of FPQ's baselines: `lsq_plus`, `pact`, `dorefa`.

Each is LSQ's training loop (cross-entropy, LSQ's optimiser recipe, fine-tuned from the FP
parent) on a model quantized by its own quantizer (qatbench/quant): the method fixes the
QuantSpec's `quantizer`, so a suite's `quant:` section cannot give it another.

- lsq_plus: Bhalgat et al., "LSQ+", CVPR Workshops 2020, arXiv:2004.09576
- pact: Choi et al., "PACT", arXiv:1805.06085 (alpha L2-regularised with the weight decay, Sec. 2)
- dorefa: Zhou et al., "DoReFa-Net", arXiv:1606.06160
"""

from __future__ import annotations

from qatbench.methods.erm import LSQ
from qatbench.methods.registry import METHODS


@METHODS.register(
    "lsq_plus",
    summary="QAT with LSQ+ (learnable activation offset)",
    paper="Bhalgat et al., CVPRW 2020, arXiv:2004.09576",
)
class LsqPlus(LSQ):
    quant_fixed = {"quantizer": "lsq_plus"}


@METHODS.register(
    "pact", summary="QAT with PACT activations, DoReFa weights", paper="Choi et al. 2018, arXiv:1805.06085"
)
class Pact(LSQ):
    quant_fixed = {"quantizer": "pact"}


@METHODS.register("dorefa", summary="QAT with DoReFa quantizers", paper="Zhou et al. 2016, arXiv:1606.06160")
class Dorefa(LSQ):
    quant_fixed = {"quantizer": "dorefa"}
