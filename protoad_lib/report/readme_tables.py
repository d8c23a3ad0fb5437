"""README result tables generated from the committed results, so the numbers in the README are never typed by hand.

`python -m protoad_lib.report.readme_tables [--results results/demo] [--readme README.md] [--check]`
rewrites the block between `<!-- results-table:start -->` and `<!-- results-table:end -->` from
`05_results.csv`, and the one between `<!-- paper-scale:start -->` and `<!-- paper-scale:end -->` from
`benchmarks/paper_scale.py`'s JSON; `--check` exits 1 when a README block differs (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from ..atomic import write_text_atomically
from ..profiles import REPO_ROOT

RESULTS_BLOCK, PAPER_SCALE_BLOCK = "results-table", "paper-scale"
PAPER_SCALE_JSON = REPO_ROOT / "results" / "benchmarks" / "paper_scale_wide_resnet50_2_random_391img_cpu.json"
NOTEBOOK_TITLES = {"01": "01 data", "02": "02 features", "03": "03 clustering", "04": "04 network assembly",
                   "05": "05 evaluation", "06": "06 speed", "07": "07 ablations"}
COLUMNS = {"category": "category", "method": "method", "image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC",
           "aupro": "AUPRO", "pixel_f1": "pixel F1-max", "k": "k", "level": "FINCH level"}


def _cell(value: object, column: str) -> str:
    if pd.isna(value):
        return ""
    if column in ("k", "level"):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def results_markdown(results_csv: Path) -> str:
    """The evaluation table (`05_results.csv`) as a Markdown table, with its source file named."""
    table = pd.read_csv(results_csv, dtype={"category": str})
    columns = [c for c in COLUMNS if c in table.columns]
    lines = [f"<!-- generated from {results_csv.name} by protoad_lib.report.readme_tables; do not edit -->",
             "| " + " | ".join(COLUMNS[c] for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in table[columns].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(value, column) for value, column in zip(row, columns)) + " |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds < 600 else f"{seconds:,.0f} s ({seconds / 60:.0f} min)"


def paper_scale_markdown(result_json: Path) -> str:
    """`benchmarks/paper_scale.py`'s measurements (time and peak memory per notebook, one PRN epoch, the
    projected whole run) as Markdown, with its source file named."""
    result = json.loads(result_json.read_text(encoding="utf-8"))
    lines = [f"<!-- generated from {result_json.name} by protoad_lib.report.readme_tables; do not edit -->",
             "| notebook | wall time | peak memory (RSS) |", "|---|---|---|"]
    for row in result["notebooks"]:
        paused = f", plus {row['paused_s']:,.0f} s paused, not counted" if row.get("paused_s") else ""
        resumed = f", of which {row['interrupted_s']:,.0f} s before an interruption" if row.get("interrupted_s") else ""
        if row.get("lost_s") is not None:
            resumed += f" ({row['lost_s']:,.0f} s of it redone after resuming, left out of the projection)"
        lines.append(f"| {NOTEBOOK_TITLES[row['notebook']]} | {_duration(row['seconds'])}{paused}{resumed} | "
                     f"{row['peak_rss_gib']:.1f} GiB |")
    if "total_s" in result:
        lines.append(f"| all seven | {_duration(result['total_s'])} | |")
    prn, projected = result.get("prn_one_epoch"), result.get("projected_paper_run_cpu")
    if prn:
        lines += ["", f"One PRN epoch on the {prn['n_train']} training images: {prn['epoch_s']:,.0f} s "
                      f"({prn['fit_s']:,.0f} s with its features and prototypes)."]
    if projected:
        lines += ["", f"Projected whole paper run (15 MVTec AD + 3 BTAD categories, 2 cores): "
                      f"**{projected['total_h']} h**, of which {projected['prn_h']} h are PRN's "
                      f"{projected['prn_epochs_full']}-epoch CPU schedule ({projected['without_prn_h']} h without "
                      f"PRN's training; `PRN_EPOCHS` shortens it)."]
    return "\n".join(lines)


def with_table(readme: str, table: str, block: str = RESULTS_BLOCK) -> str:
    """`readme` with the block between `block`'s start and end markers replaced by `table`."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    if start not in readme or end not in readme:
        raise ValueError(f"the README has no {start} ... {end} block")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protoad_lib.report.readme_tables", description=__doc__)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results" / "demo")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    parser.add_argument("--paper-scale", type=Path, default=PAPER_SCALE_JSON)
    parser.add_argument("--check", action="store_true", help="exit 1 if a README table is out of date")
    args = parser.parse_args(argv)
    readme = args.readme.read_text(encoding="utf-8")
    updated = with_table(readme, results_markdown(args.results / "05_results.csv"))
    updated = with_table(updated, paper_scale_markdown(args.paper_scale), PAPER_SCALE_BLOCK)
    if args.check:
        if updated != readme:
            print(f"{args.readme}: a generated table differs from {args.results / '05_results.csv'} or "
                  f"{args.paper_scale}; run python -m protoad_lib.report.readme_tables", file=sys.stderr)
            return 1
        return 0
    write_text_atomically(args.readme, updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
