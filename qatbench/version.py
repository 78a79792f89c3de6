"""The package version, on the ground floor: every layer may read it (the runner writes it into
records and checkpoints) without importing the package facade above it. pyproject.toml reads it
from here, so it is written once."""

__version__ = "0.1.0"
