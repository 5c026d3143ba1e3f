"""Blind Knowledge Distillation (arXiv 2211.11355): the method, its training run, the run directory and the Python API.

    from bkd import find_label_issues   # the Python API (api.py)

The repository's top-level folders models/ (the PreResNet18), data/ (CIFAR-N and custom data, the input pipelines)
and utils/ are this package's bkd.models, bkd.data and bkd.utils: bkd/models, bkd/data and bkd/utils are links to
them, which Python, the type checkers and IDEs follow alike, and they are imported by those names only
(docs/layout.md, which also lists this package's modules).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bkd.api import LabelIssues, find_label_issues

__all__ = ["LabelIssues", "find_label_issues"]


def __getattr__(name: str) -> Any:  # the API on first use, so that importing a bkd module stays light
    if name in __all__:
        from bkd import api

        return getattr(api, name)
    raise AttributeError(f"module 'bkd' has no attribute {name!r}")
