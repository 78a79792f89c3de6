"""The registries, seen through the `Catalog` the config layer validates suites against."""

from __future__ import annotations

import inspect

from qatbench.config import MethodKind
from qatbench.data import DATASETS
from qatbench.methods import METHODS
from qatbench.models import MODELS, option_parameters


class RegistryCatalog:
    def method_names(self) -> list[str]:
        return METHODS.names()

    def method_kind(self, name: str) -> MethodKind:
        return METHODS.get(name).kind

    def method_trains(self, name: str) -> bool:
        return METHODS.get(name).trains

    def method_quant(self, name: str) -> dict:
        return dict(METHODS.get(name).quant_fixed)

    def method_quantizers(self, name: str) -> tuple[str, ...] | None:
        return METHODS.get(name).quantizers_allowed

    def method_switch_hparam(self, name: str) -> str | None:
        return METHODS.get(name).switch_hparam

    def method_protocols(self, name: str) -> tuple[str, ...]:
        return METHODS.get(name).protocols()

    def method_hparams(self, name: str) -> type:
        return METHODS.get(name).HParams

    def dataset_names(self) -> list[str]:
        return DATASETS.names()

    def dataset_environments(self, name: str, options: dict) -> list[str] | None:
        environments = DATASETS.entry(name).meta.get("environments")
        return environments(**options) if callable(environments) else environments

    def dataset_test_envs(self, name: str) -> str | list:
        return DATASETS.entry(name).meta.get("test_envs", "all")

    def model_names(self) -> list[str]:
        return MODELS.names()

    def option_parameters(self, kind: str, name: str) -> list[inspect.Parameter]:
        # factories take (root, data_seed, **options) and (input_shape, num_classes, **options)
        return DATASETS.parameters(name, 2) if kind == "dataset" else option_parameters(name)


CATALOG = RegistryCatalog()
