"""The accuracy table of the papers, one per dataset, model and bit width: rows = methods (the
full-precision rows on top, as the papers print them), columns = each test domain + Avg, for OOD
and for I.D. accuracy; mean ± std over seeds, the best quantized method of each column in bold, a
dagger where a method differs from the suite's baseline (Welch's t-test), and every cell that is
not a full set of seeds says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qatbench.report.render import MISSING, TextTable
from qatbench.report.select import Selection
from qatbench.report.significance import ALPHA, welch

METRICS = (("ood_acc", "OOD"), ("id_acc", "I.D."))
AVG = "Avg"
FP = "FP"
DAGGER = "†"
BASELINES = {"quantized": "lsq", "fp": "erm"}  # what each row is tested against, at the same bits

log = logging.getLogger(__name__)


@dataclass
class Table:
    """Numbers of one table: mean, sample std and seed count per cell, same shape.

    `values` holds the per-seed numbers behind every cell (long format), `reasons` what a cell
    lacks ("" when it has every seed), `p_values` Welch's test against the row's baseline.
    """

    title: str
    mean: pd.DataFrame  # index (Method, Bits); columns (metric header, domain)
    std: pd.DataFrame
    n: pd.DataFrame
    caption: str
    notes: list[str] = field(default_factory=list)
    fmt: str = ".1f"  # accuracies in %; sharpness values need significant digits (".4g")
    reasons: pd.DataFrame | None = None
    p_values: pd.DataFrame | None = None
    values: pd.DataFrame | None = None
    key: tuple = ()  # (suite, dataset, model, bits)
    extra_rows: list[tuple[tuple[str, str], dict]] = field(default_factory=list)  # references, as text
    bold_best: bool = True  # accuracies: higher is better; sharpness is not a score

    @property
    def quantized_rows(self) -> list[bool]:
        return [bits != FP for _, bits in self.mean.index]


NO_TEST_DOMAIN = "no test domain"  # test_envs: none (I.D. only, e.g. CIFAR without -C)
KEYS = ["run_id", "suite", "dataset", "model", "label", "bits", "w_bits", "seed", "test_envs", "environments"]
CELL = ["suite", "dataset", "model", "label", "bits", "seed", "domain"]  # one run per cell and seed
TABLE = ["suite", "dataset", "model"]


def domain_names(records: pd.DataFrame) -> list[str]:
    return [
        " + ".join(envs[i] for i in tests) or NO_TEST_DOMAIN
        for tests, envs in zip(records["test_envs"], records["environments"])
    ]


def usable(records: pd.DataFrame) -> pd.DataFrame:
    """Records of any status that carry the keys a table needs, with `domain` added."""
    if records.empty or "status" not in records:
        return pd.DataFrame(columns=[*KEYS, "status", "domain"])
    records = _environments_from_siblings(records)
    absent = [k for k in KEYS if k not in records]
    complete = records.dropna(subset=[k for k in KEYS if k in records]) if not absent else records.iloc[0:0]
    lacking = len(records) - len(complete)
    if lacking:
        missing = absent or [k for k in KEYS if records[k].isna().any()]
        log.warning("%d record(s) lack keys a table needs (%s); not shown", lacking, ", ".join(missing))
    complete = complete.drop_duplicates("run_id").copy()
    complete["domain"] = domain_names(complete) if len(complete) else []
    return complete


def _environments_from_siblings(records: pd.DataFrame) -> pd.DataFrame:
    """A diverged or failed run recorded before the runner kept its dataset's environments lacks them;
    another run of the same suite, dataset and dataset options names them (when they cover its test
    domains), and its cell is then shown, not dropped. A done run always had them: one without is a
    damaged record, left out."""
    if not {"environments", "suite", "dataset", "status", "test_envs"} <= set(records):
        return records
    if records["environments"].notna().all():
        return records
    options = sorted(c for c in records if c.startswith("dataset_options."))
    key = [repr(row) for row in records[["suite", "dataset", *options]].itertuples(index=False, name=None)]
    known: dict[str, list] = {}
    for k, environments in zip(key, records["environments"]):
        if isinstance(environments, list):
            known.setdefault(k, environments)

    def filled(k: str, environments, status: str, test_envs) -> object:
        borrowed = known.get(k) if status != "done" and not isinstance(environments, list) else None
        covers = borrowed is not None and isinstance(test_envs, list) and all(0 <= t < len(borrowed) for t in test_envs)
        return borrowed if covers else environments

    column = [filled(*row) for row in zip(key, records["environments"], records["status"], records["test_envs"])]
    return records.assign(environments=pd.Series(column, index=records.index, dtype=object))


def finished_runs(records: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple, list[str]]]:
    """Done runs, one per (table, row, domain, seed), and notes per table on what was set aside.

    A results folder can hold several configurations under one label (a suite edited and run
    again): the most recent finished record counts, the others are named in a note.
    """
    notes: dict[tuple, list[str]] = {}
    runs = usable(records)
    runs = runs[runs["status"] == "done"]
    if runs.empty:
        return runs, notes
    order = runs["finished_at"] if "finished_at" in runs else pd.Series("", index=runs.index)
    runs = runs.assign(_order=order.fillna("")).sort_values("_order", kind="stable")
    superseded = runs[runs.duplicated(CELL, keep="last")]
    for key, group in superseded.groupby(TABLE):
        notes.setdefault(key, []).append(
            f"{len(group)} older record(s) of another configuration under the same method, bits, seed and "
            f"domain are not counted: {', '.join(sorted(group['run_id']))}"
        )
    return runs.drop_duplicates(CELL, keep="last").drop(columns="_order"), notes


def selected_runs(runs: pd.DataFrame, curves: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Finished runs with the metrics of their selected evaluation."""
    chosen = selection.select(curves, runs) if not runs.empty else pd.DataFrame()
    if chosen.empty:
        return pd.DataFrame()
    runs = runs[[*KEYS, "domain"]].merge(chosen[["ood_acc", "id_acc"]], left_on="run_id", right_index=True)
    runs["domain_order"] = [min(tests, default=-1) for tests in runs["test_envs"]]
    return runs


