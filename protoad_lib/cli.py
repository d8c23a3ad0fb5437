"""The `protoad` command line: fit, predict, evaluate, bench, cache, run (the notebook series).

A method's own flags and what it reports are the method's declarations (`add_cli_options`,
`options_from_cli`, `fit_summary`, `fit_report`, `fits_on_images`): nothing here names a method."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .atomic import write_text_atomically
from .backbones import DEFAULT_BACKBONE
from .cli_inputs import (EXIT_USAGE, CliError, check_test_split, collect_images, report_skipped,
                         training_data)
from .cli_run import add_run_parser
from .data.images import DEFAULT_MAX_PIXELS, MAX_SIDE, MIN_SIDE
from .data.transforms import PAPER_CROP, PAPER_RESIZE
from .measure import peak_rss_mb, stopwatch
from .methods import REGISTRY, bench_names, detector_classes, get_method, method_names


def _method_options(args: argparse.Namespace) -> dict:
    """The chosen method's constructor options from its own flags (the registry's defaults otherwise)."""
    return get_method(args.method).detector.options_from_cli(args)


def command_fit(args: argparse.Namespace) -> None:
    from .backbones import load_backbone
    from .calibration import fit_calibrated
    from .checkpoint import save_detector
    from .data import DatasetError
    from .methods import make_detector

    data = training_data(args)
    report_skipped(data.skipped, len(data))
    with stopwatch() as watch:
        model = make_detector(args.method, load_backbone(args.backbone), **_method_options(args))
        try:
            model, calibration = fit_calibrated(model, data, args.batch_size, args.device,
                                                args.calibration_fraction, args.seed)
        except DatasetError as error:  # --on-error fail: the first unreadable image stops the fit
            raise CliError(str(error)) from error
    save_detector(model.cpu(), args.out, image_size=args.image_size, resize=data.resize, calibration=calibration,
                  train_colour_mode=data.colour_mode())
    size = model.fitted_size()
    print(f"images: {len(data)}  " + (model.fit_summary() or f"method: {REGISTRY[args.method].label}"
                                       + (f"  size: {size}" if size else "")))
    print(calibration.describe() if calibration else
          "no calibration (--calibration-fraction 0 or too few images): predict gives scores, no decision")
    print(f"fit time: {watch.seconds:.1f} s  peak memory: {peak_rss_mb():.0f} MB  checkpoint: {args.out}")


def command_predict(args: argparse.Namespace) -> None:
    from .calibration import Calibration
    from .checkpoint import CheckpointError, load_detector
    from .predict import Decision, OutputFolderError, predict_images, scored_images

    try:
        detector, metadata = load_detector(args.model)
    except CheckpointError as error:
        raise CliError(str(error)) from error
    out = Path(args.out)
    paths = collect_images(args.inputs, args.recursive, out)
    size = metadata["image_size"]
    if metadata["resize"] != size:
        print(f"note: {args.model} was fitted on centre crops ({size} of {metadata['resize']} px); predict scores "
              f"each whole image at {size} x {size}, so its scale differs from training by {size / metadata['resize']:.2f}")
    calibration = Calibration.from_dict(metadata["calibration"]) if metadata.get("calibration") else None
    if calibration is None and args.threshold is None:
        print("note: the checkpoint holds no calibration and no --threshold was given: scores only, colour scale "
              "per image")
    decision = Decision.of(calibration, args.threshold)
    try:
        summary = predict_images(detector, paths, out, size, decision, args.batch_size, args.workers, args.device,
                                 args.save_maps, max_pixels=args.max_pixels,
                                 train_colour_mode=metadata.get("train_colour_mode"), overwrite=args.overwrite)
    except OutputFolderError as error:
        raise CliError(str(error)) from error
    except KeyboardInterrupt as stop:
        raise type(stop)(f"{len(scored_images(out))} images kept in {out / 'scores.csv'}; the same command "
                         "resumes") from None
    for path, note in summary.notes:
        print(f"  warning: {path}: {note}", file=sys.stderr)
    for path, reason in summary.unreadable:
        print(f"  unreadable: {path}: {reason}", file=sys.stderr)
    if summary.unreadable and not summary.scored:
        raise CliError(f"no image could be scored: all {len(summary.unreadable)} new images are unreadable or "
                       f"refused (reasons in {out / 'unreadable.csv'}).")
    flagged = f", {summary.anomalous} anomalous (threshold {decision.image_threshold:.4g})" \
        if decision.image_threshold is not None else ""
    skipped = f" ({summary.skipped} scored earlier kept: --overwrite scores them again)" if summary.skipped else ""
    print(f"scored {summary.scored} images{flagged}{skipped}; {len(summary.unreadable)} unreadable"
          + (" (listed in unreadable.csv)" if summary.unreadable else "") + f"; overlays and scores.csv in {out}")


def command_evaluate(args: argparse.Namespace) -> None:
    from .backbones import load_backbone
    from .data import DatasetError
    from .categories import load_category
    from .evaluation import evaluate_on_category
    from .features import FeatureCache
    from .methods import make_detector

    trained = get_method(args.method).detector.fits_on_images
    if args.seen_anomalies and not trained:
        raise CliError(f"--seen-anomalies is for trained methods (--method "
                       f"{', '.join(m for m in method_names() if get_method(m).detector.fits_on_images)})")
    try:
        check_test_split(args)
        backbone = load_backbone(args.backbone, weights=args.weights)
        cache = FeatureCache(args.cache_dir) if args.cache_dir else None
        data = load_category(backbone, args.data_root, args.category, layout=args.layout, resize=args.resize,
                             image_size=args.image_size, batch_size=args.batch_size, device=args.device, cache=cache)
    except DatasetError as error:
        raise CliError(str(error)) from error
    detector = make_detector(args.method, backbone, **_method_options(args))
    result = evaluate_on_category(detector, data, seen=args.seen_anomalies, seed=args.seed, device=args.device)
    size = detector.fitted_size()
    metrics = result.metrics | {"embed_s": data.embed_s, "method": args.method, "backbone": args.backbone,
                                "weights": args.weights, "category": args.category} \
        | ({"fitted_size": size} if size is not None else {}) | detector.fit_report()
    if trained:
        metrics["seen_anomalies"] = ";".join(result.seen)
    width = max(len(key) for key in metrics)
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        write_text_atomically(args.json, json.dumps(metrics, indent=2) + "\n")


def command_bench(args: argparse.Namespace) -> None:
    from .backbones import load_backbone
    from .data import DatasetError
    from .experiments.bench import run_benchmark
    from .experiments.bench_images import load_images
    from .experiments.bench_json import save_json
    from .experiments.bench_text import format_fit_table, format_table, speed_ratios
    from .experiments.fit_scaling import fit_time_vs_images
    from .experiments.scaling import head_cost_vs_k, memory_bank_cost

    try:
        result = run_benchmark(
            backbone_name=args.backbone, methods=tuple(args.methods.split(",")), batch_sizes=tuple(args.batch_sizes),
            device=args.device, data_root=args.data_root, category=args.category, image_size=args.image_size,
            n_images=args.n_images, repeats=args.repeats, threads=args.threads, warmup=args.warmup,
            weights=args.weights,
            options={"anomalib_patchcore": {"coreset_sampler": "ours"}} if args.anomalib_coreset == "ours" else None,
        )
    except DatasetError as error:
        raise CliError(str(error)) from error
    if args.scaling:
        result["head_cost_vs_k"] = head_cost_vs_k(device=args.device, repeats=args.repeats)
        result["memory_bank_cost"] = memory_bank_cost(repeats=args.repeats)
    if args.fit_counts:
        images, _ = load_images(args.data_root, args.category, args.image_size, max(args.fit_counts))
        result["fit_time_vs_images"] = fit_time_vs_images(load_backbone(args.backbone, weights=args.weights), images,
                                                          args.fit_counts, device=args.device)
        print(format_fit_table(result["fit_time_vs_images"]))
    env = result["env"]
    print(f"{env['cpu']} | torch {env['torch']} | {env['torch_threads']} threads | device {env['device']} | "
          f"load average {env['loadavg_start']} -> {env['loadavg_end']}")
    print(format_table(result))
    for batch_size, ratios in speed_ratios(result).items():
        print(f"batch {batch_size}: " + ", ".join(f"protoad/{name} {value:.2f}x" for name, value in ratios.items()))
    if args.json:
        save_json(result, args.json)


def command_cache(args: argparse.Namespace) -> None:
    from .caches import cache_folders, describe

    kinds = [kind for kind in ("features", "results") if getattr(args, kind)] or ["features", "results"]
    folders = cache_folders(args.data_dir, args.results_dir, kinds)
    if args.action == "list":
        print(describe(folders, with_files=args.files))
        return
    for folder in folders:
        count, freed = folder.clear()
        print(f"removed {count} files ({freed / 2**20:.1f} MB) from {folder.path}")


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    """Every registered method's own flags (ProtoAD's clustering, PRN's schedule and epochs, ...)."""
    for detector in detector_classes():
        detector.add_cli_options(parser)


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=PAPER_CROP,
                        help=f"side of the square network input ({PAPER_CROP})")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def _literal_help(text: str) -> str:
    """Help text taken from data (e.g. a registry summary saying "10 % greedy") with `%` escaped: argparse
    reads every help string as a %-format, so an unescaped `%` crashes `--help`."""
    return text.replace("%", "%%")


