"""The benchmark as plain text for the terminal (`protoad bench`): the result table, speed ratios, fit times."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def speed_ratios(result: dict[str, Any], reference: str = "protoad") -> dict[int, dict[str, float]]:
    """images_per_s of `reference` divided by every other row's, per batch size: {batch: {method: ratio}}."""
    by_key = {(r["method"], r["batch_size"]): r["images_per_s"] for r in result["results"]}
    ratios: dict[int, dict[str, float]] = {}
    for (method, batch_size), speed in by_key.items():
        ref = by_key.get((reference, batch_size))
        if ref is not None and method != reference:
            ratios.setdefault(int(batch_size), {})[method] = ref / speed
    return ratios


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the results (method, batch, img/s, p50, p95, min, head, peak MB, fit, K)."""
    header = f"{'method':<20}{'batch':>6}{'img/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'min ms':>10}{'head ms':>10}" \
             f"{'peak MB':>10}{'fit s':>9}{'K':>8}"
    lines = [header, "-" * len(header)]
    for r in result["results"]:
        lines.append(
            f"{r['method']:<20}{r['batch_size']:>6}{_cell(r['images_per_s'], '.1f'):>10}{_cell(r['p50_ms'], '.1f'):>10}"
            f"{_cell(r['p95_ms'], '.1f'):>10}{_cell(r.get('min_ms'), '.1f'):>10}{_cell(r['head_ms'], '.2f'):>10}"
            f"{_cell(r['peak_mem_mb'], '.0f'):>10}{_cell(r['fit_s'], '.2f'):>9}{_cell(r['k'], 'd'):>8}"
        )
    return "\n".join(lines)


def format_fit_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fit seconds per training-set size (rows) and method (columns), from `fit_scaling.fit_time_vs_images`."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seconds = {(r["method"], r["n_images"]): r["fit_s"] for r in rows}
    width = max([20, *(len(m) + 2 for m in methods)])
    lines = [f"{'training images':<16}" + "".join(f"{m + ' fit s':>{width}}" for m in methods)]
    for count in dict.fromkeys(r["n_images"] for r in rows):
        lines.append(f"{count:<16}" + "".join(f"{_cell(seconds.get((m, count)), '.2f'):>{width}}" for m in methods))
    return "\n".join(lines)
