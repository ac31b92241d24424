"""The training package's architecture, checked: sub-packages import one way, no import cycles, no sys.path edits,
no imports hidden inside functions, and the scripts under train/ are thin entry points."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sisc_train"
# each sub-package imports only from those after it (and from the model files)
LAYERS = ["tasks", "evaluation", "loop", "publishing", "data", "synthetic"]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether the import is inside a function) of every import in `path`."""
    tree = ast.parse(path.read_text())
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(child) for child in ast.walk(node) if child is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in inside) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from sisc_train.x import y` may import the module sisc_train.x.y
            found += [(f"{node.module}.{alias.name}", id(node) in inside) for alias in node.names]
            found.append((node.module, id(node) in inside))
    return found


def internal_graph() -> dict[str, set[str]]:
    names = modules()
    graph = {}
    for name, path in names.items():
        graph[name] = {target for target, _ in imports_of(path) if target in names and target != name}
    return graph


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_subpackages_import_one_way():
    wrong = []
    for source, targets in internal_graph().items():
        for target in targets:
            a, b = layer(source), layer(target)
            if a and b and LAYERS.index(b) < LAYERS.index(a):
                wrong.append(f"{source} -> {target}")
    assert not wrong, f"imports against the layer order {LAYERS}: {wrong}"


def test_no_import_cycles():
    graph = internal_graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:  # on the current path: a cycle
                path = [*stack, node]
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_no_sys_path_edits_and_no_sisc_imports_inside_functions():
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "train").glob("*.py")]:
        assert "sys.path" not in path.read_text(), path
        hidden = [target for target, inside in imports_of(path) if inside and target.split(".")[0] in ("sisc_train", "modeling_sisc", "configuration_sisc", "processing_sisc")]
        assert not hidden, f"{path}: imports inside functions {hidden}"


def test_no_module_uses_another_modules_private_names():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if alias.name.startswith("_") and node.module and node.module.startswith("sisc_train")]
        assert not private, f"{path}: {private}"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "train").glob("*.py") if p.name != "__init__.py"))
def test_scripts_are_thin_entry_points(script):
    tree = ast.parse((ROOT / "train" / script).read_text())
    code = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    assert len(code) <= 3, f"train/{script} should only import and call a sisc_train main"
    assert any(isinstance(node, ast.ImportFrom) and node.module.startswith("sisc_train") for node in code)
