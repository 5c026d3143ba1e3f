"""The tools a Python engineer points at the code can read it: mypy and pyright (VS Code's engine) resolve bkd.models,
bkd.data and bkd.utils to the repository's models/, data/ and utils/ (docs/layout.md), at the repository's root, with
the README's setup and with no install at all."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.cli import ROOT

# What the researcher imported from each lower layer, and a class of each; and what the checker must see of
# each: what only a resolved, annotated module can say (a function's return type, a class of the project).
PROBE = """\
from bkd.data.datasets import DataSelection, input_dataset
from bkd.models.resnet import PreResNet18, ResNet
from bkd.utils.errors import UsageError
from bkd.utils.files import atomic_path

reveal_type(input_dataset)
reveal_type(PreResNet18)
reveal_type(atomic_path)
reveal_type(DataSelection)
reveal_type(ResNet)
reveal_type(UsageError)
"""
EXPECTED = ("RunData", "ResNet", "ContextManager[str", "DataSelection", "ResNet", "UsageError")


def _probe(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(PROBE)
    return str(path)


def _tool(module):
    if shutil.which(module, path=os.path.dirname(sys.executable)) is None:
        pytest.skip(f"{module} is not installed here: .venv/bin/pip install -r requirements-dev.txt (CI does)")
    return os.path.join(os.path.dirname(sys.executable), module)


def _check_revealed(revealed, tool):
    assert len(revealed) == len(EXPECTED), revealed
    for shown, expected in zip(revealed, EXPECTED, strict=True):
        returned = shown.rsplit("->", 1)[-1]  # a function's return type; all of it for pyright's type[C]
        assert expected in returned and "Any" not in returned and "Unknown" not in returned, (tool, revealed)


@pytest.mark.slow
@pytest.mark.parametrize("installed", [True, False], ids=["after-setup", "no-install"])
def test_mypy_resolves_every_layer_at_the_repository_root(tmp_path, installed):
    """With the README's environment, and with none (no site-packages: nothing installed is seen)."""
    mypy = _tool("mypy")
    cmd = [mypy, "--no-incremental", "--follow-imports=silent", "--config-file", os.devnull, _probe(tmp_path)]
    if not installed:
        cmd.insert(1, "--no-site-packages")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "import-not-found" not in proc.stdout, proc.stdout
    revealed = [
        line.split('Revealed type is "', 1)[1].rstrip('"')
        for line in proc.stdout.splitlines()
        if "Revealed type is" in line
    ]
    _check_revealed(revealed, "mypy")


@pytest.mark.parametrize("installed", [True, False], ids=["after-setup", "no-install"])
def test_pyright_resolves_every_layer_at_the_repository_root(tmp_path, installed):
    """pyright with the README's environment, and with a Python that has nothing of the project installed."""
    pyright = _tool("pyright")  # with its own Node.js (requirements-dev.txt: pyright[nodejs])
    python = sys.executable if installed else sys._base_executable
    proc = subprocess.run(
        [pyright, "--outputjson", "--pythonpath", python, _probe(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(proc.stdout)
    errors = [d["message"] for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert not errors, errors
    revealed = [
        d["message"].split('" is "', 1)[1].rstrip('"')
        for d in report["generalDiagnostics"]
        if d["message"].startswith("Type of ")
    ]
    _check_revealed(revealed, "pyright")
