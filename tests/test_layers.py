"""The project's layers: each module imports only from layers below it (README, 'Project layout')."""

import ast
import os

import pytest

from tests.cli import ROOT

# (module prefix: layer); a module's layer is its longest prefix's. bkd's own modules are the method's layer, above the
# packages inside bkd that they build on.
LAYERS = {
    "bkd.utils": 0,
    "bkd.models": 0,
    "bkd.data": 1,
    "bkd": 2,
    "flags": 3,
    "launch": 4,
    "blind_knowledge_dist_training": 5,
    "learning": 5,
    "detection": 5,
}


def _layer(module):
    """(prefix, layer) of a project module, or None for anything else."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n]), LAYERS[".".join(parts[:n])]
    return None


# packages of bkd at the top (pyproject.toml)
FOLDERS = {"bkd.utils": "utils", "bkd.models": "models", "bkd.data": "data"}


def _files(name):
    """The files of a layer: a script, or a package's modules (without the packages inside it, their own layers)."""
    path = os.path.join(ROOT, FOLDERS.get(name) or os.path.join(*name.split(".")))
    if os.path.isfile(path + ".py"):
        return [path + ".py"]
    return [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".py")]


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
        for path in _files(name):
            for module in _imports(path):
                found = _layer(module)
                if found and found[0] != name and (found[1] > layer or found[1] == layer == 0):
                    upward.append(f"{os.path.relpath(path, ROOT)} imports {module}")
    assert upward == []


def test_every_package_has_a_layer():
    packages = {
        ".".join(os.path.relpath(root, ROOT).split(os.sep))
        for top in ("bkd", *FOLDERS.values())
        for root, dirs, files in os.walk(os.path.join(ROOT, top))
        if "__init__.py" in files
    }
    named = {next((k for k, v in FOLDERS.items() if v == p), p) for p in packages}
    assert named <= set(LAYERS)


def test_the_check_sees_an_upward_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from launch.grid import status\n")
    assert list(_imports(str(path))) == ["launch.grid"]


LOOP = ("bkd/run.py", "bkd/engine.py")  # the training loop and the machinery under it
MAX_PARAMETERS = 5


def _parameters(path):
    """(function name, its parameters without self/cls) of every function in `path`."""
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
            yield node.name, names


def test_the_loops_functions_take_few_parameters():
    """The run's context is one object (bkd.run.Run), whose steps take the epoch: no loop function threads more."""
    wide = [
        f"{path}: {name}({', '.join(names)})"
        for path in LOOP
        for name, names in _parameters(path)
        if len(names) > MAX_PARAMETERS
    ]
    assert not wide, wide


def test_no_comment_cites_a_document_outside_the_repository():
    """References resolve in the repository: the paper (arXiv 2211.11355) or a page in docs/, never an outside spec."""
    import re

    # (split: not
    outside = re.compile(r"\bspec(\s+section|\s+\d|'s\b|\.md)|bkd-sp" + "ec|shared/" + "docs", re.IGNORECASE)
    # matching this line)
    hits = []
    for folder, _, files in os.walk(ROOT):
        if any(part.startswith(".") for part in os.path.relpath(folder, ROOT).split(os.sep)):
            continue
        for name in files:
            if name.endswith((".py", ".md", ".sh")):
                path = os.path.join(folder, name)
                hits += [
                    f"{os.path.relpath(path, ROOT)}:{i}"
                    for i, line in enumerate(open(path, errors="replace"), 1)
                    if outside.search(line)
                ]
    assert not hits, hits


PRODUCT = (
    "bkd",
    "models",
    "data",
    "utils",
    "launch",
    "flags.py",
    "blind_knowledge_dist_training.py",
    "learning.py",
    "detection.py",
)
MAX_PRODUCT_PARAMETERS = 7


def _product_files():
    for entry in PRODUCT:
        path = os.path.join(ROOT, entry)
        yield from (
            [path]
            if entry.endswith(".py")
            else [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".py")]
        )


BELOW_FLAGS = ("bkd", "models", "data", "utils")  # the layers under flags.py (docs/layout.md, 'Layers')


