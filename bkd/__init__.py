"""Blind Knowledge Distillation: the method and its training.

    from bkd import find_label_issues   # the Python API (api.py)

method.py  the method's pieces as pure functions (docs/method.md)
config.py  TrainConfig (the training values, their flags' help and checks) and Computation (what --reference changes)
state.py   what the method remembers across epochs, and the split
engine.py  the machinery under the loop: precision, the networks as called (compiled or not), evaluation, stop flag
run.py     fit() and Run: one training run, read as the method
outputs.py what a run writes, and when (its run directory's files)
trace.py   --trace: a run's trace in the golden traces' schema (comparison: benchmarks/traces.py)
issues.py  the ranked label issues (label_issues.csv)
report.py  per-run plots and the summary over run directories
api.py     find_label_issues()
"""


def __getattr__(name):  # the API on first use, so that importing a bkd module stays light
    if name in ("find_label_issues", "LabelIssues"):
        from bkd import api

        return getattr(api, name)
    raise AttributeError(f"module 'bkd' has no attribute {name!r}")
