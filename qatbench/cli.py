"""`qatbench run | status | clean | analyze | eval | report | list`: argument parsing only; every
command calls the Python API.

Mistakes in the input end in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from qatbench.errors import UserError, allowed_list, did_you_mean, excerpt

EXIT_USER_ERROR = 2
MAX_ERROR_CHARS = 2000  # the longest error line: a message names a bad value, it never prints it whole


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False) or bool(os.environ.get("QATBENCH_QUIET"))
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="qatbench: %(message)s")
    logging.getLogger("qatbench.integrity").setLevel(logging.WARNING)  # damaged files: said even when quiet
    try:
        return args.command(args)
    except UserError as exc:  # one line, and bounded whatever value it quotes
        print(f"qatbench: error: {excerpt(exc, MAX_ERROR_CHARS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # `qatbench ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("qatbench: interrupted; finished runs are kept and will be skipped next time", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qatbench", description="Quantization-aware training under distribution shift."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run every run of a suite that has not finished yet")
    run.add_argument("suite", help="suite YAML file, e.g. suites/quickstart.yaml")
    run.add_argument("--results", default="results", help="results folder (default: results)")
    run.add_argument("--data-root", help="folder holding the datasets (default: $QATBENCH_DATA)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite field, e.g. --set training.steps=100 (repeatable)",
    )
    run.add_argument(
        "--launcher", default="local", help="local (default; --workers processes) or slurm (the suite's slurm:)"
    )
    run.add_argument(
        "--workers", type=int, default=1, help="local worker processes, one run each (one GPU each when several)"
    )
    run.add_argument(
        "--only",
        default="",
        metavar="LABELS",
        help="run only these method entries, comma-separated labels (their FP parents come along)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="list the runs and whether they are finished; train nothing"
    )
    run.add_argument(
        "--rerun-stale",
        action="store_true",
        help="train again the finished runs whose data differs from the data on disk now (default: keep, flag)",
    )
    run.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    run.add_argument("--quiet", action="store_true", help="no progress bars (also: QATBENCH_QUIET=1)")
    run.set_defaults(command=cmd_run)

    report = commands.add_parser("report", help="tables and figures of the finished runs; the leaderboard")
    report.add_argument("results", nargs="?", default="results", help="results folder (default: results)")
    report.add_argument("--format", default="md", help="md (default) or latex")
    report.add_argument("--selection", default="training_domain", help="training_domain (default), oracle or last")
    report.add_argument("--baseline", help="quantized method the others are tested against (default: lsq)")
    report.add_argument(
        "--references", default=None, help="folder of the papers' numbers (default: suites/references; none: off)"
    )
    report.add_argument(
        "--claims",
        action="store_true",
        help="only the verdicts on the papers' claims (claims.yaml of the --references folder), and their figure",
    )
    report.add_argument("--out", help="also write the report (and its figures) into this folder")
    report.add_argument("--no-figures", action="store_true", help="with --out: tables only")
    report.add_argument(
        "--leaderboard", action="store_true", help="write leaderboard.md and .tex into --out (default: reports)"
    )
    report.add_argument(
        "--check", action="store_true", help="exit 1 when the leaderboard in --out (default: reports) is stale"
    )
    report.set_defaults(command=cmd_report)

    analyze = commands.add_parser(
        "analyze", help="Hessian and loss-landscape analyses of finished runs (or of a checkpoint file)"
    )
    analyze.add_argument("path", help="a run folder, a suite's results folder (every run in it), or a checkpoint .pt")
    analyze.add_argument("--suite", help="take the `analysis:` section (and, for a .pt, dataset and model) from here")
    analyze.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    analyze.add_argument("--results", default="results", help="for a .pt: results folder (default: results)")
    analyze.add_argument("--figures", help="also draw the analysis figures into this folder")
    _common(analyze)
    analyze.set_defaults(command=cmd_analyze)

    evaluate = commands.add_parser("eval", help="evaluate (and analyse) a checkpoint trained elsewhere, as a run")
    evaluate.add_argument("checkpoint", help="a qatbench model.pt, or a plain state_dict of --model")
    evaluate.add_argument("--dataset", required=True, help="dataset name (qatbench list datasets)")
    evaluate.add_argument("--test-envs", default=None, help="test environments: indices or names, comma-separated")
    evaluate.add_argument("--model", help="architecture (default: the one in the record beside a qatbench model.pt)")
    evaluate.add_argument("--bits", default=None, help="W4A4 etc. for a plain quantized state_dict (default: FP)")
    evaluate.add_argument(
        "--suite",
        help="take `analysis:`, quant and training settings from this suite file; for a plain state_dict, "
        "also its model's and dataset's options",
    )
    evaluate.add_argument("--name", default="eval", help="suite name the run is filed under (default: eval)")
    evaluate.add_argument("--results", default="results", help="results folder (default: results)")
    _common(evaluate)
    evaluate.set_defaults(command=cmd_eval)

    status = commands.add_parser("status", help="done / running / failed / dead / pending runs of a suite, and ETA")
    status.add_argument("suite", help="suite YAML file")
    status.add_argument("--results", default="results", help="results folder (default: results)")
    status.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    status.add_argument("--only", default="", metavar="LABELS", help="only these method entries (labels)")
    status.add_argument(
        "--data-root", help="compare the runs' data fingerprints with this data (default: $QATBENCH_DATA, the suite's)"
    )
    status.set_defaults(command=cmd_status)

    clean = commands.add_parser("clean", help="remove the folders of a suite's dead partial runs")
    clean.add_argument("suite", help="suite YAML file")
    clean.add_argument("--incomplete", action="store_true", required=True, help="dead partial runs (required)")
    clean.add_argument("--results", default="results", help="results folder (default: results)")
    clean.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    clean.set_defaults(command=cmd_clean)

    listing = commands.add_parser("list", help="what can be named in a suite")
    listing.add_argument("what", choices=["methods", "datasets", "models"])
    listing.add_argument(
        "--details", action="store_true", help="methods: every hparam, its default and its source (* RECONSTRUCTION)"
    )
    listing.set_defaults(command=cmd_list)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder holding the datasets (default: $QATBENCH_DATA)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (also: QATBENCH_QUIET=1)")


def cmd_analyze(args: argparse.Namespace) -> int:
    from qatbench.runner import analysis_api

    quiet = args.quiet or bool(os.environ.get("QATBENCH_QUIET"))
    lines = analysis_api.analyze(
        args.path,
        suite=args.suite,
        overrides=args.overrides,
        results=args.results,
        data_root=args.data_root,
        device=args.device,
        progress=not quiet,
    )
    if args.figures:
        from qatbench.report.figures_analysis import analysis_figures

        folders = analysis_api.run_folders(Path(args.path)) if Path(args.path).exists() else []
        written = analysis_figures(folders, Path(args.figures))
        lines.append(f"{len(written)} figure files written to {args.figures}")
    print("\n".join(lines))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from qatbench.runner import analysis_api

    quiet = args.quiet or bool(os.environ.get("QATBENCH_QUIET"))
    summary = analysis_api.evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        test_envs=args.test_envs,
        model=args.model,
        bits=args.bits,
        suite=args.suite,
        name=args.name,
        results=args.results,
        data_root=args.data_root,
        device=args.device,
        progress=not quiet,
    )
    print(summary.line())
    for record in summary.records:
        shown = {k: record.get(k) for k in ("id_acc", "ood_acc", "hessian.top_eigenvalue", "hessian.trace")}
        print(f"{record.get('run_id')}  " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items() if v is not None))
    return 1 if summary.counts.get("failed") else 0


def cmd_run(args: argparse.Namespace) -> int:
    from qatbench.runner import api

    suite = api.load_suite(args.suite, args.overrides)
    results = Path(args.results)
    only = [label.strip() for label in args.only.split(",") if label.strip()]
    if args.dry_run:
        print("\n".join(api.dry_run(suite, results, only, args.data_root)))
        return 0
    quiet = args.quiet or bool(os.environ.get("QATBENCH_QUIET"))
    if args.launcher not in ("local", "slurm"):
        raise UserError(f"--launcher: unknown launcher '{args.launcher}'; allowed: local, slurm")
    if args.workers < 1:
        raise UserError(f"--workers: {args.workers} is not a number of processes; allowed: 1 or more")
    summary = api.run(
        suite,
        results,
        data_root=args.data_root,
        device=args.device,
        progress=not quiet,
        only=only,
        workers=args.workers,
        launcher=args.launcher,
        rerun_stale=args.rerun_stale,
    )
    print(summary.line())
    return 1 if summary.counts.get("failed") else 0


def _suite_specs(args: argparse.Namespace):
    from qatbench.runner import api

    suite = api.load_suite(args.suite, args.overrides)
    only = [label.strip() for label in getattr(args, "only", "").split(",") if label.strip()]
    return suite, api.expand(suite, only)


def cmd_status(args: argparse.Namespace) -> int:
    from qatbench.data import resolve_data_root
    from qatbench.runner.status import damaged_parents, suite_status
    from qatbench.runner.store import MODEL, run_dir

    suite, specs = _suite_specs(args)
    root = resolve_data_root(args.data_root, suite.data_root)
    print(suite_status(specs, Path(args.results), root).line(suite.name))
    for parent, problem in damaged_parents(specs, Path(args.results)):
        folder = run_dir(Path(args.results), parent.suite, parent.run_id)
        print(
            f"damaged: parent run {parent.run_id} ({parent.label}): {folder / MODEL} ({problem}); "
            f"qatbench run {args.suite} --results {args.results} trains it again and restores it if its "
            f"curve is reproduced (or within training.parent_tolerance); "
            f"to retrain its record too: rm -r {folder} && qatbench run {args.suite} --results {args.results}"
        )
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from qatbench.runner.status import clean_incomplete, clean_temporary

    suite, specs = _suite_specs(args)
    removed, resumable = clean_incomplete(specs, Path(args.results))
    leftovers = clean_temporary(specs, Path(args.results))
    if leftovers:
        print(f"{len(leftovers)} temporary file(s) of interrupted writes removed")
    for folder in removed:
        print(f"removed {folder}")
    print(f"{len(removed)} dead partial run(s) of suite '{suite.name}' removed")
    if resumable:
        print(f"{len(resumable)} killed run(s) kept: each resumes from its checkpoint on the next run")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from qatbench import report
    from qatbench.report import leaderboard

    results = Path(args.results)
    if not results.is_dir():
        raise UserError(f"{results}: results folder not found (run a suite first: qatbench run suites/quickstart.yaml)")
    board = args.leaderboard or args.check
    root = leaderboard.repo_root(results) if board else None
    references = _references(args.references, root)
    claims = _claims(args.references, root, required=args.claims)
    records = report.load_records(results)
    labels = set(records["label"].dropna().astype(str)) if "label" in records else set()
    if args.baseline and labels and args.baseline not in labels:
        hint = did_you_mean(args.baseline, labels)
        raise UserError(
            f"--baseline: no method labelled '{excerpt(args.baseline)}' in {results}{hint}; "
            f"allowed: {excerpt(allowed_list(labels), 500)}"
        )

    committed = leaderboard.committed_records(records, results) if board else None
    grids = _suite_grids(root, set(committed["suite"]) if committed is not None and len(committed) else set())

    def renderer(records, figure_tables=None):
        """`render(fmt)` of `records`: the report's tables, and on the leaderboard its figure plan
        (from `figure_tables`), are built once here and serve .md and .tex alike."""
        tables = None
        if not (records.empty or "status" not in records):
            with_claims = claims if board else None
            tables = report.report_tables(records, args.selection, references, args.baseline, with_claims)
        plan = None
        if figure_tables is not None:
            from qatbench.report.figures import figure_folder, planned_figures

            plan = planned_figures(figure_tables, records)

        def render(fmt):
            text = report.render(records, fmt) if tables is None else report.format_report(tables, records, fmt)
            text += report.render_pending(*grids, records, fmt) if grids else ""
            text += report.render_regenerated(records, fmt)
            if plan is not None:
                text += leaderboard.figure_links(plan, figure_folder, fmt)
            return text

        return render

    if args.claims and not board:
        return _report_claims(args, records, claims)
    if board:
        out = Path(args.out or "reports")
        figure_tables = _tables(args, committed)  # one build for the figures and the leaderboard's links to them
        texts = leaderboard.leaderboard_texts(committed, results, renderer(committed, figure_tables))
        if args.check:
            problems = leaderboard.stale(texts, out)
            print("\n".join(problems) if problems else f"{out}/{leaderboard.NAME}.md and .tex match the records")
            return 1 if problems else 0
        try:
            paths = leaderboard.write(texts, out)
            figures = leaderboard.write_figures(
                lambda folder: _draw_main_figures(figure_tables, committed, folder), out
            )
        except OSError as exc:
            raise UserError(f"--out {out}: cannot write the leaderboard: {exc.strerror or exc}") from None
        written = ", ".join(str(p) for p in paths)
        print(f"wrote {written} and {len(figures)} figure files under {out / leaderboard.FIGURES}")
        return 0
    text = renderer(records)(args.format)
    if args.out:
        _write_text(args, "report", text)
        if not args.no_figures:
            from qatbench.report.figures import report_figures

            written = report_figures(_tables(args, records), records, Path(args.out) / "figures")
            print(f"{len(written)} figure files written to {Path(args.out) / 'figures'}", file=sys.stderr)
    print(text)
    return 0


def _tables(args: argparse.Namespace, records):
    """The report's tables of `records` under --selection: what its figures are drawn from."""
    from qatbench import report

    return report.build_tables(records, report.SELECTIONS[args.selection](), report.load_curves)


