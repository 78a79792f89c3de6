"""The dataset table. A factory takes (root, data_seed, **options) and returns a DomainDataset."""

from qatbench.registry import Registry

DATASETS: Registry = Registry("dataset")
