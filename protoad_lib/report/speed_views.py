"""Tables and figures of the speed notebook (06), from `protoad_lib.experiments.bench` results.

All numbers here are machine-dependent timings and memory readings: notebooks show them in cells that
nbval does not compare. Every figure has a title and axis labels; functions return Figures / DataFrames.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..experiments.bench_text import speed_ratios
from ..methods import REGISTRY, method_label

#: Rows of a benchmark that are not registered methods: the backbone alone and anomalib's models.
OTHER_ROWS = {
    "backbone": ("backbone only", "tab:gray"),
    "anomalib_patchcore": ("anomalib PatchCore", "tab:brown"),
    "anomalib_padim": ("anomalib PaDiM", "tab:olive"),
}


def _label(method: str) -> str:
    return OTHER_ROWS[method][0] if method in OTHER_ROWS else method_label(method)


def _colour(method: str) -> str:
    if method in OTHER_ROWS:
        return OTHER_ROWS[method][1]
    return REGISTRY[method].colour if method in REGISTRY else "tab:purple"


def _rows(result: Mapping[str, Any]) -> pd.DataFrame:
    rows = pd.DataFrame(result["results"])
    if rows.empty:
        raise ValueError("the benchmark result has no rows")
    return rows


def benchmark_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (method, batch size): img/s, p50/p95 batch latency, post-backbone head time, peak
    memory, fit time, K / memory-bank size and fitted-state size, rounded for display."""
    rows = _rows(result)
    table = pd.DataFrame({
        "method": rows["method"].map(_label),
        "batch": rows["batch_size"],
        "img/s": rows["images_per_s"].round(1),
        "p50 ms/batch": rows["p50_ms"].round(1),
        "p95 ms/batch": rows["p95_ms"].round(1),
        "head ms/batch": rows["head_ms"].astype(float).round(2),
        "peak MB": rows["peak_mem_mb"].astype(float).round(0),
        "fit s": rows["fit_s"].astype(float).round(2),
        "K / bank": rows["k"].astype("Int64"),
    })
    if "state_mb" in rows:
        table["state MB"] = rows["state_mb"].astype(float).round(2)
    return table


def environment_table(result: Mapping[str, Any],
                      keys: Sequence[str] = ("cpu", "device", "torch", "torch_threads", "backbone", "weights",
                                             "image_size", "n_images", "batch_sizes", "warmup", "repeats",
                                             "cpu_peak_reset", "anomalib", "date")) -> pd.DataFrame:
    """The benchmark's environment (hardware, versions, settings) as a two-column table."""
    env = result.get("env", {})
    return pd.DataFrame([{"key": key, "value": str(env.get(key))} for key in keys if key in env])


def speedup_table(result: Mapping[str, Any], reference: str = "protoad") -> pd.DataFrame:
    """img/s of `reference` divided by every other method's, per batch size (>1: reference is faster)."""
    return pd.DataFrame([
        {"batch": batch, "vs": _label(method), f"{_label(reference)} speed-up": round(ratio, 2)}
        for batch, ratios in sorted(speed_ratios(result, reference).items())
        for method, ratio in ratios.items()
    ])


def throughput_figure(result: Mapping[str, Any]) -> Figure:
    """Left: images per second per method, one bar group per batch size. Right: median batch latency
    with the 95th percentile as a whisker."""
    rows = _rows(result)
    methods = list(dict.fromkeys(rows["method"]))
    batches = sorted(rows["batch_size"].unique())
    fig, (ax_speed, ax_lat) = plt.subplots(1, 2, figsize=(11.0, 3.8))
    width = 0.8 / len(batches)
    x = np.arange(len(methods))
    for i, batch in enumerate(batches):
        part = rows[rows["batch_size"] == batch].set_index("method").reindex(methods)
        offset = (i - (len(batches) - 1) / 2) * width
        ax_speed.bar(x + offset, part["images_per_s"].to_numpy(dtype=float), width, label=f"batch {batch}")
        p50 = part["p50_ms"].to_numpy(dtype=float)
        p95 = part["p95_ms"].to_numpy(dtype=float)
        ax_lat.bar(x + offset, p50, width, yerr=[np.zeros_like(p50), np.maximum(p95 - p50, 0)], capsize=3,
                   label=f"batch {batch}")
    for ax in (ax_speed, ax_lat):
        ax.set_xticks(x)
        ax.set_xticklabels([_label(m) for m in methods], rotation=25, ha="right", fontsize=8)
        ax.set_xlabel("method")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax_speed.set_ylabel("images per second")
    ax_speed.set_title("Throughput (higher is better)", fontsize=10)
    ax_lat.set_ylabel("latency per batch (ms; bar p50, whisker p95)")
    ax_lat.set_title("Latency (lower is better)", fontsize=10)
    env = result.get("env", {})
    fig.suptitle(f"End-to-end inference on {env.get('device', '?')} ({env.get('backbone', '?')}, "
                 f"{env.get('image_size', '?')} px)", fontsize=11)
    fig.tight_layout()
    return fig


