"""Result files of a run: CSV tables and PNG figures, written atomically, announced by file name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..atomic import atomic_output


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as PNG without timestamp or version metadata (byte-stable); the figure stays open."""
    path = Path(path)
    with atomic_output(path) as temporary:
        fig.savefig(temporary, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight",
                    metadata={"Software": None})
    return path


def save_table(df: pd.DataFrame, path: str | Path, index: bool = False) -> Path:
    """Write `df` as CSV."""
    path = Path(path)
    with atomic_output(path) as temporary:
        df.to_csv(temporary, index=index)
    return path


def save(result: pd.DataFrame | Figure, path: str | Path) -> None:
    """Write a table (CSV) or a figure (PNG) and print `saved <file name>`: a notebook line that reads the
    same wherever the run's results go (and returns nothing, so it adds no path output to a cell)."""
    written = save_figure(result, path) if isinstance(result, Figure) else save_table(result, path)
    print(f"saved {written.name}")
