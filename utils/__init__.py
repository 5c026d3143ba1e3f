"""Small helpers below every other layer, the package bkd.utils (they import nothing of the project above it).

errors.py      one-line errors and exit codes
files.py       atomic writes, JSON, portable paths
hashing.py     sha256 of files and arrays
checkpoint.py  model checkpoints, host copies of nested tensors (the run directory's lock: bkd/rundir.py)
metrics.py     detection and ranking scores
devices.py     torch's version, the device and what it does natively
seeds.py       seeds and random-generator states (resume)
cuda.py        the CUDA arithmetic: TF32 and determinism
compile_cache.py  a compile cache torch can write
machine.py     what a result comes from: CPU kind, versions, GPU
logfmt.py      the original's log lines
stops.py       SIGINT and SIGTERM: every process-wide hook for them (StopFlag, held, the scripts' handlers)
"""

# one module, one name: utils.x and bkd.utils.x would be two modules (and two sets of errors)
if __name__ != "bkd.utils":
    raise ImportError(
        f"import bkd.utils, not {__name__}: the repository's utils/ folder is the package bkd.utils (docs/layout.md)"
    )