def fit_memory_figure(result: Mapping[str, Any]) -> Figure:
    """Fit time, peak inference memory and fitted-state size per method (the smallest batch size's rows)."""
    rows = _rows(result)
    rows = rows[(rows["method"] != "backbone") & (rows["batch_size"] == rows["batch_size"].min())]
    methods = list(rows["method"])
    x = np.arange(len(methods))
    colours = [_colour(m) for m in methods]
    panels = [("fit_s", "fit time (s)", "Fit (backbone pass included)"),
              ("peak_mem_mb", "peak extra memory (MB)", f"Peak memory, batch {int(rows['batch_size'].min())}")]
    if "state_mb" in rows:
        panels.append(("state_mb", "fitted state (MB)", "Stored model state"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.6), squeeze=False)
    for ax, (column, ylabel, title) in zip(axes[0], panels):
        ax.bar(x, rows[column].to_numpy(dtype=float), color=colours)
        ax.set_xticks(x)
        ax.set_xticklabels([_label(m) for m in methods], rotation=25, ha="right", fontsize=8)
        ax.set_xlabel("method")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Fit time and memory", fontsize=11)
    fig.tight_layout()
    return fig


def head_cost_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """ProtoAD head cost per K (`bench.head_cost_vs_k` rows): ms per image and multiply-accumulates."""
    table = pd.DataFrame(rows)
    return pd.DataFrame({
        "K": table["k"],
        "channels": table["channels"],
        "grid": table["grid"].map(lambda g: f"{g[0]} x {g[1]}"),
        "ms / image": table["ms_per_image"].round(3),
        "p95 ms / batch": table["p95_ms"].round(3),
        "GMAC / image": (table["macs_per_image"] / 1e9).round(3),
    })


def _log_cost_figure(x: pd.Series, milliseconds: pd.Series, secondary: pd.Series, *, color: str, xlabel: str,
                     ylabel: str, secondary_label: str, secondary_axis: str, title: str) -> Figure:
    """Measured time per image against a size (log-log), with a second quantity on a right-hand axis."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot(x, milliseconds, marker="o", color=color, label="measured (p50)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax2 = ax.twinx()
    ax2.plot(x, secondary, linestyle="--", color="tab:gray", label=secondary_label)
    ax2.set_yscale("log")
    ax2.set_ylabel(secondary_axis)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def head_cost_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """ProtoAD head time per image vs the number of prototypes K (log-log), with the MAC count."""
    table = pd.DataFrame(rows)
    first = table.iloc[0]
    return _log_cost_figure(
        table["k"], table["ms_per_image"], table["macs_per_image"] / 1e9, color="tab:blue",
        xlabel="number of prototypes K", ylabel="head time per image (ms)", secondary_label="GMAC / image",
        secondary_axis="multiply-accumulates per image (G)",
        title=f"ProtoAD head cost vs K ({first['channels']} channels, {first['grid'][0]}x{first['grid'][1]} "
              f"grid, {first['device']})",
    )


def bank_cost_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """PatchCore nearest-neighbour search cost per memory-bank size (`bench.memory_bank_cost` rows)."""
    table = pd.DataFrame(rows)
    return pd.DataFrame({
        "bank size": table["bank_size"],
        "dim": table["dim"],
        "queries / image": table["grid"].map(lambda g: g[0] * g[1]),
        "ms / image": table["ms_per_image"].round(2),
        "p95 ms / batch": table["p95_ms"].round(2),
        "bank MB": table["bank_mb"].round(1),
    })


def bank_cost_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """PatchCore exact 1-NN search time per image vs memory-bank size (log-log), with the bank's size in MB."""
    table = pd.DataFrame(rows)
    first = table.iloc[0]
    return _log_cost_figure(
        table["bank_size"], table["ms_per_image"], table["bank_mb"], color="tab:orange",
        xlabel="memory-bank size (vectors)", ylabel="1-NN search time per image (ms)", secondary_label="bank MB",
        secondary_axis="memory bank (MB, float32)",
        title=f"PatchCore search cost vs bank size (faiss IndexFlatL2, dim {first['dim']}, "
              f"{first['grid'][0] * first['grid'][1]} queries/image)",
    )


def fit_time_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Fit seconds per training-set size (rows) and method (columns), from `fit_scaling.fit_time_vs_images`."""
    table = pd.DataFrame(rows)
    pivot = table.pivot(index="n_images", columns="method", values="fit_s")
    pivot = pivot[[m for m in dict.fromkeys(table["method"])]].round(2)
    pivot.columns = [f"{_label(m)} fit s" for m in pivot.columns]
    return pivot.rename_axis("training images").reset_index()


def fit_time_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Fit time against the number of training images, one line per method (log-log)."""
    table = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for method in dict.fromkeys(table["method"]):
        part = table[table["method"] == method].sort_values("n_images")
        ax.plot(part["n_images"], part["fit_s"], marker="o", color=_colour(method), label=_label(method))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("fit time (s, backbone pass included)")
    ax.set_title("Fit time vs training-set size", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
