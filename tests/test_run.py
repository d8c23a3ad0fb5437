"""The papermill runner on tiny throwaway notebooks: parameters, executed copies, failures, updates."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from protoad_lib import run


def _notebook(path: Path, *sources: str) -> Path:
    """A notebook whose first code cell is the tagged `parameters` cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("# a throwaway notebook"))
    params = nbformat.v4.new_code_cell('profile = "unset"\nresults_dir = None\nextra = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in sources)
    nbformat.write(nb, path)
    return path


def _outputs(nb) -> str:
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", "") or str(output.get("data", {}).get("text/plain", ""))
                         or f"{output.get('ename', '')}: {output.get('evalue', '')}")
    return "".join(texts)


@pytest.fixture()
def folders(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    return notebooks, tmp_path / "results"


def test_passing_notebook_gets_profile_injected_and_executed_copy(folders, capsys):
    notebooks, results = folders
    _notebook(notebooks / "01_pass.ipynb",
              'import os\nprint(f"profile={profile} extra={extra} cwd={os.path.basename(os.getcwd())}")')
    code = run.main(["--profile", "demo", "--notebooks-dir", str(notebooks), "--results-dir", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "[1/1] 01_pass ... ok (" in out
    assert "1 notebook(s) ran in" in out
    executed = results / "demo" / "executed" / "01_pass.ipynb"
    assert executed.is_file()
    nb = nbformat.read(executed, as_version=4)
    assert "profile=demo extra=1 cwd=notebooks" in _outputs(nb)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "profile = " in injected[0].source
    # Nothing half-written is left next to the executed copy.
    assert [p.name for p in executed.parent.iterdir()] == ["01_pass.ipynb"]


def test_failing_notebook_exits_non_zero_naming_notebook_and_cell(folders, capsys):
    notebooks, results = folders
    _notebook(notebooks / "01_ok.ipynb", "print('fine')")
    _notebook(notebooks / "02_broken.ipynb", "x = 1", "raise ValueError('boom in the third code cell')")
    _notebook(notebooks / "03_never.ipynb", "print('not reached')")
    code = run.main(["--profile", "demo", "--notebooks-dir", str(notebooks), "--results-dir", str(results)])
    assert code != 0
    captured = capsys.readouterr()
    assert "[1/3] 01_ok ... ok" in captured.out
    assert "[2/3] 02_broken ... FAILED" in captured.out
    assert "03_never" not in captured.out  # the series stops at the first failure
    # Source cell index 3: markdown (0), parameters (1), x = 1 (2), raise (3).
    assert "notebook 02_broken failed in cell 3" in captured.err
    assert "ValueError: boom in the third code cell" in captured.err
    # The failed run is kept for inspection (complete file, papermill's error markers inside).
    failed = results / "demo" / "executed" / "02_broken.ipynb"
    assert failed.is_file()
    assert "boom" in _outputs(nbformat.read(failed, as_version=4))
    assert not (results / "demo" / "executed" / "03_never.ipynb").exists()


def test_run_notebooks_raises_structured_error(folders):
    notebooks, results = folders
    _notebook(notebooks / "01_broken.ipynb", "1 / 0")
    with pytest.raises(run.NotebookRunError) as info:
        run.run_notebooks("paper", notebooks_dir=notebooks, results_dir=results, log=lambda _: None)
    error = info.value
    assert (error.notebook, error.cell_index, error.ename) == ("01_broken", 2, "ZeroDivisionError")
    assert error.executed_path == results / "paper" / "executed" / "01_broken.ipynb"


def test_update_notebooks_copies_outputs_back_without_papermill_traces(folders):
    notebooks, results = folders
    source = _notebook(notebooks / "01_update.ipynb", "print(f'profile is {profile}')", "2 + 3")
    run.run_notebooks("demo", notebooks_dir=notebooks, results_dir=results, update_notebooks=True,
                      log=lambda _: None)
    nb = nbformat.read(source, as_version=4)
    assert len(nb.cells) == 4  # no injected-parameters cell
    assert "papermill" not in nb.metadata
    for cell in nb.cells:
        assert "papermill" not in cell.metadata and "execution" not in cell.metadata
    assert nb.cells[1].metadata["tags"] == ["parameters"]
    assert [c.execution_count for c in nb.cells if c.cell_type == "code"] == [1, 2, 3]
    assert nb.cells[2].outputs[0]["text"] == "profile is demo\n"
    assert nb.cells[3].outputs[0]["data"]["text/plain"] == "5"
    assert nb.cells[3].outputs[0]["execution_count"] == 3
    assert [p.name for p in notebooks.iterdir()] == ["01_update.ipynb"]


def test_update_notebooks_is_refused_for_the_paper_profile(folders, capsys):
    notebooks, results = folders
    _notebook(notebooks / "01_any.ipynb", "pass")
    code = run.main(["--profile", "paper", "--update-notebooks", "--notebooks-dir", str(notebooks),
                     "--results-dir", str(results)])
    assert code == 2
    assert "demo profile only" in capsys.readouterr().err
    assert not results.exists()


def test_extra_parameters_are_injected(folders):
    notebooks, results = folders
    _notebook(notebooks / "01_params.ipynb", "print(repr(extra))")
    code = run.main(["--notebooks-dir", str(notebooks), "--results-dir", str(results),
                     "--param", "extra=['a', 2]"])
    assert code == 0
    nb = nbformat.read(results / "demo" / "executed" / "01_params.ipynb", as_version=4)
    assert "['a', 2]" in _outputs(nb)


def test_select_notebooks_by_number_or_name(tmp_path):
    names = ["01_data.ipynb", "02_features.ipynb", "03_clusters.ipynb"]
    available = [tmp_path / n for n in names]
    assert run.select_notebooks(available, None) == available
    assert [p.stem for p in run.select_notebooks(available, "03,1")] == ["01_data", "03_clusters"]
    assert [p.stem for p in run.select_notebooks(available, ["02_features"])] == ["02_features"]
    with pytest.raises(ValueError, match="no notebook matches '07'"):
        run.select_notebooks(available, "07")


def test_discover_only_numbered_notebooks_in_order(tmp_path):
    for name in ("03_c.ipynb", "01_a.ipynb", "scratch.ipynb", "02_b.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in run.discover_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]


def test_unknown_notebook_selection_exits_2(folders, capsys):
    notebooks, results = folders
    _notebook(notebooks / "01_any.ipynb", "pass")
    code = run.main(["--notebooks", "05", "--notebooks-dir", str(notebooks), "--results-dir", str(results)])
    assert code == 2
    assert "no notebook matches '05'" in capsys.readouterr().err


def test_a_successful_run_prints_nothing_from_the_kernel(folders):
    """The kernel shares the runner's terminal: a clean run shows no warning (ipykernel's "running over TCP
    without encryption") and no error from the kernel. The runner is its own process, as on the command line,
    so its terminal holds its own output only (not that of processes other tests started)."""
    notebooks, results = folders
    _notebook(notebooks / "01_pass.ipynb", "print('fine')")
    finished = subprocess.run([sys.executable, "-m", "protoad_lib.run", "--notebooks-dir", str(notebooks),
                               "--results-dir", str(results)], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0
    assert "[1/1] 01_pass ... ok" in finished.stdout
    assert "WARNING" not in finished.stdout and "ERROR" not in finished.stdout
    assert finished.stderr == ""


def test_what_the_kernel_process_writes_goes_to_its_log_and_a_dead_kernel_is_explained(folders):
    """ipykernel writes its own complaints (`IOStream.flush timed out` on a loaded machine) to the kernel process's
    standard error, which used to be the runner's terminal. They go to `<results>/<profile>/logs/<notebook>.kernel.log`
    (removed when empty; on a loaded machine even the quiet notebook's kernel may complain there); a kernel that
    dies has its last lines quoted in the failure message."""
    notebooks, results = folders
    to_process = "import sys\nprint('{}', file=sys.__stderr__, flush=True)"
    _notebook(notebooks / "01_loud.ipynb", to_process.format("a complaint of the kernel"))
    _notebook(notebooks / "02_quiet.ipynb", "print('fine')")
    _notebook(notebooks / "03_dies.ipynb", to_process.format("last words") + "\nimport os, time\ntime.sleep(1)\nos._exit(3)")
    finished = subprocess.run([sys.executable, "-m", "protoad_lib.run", "--notebooks-dir", str(notebooks),
                               "--results-dir", str(results)], capture_output=True, text=True, timeout=300)
    assert finished.returncode != 0
    assert "a complaint of the kernel" not in finished.stdout + finished.stderr
    logs = results / "demo" / "logs"
    assert {"01_loud.kernel.log", "03_dies.kernel.log"} <= {p.name for p in logs.iterdir()}
    assert all(p.stat().st_size for p in logs.iterdir())  # a kernel that wrote nothing leaves no log
    assert "a complaint of the kernel\n" in (logs / "01_loud.kernel.log").read_text()
    assert "03_dies could not be run" in finished.stderr + finished.stdout
    assert "the kernel's last messages" in finished.stderr and "last words" in finished.stderr


def test_the_kernel_shutdown_sends_no_interrupt(folders, monkeypatch):
    """jupyter_client interrupts (SIGINT) a kernel before shutting it down; papermill shuts down as soon as the
    kernel's last reply arrives, so the interrupt can land in the kernel's request handler and log
    `ERROR | KeyboardInterrupt caught in kernel` after a successful run. The runner's kernels get none."""

    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    sent: list[int] = []
    send_signal = LocalProvisioner.send_signal

    async def recording(self, signum: int) -> None:
        sent.append(signum)
        await send_signal(self, signum)

    monkeypatch.setattr(LocalProvisioner, "send_signal", recording)
    notebooks, results = folders
    _notebook(notebooks / "01_pass.ipynb", "print('fine')")
    run.run_notebooks("demo", notebooks_dir=notebooks, results_dir=results, log=lambda _: None)
    assert signal.SIGINT not in sent


def test_a_terminated_run_stops_its_kernel_and_leaves_nothing_half_written(folders, tmp_path):
    """`kill` (SIGTERM, as `timeout` and batch schedulers send it) ends the run as Ctrl-C would: the
    kernel is shut down, no temporary copy is left beside the executed notebooks, and the run ends with one
    line saying what it stored (no traceback from the kernel or the runner)."""

    notebooks, results = folders
    marker = tmp_path / "kernel_pid"
    _notebook(notebooks / "01_fast.ipynb", "print('done')")
    _notebook(notebooks / "02_slow.ipynb",
              f"import os, time\nopen({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)")
    runner = subprocess.Popen([sys.executable, "-m", "protoad_lib.run", "--profile", "demo", "--notebooks-dir",
                               str(notebooks), "--results-dir", str(results)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (marker.is_file() and marker.read_text()) and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.is_file(), runner.communicate()
    kernel = int(marker.read_text())
    runner.send_signal(signal.SIGTERM)
    output, errors = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM, (output, errors)
    executed = results / "demo" / "executed"
    assert not [p.name for p in executed.glob(".*")], output
    assert [p.name for p in executed.iterdir()] == ["01_fast.ipynb"]
    assert errors.count("\n") == 1, errors  # no traceback (before: the kernel's ZMQError), one line
    assert errors.startswith("stopped by SIGTERM in 02_slow after "), errors
    assert f"stored the executed copies of 01_fast in {executed}" in errors
    for _ in range(50):
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the kernel (pid {kernel}) outlived the run")


def test_make_lab_passes_lab_args_to_jupyterlab():
    """`make lab LAB_ARGS=--allow-root` (JupyterLab refuses to start as root, as in containers)."""

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    recipe = subprocess.run(["make", "-n", "lab", "LAB_ARGS=--allow-root --port 8890"],
                            cwd=run.REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "jupyter lab notebooks/ --allow-root --port 8890" in recipe
