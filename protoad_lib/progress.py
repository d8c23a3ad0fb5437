"""Progress bars for long steps; `TQDM_DISABLE=1` switches every bar off (the notebooks do, for stable outputs)."""

from __future__ import annotations

import os
import warnings
from typing import Iterable

with warnings.catch_warnings():  # a kernel without ipywidgets warns "IProgress not found" on import
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm


def bars_disabled_by_environment() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")


def progress_bar(iterable: Iterable | None = None, enabled: bool = True, **options) -> tqdm:
    """A tqdm bar unless the caller turned it off or `TQDM_DISABLE` is set."""
    return tqdm(iterable, disable=not enabled or bars_disabled_by_environment(), **options)
