"""Comparing run traces (bkd/trace.py writes them, in the golden traces' schema) and run logs.

`compare` walks two traces in execution order and yields their differences, first difference first; with
`floats=False` (another kind of CPU) it checks only what does not depend on float rounding: the data, the random
streams and the schedule. `comparable_log` / `compare_logs` do the same for standard outputs. Used by
benchmarks/reference_check.py, benchmarks/same_numbers.py and the tests.
"""

import re

from bkd.utils import logfmt

# What does not depend on float rounding: the data, the random streams (initial weights, the
# loaders' draws) and the schedule. Compared on every machine.
DATA_CONFIG = (
    "npz_sha256",
    "noise_path_sha256",
    "subset_size",
    "subset_sha256",
    "n_train_full",
    "n_train_split",
    "n_val_split",
    "n_test",
    "train_positions_sha256",
    "val_positions_sha256",
    "val_positions_first10",
    "train_noisy_labels_sha256",
    "full_noisy_labels_sha256",
    "full_noise_or_not_sum",
    "teacher_init_sha256",
    "student_init_sha256",
)
DATA_ITERATION = ("epoch", "iter", "batch", "index_sha256", "img_sha256", "labels_sha256")
FLOAT_ITERATION = ("target_sha256", "loss", "naive_loss", "compensation_loss")
DATA_EPOCH = ("epoch", "lr", "overfitting_epoch_found")
FREE_EPOCH = ("wall_s",)


def compare(ours, theirs, floats=True):
    """Yield (place, field, ours, theirs) for every difference, in execution order.

    With floats=False only the data, random-stream and schedule fields are compared (and a
    warm-up epoch's one-hot target, which is a function of the labels alone).
    """
    for key in DATA_CONFIG:
        if key in theirs["config"] and ours["config"].get(key) != theirs["config"][key]:
            yield "config", key, ours["config"].get(key), theirs["config"][key]
    warmup = {row["epoch"] for row in theirs["epochs"] if row.get("mean_max_student_prob") is not None}
    yield from _rows(
        "iterations",
        ours["iterations"],
        theirs["iterations"],
        lambda r: f"epoch {r['epoch']}, iter {r['iter']}",
        lambda r: DATA_ITERATION + (FLOAT_ITERATION if floats else ("target_sha256",) if r["epoch"] in warmup else ()),
    )
    yield from _rows(
        "epochs",
        ours["epochs"],
        theirs["epochs"],
        lambda r: f"epoch {r['epoch']}",
        lambda r: [k for k in r if k not in FREE_EPOCH] if floats else DATA_EPOCH,
    )
    if not floats:
        return
    for section in ("overfitting", "detection_sha256", "detection"):
        if ours.get(section) != theirs.get(section):
            yield from _nested(section, ours.get(section), theirs.get(section))
    yield from _rows(
        "checkpoints",
        ours["checkpoints"],
        theirs["checkpoints"],
        lambda r: f"save {r['kind']}@{r['epoch']}",
        lambda r: list(r),
    )


def _rows(section, ours, theirs, where, fields):
    for i, row in enumerate(theirs):
        if i >= len(ours):
            yield f"{section}[{where(row)}]", "(row)", "missing", f"{len(theirs)} rows"
            return
        for key in fields(row):
            if ours[i].get(key) != row.get(key):
                yield f"{section}[{where(row)}]", key, ours[i].get(key), row.get(key)
    if len(ours) > len(theirs):
        yield f"{section}[{where(ours[len(theirs)])}]", "(row)", f"{len(ours)} rows", "missing"


def _nested(place, ours, theirs):
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in theirs:
            if ours.get(key) != theirs[key]:
                yield from _nested(f"{place}.{key}", ours.get(key), theirs[key])
    else:
        section, _, field = place.rpartition(".")
        yield section or place, field if section else "value", ours, theirs


# The golden traces were recorded on an Intel Xeon, family 6 model 207, with torch's capability AVX512
# (reference-traces/README.md); our traces record their CPU themselves (machine.cpu_kind).
GOLDEN_CPU_KIND = {"vendor": "GenuineIntel", "family": 6, "model": 207, "capability": "AVX512"}


def trace_machine(trace):
    """(CPU kind, thread count) a trace was recorded with (utils.machine.cpu_kind: vendor, family, model,
    capability)."""
    config = trace["config"]
    machine = config.get("machine")
    if machine is None:
        kind = GOLDEN_CPU_KIND
    else:  # a trace of ours; older ones record the capability only
        kind = machine.get("cpu_kind") or {"capability": machine.get("cpu_capability")}
    return kind, config.get("num_threads")


def same_cpu_kind(ours, recorded):
    """Float rounding can be demanded only on the recording machine's kind of CPU: oneDNN picks its kernels and their
    blocking by the CPU model (its cache sizes), not only by the instruction set (on an AMD EPYC with AVX-512 the
    tiny trace's first difference is the first backward pass, the quick trace's the first forward pass)."""
    return all(ours.get(key) == value for key, value in recorded.items())


def describe_cpu(kind):
    if "vendor" not in kind:
        return str(kind.get("capability"))
    return f"{kind['vendor']} family {kind['family']} model {kind['model']}, {kind['capability']}"


_ELAPSED = re.compile(r"^(epoch: \d+\ttime elapsed: ).*$")
_PATHS = [
    (re.compile(r"^(Loaded \S+ from ).*(\.)$"), r"\1<path>\2"),
    (re.compile(r"^(noisy labels loaded from ).*$"), r"\1<path>"),
]
_NUMBER = re.compile(r"\d+(\.\d+)?")
_BANNER_END = ("building model done", "Validate with ")


def comparable_log(text, floats=True):
    """The lines of a log as the comparison sees them: without our `[bkd] ` lines, elapsed times and label-file
    paths masked; with floats=False every number after the start-up lines masked, and the new-best lines (whose
    presence depends on float accuracies) dropped."""
    lines = [line for line in text.splitlines() if not line.startswith(logfmt.OURS)]
    banner_end = max((i for i, line in enumerate(lines) if line.startswith(_BANNER_END)), default=-1)
    out = []
    for i, line in enumerate(lines):
        line = _ELAPSED.sub(r"\1<time>", line)
        for pattern, repl in _PATHS:
            line = pattern.sub(repl, line)
        if not floats and i > banner_end:
            if line.startswith("models saved - new best"):
                continue
            line = _NUMBER.sub("#", line)
        out.append(line)
    return out


def compare_logs(ours, theirs, floats=True):
    """(line number, our line, their line) of the first difference of two logs, or None."""
    a, b = comparable_log(ours, floats), comparable_log(theirs, floats)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i + 1, x, y
    if len(a) != len(b):
        n = min(len(a), len(b))
        return n + 1, a[n] if n < len(a) else "(end)", b[n] if n < len(b) else "(end)"
    return None
