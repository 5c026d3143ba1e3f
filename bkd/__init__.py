"""Blind Knowledge Distillation: the method and its training.

    from bkd import find_label_issues   # the Python API (api.py)

method.py  the method's pieces as pure functions
engine.py  one training epoch and the evaluation passes
state.py   what the method remembers across epochs, and the split
issues.py  the ranked label issues (label_issues.csv)
trace.py   golden-trace recording and comparison (reference mode)
report.py  per-run plots and the summary over run directories
config.py  TrainConfig (the training flags) and Computation (what --reference changes)
run.py     fit(): one training run, read as the method
outputs.py the listeners of a run: its files, results in memory
api.py     find_label_issues()
"""


def __getattr__(name):  # the API on first use, so that importing a bkd module stays light
    if name in ("find_label_issues", "LabelIssues"):
        from bkd import api

        return getattr(api, name)
    raise AttributeError(f"module 'bkd' has no attribute {name!r}")