def _draw_main_figures(tables, records, folder: Path) -> list[Path]:
    from qatbench.report.figures import report_figures

    return report_figures(tables, records, folder, analysis=False)


def _suite_grids(root: Path | None, names: set[str]):
    """The leaderboard's pending cells: every suite file under the repository's suites/ named like a
    suite of the committed records, expanded to its runs (cells, {suite name: file}); None outside a
    repository or without committed records."""
    if root is None or not names or not (root / "suites").is_dir():
        return None
    import pandas as pd

    from qatbench.report.pending import CELL_COLUMNS
    from qatbench.runner import api
    from qatbench.runner.status import grid_cells

    cells, files = [], {}
    for path in sorted((root / "suites").glob("*.yaml")):
        suite = api.load_suite(str(path), [])
        if suite.name in names and suite.name not in files:
            files[suite.name] = path.relative_to(root).as_posix()
            cells += grid_cells(api.expand(suite))
    return pd.DataFrame(cells, columns=list(CELL_COLUMNS)), files


def _write_text(args: argparse.Namespace, stem: str, text: str) -> None:
    """`--out DIR`: DIR/<stem>.md, or .tex with --format latex."""
    out = Path(args.out) / f"{stem}.{'tex' if args.format == 'latex' else 'md'}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as exc:
        raise UserError(f"--out {args.out}: cannot write {out}: {exc.strerror or exc}") from None


