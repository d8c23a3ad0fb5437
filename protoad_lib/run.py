"""Papermill runner for the notebook series: `protoad run --profile demo|paper` (or `python -m protoad_lib.run`,
the same command: its options are parsed in `cli.py`).

Runs ``notebooks/0*.ipynb`` in order with papermill (parameters ``profile=<name>`` and
``results_dir=<results>/<profile>`` injected, cwd = the notebooks folder), so every CSV and figure
of the run and each executed copy (``<results>/<profile>/executed/<name>.ipynb``, written to a
temporary file, then renamed) land in one folder. One progress line per notebook, the total time at the
end, and a non-zero exit naming the failing notebook and cell.

Ctrl-C or SIGTERM (`timeout`, a scheduler's time limit) shuts the kernel down and ends the run with one line
saying what it stored; nothing else reaches the terminal but the notebooks' own output. What a kernel process
writes to its own standard error goes to ``<results>/<profile>/logs/<name>.kernel.log`` (kept when not empty; a
kernel that dies has its last lines quoted in the failure message).

Every run also writes the executed notebooks as static HTML with an index page
(``<results>/<profile>/html/index.html``) for people who read rather than run. Profiles other than the
demo stream each notebook's output (progress bars with the time left included) to the terminal.

``--update-notebooks`` (demo profile only, used by ``make notebooks``) copies each successfully
executed notebook back over ``notebooks/<name>.ipynb`` with papermill's injected-parameters cell
and metadata removed, so the committed notebooks carry their demo outputs and nbval re-executes
exactly what is committed.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from traitlets.config import Config

from .atomic import atomic_output
from .html_pages import write_html_report
from .kernels import QuietKernelManager
from .measure import Stopwatch
from .profiles import PROFILES as PROFILE_SETTINGS
from .profiles import REPO_ROOT, get_profile

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
RESULTS_DIR = REPO_ROOT / "results"
PROFILES = tuple(PROFILE_SETTINGS)
INJECTED_TAG = "injected-parameters"
ERROR_MARKER_TAG = "papermill-error-cell-tag"  # papermill's "An Exception was encountered" cells

__all__ = [
    "NotebookRunError",
    "NotebookResult",
    "RunStopped",
    "discover_notebooks",
    "select_notebooks",
    "strip_papermill",
    "run_notebook",
    "run_notebooks",
    "main",
]


class NotebookRunError(RuntimeError):
    """A notebook of the series failed; names the notebook and, when known, the cell."""

    def __init__(self, notebook: str, message: str, cell_index: int | None = None,
                 ename: str | None = None, evalue: str | None = None,
                 executed_path: Path | None = None) -> None:
        super().__init__(message)
        self.notebook = notebook
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.executed_path = executed_path


class RunStopped(SystemExit):
    """Ctrl-C or a stop signal (SIGTERM through `stop_on_sigterm`) as an exception: the run unwinds (papermill
    shuts the kernel down, the unfinished executed copy is removed) and exits with 128 + the signal's number;
    `run_notebooks` re-raises it with a message saying what the run stored."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.message = message or f"stopped by {signal.Signals(signum).name}"


@dataclass(frozen=True)
class NotebookResult:
    """One successfully executed notebook."""

    name: str
    seconds: float
    executed_path: Path


# --------------------------------------------------------------------------- selection


