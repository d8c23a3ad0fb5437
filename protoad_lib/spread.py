"""The notebook series spread over a Dask cluster: (notebook, category) units as tasks on workers, then the serial pass.

Fan-out: each category's notebooks 02 (it fills the shared feature cache), then 03, 04, 05 and 07 (they store each
finished unit in the run's results store) run as tasks, one papermill kernel per task, the notebook given that one
category. Notebook 01 (data download and checks) runs once, in this process, before anything is sent; 06 measures
speed, so it runs only in the serial pass, when no task is left beside it. Fan-in: the ordinary serial pass
(`run.run_notebooks`) over every category that finished, which finds their units stored and recomputes none, so
its tables, figures and HTML are those of a serial run.

Faults: a task that raises is retried `RETRIES` times; a worker that dies (OOM, SIGKILL, a lost node) has its task
rescheduled by the scheduler, at most `distributed.scheduler.allowed-failures` times (Dask's default 3). A category
that still fails is reported, left out of the fan-in, and the run exits non-zero after finishing the others; a rerun
resumes from what is stored.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .profiles import REPO_ROOT, get_profile
from .progress import progress_bar
from .session import selected_categories
from .run import NOTEBOOKS_DIR, RESULTS_DIR, discover_notebooks, run_notebook, run_notebooks, select_notebooks

#: Notebooks run per category on the workers, and the notebook each waits for (same category).
FANNED_OUT = {"02": None, "03": "02", "04": "02", "05": "02", "07": "02"}
FIRST = "01"
RETRIES = 2


class SharedStorageError(RuntimeError):
    """A worker cannot see (or write) a folder the run needs: data, notebooks and results must be shared."""


@dataclass
class SpreadReport:
    """What the fan-out did: seconds per finished unit ("notebook/category"), the error of each failed one."""

    finished: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def failed_categories(self) -> list[str]:
        """The categories of the failed units, in the order they failed: left out of the fan-in."""
        return list(dict.fromkeys(unit.split("/", 1)[1] for unit in self.failed))


def connect(workers: int | None = None, scheduler: str | None = None):
    """A Dask client: of the scheduler at `scheduler` (an address, or a scheduler file written by `dask scheduler
    --scheduler-file`), else of a `LocalCluster` of `workers` processes with one thread each and the machine's
    memory shared equally among them (Dask's `memory_limit="auto"`)."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler_file=scheduler) if Path(scheduler).is_file() else Client(scheduler)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="auto",
                           dashboard_address=None)
    return Client(cluster)


def check_folder(path: str, writable: bool) -> str | None:
    """On a worker: None when `path` is a folder it can read (and write into, when asked), else why not."""
    folder = Path(path)
    if not folder.is_dir():
        return f"cannot see {folder}"
    if writable:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".protoad-probe-"):
                pass
        except OSError as error:
            return f"cannot write into {folder} ({error.strerror})"
    return None


def check_shared_storage(client, folders: dict[str, bool]) -> None:
    """Every worker sees each folder (`folders`: path -> must be writable), or `SharedStorageError` at once, naming
    the worker and the folder (not per task, hours later)."""
    problems = []
    for path, writable in folders.items():
        answers = client.run(check_folder, str(path), writable)
        problems += [f"worker {worker}: {answer}" for worker, answer in sorted(answers.items()) if answer]
    if problems:
        raise SharedStorageError("the data, notebooks and results folders must be on storage every worker sees; "
                                 + "; ".join(problems))


def run_unit(notebook: str, category: str, profile: str, notebooks_dir: str, results_dir: str, kernel: str,
             parameters: dict[str, Any], after: Any = None) -> float:
    """On a worker: one notebook for one category (papermill, its own kernel); its executed copy goes to
    `<results>/<profile>/executed/units/<notebook>/<category>.ipynb`; returns its seconds. `after` is the unit it
    waits for (Dask passes its result)."""
    (path,) = select_notebooks(discover_notebooks(Path(notebooks_dir)), [notebook])
    result = run_notebook(path, profile, Path(results_dir), kernel, {**parameters, "categories": [category]},
                          executed_name=f"units/{path.stem}/{category}")
    return result.seconds