def _below_flags():
    for entry in BELOW_FLAGS:
        folder = os.path.join(ROOT, entry)
        yield from (os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py"))


def _argparse_uses(tree):
    """(function or None, what) of every import of argparse and every annotation naming its Namespace in `tree`."""

    def walk(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import) and any(a.name == "argparse" for a in child.names):
                yield function, "import argparse"
            elif isinstance(child, ast.ImportFrom) and child.module == "argparse":
                yield function, "from argparse import"
            elif (
                isinstance(child, ast.arg)
                and child.annotation is not None
                and "Namespace" in ast.unparse(child.annotation)
            ):
                yield function, f"parameter {child.arg}: {ast.unparse(child.annotation)}"
            yield from walk(child, inner)

    yield from walk(tree, None)


def test_no_function_below_flags_takes_argparses_namespace():
    """argparse stays in flags.py and the scripts: below them, no parameter is an argparse Namespace and argparse is
    imported only inside a module's own command line (`main` of `python -m bkd.report`)."""
    found = [
        f"{os.path.relpath(path, ROOT)}: {what} in {function or 'the module'}"
        for path in _below_flags()
        for function, what in _argparse_uses(ast.parse(open(path).read()))
        if not (function == "main" and what.startswith(("import", "from")))
    ]
    assert not found, found


def test_the_namespace_check_sees_a_namespace_parameter_and_a_module_import():
    tree = ast.parse("import argparse\ndef f(args: argparse.Namespace):\n    pass\ndef main():\n    import argparse\n")
    assert list(_argparse_uses(tree)) == [
        (None, "import argparse"),
        ("f", "parameter args: argparse.Namespace"),
        ("main", "import argparse"),
    ]


def test_no_function_of_the_product_takes_more_than_seven_parameters():
    wide = [
        f"{os.path.relpath(path, ROOT)}: {name}({', '.join(names)})"
        for path in _product_files()
        for name, names in _parameters(os.path.relpath(path, ROOT))
        if len(names) > MAX_PRODUCT_PARAMETERS
    ]
    assert not wide, wide


def _python_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        yield from (os.path.join(folder, name) for name in files if name.endswith(".py"))


def test_the_lower_layers_are_imported_by_one_name_only():
    """models/, data/ and utils/ are the packages bkd.models, bkd.data and bkd.utils: imported as `models.x` too, a file
    would be two modules (an `except` of one class would miss the other's errors). No file of the repository does."""
    bare = []
    for path in _python_files():
        for node in ast.walk(ast.parse(open(path).read())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            bare += [
                f"{os.path.relpath(path, ROOT)}: {name}"
                for name in names
                if name.split(".")[0] in ("models", "data", "utils")
            ]
    assert not bare, bare


def test_a_lower_layer_refuses_its_bare_name_from_the_repository_root():
    import subprocess
    import sys

    for name in ("models", "data.cifar", "utils.files"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True)
        package = name.split(".")[0]
        assert (
            proc.returncode == 1
            and (
                f"ImportError: import bkd.{package}, not {package}: the repository's {package}/ "
                f"folder is the package bkd.{package}"
            )
            in proc.stderr
        ), proc.stderr


USERS_FOLDER = """
import importlib.util, numpy as np
import data, flags, models, utils
assert (data.MINE, flags.MINE, models.MINE, utils.MINE) == ("data", "flags", "models", "utils")  # the user's own
from bkd import find_label_issues
import bkd.data, bkd.models, bkd.utils
assert all(m.__file__.startswith(root) for m in (bkd.data, bkd.models, bkd.utils)), [bkd.data.__file__]
assert (data.MINE, utils.MINE) == ("data", "utils") and importlib.util.find_spec("launch") is None
rng = np.random.RandomState(0)
images, labels = rng.randint(0, 255, (40, 32, 32, 3)).astype(np.uint8), np.arange(40) % 4
result = find_label_issues(images, labels, device="cpu", n_epoch=1, width=2, batch_size=16, eval_batch_size=40)
print(sorted(result.ranked.tolist()) == list(range(40)))
"""


@pytest.mark.slow
def test_the_api_works_from_a_folder_holding_its_own_utils_data_models_and_flags(tmp_path):
    """Only the package bkd is installed (pyproject.toml): a user's own data.py, utils.py, models.py and flags.py stay
    theirs, and bkd's lower layers are its own. Run as a user runs it: from their folder, the repository not on the
    path."""
    import subprocess
    import sys

    for name in ("data", "utils", "models", "flags"):
        (tmp_path / f"{name}.py").write_text(f"MINE = {name!r}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"root = {ROOT!r}\n" + USERS_FOLDER
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("True"), proc.stderr[-3000:]
