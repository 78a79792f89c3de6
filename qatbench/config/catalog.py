"""What the config layer must know about the registries, without importing them.

The config layer sits below methods, datasets and models, so it cannot look them up itself;
whoever loads a suite (the runner, the public API) passes a `Catalog` built from the registries.
"""

from __future__ import annotations

import inspect
from typing import Literal, Protocol

# fp: trains float models; qat: trains quantized ones from the FP parent; ptq: quantizes the FP
# parent (or a float model it trains from it) after training; checkpoint: loads a trained model;
# ensemble: evaluates the averaged predictions of other runs of the suite (its members)
MethodKind = Literal["fp", "qat", "ptq", "checkpoint", "ensemble"]


class Catalog(Protocol):
    def method_names(self) -> list[str]: ...

    def method_kind(self, name: str) -> MethodKind: ...

    def method_trains(self, name: str) -> bool:
        """False for methods with no training steps (plain post-training quantization)."""
        ...

    def method_quant(self, name: str) -> dict:
        """QuantSpec fields the method fixes (the `pact` method needs the `pact` quantizer)."""
        ...

    def method_quantizers(self, name: str) -> tuple[str, ...] | None:
        """The quantizers the method can train (None: any)."""
        ...

    def method_switch_hparam(self, name: str) -> str | None:
        """The hparam whose value is the method's `switch_at` step (QT-DoG's `q_steps`), or None."""
        ...

    def method_protocols(self, name: str) -> tuple[str, ...]:
        """The protocols (config/protocol.py) the method can train under (empty: it takes none)."""
        ...

    def method_hparams(self, name: str) -> type:
        """The frozen dataclass of the method's hyperparameters (defaults = paper values)."""
        ...

    def dataset_names(self) -> list[str]: ...

    def dataset_environments(self, name: str, options: dict) -> list[str] | None:
        """Environment names in order (they may depend on the dataset's options), or None when
        only the data on disk can tell."""
        ...

    def dataset_test_envs(self, name: str) -> str | list:
        """What `test_envs` means when a suite leaves it out: "all" (leave-one-domain-out), "none"
        (a single-environment dataset), or a list (CIFAR-C: every corruption at once)."""
        ...

    def model_names(self) -> list[str]: ...

    def option_parameters(self, kind: Literal["dataset", "model"], name: str) -> list[inspect.Parameter]:
        """The options the dataset or model factory takes, with annotations and defaults."""
        ...