def discover_notebooks(notebooks_dir: Path) -> list[Path]:
    """The numbered notebooks ``0*.ipynb`` of a folder, in name order."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise FileNotFoundError(f"notebooks folder {notebooks_dir} does not exist")
    return sorted(p for p in notebooks_dir.glob("0*.ipynb") if p.is_file())


def select_notebooks(available: Sequence[Path], wanted: str | Sequence[str] | None) -> list[Path]:
    """Pick notebooks by number prefix (``01``, ``3``) or name (``03_clustering_analysis``).

    ``wanted`` is a comma-separated string or a list; ``None`` selects all. The series order is
    kept whatever order they are given in. Unknown selectors raise ``ValueError``.
    """
    if wanted is None:
        return list(available)
    tokens = [t.strip() for t in (wanted.split(",") if isinstance(wanted, str) else wanted)]
    tokens = [t.removesuffix(".ipynb") for t in tokens if t]
    chosen: set[Path] = set()
    for token in tokens:
        if token.isdigit():
            matches = [p for p in available if p.stem.split("_")[0].isdigit()
                       and int(p.stem.split("_")[0]) == int(token)]
        else:
            matches = [p for p in available if p.stem == token]
        if not matches:
            names = ", ".join(p.stem for p in available) or "(none)"
            raise ValueError(f"no notebook matches {token!r}; available: {names}")
        chosen.update(matches)
    return [p for p in available if p in chosen]


# --------------------------------------------------------------------------- writing


def strip_papermill(nb: Any) -> Any:
    """Remove papermill's traces from an executed notebook (in place; also returned).

    Drops the ``injected-parameters`` cell, the ``papermill`` notebook metadata, the per-cell
    ``papermill``/``execution`` metadata and empty ``tags`` lists, and renumbers the execution
    counts 1, 2, ... as a fresh top-to-bottom run would.
    """
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    nb.metadata.pop("papermill", None)
    count = 0
    for cell in nb.cells:
        meta = cell.setdefault("metadata", {})
        meta.pop("papermill", None)
        meta.pop("execution", None)
        if "tags" in meta and not meta["tags"]:
            del meta["tags"]
        if cell.get("cell_type") != "code":
            continue
        if cell.get("execution_count") is None:
            continue
        count += 1
        cell["execution_count"] = count
        for output in cell.get("outputs", []):
            if output.get("output_type") == "execute_result":
                output["execution_count"] = count
    return nb


def _update_source_notebook(executed: Path, source: Path) -> None:
    import nbformat

    nb = strip_papermill(nbformat.read(executed, as_version=4))
    with atomic_output(source, suffix=".tmp.ipynb") as temporary:
        nbformat.write(nb, temporary)


# --------------------------------------------------------------------------- running


def _source_cell_index(executed: Path, cell_index: int) -> int:
    """Index of a failing cell in the *source* notebook (the injected cell does not exist there)."""
    try:
        import nbformat

        nb = nbformat.read(executed, as_version=4)
    except Exception:  # noqa: BLE001 - best effort: fall back to papermill's index
        return cell_index
    cells = [c for c in nb.cells if ERROR_MARKER_TAG not in c.get("metadata", {}).get("tags", [])]
    injected = [i for i, c in enumerate(cells) if INJECTED_TAG in c.get("metadata", {}).get("tags", [])]
    return cell_index - sum(1 for i in injected if i < cell_index)


def run_notebook(
    notebook: Path,
    profile: str,
    results_dir: Path = RESULTS_DIR,
    kernel: str = "python3",
    parameters: dict[str, Any] | None = None,
    update_source: bool = False,
    start_timeout: int = 120,
    stream: bool = False,
    executed_name: str | None = None,
) -> NotebookResult:
    """Execute one notebook with papermill; raises :class:`NotebookRunError` when it fails.

    The executed copy (also of a failed run, with papermill's error markers) is written to
    ``results_dir/<profile>/executed/<name>.ipynb`` (or ``<executed_name>.ipynb`` there) through a temporary file
    and a rename. ``stream``: print the notebook's outputs to the terminal as they come (papermill's
    ``log_output``).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook).resolve()
    name = notebook.stem
    executed_dir = Path(results_dir) / profile / "executed"
    final = executed_dir / f"{executed_name or name}.ipynb"
    kernel_log = Path(results_dir) / profile / "logs" / f"{executed_name or name}.kernel.log"
    params = {"profile": profile, "results_dir": str(Path(results_dir).resolve() / profile), **(parameters or {})}
    watch = Stopwatch()
    failure: PapermillExecutionError | None = None
    with atomic_output(final, suffix=".tmp.ipynb") as temporary:
        try:
            pm.execute_notebook(
                str(notebook), str(temporary), parameters=params, kernel_name=kernel,
                cwd=str(notebook.parent), progress_bar=False, log_output=stream,
                request_save_on_cell_execute=False, start_timeout=start_timeout,
                kernel_manager_class=QuietKernelManager,
                config=Config({QuietKernelManager.__name__: {"stderr_log": str(kernel_log)}}),
            )
        except PapermillExecutionError as error:
            failure = error  # keep the executed copy: it shows the failing cell and its traceback
        except Exception as error:  # kernel died, bad JSON, missing kernel, ...
            raise NotebookRunError(
                name, f"notebook {name} could not be run: {type(error).__name__}: {error}"
                f"{_kernel_messages(kernel_log)}",
            ) from error
        finally:
            if kernel_log.is_file() and not kernel_log.stat().st_size:
                kernel_log.unlink()
    if failure is not None:
        cell = _source_cell_index(final, failure.cell_index)
        first_line = next((ln for ln in str(failure.source).splitlines() if ln.strip()), "").strip()
        where = f"cell {cell}" + (f" (`{first_line[:70]}`)" if first_line else "")
        raise NotebookRunError(
            name, f"notebook {name} failed in {where}: {failure.ename}: {failure.evalue}; "
            f"executed copy: {_display(final)}",
            cell_index=cell, ename=failure.ename, evalue=failure.evalue, executed_path=final,
        ) from failure
    if update_source:
        _update_source_notebook(final, notebook)
    return NotebookResult(name, watch.stop(), final)


