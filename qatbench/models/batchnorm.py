"""`freeze_bn`: BatchNorm layers that always normalise with their running statistics.

DomainBed's ResNet "with the softmax chopped off and the batchnorm frozen" (facebookresearch/
DomainBed, domainbed/networks.py, `ResNet.train` and `ResNet.freeze_bn`: every BatchNorm2d is
put back in eval mode whenever the network is put in train mode). The paper's version froze
always; since the ERM++ release (commit 3dfdc8e, 2024-07-25) it is the hparam `freeze_bn`,
default off. As there, the statistics stay those of the pretrained network (they are never
updated) while the BN affine weights go on training with the rest.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class FrozenStatistics:
    """Mixed in before a BatchNorm class: `train(True)` leaves it in eval mode."""

    def train(self, mode: bool = True):
        return super().train(False)  # type: ignore[misc]


_FROZEN: dict[type, type] = {}


def frozen_class(cls: type) -> type:
    """One frozen subclass per BatchNorm class (timm's BatchNormAct2d included), made once."""
    if cls not in _FROZEN:
        _FROZEN[cls] = type(f"Frozen{cls.__name__}", (FrozenStatistics, cls), {"__module__": __name__})
    return _FROZEN[cls]


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm layer of `model`, in place, keeps its running statistics through training.
    Names, parameters and state_dict keys are unchanged."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not isinstance(module, FrozenStatistics):
            module.__class__ = frozen_class(type(module))
            module.train(False)
    return model
