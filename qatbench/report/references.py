"""The papers' own numbers beside ours: `suites/references/*.csv` (one row per printed number, see
suites/references/README.md) joined to the accuracy tables by dataset, method and bits.

Absolute numbers become extra rows, "<method> [paper]" (with the paper's model when it differs from
the table's); deltas (a method minus a baseline) become notes that set our own delta beside the
paper's. Every setting where the paper and the table differ (architecture, image size, steps) is
named under the table, so a reader never compares unlike with like unknowingly.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qatbench.errors import UserError
from qatbench.report.tables import AVG, FP, NO_TEST_DOMAIN, Table

COLUMNS = ["method", "dataset", "model", "bits", "test_env", "metric", "value", "baseline", "source", "note"]
OPTIONAL = ["variant", "image_size", "steps"]  # variant: an ablation row, never joined; the rest: the setting
ABSOLUTE = {"ood_acc": "OOD", "id_acc": "I.D."}
DELTAS = {
    "ood_acc_delta": ("OOD", ""),
    "ood_acc_delta_max": ("OOD", "up to "),
    "id_acc_delta": ("I.D.", ""),
}


def load_references(folder: str | Path) -> pd.DataFrame:
    """Every reference CSV of `folder`, as text (numbers stay as printed); UserError naming file and column."""
    frames = []
    for path in sorted(Path(folder).glob("*.csv")):
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise UserError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
        missing = [c for c in COLUMNS if c not in frame]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; required: {', '.join(COLUMNS)}")
        metrics = {*ABSOLUTE, *DELTAS}
        unknown = sorted(set(frame["metric"]) - metrics)
        if unknown:
            raise UserError(f"{path}: metric '{unknown[0]}' unknown; allowed: {', '.join(sorted(metrics))}")
        bad = frame[pd.to_numeric(frame["value"], errors="coerce").isna()]
        if len(bad):
            raise UserError(f"{path}: row {bad.index[0] + 2}, value '{bad.iloc[0]['value']}' is not a number")
        for column in OPTIONAL:
            frame[column] = frame[column] if column in frame else ""
        for column in ("image_size", "steps"):
            bad = frame[(frame[column] != "") & ~frame[column].str.fullmatch(r"[0-9]+")]
            if len(bad):
                raise UserError(
                    f"{path}: row {bad.index[0] + 2}, {column} '{bad.iloc[0][column]}' is not a whole number (or empty)"
                )
        frames.append(frame.assign(file=path.name))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*COLUMNS, *OPTIONAL, "file"])


def attach_references(table: Table, references: pd.DataFrame, runs: pd.DataFrame) -> None:
    """Add the paper rows and delta notes that belong to `table` (its dataset and bits, FP included)."""
    suite, dataset, model, bits = table.key
    # a delta at unknown bits (the paper does not say) is set beside every bit width's table
    unknown = (references["bits"] == "unknown") & references["metric"].isin(DELTAS)
    refs = references[
        (references["dataset"] == dataset)
        & (references["bits"].isin({bits, FP}) | unknown)
        & (references["variant"] == "")
    ]
    if refs.empty:
        return
    # per method and bits: the paper's numbers for this table's model when it has them, else all its models
    absolute = refs["metric"].isin(ABSOLUTE)
    with_model = set(refs.loc[absolute & (refs["model"] == model), ["method", "bits"]].itertuples(index=False))
    keep = [
        not a or m == model or (meth, b) not in with_model
        for a, m, meth, b in zip(absolute, refs["model"], refs["method"], refs["bits"])
    ]
    refs = refs[keep]
    labels = [label for label, _ in table.mean.index]
    shown: list[pd.Series] = []
    hidden: dict[tuple[str, str], list[str]] = {}  # (header, test domain) without a column -> "row value"
    averaged: dict[tuple[str, str, str], list[str]] = {}  # (header, our domains, theirs) -> "row printed mean"
    for (method, ref_bits, ref_model), group in refs[refs["metric"].isin(ABSOLUTE)].groupby(
        ["method", "bits", "model"], sort=False
    ):
        name = f"{method} [paper]" if ref_model == model else f"{method} [paper, {ref_model}]"
        texts = {}
        for row in group.itertuples():
            column = (ABSOLUTE[row.metric], _column(row.test_env, table))
            if column not in table.mean.columns:
                hidden.setdefault((column[0], row.test_env), []).append(f"{name} {row.bits} {row.value}")
                continue
            texts.setdefault(column, row.value)
        notes, means = _average_like_ours(texts, group, table, f"{name} {ref_bits}", _environments(runs))
        table.notes.extend(notes)
        for key, printed in means:
            averaged.setdefault(key, []).append(f"{name} {ref_bits} {printed}")
        table.extra_rows.append(((name, ref_bits), texts))
        shown.extend(row for _, row in group.iterrows())
    for (header, domain), values in hidden.items():
        table.notes.append(
            f"This table has no {header} column for test domain '{domain}'; the paper rows' values there: "
            f"{', '.join(values)}."
        )
    for (header, ours, over), values in averaged.items():
        table.notes.append(
            f"[paper] rows' {header} Avg here is the mean of the paper's values on this table's test domain(s) "
            f"({ours}), as ours; the paper's own mean over {over}: {', '.join(values)}."
        )
    for _, row in refs[refs["metric"].isin(DELTAS)].iterrows():
        table.notes.append(_delta_note(row, table))
        shown.append(row)
    if not shown:
        return
    sources = sorted({f"{row['source']}" for row in shown})
    table.notes.append(f"[paper] rows and paper deltas as printed in: {'; '.join(sources)}.")
    table.notes.extend(_differences(pd.DataFrame(shown), model, runs))
    unmatched = sorted({row["method"] for row in shown} - set(labels))
    if unmatched:
        table.notes.append(f"Methods the paper reports that this table did not run: {', '.join(unmatched)}.")


OWN_MEAN = "‡"  # a paper's Avg over other test domains than the table's († marks significance)


def _environments(runs: pd.DataFrame) -> list[str]:
    """The dataset's environments, as the table's records list them (empty when they do not)."""
    for value in runs.get("environments", pd.Series(dtype=object)):
        if isinstance(value, list):
            return [str(v) for v in value]
    return []


def _average_like_ours(
    texts: dict, group: pd.DataFrame, table: Table, name: str, environments: list[str]
) -> tuple[list[str], list[tuple[tuple[str, str, str], str]]]:
    """Make the paper row's Avg cells mean what ours mean: the average over this table's test domains.

    A printed Avg is taken as the paper's mean over every environment of the dataset, DomainBed's
    leave-one-domain-out protocol (RECONSTRUCTION: the reference CSVs do not say which domains an
    avg row covers; every DG paper cited there reports all domains). It stands as printed when this
    table's test domains are all of them. Else, where the paper prints a value for each of this
    table's domains, the Avg is their mean (to the printed decimals); where it does not, the printed
    Avg stays, marked ‡ and explained in a note, so that it is never read as our kind of average.

    Returns the ‡ notes, and for each Avg recomputed the paper's own printed mean, keyed by (header,
    our domains, its domains), for the caller to name in one note for every paper row."""
    notes, means = [], []
    for header in dict.fromkeys(h for h, _ in texts):
        ours = [d for h, d in table.mean.columns if h == header and d not in (AVG, NO_TEST_DOMAIN)]
        rows = group[group["metric"].map(ABSOLUTE) == header]
        theirs = [t for t in dict.fromkeys(rows["test_env"]) if t not in ("avg", "none")]
        printed = rows.loc[rows["test_env"] == "avg", "value"]
        if not ours or (header, AVG) not in table.mean.columns:
            continue
        if len(printed) and environments and set(ours) == set(environments):
            continue  # the paper's mean and ours are over the same (all) domains
        if all((header, d) in texts for d in ours):
            values = [texts[(header, d)] for d in ours]
            decimals = max(len(v.split(".")[1]) if "." in v else 0 for v in values)
            texts[(header, AVG)] = f"{sum(float(v) for v in values) / len(values):.{decimals}f}"
            if len(printed):
                over = ", ".join(environments or theirs) or "its test domains"
                means.append(((header, ", ".join(ours), over), printed.iloc[0]))
        elif (header, AVG) in texts:
            texts[(header, AVG)] = f"{texts[(header, AVG)]}{OWN_MEAN}"
            domains = environments or theirs
            over = f"{len(domains)} test domains ({', '.join(domains)})" if domains else "its own test domains"
            missing = [d for d in ours if (header, d) not in texts]
            notes.append(
                f"{name}: {OWN_MEAN} its {header} Avg is the paper's own mean over {over}, not over this table's "
                f"({', '.join(ours)}): the paper prints no value for {', '.join(missing)}."
            )
    return notes, means


def _column(test_env: str, table: Table) -> str:
    domains = list(dict.fromkeys(domain for _, domain in table.mean.columns))
    if test_env == "avg":
        return AVG
    if test_env == "none":
        return NO_TEST_DOMAIN if NO_TEST_DOMAIN in domains else AVG
    return test_env


def _delta_note(row: pd.Series, table: Table) -> str:
    header, prefix = DELTAS[row["metric"]]
    bound = row["metric"].endswith("_max")  # "up to": the largest delta over domains or settings, not a mean
    column = (header, AVG if bound else _column(row["test_env"], table))
    where = "max over test domains" if bound else "Avg" if column[1] == AVG else column[1]
    paper = (
        f"{row['source']}: {row['method']} − {row['baseline']}, {header} {where}, {row['bits']} ({row['model']}): "
        f"{prefix}{_signed(row['value'])} pp{' (a bound, not an average)' if bound else ''}"
    )
    ours = _our_delta(table, row["method"], row["baseline"], row["bits"], column, bound=bound)
    return f"{paper}; here: {ours}."


def _signed(printed: str) -> str:
    return printed if printed.startswith(("+", "-")) else f"+{printed}"


def _our_delta(
    table: Table, method: str, baseline: str, bits: str, column: tuple[str, str], bound: bool = False
) -> str:
    if baseline == "unknown":
        return "not comparable (the paper names no baseline)"
    if bits not in (table.key[3], FP) and bits != "unknown":
        return f"not run at {bits}"
    bits = table.key[3] if bits == "unknown" else bits
    if column not in table.mean.columns:
        return f"no column for test domain '{column[1]}' in this table"
    rows = set(table.mean.index)
    base_bits = FP if (baseline, bits) not in rows and (baseline, FP) in rows else bits  # an FP baseline (erm)
    missing = [f"{m} at {b}" for m, b in ((method, bits), (baseline, base_bits)) if (m, b) not in rows]
    if missing:
        return f"not run: {' and '.join(missing)}"
    ours, theirs = table.mean.loc[(method, bits), column], table.mean.loc[(baseline, base_bits), column]
    if pd.isna(ours) or pd.isna(theirs):
        return "no finished runs to compare"
    text = f"{ours - theirs:+.1f} pp ({method} − {baseline}, {bits})"
    if not bound:
        return text
    domains = [c for c in table.mean.columns if c[0] == column[0] and c[1] != AVG]  # a bound beside a bound
    gaps = table.mean.loc[(method, bits), domains] - table.mean.loc[(baseline, base_bits), domains]
    return f"largest {gaps.max():+.1f} pp over {len(domains)} test domain{'' if len(domains) == 1 else 's'}, Avg {text}"


def _differences(shown: pd.DataFrame, model: str, runs: pd.DataFrame) -> list[str]:
    """The settings in which the paper's rows differ from the table's runs."""
    notes = []
    models = sorted(set(shown["model"]) - {model})
    if models:
        notes.append(f"Setting differs: the paper's architecture is {', '.join(models)}; here {model}.")
    sizes = sorted({s for s in shown["image_size"] if s})
    our_sizes = sorted({str(int(s)) for s in pd.to_numeric(runs.get("image_size", pd.Series(dtype=float))).dropna()})
    if sizes and our_sizes and set(sizes) != set(our_sizes):
        notes.append(f"Setting differs: the paper's image size is {', '.join(sizes)} px; here {', '.join(our_sizes)}.")
    steps = sorted({s for s in shown["steps"] if s}, key=float)
    trained = pd.to_numeric(runs.get("steps", pd.Series(dtype=float))).dropna()
    our_steps = sorted({str(int(s)) for s in trained[trained > 0]}, key=float)  # 0: ensembles and PTQ train none
    if steps and our_steps and set(steps) != set(our_steps):
        notes.append(f"Setting differs: the paper trains {', '.join(steps)} steps; here {', '.join(our_steps)}.")
    return notes