def _kernel_messages(kernel_log: Path, lines: int = 5) -> str:
    """The last lines the kernel process wrote to its standard error (why a kernel died), for an error message."""
    if not kernel_log.is_file() or not kernel_log.stat().st_size:
        return ""
    tail = kernel_log.read_text(errors="replace").splitlines()[-lines:]
    return f"; the kernel's last messages ({_display(kernel_log)}): " + " | ".join(tail)


def _display(path: Path) -> str:
    """A path relative to the repository (or the working directory) when possible."""
    path = Path(path).resolve()
    for base in (REPO_ROOT, Path.cwd()):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


def run_notebooks(
    profile: str,
    notebooks: str | Sequence[str] | None = None,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    results_dir: Path = RESULTS_DIR,
    kernel: str = "python3",
    parameters: dict[str, Any] | None = None,
    update_notebooks: bool = False,
    log: Callable[[str], None] | None = None,
    stream: bool | None = None,
) -> list[NotebookResult]:
    """Run the selected notebooks in series order; stops at (and raises) the first failure.

    ``stream`` (default: every profile but a quiet one, the demo) prints each notebook's output as it runs. The
    executed notebooks are also written as HTML with an index page (``write_html_report``).
    """
    if update_notebooks and not get_profile(profile).commits_notebooks:
        committed = ", ".join(name for name, chosen in PROFILE_SETTINGS.items() if chosen.commits_notebooks)
        raise ValueError(f"--update-notebooks is for the {committed} profile only: the committed notebooks "
                         f"carry {committed} outputs (nbval re-executes them with the defaults)")
    if update_notebooks and parameters:
        raise ValueError("--update-notebooks cannot be combined with extra parameters: the committed "
                         "notebooks must show what their own defaults produce")
    write = log or (lambda text: print(text, flush=True))
    selected = select_notebooks(discover_notebooks(notebooks_dir), notebooks)
    if not selected:
        raise ValueError(f"no notebooks (0*.ipynb) in {notebooks_dir}")
    stream = not get_profile(profile).quiet if stream is None else stream
    if stream:
        _stream_papermill_log()
    results: list[NotebookResult] = []
    total = Stopwatch()
    for position, notebook in enumerate(selected, start=1):
        prefix = f"[{position}/{len(selected)}] {notebook.stem} ..."
        watch = Stopwatch()
        try:
            result = run_notebook(notebook, profile, results_dir, kernel, parameters, update_notebooks, stream=stream)
        except NotebookRunError:
            write(f"{prefix} FAILED ({watch.seconds:.1f} s)")
            raise
        except (KeyboardInterrupt, RunStopped) as stop:
            signum = stop.signum if isinstance(stop, RunStopped) else signal.SIGINT
            raise RunStopped(signum, _stopped_message(signum, notebook.stem, results, Path(results_dir) / profile,
                                                      watch.seconds)) from None
        suffix = ", notebook updated" if update_notebooks else ""
        write(f"{prefix} ok ({result.seconds:.1f} s{suffix})")
        results.append(result)
    index = write_html_report(results, Path(results_dir) / profile / "html", profile)
    write(f"{len(results)} notebook(s) ran in {total.seconds:.1f} s "
          f"(executed copies in {_display(Path(results_dir) / profile / 'executed')}; to read: {_display(index)})")
    return results


def _stopped_message(signum: int, notebook: str, finished: Sequence[NotebookResult], folder: Path,
                     seconds: float) -> str:
    """The one line a stopped run ends with: where it stopped and what it stored (a rerun resumes from it)."""
    copies = (f"the executed copies of {', '.join(r.name for r in finished)} in {_display(folder / 'executed')}"
              if finished else "no executed copy")
    return (f"stopped by {signal.Signals(signum).name} in {notebook} after {seconds:.0f} s; stored {copies}, "
            f"and what {notebook} saved before the stop in {_display(folder)} (a rerun resumes from it)")


def _stream_papermill_log() -> None:
    """Show papermill's streamed cell outputs (its logger, INFO) on stdout, once."""
    logger = logging.getLogger("papermill")
    if not any(getattr(handler, "_protoad", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        handler._protoad = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


# --------------------------------------------------------------------------- command line


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (`kill`, `timeout`, a batch scheduler's time limit) ends the run as Ctrl-C does: the running
    kernel is shut down and the unfinished executed copy is removed (by default the process would just die)."""
    raise RunStopped(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m protoad_lib.run ...` is `protoad run ...`: one parser, in `cli.py`."""
    from .cli import main as cli_main

    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
