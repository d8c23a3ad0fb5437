"""The benchmark's result as JSON (numpy numbers, paths, devices and tensors as plain values), written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomically


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_json(result: Any, path: str | Path) -> Path:
    """Write `result` as JSON atomically (a temporary file in the same folder, then a rename)."""
    return write_text_atomically(path, json.dumps(result, indent=2, default=_json_default, allow_nan=False) + "\n")
