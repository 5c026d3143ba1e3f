"""Blind Knowledge Distillation: the method and its training.

method.py  the method's pieces as pure functions
engine.py  one training epoch and the evaluation passes
state.py   what the method remembers across epochs, and the split
issues.py  the ranked label issues (label_issues.csv)
trace.py   golden-trace recording and comparison (reference mode)
report.py  per-run plots and the summary over run directories
"""
