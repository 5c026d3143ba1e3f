"""The project's layers: each module imports only from layers below it (README, 'Project layout')."""
import ast
import os

from tests.cli import ROOT

LAYERS = {"utils": 0, "models": 0, "data": 1, "bkd": 2, "flags": 3, "launch": 4,
          "blind_knowledge_dist_training": 5, "learning": 5, "detection": 5}


def _imports(path):
    """Every project module a file imports, at any depth (also inside functions: no lazy import hides a cycle)."""
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_no_module_imports_upward():
    upward = []
    for name, layer in LAYERS.items():
        files = [os.path.join(ROOT, f"{name}.py")] if os.path.isfile(os.path.join(ROOT, f"{name}.py")) else \
            [os.path.join(ROOT, name, f) for f in sorted(os.listdir(os.path.join(ROOT, name))) if f.endswith(".py")]
        for path in files:
            for module in _imports(path):
                top = module.split(".")[0]
                if top in LAYERS and top != name and (LAYERS[top] > layer or LAYERS[top] == layer == 0):
                    upward.append(f"{os.path.relpath(path, ROOT)} imports {module}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from launch.grid import status\n")
    assert list(_imports(str(path))) == ["launch.grid"]
