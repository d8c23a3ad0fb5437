"""Each method owns its choices, each profile its knobs: no caller outside `methods/` branches on a method's or
a profile's name, and the library's modules import each other without a cycle."""

import ast
from pathlib import Path

import pytest

from protoad_lib.methods import REGISTRY
from protoad_lib.methods.protoad.prototypes import DEFAULT_MAX_VECTORS
from protoad_lib.profiles import PAPER_MAX_VECTORS, PROFILES

PACKAGE = Path(__file__).resolve().parents[1] / "protoad_lib"
#: Every registered name (peers too, present or not: anomalib's are registered only where it imports).
NAMES = set(REGISTRY) | {"anomalib_patchcore", "anomalib_padim"} | set(PROFILES)
OUTSIDE_METHODS = sorted(p for p in PACKAGE.rglob("*.py") if "methods" not in p.relative_to(PACKAGE).parts)
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _is_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):  # `x in ("protoad", "prn")`
        return any(_is_name(item) for item in node.elts)
    return False


def name_branches(source: str) -> list[str]:
    """Comparisons (==, !=, in, not in) with a method or profile name, and `.startswith("anomalib_")`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, COMPARISONS) for op in node.ops):
            if any(_is_name(side) for side in [node.left, *node.comparators]):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "startswith"
                and any(isinstance(a, ast.Constant) and str(a.value).startswith("anomalib") for a in node.args)):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", OUTSIDE_METHODS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_caller_branches_on_a_method_or_profile_name(path):
    found = name_branches(path.read_text())
    assert not found, (f"{path.relative_to(PACKAGE)} branches on a name: {found}; ask the method (its "
                       "AnomalyDetector declarations, its MethodSpec) or the profile (a Profile field) instead")


def test_the_name_check_catches_what_it_is_meant_to():
    assert name_branches('if args.method == "prn": pass')
    assert name_branches('quiet = profile.name != "demo"')
    assert name_branches('x = method in ("protoad", "patchcore")')
    assert name_branches('method.startswith("anomalib_")')
    assert not name_branches('options = {"prn": {"epochs": 1}}\nmake_detector("padim", backbone)')


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The protoad_lib modules a module imports when it is imported (module-level statements, `if` and `try`
    blocks included; imports inside functions run later, and `if TYPE_CHECKING:` never, so neither can form an
    import-time cycle)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.startswith("protoad_lib"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("protoad_lib"):
                    continue
                for alias in node.names:  # `from . import x` may import the submodule x
                    candidate = f"{target}.{alias.name}"
                    imported.add(candidate if candidate in modules else target)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)  # annotations only: never imported at run time
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
    visit(ast.parse(path.read_text()).body)
    return {target for target in imported if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _top_level_imports(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle_in_the_library():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_paper_budget_is_protoads_default():
    assert PAPER_MAX_VECTORS == DEFAULT_MAX_VECTORS == PROFILES["paper"].max_vectors
