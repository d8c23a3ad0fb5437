"""The library's floors: no module imports a floor above its own, and no module grows past 400 lines."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "protoad_lib"
#: Lowest first; a module may import its own floor and the floors below.
FLOORS = [
    {"atomic", "progress", "measure", "machine", "heap", "resume", "data", "embeddings"},
    {"backbones", "postprocess", "metrics", "overlays"},
    {"features", "categories"},
    {"methods"},
    {"evaluation", "calibration", "checkpoint"},
    {"profiles", "session", "caches"},
    {"experiments"},
    {"report"},
    {"cli", "cli_inputs", "cli_run", "run", "spread", "kernels", "html_pages", "predict"},
]


def floor_of(top: str) -> int:
    return next(level for level, names in enumerate(FLOORS) if top in names)


def top_name(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_tops(path: Path) -> set[str]:
    """First-level protoad_lib names a module imports (relative imports resolved)."""
    package_parts = path.relative_to(PACKAGE).parts[:-1]
    tops = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = [target[0]] if target else [alias.name for alias in node.names]
                tops.update(names)
            elif node.module and node.module.startswith("protoad_lib."):
                tops.add(node.module.split(".")[1])
    return tops


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_up_a_floor(path):
    own = floor_of(top_name(path))
    upward = {top for top in imported_tops(path) if floor_of(top) > own}
    assert not upward, f"{path.relative_to(PACKAGE)} imports {upward} from above its floor"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_stays_small_and_says_what_it_does(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400
    assert ast.get_docstring(ast.parse(text)), f"{path.name} has no module docstring"


def test_readme_results_table_is_generated_from_the_committed_csv():
    from protoad_lib.report.readme_tables import main

    assert main(["--check"]) == 0, "run: python -m protoad_lib.report.readme_tables"
