"""The cited published numbers (`data/paper_tables/*.csv`) and our results beside them.

Published numbers are percent, as printed in their sources; comparison tables put ours in percent too.
Which published rows a method is set against is the registry's `MethodSpec.published`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..methods import REGISTRY
from ..metrics import HEADLINE_METRICS
from ..profiles import REPO_ROOT
from .evaluation_views import METRIC_LABELS, results_table

PUBLISHED_DIR = REPO_ROOT / "data" / "paper_tables"


def load_published(directory: str | Path = PUBLISHED_DIR) -> pd.DataFrame:
    """All cited published numbers (``data/paper_tables/*.csv``), long format, percent, with ``file``."""
    directory = Path(directory)
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no published tables (*.csv) in {directory}; see data/paper_tables/README.md")
    frames = [pd.read_csv(path).assign(file=path.name) for path in files]
    published = pd.concat(frames, ignore_index=True)
    missing = {"dataset", "category", "method", "setting", "metric", "value", "source"} - set(published.columns)
    if missing:
        raise ValueError(f"published tables in {directory} lack columns {sorted(missing)}")
    return published


def _short_source(row: pd.Series) -> str:
    source = str(row["source"])
    if source.startswith("amazon-science/patchcore-inspection"):
        return "patchcore-inspection README" if "README" in source else "patchcore-inspection results.csv"
    if source.startswith("xiahaifeng1995"):
        return "xiahaifeng1995 PaDiM README"
    if source.startswith("Roth et al."):
        return "Roth et al. CVPR 2022 (paper)"
    if source.startswith("Defard et al."):
        return "Defard et al. ICPR-W 2020 (paper)"
    if source.startswith("Jang, Hwang, Park"):
        return "Jang et al. CVPR-W 2023 (abstract)"
    return source.split(",")[0]


def published_means(published: pd.DataFrame, dataset: str = "mvtec") -> pd.DataFrame:
    """Published benchmark means (percent): one row per (method, setting, source), one column per metric."""
    means = published[(published["dataset"] == dataset) & (published["category"] == "mean")].copy()
    means["source (short)"] = means.apply(_short_source, axis=1)
    table = means.pivot_table(index=["method", "setting", "source (short)"], columns="metric", values="value",
                              sort=False)
    columns = [m for m in HEADLINE_METRICS if m in table.columns]
    table = table[columns].rename(columns=METRIC_LABELS)
    table.columns.name = f"{dataset} mean (%)"
    return table


def published_per_category(published: pd.DataFrame, dataset: str = "mvtec") -> pd.DataFrame:
    """Published per-category numbers (percent): category x (method, source, metric)."""
    rows = published[(published["dataset"] == dataset) & (published["category"] != "mean")].copy()
    rows["source (short)"] = rows.apply(_short_source, axis=1)
    rows["metric"] = rows["metric"].map(METRIC_LABELS).fillna(rows["metric"])
    table = rows.pivot_table(index="category", columns=["method", "source (short)", "metric"], values="value",
                             sort=False)
    return table


def comparison_table(results: pd.DataFrame, published: pd.DataFrame,
                     complete: Iterable[str] = (), decimals: int = 2) -> pd.DataFrame:
    """Our numbers beside the cited published ones for the same dataset, category, method and metric.

    Percent; ``difference`` = ours - published (percentage points). Per-category rows where a source has
    per-category numbers; the ``mean`` row only for datasets in ``complete`` (all categories run).
    Empty when nothing matches (e.g. the synthetic demo data has no published counterpart).
    """
    complete = set(complete)
    table = results_table(results, decimals=12)
    anchors = {spec.label: spec.published for spec in REGISTRY.values() if spec.compared and spec.published}
    rows = []
    for _, ours in table.iterrows():
        if ours["method"] not in anchors:
            continue
        if ours["category"] == "mean" and ours["dataset"] not in complete:
            continue
        name, setting = anchors[ours["method"]]
        match = published[(published["dataset"] == ours["dataset"]) & (published["category"] == ours["category"])
                          & (published["method"] == name) & published["setting"].str.contains(setting, regex=False)]
        for _, ref in match.iterrows():
            if ref["metric"] not in ours or pd.isna(ours[ref["metric"]]):
                continue
            value = 100 * float(ours[ref["metric"]])
            rows.append({"dataset": ours["dataset"], "category": ours["category"], "method": ours["method"],
                         "metric": METRIC_LABELS.get(ref["metric"], ref["metric"]),
                         "ours (%)": round(value, decimals), "published (%)": float(ref["value"]),
                         "difference (pp)": round(value - float(ref["value"]), decimals),
                         "source": _short_source(ref)})
    columns = ["dataset", "category", "method", "metric", "ours (%)", "published (%)", "difference (pp)", "source"]
    return pd.DataFrame(rows, columns=columns)
