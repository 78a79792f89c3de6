"""The papers' claims as data: `suites/references/claims.yaml`, one entry per claim (schema in
suites/references/README.md). Users add claims without code; a mistake is one line naming the file,
the entry, the key and what is allowed. Read with `yaml.safe_load`: nothing in it can execute.

Two kinds of claim:
- `difference`: a metric of `method` minus the same metric of `baseline` (a method label, or `parent`:
  each run's own FP parent), per bit width; the metric may itself be a difference of two metrics
  (`id_acc - ood_acc`), which makes the claim a difference of differences;
- `correlation`: Kendall's tau between two metrics across the finished runs, per bit width and
  test domain.
`direction` says which sign the paper asserts: `greater` (above zero) or `less` (below).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from qatbench.errors import UserError, allowed_list, did_you_mean

FILE = "claims.yaml"
PARENT = "parent"
KINDS = ("difference", "correlation")
DIRECTIONS = ("greater", "less")
# metric -> (unit, factor from the record's value): accuracies are shown in percentage points
METRICS = {
    "ood_acc": ("pp", 100.0),
    "id_acc": ("pp", 100.0),
    "hessian.trace": ("Tr(H)", 1.0),
    "hessian.top_eigenvalue": ("λ_max", 1.0),
    "hessian.loss": ("loss", 1.0),
}
COMMON = {"id", "kind", "paper", "where", "statement", "direction", "bits", "suites", "paper_value"}
REQUIRED = {
    "difference": ("id", "paper", "where", "statement", "method", "baseline", "metric", "direction"),
    "correlation": ("id", "paper", "where", "statement", "x", "y", "direction"),
}
KEYS = {"difference": COMMON | {"method", "baseline", "metric"}, "correlation": COMMON | {"x", "y"}}


@dataclass(frozen=True)
class Claim:
    id: str
    kind: str
    paper: str
    where: str
    statement: str
    direction: str
    metric: tuple[str, ...] = ()  # difference: (a,) or (a, b) meaning a - b
    method: str = ""
    baseline: str = ""
    x: tuple[str, ...] = ()  # correlation: tau(x, y), each (a,) or (a, b)
    y: tuple[str, ...] = ()
    bits: tuple[str, ...] = ()  # empty: every bit width the table has
    suites: tuple[str, ...] = ()  # empty: every suite; else the suites whose runs the claim needs exist in
    paper_value: str = ""

    def applies_to(self, suite: str) -> bool:
        return not self.suites or suite in self.suites

    @property
    def sign(self) -> int:
        return 1 if self.direction == "greater" else -1


def load_claims(path: str | Path) -> list[Claim]:
    """Every claim of a YAML file, validated; UserError (one line) on the first mistake."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the claims file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path}: not valid YAML{line} ({getattr(exc, 'problem', None) or 'parse error'})") from None
    entries = data.get("claims") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a top-level key 'claims' holding a list of claims")
    claims, seen = [], set()
    for number, entry in enumerate(entries, 1):
        claim = _claim(entry, f"{path}: claim {number}")
        if claim.id in seen:
            raise UserError(
                f"{path}: claim {number} ({claim.id}), key 'id': '{claim.id}' is used twice; ids are unique"
            )
        seen.add(claim.id)
        claims.append(claim)
    return claims


def _claim(entry, where: str) -> Claim:
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping of keys (id, paper, statement, ...), got {type(entry).__name__}")
    if isinstance(entry.get("id"), str) and entry["id"]:
        where = f"{where} ({entry['id']})"
    kind = entry.get("kind", "difference")
    if kind not in KINDS:
        raise UserError(
            f"{where}, key 'kind': '{kind}' not allowed{did_you_mean(kind, KINDS)}; allowed: {allowed_list(KINDS)}"
        )
    unknown = sorted(set(map(str, entry)) - KEYS[kind])
    if unknown:
        raise UserError(
            f"{where}, key '{unknown[0]}' unknown for a {kind} claim{did_you_mean(unknown[0], KEYS[kind])}; "
            f"allowed: {allowed_list(KEYS[kind])}"
        )
    for key in REQUIRED[kind]:
        if key not in entry or entry[key] in (None, ""):
            raise UserError(f"{where}, key '{key}' missing; a {kind} claim needs {', '.join(REQUIRED[kind])}")
    for key in ("id", "paper", "where", "statement", "method", "baseline", "paper_value"):
        if key in entry and entry[key] is not None and not isinstance(entry[key], (str, int, float)):
            raise UserError(f"{where}, key '{key}': expected text, got {type(entry[key]).__name__}")
    direction = entry["direction"]
    if direction not in DIRECTIONS:
        raise UserError(
            f"{where}, key 'direction': '{direction}' not allowed{did_you_mean(direction, DIRECTIONS)}; "
            f"allowed: {allowed_list(DIRECTIONS)}"
        )
    bits = entry.get("bits") or []
    bits = [bits] if isinstance(bits, str) else bits
    if not isinstance(bits, list) or not all(isinstance(b, str) and b for b in bits):
        raise UserError(f"{where}, key 'bits': expected a bit width or a list of them (W4A4, FP, ...)")
    suites = entry.get("suites") or []
    suites = [suites] if isinstance(suites, str) else suites
    if not isinstance(suites, list) or not all(isinstance(name, str) and name for name in suites):
        raise UserError(f"{where}, key 'suites': expected a suite name or a list of them (pacs64_lite0, ...)")
    text = {k: str(entry.get(k) or "") for k in ("id", "paper", "where", "statement", "paper_value")}
    if kind == "difference":
        return Claim(
            **text, kind=kind, direction=direction, bits=tuple(bits), suites=tuple(suites), method=str(entry["method"]),
            baseline=str(entry["baseline"]), metric=_metric(entry["metric"], where, "metric"),
        )  # fmt: skip
    return Claim(
        **text, kind=kind, direction=direction, bits=tuple(bits), suites=tuple(suites),
        x=_metric(entry["x"], where, "x"), y=_metric(entry["y"], where, "y"),
    )  # fmt: skip


def _metric(text, where: str, key: str) -> tuple[str, ...]:
    """'ood_acc' -> ('ood_acc',); 'id_acc - ood_acc' -> ('id_acc', 'ood_acc'); both in one unit."""
    parts = tuple(part.strip() for part in str(text).split(" - "))
    for part in parts:
        if part not in METRICS:
            raise UserError(
                f"{where}, key '{key}': metric '{part}' unknown{did_you_mean(part, METRICS)}; allowed: "
                f"{allowed_list(METRICS)}, or two of them as 'a - b'"
            )
    if len(parts) > 2 or (len(parts) == 2 and METRICS[parts[0]][0] != METRICS[parts[1]][0]):
        raise UserError(
            f"{where}, key '{key}': '{text}' is not one metric or a difference of two in one unit "
            f"(accuracies with accuracies, e.g. 'id_acc - ood_acc')"
        )
    return parts


def describe(metric: tuple[str, ...]) -> str:
    names = {"ood_acc": "OOD", "id_acc": "I.D.", "hessian.trace": "Tr(H)", "hessian.top_eigenvalue": "λ_max",
             "hessian.loss": "loss"}  # fmt: skip
    return " − ".join(names[m] for m in metric)


def unit(metric: tuple[str, ...]) -> str:
    return METRICS[metric[0]][0]