def per_seed_values(runs: pd.DataFrame, domains: list[str]) -> pd.DataFrame:
    """Long format (label, bits, header, domain, seed, value in %), Avg over the seeds that have every domain."""
    frames = []
    for metric, header in METRICS:
        cells = runs[["label", "bits", "domain", "seed"]].assign(header=header, value=runs[metric] * 100)
        cells = cells.dropna(subset=["value"])  # no test domain: no OOD accuracy
        frames.append(cells)
        wide = cells.pivot_table(index=["label", "bits", "seed"], columns="domain", values="value")
        complete = wide.reindex(columns=domains).dropna()  # Avg only over seeds with every domain
        if len(complete):
            avg = complete.mean(axis=1).rename("value").reset_index()
            frames.append(avg.assign(header=header, domain=AVG))
    return pd.concat(frames, ignore_index=True)[["label", "bits", "header", "domain", "seed", "value"]]


def build_tables(
    records: pd.DataFrame, selection: Selection, load_curves, baselines: dict[str, str] | None = None
) -> list[Table]:
    """One table per (suite, dataset, model, bits) with results; FP rows join every bit width's table."""
    baselines = {**BASELINES, **(baselines or {})}
    runs, notes = finished_runs(records)
    runs = selected_runs(runs, load_curves(runs), selection)
    known = usable(records)
    tables = []
    for key, attempted in known.groupby(TABLE, sort=True):
        done = runs[(runs[TABLE] == pd.Series(key, index=TABLE)).all(axis=1)] if not runs.empty else runs
        all_bits = attempted.drop_duplicates("bits").sort_values("w_bits", ascending=False)["bits"].tolist()
        quantized = [b for b in all_bits if b != FP] or [FP]
        for bits in quantized:
            rows = attempted[attempted["bits"].isin({bits, FP})]
            chosen = done[done["bits"].isin({bits, FP})] if len(done) else done
            table = _table(rows, chosen, (*key, bits), selection)
            if table is None:
                continue
            table.p_values = _p_values(table, baselines)
            finished = set(table.values["label"])
            absent = [b for kind, b in baselines.items() if b not in finished and (kind == "fp") == (bits == FP)]
            if absent:
                table.notes.append(f"No {DAGGER} marks: the baseline {absent[0]} has no finished runs in this table.")
            table.notes.extend(notes.get(key, []))
            tables.append(table)
    return tables


