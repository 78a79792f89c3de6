"""Suite entries of method `checkpoint`: which file each seed evaluates, and what it holds.

A qatbench `model.pt` has its `record.json` beside it: the architecture and QuantSpec are read
from there, and a suite that names another architecture is refused at load. A plain state_dict
takes the entry's `bits` (FP by default) and the suite's `quant` section.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from qatbench.config.spec import QuantSpec, parse_bits
from qatbench.errors import UserError
from qatbench.records import read_record

Blame = Callable[[Sequence[str | int]], str]


def checkpoint_files(entry: Any, seeds: Sequence[int], blame: Blame) -> list[Path]:
    """One file per seed: the entry's list in seed order, or its single file for the first seed."""
    given = entry.checkpoint
    if not given:
        raise UserError(f"{blame(['checkpoint'])}: method 'checkpoint' needs `checkpoint: path/to/model.pt`")
    files = [given] if isinstance(given, str) else list(given)
    if len(files) > 1 and len(files) != len(seeds):
        raise UserError(
            f"{blame(['checkpoint'])}: {len(files)} files for {len(seeds)} seeds; give one file, or one per seed"
        )
    for i, name in enumerate(files):
        if not Path(name).is_file():
            where = blame(["checkpoint"] if isinstance(given, str) else ["checkpoint", i])
            raise UserError(f"{where}: checkpoint file not found: {name}")
    return [Path(name) for name in files]


@lru_cache(maxsize=256)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


def trained_record(path: Path) -> dict[str, Any] | None:
    """The finished qatbench record beside a model.pt, if the file is one."""
    record = read_record(Path(path).parent)
    if record is None or record.get("model_file") != Path(path).name or record.get("status") != "done":
        return None
    return record


def checkpoint_quant(path: Path, entry: Any, fields: dict[str, Any], blame: Blame) -> QuantSpec | None:
    """The QuantSpec the checkpoint was trained with: its record's, else the entry's `bits`."""
    record = trained_record(path)
    if record is not None:
        if record.get("bits", "FP") == "FP":
            return None
        quant = {k.removeprefix("quant."): v for k, v in record.items() if k.startswith("quant.")}
        return QuantSpec(**quant)
    bits = entry.bits or "FP"
    if bits == "FP":
        return None
    w_bits, a_bits = parse_bits(bits)
    return QuantSpec(w_bits, a_bits, **fields)


def check_architecture(path: Path, model: str, blame: Blame) -> None:
    record = trained_record(path)
    if record is not None and record.get("model") != model:
        raise UserError(
            f"{blame(['checkpoint'])}: {path} was trained as model '{record.get('model')}' (its record.json), "
            f"but the suite evaluates model '{model}'"
        )
