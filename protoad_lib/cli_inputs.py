"""What the command line reads, checked before any work starts: training images, images to score, test splits,
notebook parameters."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any, Sequence

#: Exit status of a command refused for its input (argparse's own).
EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing problem: printed as one clear message, exit status 2."""


def training_data(args: argparse.Namespace):
    """The good training images; with `--on-error skip` (the default) unreadable ones are left out and listed
    in the dataset's `skipped`, and at least `MIN_FIT_IMAGES` must remain."""
    from .calibration import MIN_FIT_IMAGES
    from .data import AnomalyDataset, DatasetError, ImageFolderDataset

    on_error = "skip" if args.on_error == "skip" else "raise"
    try:
        resize = args.resize or args.image_size
        if args.train_dir:
            data = ImageFolderDataset(args.train_dir, resize=resize, crop=args.image_size, on_error=on_error,
                                      recursive=args.recursive)
        elif args.data_root and args.category:
            data = AnomalyDataset(args.data_root, args.category, "train", layout=args.layout, resize=resize,
                                  crop=args.image_size, on_error=on_error)
        else:
            raise CliError("Give --data-root and --category (MVTec AD or BTAD layout), or --train-dir.")
    except DatasetError as error:
        raise CliError(str(error)) from error
    if len(data) < MIN_FIT_IMAGES:
        source = args.train_dir or Path(args.data_root) / args.category / "train"
        raise CliError(f"{source}: {len(data)} readable training image(s)"
                       + (f" ({len(data.skipped)} unreadable, skipped)" if data.skipped else "")
                       + f"; a fit needs at least {MIN_FIT_IMAGES}.")
    return data


def report_skipped(skipped: list[tuple[str, str]], used: int) -> None:
    """Each image left out (on stderr, as predict lists its unreadable ones) and how many the fit uses."""
    for path, reason in skipped:
        print(f"  unreadable: {path}: {reason}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable training images (listed on stderr); fitting on {used}")


def collect_images(inputs: list[str], recursive: bool, out: Path) -> list[Path]:
    """The images named or found in `inputs`, none of them inside `out`: a rerun must never score the
    overlays an earlier run wrote."""
    from .data import list_images

    out = out.resolve()
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.resolve().is_relative_to(out):
            raise CliError(f"{path} is inside the output folder {out}, and predict never reads its own output: "
                           "give an --out outside the input folders.")
        if path.is_dir():
            paths.extend(found for found in list_images(path, recursive=recursive)
                         if not found.resolve().is_relative_to(out))
        elif path.is_file():
            paths.append(path)
        else:
            raise CliError(f"{path} is neither an image nor a directory.")
    if not paths:
        hint = "" if recursive else " (images in sub-folders are found with --recursive)"
        raise CliError(f"No images found in {', '.join(inputs)}{hint}.")
    return paths


def check_test_split(args: argparse.Namespace) -> None:
    """Image and pixel AUROC rank anomalous images above good ones, so a scored test set without both classes
    has no metrics: say so before the embedding and fit (minutes), not after them. Only lists files."""
    from .data import AnomalyDataset, count_samples

    test = AnomalyDataset(args.data_root, args.category, "test", layout=args.layout)
    counts = count_samples(test)
    if counts["good"] and counts["anomalous"] > args.seen_anomalies:
        return
    seen = f" ({args.seen_anomalies} of them trained on by --seen-anomalies, so not scored)" \
        if args.seen_anomalies else ""
    raise CliError(f"{test.category_dir / 'test'} holds {counts['good']} good and {counts['anomalous']} anomalous "
                   f"images{seen}; AUROC needs both classes in the scored test set: add the missing one "
                   "(anomalous images with their masks in ground_truth/).")


def parse_value(text: str) -> Any:
    """A `--param KEY=VALUE` value: a Python literal (numbers, None, lists, quoted strings), else plain text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_parameters(items: Sequence[str]) -> dict[str, Any]:
    """`protoad run`'s `--param KEY=VALUE` items as notebook parameters."""
    parameters: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CliError(f"--param expects KEY=VALUE, got {item!r}")
        parameters[key.strip()] = parse_value(value)
    return parameters