def _table(attempted: pd.DataFrame, runs: pd.DataFrame, key: tuple, selection: Selection) -> Table | None:
    order = attempted.assign(domain_order=[min(t, default=-1) for t in attempted["test_envs"]])
    domains = list(dict.fromkeys(order.sort_values("domain_order")["domain"]))
    rows = (
        attempted[["label", "bits", "w_bits"]]
        .drop_duplicates()
        .sort_values(["w_bits", "label", "bits"], ascending=[False, True, True])
    )
    index = pd.MultiIndex.from_frame(rows[["label", "bits"]], names=["Method", "Bits"])
    headers = [h for m, h in METRICS if not (m == "ood_acc" and domains == [NO_TEST_DOMAIN])]  # I.D.-only suites
    columns = pd.MultiIndex.from_tuples([(header, d) for header in headers for d in [*domains, AVG]])
    mean, std = (pd.DataFrame(np.nan, index=index, columns=columns) for _ in range(2))
    n = pd.DataFrame(0, index=index, columns=columns)
    values = (
        per_seed_values(runs, domains)
        if len(runs)
        else pd.DataFrame(columns=["label", "bits", "header", "domain", "seed", "value"])
    )
    values = values[values["header"].isin(headers)]
    for (label, bits, header, domain), cell in values.groupby(["label", "bits", "header", "domain"]):
        mean.loc[(label, bits), (header, domain)] = cell["value"].mean()
        std.loc[(label, bits), (header, domain)] = cell["value"].std(ddof=1)
        n.loc[(label, bits), (header, domain)] = len(cell)
    ensemble_rows = _ensemble_rows(attempted)
    expected = _expected_seeds(attempted, ensemble_rows)
    reasons = _reasons(attempted, set(runs["run_id"]) if len(runs) else set(), n, expected, domains)
    suite, dataset, model, bits = key
    ensembles = sorted({label for label, _ in ensemble_rows})
    seeds = sorted({want for row, want in expected.items() if row[0] not in ensembles} or set(expected.values()))
    only_fp = all(b == FP for _, b in index)
    caption = (
        f"Accuracy (%) {selection.ood_description} (OOD) and on held-out data of the training domains (I.D.); "
        f"mean ± sample standard deviation over n = {' or '.join(map(str, seeds))} seeds unless a cell says "
        f"otherwise; {selection.description} model selection. Columns name the test domain; Avg averages the "
        f"domains per seed first. Bold: the best {'' if only_fp else 'quantized '}method of each column among "
        f"cells with every seed. {DAGGER}: differs from the baseline at the same bits (Welch's t-test over "
        f"seeds, p < {ALPHA}, uncorrected for the number of cells)."
        + (
            f" {', '.join(ensembles)}: an ensemble, one run per test domain that averages the members' seeds."
            if ensembles
            else ""
        )
    )
    title = " · ".join(str(part) for part in key)
    return Table(title, mean, std, n, caption, reasons=reasons, values=values, key=key)


def _ensemble_rows(attempted: pd.DataFrame) -> set[tuple[str, str]]:
    """(label, bits) of the rows whose records are ensembles (they list their member runs)."""
    if "members" not in attempted:
        return set()
    is_ensemble = attempted["members"].map(lambda m: isinstance(m, list) and len(m) > 0)
    return set(attempted.loc[is_ensemble, ["label", "bits"]].itertuples(index=False, name=None))


