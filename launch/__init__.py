"""The grid launcher: python -m launch run | status | summary (see __main__.py).

grid.py     runs, their state on disk, one run's three steps
local.py    this machine: GPUs or CPU slots
slurm.py    a SLURM job array through submitit
summary.py  the challenge's tables over a grid
"""
