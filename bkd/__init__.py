"""Blind Knowledge Distillation (arXiv 2211.11355): the method, its training run, the run directory and the Python API.

    from bkd import find_label_issues   # the Python API (api.py)

The repository's top-level folders models/ (the PreResNet18), data/ (CIFAR-N and custom data, the input pipelines)
and utils/ are this package's bkd.models, bkd.data and bkd.utils, and are imported by those names only
(docs/layout.md, which also lists this package's modules).
"""
import importlib.abc
import importlib.util
import os
import sys

LOWER_LAYERS = ("models", "data", "utils")  # top-level folders of the repository, packages of bkd
_HERE = os.path.dirname(os.path.abspath(__file__))


class _RepositoryLayers(importlib.abc.MetaPathFinder):
    """bkd.models, bkd.data and bkd.utils from the repository's top-level folders, where bkd runs from the repository
    (no install, or an editable one in any mode). An installed wheel holds them inside bkd/ (pyproject.toml's
    package-dir), found as usual."""

    def find_spec(self, name, path=None, target=None):
        parent, _, child = name.rpartition(".")
        if parent != __name__ or child not in LOWER_LAYERS or os.path.isdir(os.path.join(_HERE, child)):
            return None
        folder = os.path.join(os.path.dirname(_HERE), child)
        init = os.path.join(folder, "__init__.py")
        return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder]) if os.path.isfile(init) else None


if not any(isinstance(finder, _RepositoryLayers) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RepositoryLayers())


def __getattr__(name):  # the API on first use, so that importing a bkd module stays light
    if name in ("find_label_issues", "LabelIssues"):
        from bkd import api

        return getattr(api, name)
    raise AttributeError(f"module 'bkd' has no attribute {name!r}")
