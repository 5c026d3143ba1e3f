"""What vulture (pyproject.toml) reports as unused, but is called where it cannot see: each named with its caller."""

# ruff: noqa: B018, F821 - a whitelist is a list of names, vulture's `_` standing for any object
from bkd.api import LabelIssues
from bkd.outputs import Output
from bkd.review import Header

# The run's events: bkd.run.Run.tell calls each output's by name (getattr(output, event)).
Output.save_models
Output.epoch_end
# Python's protocols: a module's __getattr__ (bkd/__init__.py: the API on first use), pickle's persistent_load
# (data/labels.py refuses what a CIFAR-N file must not hold).
__getattr__
_.persistent_load
# The Python API's result: its fields are read by the caller.
LabelIssues.ranked
LabelIssues.label_quality
LabelIssues.suggested_label
LabelIssues.write_review
# The review page's template (bkd/review.html.j2) reads the header's fields.
Header.group_sizes
# A signal handler's second parameter (signal.signal calls it with the frame).
frame
# benchmarks/gpu_check.py: the check's steps, run by name from its plan.
_.throughput
_.cuda_tests