def _claims(folder: str | None, root: Path | None, required: bool):
    """The claims file of the references folder (see _references); absent: None, or an error with --claims."""
    from qatbench.report import load_claims
    from qatbench.report.claims import FILE

    if folder == "none":
        if required:
            raise UserError("--claims: the claims file lives in the --references folder, which is 'none'")
        return None
    path = (Path(folder) if folder is not None else (root or Path()) / "suites" / "references") / FILE
    if not path.is_file():
        if required:
            raise UserError(f"--claims: {path} not found (a YAML file of claims, see suites/references/README.md)")
        return None
    return load_claims(path)


def _report_claims(args: argparse.Namespace, records, claims) -> int:
    """`report --claims`: the claims tables; with --out also claims.md (.tex) and the claims figure."""
    from qatbench import report

    tables = report.claim_tables(records, claims, args.selection)
    text = report.claims_text(tables, args.format)
    if args.out:
        _write_text(args, "claims", text)
        if not args.no_figures:
            from qatbench.report.figures_claims import claims_figures

            written = claims_figures(tables, Path(args.out) / "figures")
            print(f"{len(written)} figure files written to {Path(args.out) / 'figures'}", file=sys.stderr)
    print(text)
    return 0


def _references(folder: str | None, root: Path | None = None):
    """The papers' numbers: the named folder, else suites/references (of the repository `root` holding the
    results, for the leaderboard, so that it does not depend on the cwd) when it exists; 'none': off."""
    from qatbench.report import load_references

    if folder == "none":
        return None
    if folder is None:
        default = (root or Path()) / "suites" / "references"
        return load_references(default) if default.is_dir() else None
    if not Path(folder).is_dir():
        raise UserError(f"--references {folder}: folder not found (a folder of reference CSVs, or 'none')")
    return load_references(folder)


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from qatbench.methods import METHODS as registry
    elif args.what == "datasets":
        from qatbench.data import DATASETS as registry
    else:
        from qatbench.models import MODELS as registry
    details = args.details and args.what == "methods"
    for entry in registry.entries():
        kind = getattr(entry.factory, "kind", None)
        about = " · ".join(x for x in (kind, entry.summary, entry.paper) if x)
        print(f"{entry.name:14s} {about}")
        if details:
            from qatbench.methods.hparams import described

            for name, default, source, reconstructed in described(entry.factory.HParams):
                print(f"  {'*' if reconstructed else ' '} {name:18s} {default!r:12s} {source}")
    if details:
        print("* RECONSTRUCTION: no paper or official code gives this default; its source says why it was chosen")
    return 0


if __name__ == "__main__":
    sys.exit(main())