def run_categories(profile: str, parameters: dict[str, Any]) -> list[str]:
    """The run's categories, as a serial run reads its `categories` parameter (`session.selected_categories`)."""
    return [category for _, category in selected_categories(get_profile(profile), parameters.get("categories"))]


def fan_out(client, profile: str, notebooks: Sequence[str], categories: Sequence[str], notebooks_dir: Path,
            results_dir: Path, kernel: str, parameters: dict[str, Any], progress: bool = True) -> SpreadReport:
    """Submit every (notebook, category) unit of `notebooks` (those in `FANNED_OUT`), each after the unit it needs,
    and wait for all of them under one bar (finished / running / failed, time left)."""
    from distributed import as_completed

    futures, report = {}, SpreadReport()
    for category in categories:
        for notebook in (n for n in FANNED_OUT if n in notebooks):
            needed = futures.get((FANNED_OUT[notebook], category))
            futures[notebook, category] = client.submit(
                run_unit, notebook, category, profile, str(notebooks_dir), str(results_dir), kernel, parameters,
                needed, key=f"notebook-{notebook}-{category}", retries=RETRIES, pure=False)
    unit_of = {future.key: unit for unit, future in futures.items()}
    with progress_bar(total=len(futures), desc="units", unit="unit", enabled=progress) as bar:
        for future in as_completed(futures.values()):
            notebook, category = unit_of[future.key]
            name = f"{notebook}/{category}"
            if future.status == "finished":
                report.finished[name] = future.result()
            else:
                report.failed[name] = f"{type(future.exception()).__name__}: {future.exception()}"
            bar.update()
            bar.set_postfix(running=sum(not f.done() for f in futures.values()), failed=len(report.failed))
    return report


def run_spread(client, profile: str, notebooks: str | Sequence[str] | None = None,
               notebooks_dir: Path = NOTEBOOKS_DIR, results_dir: Path = RESULTS_DIR, kernel: str = "python3",
               parameters: dict[str, Any] | None = None, log: Callable[[str], None] | None = None,
               stream: bool | None = None) -> SpreadReport:
    """The run of `run.run_notebooks`, its per-category units first spread over `client`'s workers (module
    docstring). Returns the fan-out's report; raises `SharedStorageError` before any work when a worker cannot see
    the folders, and `RuntimeError` naming the failed categories after the fan-in of the others."""
    parameters = dict(parameters or {})
    write = log or (lambda text: print(text, flush=True))
    selected = [p.stem for p in select_notebooks(discover_notebooks(Path(notebooks_dir)), notebooks)]
    data_root = Path(parameters.get("data_root") or REPO_ROOT / "data")
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    check_shared_storage(client, {str(Path(notebooks_dir).resolve()): False, str(Path(results_dir).resolve()): True,
                                  str(data_root.resolve()): False})
    first = [name for name in selected if name.startswith(FIRST)]
    if first:
        run_notebooks(profile, first, notebooks_dir, results_dir, kernel, parameters, log=write, stream=stream)
    categories = run_categories(profile, parameters)
    prefixes = [name[:2] for name in selected]
    report = fan_out(client, profile, prefixes, categories, Path(notebooks_dir), Path(results_dir), kernel, parameters)
    write(f"fan-out: {len(report.finished)} unit(s) finished on {len(client.scheduler_info()['workers'])} worker(s)"
          + (f", {len(report.failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in report.failed.items())
             if report.failed else ""))
    kept = [c for c in categories if c not in report.failed_categories]
    rest = [name for name in selected if name not in first]
    if kept and rest:
        run_notebooks(profile, rest, notebooks_dir, results_dir, kernel, {**parameters, "categories": kept},
                      log=write, stream=stream)
    if report.failed_categories:
        raise RuntimeError(f"categories that failed on every try and were left out: "
                           f"{', '.join(report.failed_categories)} (rerun to retry them; finished units are kept)")
    return report

