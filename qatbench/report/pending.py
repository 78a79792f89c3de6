"""The cells of a suite's grid that no committed record fills yet. A leaderboard built over many
sessions (the PACS grid is some 60 hours of CPU) is read while it grows: a reader must see which
method, bit width, test domain and seed are still missing, not infer it from a short table.

The grid itself comes from the suite file, expanded by the caller (the CLI): report never imports the
runner. `cells` has one row per planned run: suite, label, bits, domain, seed, run_id.
"""

from __future__ import annotations

import pandas as pd

from qatbench.report.render import TextTable

CELL_COLUMNS = ("suite", "label", "bits", "domain", "seed", "run_id")


def pending_tables(cells: pd.DataFrame, records: pd.DataFrame, suite_files: dict[str, str]) -> list[TextTable]:
    """One table per suite with missing runs: per method and bit width, how many of its runs are
    finished and, per test domain, the seeds still missing. `suite_files`: suite name -> its file."""
    if cells.empty:
        return []
    finished = set(records.loc[records["status"] == "done", "run_id"]) if len(records) else set()
    tables = []
    for suite, grid in cells.groupby("suite", sort=True):
        grid = grid.assign(finished=grid["run_id"].isin(finished))
        if grid["finished"].all():
            continue
        rows = {}
        for (label, bits), runs in grid.groupby(["label", "bits"], sort=False):
            missing = runs[~runs["finished"]]
            one_seed = runs["seed"].nunique() == 1  # an ensemble (one run per domain) or a one-seed suite
            if len(missing) == len(runs) > 1:
                domains, seeds = runs["domain"].nunique(), runs["seed"].nunique()
                grid_size = f"{domains} domains" if one_seed else f"{domains} domains x {seeds} seeds"
                rows[(label, bits)] = {"Finished": f"0 of {len(runs)}", "Pending": f"all ({grid_size})"}
                continue
            by_domain = [
                domain if one_seed else f"{domain} ({_seeds(seeds)})"
                for domain, seeds in missing.groupby("domain", sort=False)["seed"]
            ]
            rows[(label, bits)] = {
                "Finished": f"{int(runs['finished'].sum())} of {len(runs)}",
                "Pending": "; ".join(by_domain) if by_domain else "none",
            }
        table = pd.DataFrame.from_dict(rows, orient="index")
        table.index = pd.MultiIndex.from_tuples(table.index, names=["Method", "Bits"])
        done, total = int(grid["finished"].sum()), len(grid)
        source = suite_files.get(suite, f"the suite '{suite}'")
        caption = (
            f"Runs of `{source}` without a committed finished record: {total - done} of {total} pending "
            f"({done} finished). Their cells above are missing or hold fewer seeds. `qatbench run {source}` "
            f"resumes the grid (finished runs are skipped; the suite's header gives the order and the cost)."
        )
        tables.append(TextTable(f"{suite} · pending", table, caption))
    return tables


def _seeds(seeds: pd.Series) -> str:
    """ "seed 1", "seeds 0, 2"."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}"
