"""Results of a long run kept as they come, one file per unit of work, so a rerun redoes only what is missing.

A unit is e.g. (category, method) of the evaluation or a category of the ablations. Its file is named by
the unit and a digest of the settings it was computed with, and holds those settings; a rerun with other
settings (backbone, image size, method options, library source, ...) finds no file and computes the unit
again, and `redo=True` ignores every stored unit.

Results folders are shared and copied between machines, so a stored result is data only, never code: one
safetensors file whose JSON metadata holds the settings and the result's structure, and whose tensors hold
its arrays (see `encode_result`). Nothing here unpickles; a file that is anything else is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import Unusable, atomic_output, read_checked, settings_digest

#: Version of the stored-result layout; a file of another version is recomputed.
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
_METADATA_KEY = "protoad_result"
_TAG = "__type__"
_PLAIN = (type(None), bool, int, float, str)
STORABLE = ("None, bool, int, float, str, list, tuple, dict, torch.Tensor, numpy arrays and scalars, "
            "pandas DataFrames")


class _Encoder:
    """A value as JSON-able structure plus the tensors it refers to by key; exact types only, so what is
    read back is what was stored (a float64 stays a float64, a tuple a tuple, a column's dtype its dtype)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _tensor(self, tensor: torch.Tensor) -> str:
        """`tensor` must own its memory (safetensors refuses tensors that share it): callers pass copies."""
        key = str(len(self.tensors))
        self.tensors[key] = tensor
        return key

    def _array(self, array: np.ndarray, where: str) -> str:
        try:
            return self._tensor(torch.from_numpy(np.array(array, order="C")))
        except TypeError as error:
            raise TypeError(f"{where}: a numpy array of dtype {array.dtype} cannot be stored ({error})") from error

    def encode(self, value: Any, where: str = "result") -> Any:
        kind = type(value)
        if kind in _PLAIN:
            return value
        if kind is list:
            return [self.encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        if kind is tuple:
            return {_TAG: "tuple", "items": self.encode(list(value), where)}
        if kind is dict:
            if all(type(key) is str for key in value) and _TAG not in value:
                return {key: self.encode(item, f"{where}[{key!r}]") for key, item in value.items()}
            return {_TAG: "dict", "items": [[self.encode(key, f"{where} key"), self.encode(item, f"{where}[{key!r}]")]
                                            for key, item in value.items()]}
        if kind is torch.Tensor and value.layout == torch.strided:
            return {_TAG: "tensor", "key": self._tensor(value.detach().to("cpu", copy=True).contiguous())}
        if kind is np.ndarray:
            return {_TAG: "ndarray", "key": self._array(value, where)}
        if isinstance(value, (np.number, np.bool_)):
            return {_TAG: "numpy_scalar", "key": self._array(np.asarray(value), where)}
        for base in (str, int, float):  # subclasses (torch.__version__, numpy.str_) as their base type
            if isinstance(value, base):
                return base(value)
        if value is pd.NA:
            return {_TAG: "NA"}
        if kind is pd.DataFrame:
            return {_TAG: "dataframe", "columns": self._index(value.columns, f"{where}.columns"),
                    "index": self._index(value.index, f"{where}.index"),
                    "data": [self._values(value.iloc[:, i], f"{where}[{name!r}]")
                             for i, name in enumerate(value.columns)]}
        raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}; a stored result holds only {STORABLE}")

    def _values(self, values: pd.Series | pd.Index, where: str) -> dict:
        """A column (or index) with its exact dtype: numpy dtypes as one array, object columns item by item,
        pandas' own dtypes (str, Int64, boolean, ...) by name with their items."""
        dtype = values.dtype
        if isinstance(dtype, np.dtype) and dtype != object:
            return {_TAG: "array_values", "key": self._array(values.to_numpy(), where)}
        items = self.encode(values.tolist(), where)
        if dtype == object:
            return {_TAG: "object_values", "items": items}
        if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.pandas_dtype(str(dtype)) != dtype:
            raise TypeError(f"{where}: a column of dtype {dtype} cannot be stored exactly (numpy dtypes, object and "
                            "pandas' str, string, Int64, Float64, boolean can)")
        return {_TAG: "pandas_values", "dtype": str(dtype), "items": items}

    def _index(self, index: pd.Index, where: str) -> dict:
        if type(index) is pd.RangeIndex:
            return {_TAG: "range_index", "range": [index.start, index.stop, index.step],
                    "name": self.encode(index.name, where)}
        if type(index) is not pd.Index:
            raise TypeError(f"{where} is a {type(index).__name__}; a stored DataFrame has a RangeIndex or an Index")
        return {_TAG: "index", "values": self._values(index, where), "name": self.encode(index.name, where)}


def _values(node: dict, tensors: Mapping[str, torch.Tensor]) -> np.ndarray | pd.api.extensions.ExtensionArray:
    kind = node[_TAG]
    if kind == "array_values":
        return tensors[node["key"]].numpy()
    if kind == "object_values":
        values = np.empty(len(node["items"]), dtype=object)
        for i, item in enumerate(node["items"]):  # one by one: equal-length tuples must not become a 2-D array
            values[i] = decode_result(item, tensors)
        return values
    if kind == "pandas_values":
        return pd.array([decode_result(item, tensors) for item in node["items"]], dtype=node["dtype"])
    raise ValueError(f"unknown column encoding {kind!r}")


def _index(node: dict, tensors: Mapping[str, torch.Tensor]) -> pd.Index:
    name = decode_result(node["name"], tensors)
    if node[_TAG] == "range_index":
        return pd.RangeIndex(*node["range"], name=name)
    if node[_TAG] == "index":
        values = _values(node["values"], tensors)
        return pd.Index(values, dtype=values.dtype, name=name)
    raise ValueError(f"unknown index encoding {node[_TAG]!r}")


def _frame(node: dict, tensors: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    index = _index(node["index"], tensors)
    columns = (_values(column, tensors) for column in node["data"])
    frame = pd.DataFrame({i: pd.Series(values, index=index, dtype=values.dtype) for i, values in enumerate(columns)},
                         index=index)
    frame.columns = _index(node["columns"], tensors)
    return frame


_DECODERS: dict[str, Callable[[dict, Mapping[str, torch.Tensor]], Any]] = {
    "tuple": lambda node, tensors: tuple(decode_result(node["items"], tensors)),
    "dict": lambda node, tensors: {decode_result(key, tensors): decode_result(value, tensors)
                                   for key, value in node["items"]},
    "tensor": lambda node, tensors: tensors[node["key"]],
    "ndarray": lambda node, tensors: tensors[node["key"]].numpy(),
    "numpy_scalar": lambda node, tensors: tensors[node["key"]].numpy()[()],
    "NA": lambda node, tensors: pd.NA,
    "dataframe": _frame,
}


def encode_result(result: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """`result` as (JSON-able structure, tensors by key); TypeError for anything outside `STORABLE`."""
    encoder = _Encoder()
    return encoder.encode(result), encoder.tensors


def decode_result(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The value `encode_result` encoded; ValueError (or KeyError) for anything it would not have written."""
    if type(node) is list:
        return [decode_result(item, tensors) for item in node]
    if type(node) is not dict:
        return node
    if _TAG not in node:
        return {key: decode_result(value, tensors) for key, value in node.items()}
    decoder = _DECODERS.get(node[_TAG])
    if decoder is None:
        raise ValueError(f"unknown stored type {node[_TAG]!r}")
    return decoder(node, tensors)


class ResultStore:
    """Per-unit results on disk under `directory`, valid for one set of `settings`."""

    def __init__(self, directory: str | Path, settings: Mapping[str, Any], redo: bool = False) -> None:
        self.directory = Path(directory)
        self.settings = json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
        self.digest = settings_digest(self.settings)
        self.redo = redo

    def path(self, *unit: str) -> Path:
        """One file per unit and settings (`<unit>__<settings digest>.safetensors`): results of other settings
        stay apart (and are listed and cleared by `protoad cache`)."""
        name = "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", part) for part in (*unit, self.digest))
        return self.directory / f"{name}{SUFFIX}"

    def load(self, *unit: str) -> Any | None:
        """The stored result of `unit`, or None when it is missing or `redo` is set. A file that cannot be
        read (damaged, cut short, not a stored result: a pickle, say) or holds another unit's settings is
        reported, deleted and recomputed."""
        return None if self.redo else read_checked(self.path(*unit), self._read, "Stored result")

    def _read(self, path: Path) -> Any:
        with safe_open(str(path), framework="pt") as handle:
            document = json.loads((handle.metadata() or {})[_METADATA_KEY])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if document["format_version"] != FORMAT_VERSION or document["settings_digest"] != self.digest:
            raise Unusable("it holds results of other settings or another format version")
        return decode_result(document["result"], tensors)

    def computed(self, compute: Callable[[], Any], *unit: str) -> Any:
        """The stored result of `unit`, else `compute()`, stored as soon as it returns (a None result reads as
        missing, so it is computed again each time)."""
        result = self.load(*unit)
        if result is None:
            result = compute()
            self.save(result, *unit)
        return result

    def save(self, result: Any, *unit: str) -> Path:
        """Store `result` for `unit` atomically (a temporary file, then a rename); TypeError, before anything
        is written, when it holds something outside `STORABLE`."""
        path = self.path(*unit)
        structure, tensors = encode_result(result)
        document = {"format_version": FORMAT_VERSION, "settings_digest": self.digest, "settings": self.settings,
                    "result": structure}
        with atomic_output(path) as temporary:
            save_file(tensors, str(temporary), metadata={_METADATA_KEY: json.dumps(document)})
        return path
