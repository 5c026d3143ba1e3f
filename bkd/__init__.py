"""Blind Knowledge Distillation: the method (method.py) and its training engine (engine.py)."""
