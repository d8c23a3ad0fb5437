"""README result tables generated from a run's CSV files, so the numbers in the README are never typed by hand.

`python -m protoad_lib.report.readme_tables [--results results/demo] [--readme README.md] [--check]`
rewrites the block between `<!-- results-table:start -->` and `<!-- results-table:end -->` from
`05_results.csv`; `--check` exits 1 when the README's block differs (a test runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from ..atomic import write_text_atomically
from ..profiles import REPO_ROOT

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
COLUMNS = {"category": "category", "method": "method", "image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC",
           "aupro": "AUPRO", "pixel_f1": "pixel F1-max", "k": "k"}


def _cell(value: object, column: str) -> str:
    if pd.isna(value):
        return ""
    if column == "k":
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


def with_table(readme: str, table: str) -> str:
    """`readme` with the block between the markers replaced by `table`."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m protoad_lib.report.readme_tables", description=__doc__)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results" / "demo")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    args = parser.parse_args(argv)
    readme = args.readme.read_text(encoding="utf-8")
    updated = with_table(readme, results_markdown(args.results / "05_results.csv"))
    if args.check:
        if updated != readme:
            print(f"{args.readme}: the results table differs from {args.results / '05_results.csv'}; "
                  "run python -m protoad_lib.report.readme_tables", file=sys.stderr)
            return 1
        return 0
    write_text_atomically(args.readme, updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