def _expected_seeds(attempted: pd.DataFrame, ensembles: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The seeds each row should have: those attempted by any row of its kind (FP, or this bit width);
    an ensemble is one run per test domain, its members being the seeds, so it expects its own."""
    by_bits = attempted.groupby("bits")["seed"].nunique()
    own = attempted.groupby(["label", "bits"])["seed"].nunique()
    return {row: int(own[row] if row in ensembles else by_bits[row[1]]) for row in own.index}


def _reasons(
    attempted: pd.DataFrame,
    selected: set[str],
    n: pd.DataFrame,
    expected: dict[tuple[str, str], int],
    domains: list[str],
) -> pd.DataFrame:
    """Why each cell lacks seeds: "2/3 seeds", "failed: <reason>", "not run"; "" for a full cell.
    An Avg without a single complete seed names its incomplete domains and why."""
    reasons = pd.DataFrame("", index=n.index, columns=n.columns)
    for label, bits in n.index:
        row = attempted[(attempted["label"] == label) & (attempted["bits"] == bits)]
        why = {d: _why(row[row["domain"] == d], selected) for d in domains}
        want = expected.get((label, bits), 0)
        for header in n.columns.get_level_values(0).unique():
            for domain in domains:
                got = int(n.loc[(label, bits), (header, domain)])
                if got < want:
                    text = f"{got}/{want} seeds" + (f"; {why[domain]}" if why[domain] else "")
                    reasons.loc[(label, bits), (header, domain)] = text if got else why[domain] or "not run"
            got = int(n.loc[(label, bits), (header, AVG)])
            if got < want:
                incomplete = [f"{d}: {reasons.loc[(label, bits), (header, d)]}" for d in domains]
                incomplete = [text for text, d in zip(incomplete, domains) if reasons.loc[(label, bits), (header, d)]]
                reasons.loc[(label, bits), (header, AVG)] = (
                    f"{got}/{want} seeds" if got else "; ".join(incomplete) or "no seed has every domain"
                )
    return reasons


def _why(tried: pd.DataFrame, selected: set[str]) -> str:
    """What the runs of one cell that did not count say: "failed: <error>", "2 failed: ...", "diverged",
    "1 done without a selectable evaluation" (no readable curve, or not what the selection needs)."""
    failed = tried[tried["status"].isin(["failed", "diverged"])]
    if len(failed):
        first = failed.iloc[0]
        error = str(first.get("error") or "").strip().splitlines()
        reason = error[0] if error else first["status"]
        reason = reason if len(reason) <= 48 else reason[:45] + "..."
        count = f"{len(failed)} " if len(failed) > 1 else ""
        return f"{count}{first['status']}: {reason}" if first["status"] == "failed" else f"{count}diverged"
    unselected = tried[(tried["status"] == "done") & ~tried["run_id"].isin(selected)]
    if len(unselected):
        return f"{len(unselected)} done without a selectable evaluation (see the log)"
    pending = tried[tried["status"] != "done"]
    if len(pending):
        return f"{len(pending)} {pending.iloc[0]['status']}"
    return ""


def _p_values(table: Table, baselines: dict[str, str]) -> pd.DataFrame:
    """Welch's p per cell against the baseline of the row's kind at the same bits (NaN: no test)."""
    p = pd.DataFrame(np.nan, index=table.mean.index, columns=table.mean.columns)
    if table.values is None or table.values.empty:
        return p
    cells = {k: g["value"].to_numpy() for k, g in table.values.groupby(["label", "bits", "header", "domain"])}
    for label, bits in table.mean.index:
        baseline = baselines["fp" if bits == FP else "quantized"]
        if label == baseline:
            continue
        for header, domain in table.mean.columns:
            ours, theirs = cells.get((label, bits, header, domain)), cells.get((baseline, bits, header, domain))
            if ours is not None and theirs is not None:
                p.loc[(label, bits), (header, domain)] = welch(ours, theirs)
    return p


def best_cells(table: Table) -> pd.DataFrame:
    """The best quantized row of each column (ties all bold); FP rows are context, never bold, unless
    the table has only FP rows."""
    contenders = np.array(table.quantized_rows)
    if not contenders.any():
        contenders[:] = True
    best = pd.DataFrame(False, index=table.mean.index, columns=table.mean.columns)
    if not table.bold_best:
        return best
    complete = (table.reasons == "").to_numpy() if table.reasons is not None else np.ones(table.mean.shape, dtype=bool)
    for c, column in enumerate(table.mean.columns):
        shown = np.array([float(f"{m:{table.fmt}}") for m in table.mean[column].to_numpy(float)])  # as printed
        if (contenders & np.isfinite(shown)).sum() < 2:  # nothing to compare with
            continue
        candidates = np.where(contenders & np.isfinite(shown) & complete[:, c])[0]
        if len(candidates):
            best.iloc[candidates[shown[candidates] == shown[candidates].max()], c] = True
    return best


def format_cell(mean: float, std: float, reason: str = "", fmt: str = ".1f", mark: str = "") -> str:
    """ "65.0 ± 7.1", "30.0 (1/3 seeds)", "failed: <reason>", "not run"."""
    if pd.isna(mean):
        return reason or MISSING
    text = f"{mean:{fmt}}"
    if not pd.isna(std):
        std = 0.0 if abs(std) < 1e-9 * max(1.0, abs(mean)) else std  # float noise of equal values
        text += f" ± {std:{fmt}}"
    text += mark
    return f"{text} ({reason})" if reason else text


def _n_marks(n: pd.DataFrame) -> pd.DataFrame:
    """ "n=k" where a cell averages fewer runs than the table's fullest cell."""
    n_max = int(n.max().max()) if n.notna().any().any() else 0
    return n.map(lambda k: "" if pd.isna(k) or int(k) == n_max else f"n={int(k)}")


def to_text(table: Table) -> TextTable:
    """The table as text: formatted cells, bold where best, reference rows appended."""
    reasons = table.reasons if table.reasons is not None else _n_marks(table.n)
    p = table.p_values if table.p_values is not None else pd.DataFrame(np.nan, table.mean.index, table.mean.columns)
    cells = pd.DataFrame("", index=table.mean.index, columns=table.mean.columns, dtype=object)
    for r in range(cells.shape[0]):
        for c in range(cells.shape[1]):
            mark = DAGGER if p.iat[r, c] < ALPHA else ""
            cells.iat[r, c] = format_cell(table.mean.iat[r, c], table.std.iat[r, c], reasons.iat[r, c], table.fmt, mark)
    bold = best_cells(table)
    if table.extra_rows:
        extra = pd.DataFrame(
            [{col: texts.get(col, "") for col in cells.columns} for _, texts in table.extra_rows],
            index=pd.MultiIndex.from_tuples([label for label, _ in table.extra_rows], names=cells.index.names),
        )
        extra.columns = cells.columns
        cells = pd.concat([cells, extra])
        bold = pd.concat([bold, pd.DataFrame(False, index=extra.index, columns=bold.columns)])
    return TextTable(table.title, cells, table.caption, list(table.notes), bold)
