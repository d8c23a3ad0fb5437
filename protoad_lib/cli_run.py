"""`protoad run`: the notebook series with papermill, in one process or spread over a Dask cluster (`spread.py`)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .cli_inputs import EXIT_USAGE, parse_parameters
from .profiles import PROFILES


def command_run(args: argparse.Namespace) -> int:
    """Run the notebook series (`run.run_notebooks`, or `spread.run_spread` with `--workers` / `--scheduler`);
    `python -m protoad_lib.run` is this command."""
    from .run import NOTEBOOKS_DIR, RESULTS_DIR, NotebookRunError, RunStopped, run_notebooks, stop_on_sigterm

    parameters = parse_parameters(args.param)
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # the kernel shuts down, as on Ctrl-C (main restores it)
    where = dict(notebooks_dir=args.notebooks_dir or NOTEBOOKS_DIR, results_dir=args.results_dir or RESULTS_DIR,
                 kernel=args.kernel, parameters=parameters, stream=False if args.quiet else None)
    try:
        if args.workers or args.scheduler:
            if args.update_notebooks:
                raise ValueError("--update-notebooks runs in one process: leave out --workers and --scheduler")
            from .spread import connect, run_spread

            with connect(args.workers, args.scheduler) as client:
                run_spread(client, args.profile, args.notebooks, **where)
        else:
            run_notebooks(args.profile, args.notebooks, update_notebooks=args.update_notebooks, **where)
    except (NotebookRunError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except RunStopped as stopped:
        print(stopped.message, file=sys.stderr, flush=True)
        return stopped.code
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return 0


def add_run_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run", help="run the numbered notebooks with papermill (also `python -m protoad_lib.run`)",
        description="Run the numbered notebooks with papermill; executed copies go to results/<profile>/executed/.")
    run.add_argument("--profile", choices=tuple(PROFILES), default="demo",
                     help="run profile injected as the `profile` parameter (default: demo)")
    run.add_argument("--notebooks", default=None,
                     help="comma-separated numbers or names, e.g. 01,03 (default: all 0*.ipynb)")
    run.add_argument("--update-notebooks", action="store_true",
                     help="demo only: copy the executed notebooks (papermill traces removed) back over notebooks/ "
                          "so they carry their demo outputs")
    run.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    run.add_argument("--quiet", action="store_true",
                     help="do not stream the notebooks' output (streamed by default except for the demo)")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="extra notebook parameter, e.g. --param device=cuda or --param \"categories=['bottle']\" "
                          "(repeatable)")
    run.add_argument("--notebooks-dir", type=Path, default=None,
                     help="folder with the notebooks (default: the repository's notebooks/)")
    run.add_argument("--results-dir", type=Path, default=None,
                     help="results root: every table and figure goes to <results-dir>/<profile>/, executed copies "
                          "to <results-dir>/<profile>/executed (default: the repository's results/)")
    run.add_argument("--workers", type=int, default=None,
                     help="spread the categories over a Dask LocalCluster of N worker processes (one thread each, "
                          "the machine's memory shared equally), then run the serial pass (README: Many machines)")
    run.add_argument("--scheduler", default=None,
                     help="spread over an existing Dask cluster: its scheduler's address (tcp://host:8786) or "
                          "scheduler file (dask scheduler --scheduler-file)")
    run.set_defaults(handler=command_run)