def _method_help() -> str:
    """`--method`'s help: every method of the evaluation tables with its registry summary."""
    return _literal_help("; ".join(f"{name}: {REGISTRY[name].summary}" for name in method_names()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protoad", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="fit a method on good images and write a checkpoint")
    fit.add_argument("--method", choices=method_names(), default="protoad", help=_method_help())
    fit.add_argument("--data-root", help="folder holding <category>/train/... (MVTec AD or BTAD layout)")
    fit.add_argument("--category")
    fit.add_argument("--layout", choices=("mvtec", "btad"), default="mvtec")
    fit.add_argument("--train-dir", help="a plain folder of good images instead of a benchmark layout")
    fit.add_argument("--backbone", default=DEFAULT_BACKBONE)
    fit.add_argument("--out", required=True, help="checkpoint file (.safetensors)")
    fit.add_argument("--seed", type=int, default=0,
                     help="the method's (clustering, training) and the calibration hold-out's")
    _add_method_options(fit)
    fit.add_argument("--resize", type=int, default=None,
                     help="resize side before a centre crop to --image-size (default: none, the whole image is "
                          f"resized to --image-size, as predict does; {PAPER_RESIZE} is the paper protocol)")
    fit.add_argument("--recursive", action="store_true", help="--train-dir: also images in sub-folders")
    fit.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                     help="an unreadable training image: left out and listed (skip, the default; every image is "
                          "opened before the fit), or the fit stops on it (fail)")
    fit.add_argument("--calibration-fraction", type=float, default=0.2,
                     help="good images held out to set the decision thresholds (0: none); the final fit uses all")
    _add_image_options(fit)
    fit.set_defaults(handler=command_fit)

    predict = commands.add_parser(
        "predict", help="anomaly heat maps and scores for images",
        description="Score images: an overlay per image and a row in OUT/scores.csv, written as it goes. A rerun "
                    "into the same --out skips the images scores.csv lists and appends the rest. Files that cannot "
                    f"be decoded, images under {MIN_SIDE} px a side, and images needing more than --max-pixels "
                    f"decoded are listed with a reason in OUT/unreadable.csv, not scored; images over {MAX_SIDE} px "
                    "a side are scored at 1/2, 1/3, ... size (a JPEG is decoded so). A grayscale image given to a "
                    "checkpoint fitted on colour images, or the reverse, is scored with a warning (and a note in "
                    "scores.csv). Nothing inside --out is read.")
    predict.add_argument("--model", required=True, help="checkpoint written by `protoad fit`")
    predict.add_argument("inputs", nargs="+", help="images and/or directories of images")
    predict.add_argument("--out", required=True, help="folder for overlays, scores.csv (and maps)")
    predict.add_argument("--threshold", type=float, default=None,
                         help="image and pixel threshold instead of the checkpoint's calibrated ones")
    predict.add_argument("--save-maps", action="store_true", help="also each float map at image size (.npy)")
    predict.add_argument("--recursive", action="store_true", help="also images in sub-folders")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--workers", type=int, default=2, help="processes decoding images (0: in the main one)")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                         help=f"pixels decoded at most per image (default {DEFAULT_MAX_PIXELS:,}, PIL's own "
                              f"decompression-bomb limit; a JPEG over {MAX_SIDE} px a side counts at the reduced "
                              "scale it is decoded at)")
    predict.add_argument("--overwrite", action="store_true",
                         help="start OUT/scores.csv and unreadable.csv afresh instead of resuming them")
    predict.set_defaults(handler=command_predict)

    evaluate = commands.add_parser("evaluate", help="fit on train, score test, print metrics")
    evaluate.add_argument("--data-root", required=True)
    evaluate.add_argument("--category", required=True)
    evaluate.add_argument("--layout", choices=("mvtec", "btad"), default="mvtec")
    evaluate.add_argument("--method", choices=method_names(), default="protoad", help=_method_help())
    evaluate.add_argument("--backbone", default=DEFAULT_BACKBONE)
    evaluate.add_argument("--weights", default="imagenet",
                          help="'imagenet', a state-dict file, or 'random' (measures time and memory at paper "
                               "scale where ImageNet weights are not on disk; its metrics mean nothing)")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--cache-dir", help="keep the embeddings in this feature cache for reruns (default: temp files)")
    evaluate.add_argument("--resize", type=int, default=PAPER_RESIZE,
                          help=f"resize side before the centre crop (paper: {PAPER_RESIZE})")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--seen-anomalies", type=int, default=0,
                          help="a trained method (PRN): train also on N real anomalies drawn (seeded) from the test "
                               "set; they are removed from the scored test set and listed in the output")
    _add_method_options(evaluate)
    _add_image_options(evaluate)
    evaluate.set_defaults(handler=command_evaluate)

    bench = commands.add_parser("bench", help="speed of the backbone alone and every method in one run")
    bench.add_argument("--backbone", default=DEFAULT_BACKBONE)
    bench.add_argument("--weights", default="imagenet",
                       help="'random' times the same network when ImageNet weights are not on disk")
    bench.add_argument("--methods", default=",".join(bench_names()),
                       help=f"comma-separated, from {', '.join(bench_names())} (anomalib rows are added when installed)")
    bench.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--data-root", help="default: the synthetic mini benchmark")
    bench.add_argument("--category")
    bench.add_argument("--image-size", type=int, default=PAPER_CROP)
    bench.add_argument("--n-images", type=int, default=16)
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--threads", type=int, default=None)
    bench.add_argument("--scaling", action="store_true", help="also head cost vs K and PatchCore search vs bank size")
    bench.add_argument("--fit-counts", nargs="+", type=int, default=None,
                       help="also fit time of every method (and anomalib's) on this many training images, e.g. 50 100 200")
    bench.add_argument("--anomalib-coreset", choices=("anomalib", "ours"), default="anomalib",
                       help="anomalib PatchCore's memory bank chosen by its own k-center greedy, or by ours (same rule, "
                            "bounded memory) to time its inference at category scale (its fit time is then not anomalib's)")
    bench.add_argument("--json")
    bench.set_defaults(handler=command_bench)

    cache = commands.add_parser("cache", help="list or clear the feature cache and stored results of resumable runs")
    cache.add_argument("action", choices=("list", "clear"))
    cache.add_argument("--features", action="store_true", help="only the feature cache")
    cache.add_argument("--results", action="store_true", help="only the stored per-category results")
    cache.add_argument("--data-dir", help="the data folder whose feature_cache/ is meant (default <repo>/data; "
                                          "$PROTOAD_CACHE_DIR moves the cache)")
    cache.add_argument("--results-dir", action="append",
                       help="a run's results folder (repeatable; default every <repo>/results/* and $PROTOAD_RESULTS_DIR)")
    cache.add_argument("--files", action="store_true", help="list: one line per file")
    cache.set_defaults(handler=command_cache)
    add_run_parser(commands)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception: the command unwinds (its `finally` blocks and worker shutdowns run) as on Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run one command (its exit status: 0, or what the command returns); Ctrl-C (exit 130) and SIGTERM
    (exit 143) end it with one line, not a traceback."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = args.handler(args) or 0
    except CliError as error:
        print(f"protoad {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"protoad {args.command}: {'terminated' if terminated else 'interrupted'}"
              + (f"; {stop}" if str(stop) else ""), file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code


if __name__ == "__main__":
    sys.exit(main())
