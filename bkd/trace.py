"""Run traces in the golden traces' schema (`../shared/data/reference-traces/README.md`) and their comparison.

`--trace FILE` records, read-only, what a run computes: hashes of every training batch and
target, the losses, per-epoch statistics and weights, both Otsu splits, the detection file
and every checkpoint save. `compare` walks two traces in execution order and yields their
differences, first difference first; with `floats=False` (another CPU type) it checks only
what does not depend on float rounding: the data, the random streams and the schedule.
"""
import hashlib
import io
import os
import re
import sys
import time

import numpy as np
import torch

from bkd.utils import logfmt
from bkd.utils.errors import DataError
from bkd.utils.files import read_json_object, save_json
from bkd.utils.hashing import array_sha256, file_sha256
from bkd.utils.runtime import machine_info


def state_sha256(module):
    """One sha256 over the bytes of every state-dict value, in state-dict order (names not hashed)."""
    return array_sha256(*module.state_dict().values())


class TraceRecorder:
    """Collects a run's trace; `save()` writes it atomically (after every epoch, so a killed run keeps one)."""

    def __init__(self, path, resume_epoch=0):
        self.path = path
        self.trace = {"config": {}, "iterations": [], "epochs": [], "overfitting": None, "detection_sha256": None,
                      "detection": None, "checkpoints": [], "run": {"t_start": time.time()}}
        if resume_epoch and os.path.exists(path):  # --resume: keep what the completed epochs recorded
            old = read_json_object(path)
            if not all(isinstance(old.get(key), list) for key in ("iterations", "epochs", "checkpoints")):
                raise DataError(f"--trace {path}: not a trace this project wrote; give another --trace file, or move it "
                                "aside")
            self.trace.update(old)
            self.trace["iterations"] = [r for r in old["iterations"] if r["epoch"] < resume_epoch]
            self.trace["epochs"] = [r for r in old["epochs"] if r["epoch"] < resume_epoch]
            self.trace["checkpoints"] = [r for r in old["checkpoints"] if r["epoch"] < resume_epoch]
        self._epoch_start = time.time()

    def config(self, **fields):
        self.trace["config"].update(fields)
        self.trace["config"].setdefault("machine", machine_info())

    def start_epoch(self):
        self._epoch_start = time.time()

    def iteration(self, epoch, i, idx, x, y, target, loss, naive, comp):
        self.trace["iterations"].append({
            "epoch": epoch, "iter": i, "batch": len(y),
            "index_sha256": array_sha256(idx), "img_sha256": array_sha256(x), "labels_sha256": array_sha256(y),
            "target_sha256": array_sha256(target),
            "loss": loss.item(), "naive_loss": naive.item(), "compensation_loss": comp.item(),
        })

    def epoch(self, row, teacher, student):
        row = dict(row, wall_s=time.time() - self._epoch_start, teacher_sha256=state_sha256(teacher),
                   student_sha256=state_sha256(student))
        self.trace["epochs"].append(row)

    def split(self, overfit_epoch, found_at, train_stat, train_split, train_groups, full_stat, full_split, full_groups,
              fallback_epoch=None):
        self.trace["overfitting"] = {
            "epoch": overfit_epoch, "found_at_epoch": found_at,
            "train_split": _split_record(train_stat, train_split, train_groups),
            "full_set": _split_record(full_stat, full_split, full_groups),
        }
        if fallback_epoch is not None:  # no peak: the last epoch was split (not in the original)
            self.trace["overfitting"]["fallback_split_epoch"] = fallback_epoch

    def checkpoint(self, kind, epoch, teacher, student):
        self.trace["checkpoints"].append({"kind": kind, "epoch": epoch, "teacher_sha256": state_sha256(teacher),
                                          "student_sha256": state_sha256(student)})

    def detection(self, flagged):
        buffer = io.BytesIO()
        np.save(buffer, flagged)  # the bytes np.save writes to detection.npy
        digest = hashlib.sha256(buffer.getvalue()).hexdigest()
        self.trace["detection_sha256"] = digest
        self.trace["detection"] = {"file_sha256": digest, "array_sha256": array_sha256(flagged),
                                   "sum": int(flagged.sum()), "len": len(flagged), "dtype": str(flagged.dtype)}

    def save(self):
        self.trace["run"]["wall_total_s"] = time.time() - self.trace["run"]["t_start"]
        save_json(self.trace, self.path, sort_keys=False, indent=None)


class TraceListener:
    """Records a run's events into a TraceRecorder (bkd.outputs.Listener's events; listens after the files)."""

    def __init__(self, recorder, args, data):
        self.recorder, self.args, self.data = recorder, args, data
        self.init_hashes = None

    def built(self, teacher, student):
        self.init_hashes = (state_sha256(teacher), state_sha256(student))

    def start(self, start_epoch):
        if start_epoch == 0:
            self.recorder.config(**run_config(self.args, self.data, self.init_hashes))

    def epoch_start(self, epoch):
        self.recorder.start_epoch()

    def iteration(self, *args):
        self.recorder.iteration(*args)

    def checkpoint(self, kind, epoch, teacher, student, best):
        self.recorder.checkpoint(kind, epoch, teacher, student)

    def split(self, event):
        stats, state = event.state.stats[event.epoch], event.state
        self.recorder.split(state.overfit_epoch, event.found_at, stats["train"], state.split, state.groups, stats["full"],
                            state.full_split, state.full_groups, fallback_epoch=event.epoch if event.fallback else None)
        self.recorder.detection(event.detected)

    def epoch_end(self, epoch, row, teacher, student, resume_state, state):
        row = dict(row)
        label_prob = row.pop("train_label_prob", None)
        if label_prob is not None:  # pT[y], pS[y], pA[y] of the training pass
            row.update(train_agreement_sha256=array_sha256(label_prob["agreement"]),
                       train_teacher_prob_sha256=array_sha256(label_prob["teacher"]),
                       train_student_prob_sha256=array_sha256(label_prob["student"]))
        full = row.pop("full_agreement", None)
        if full is not None:
            row["full_agreement_sha256"] = array_sha256(full)
        self.recorder.epoch(row, teacher, student)
        self.recorder.save()

    def finish(self):
        pass


def run_config(args, data, init_hashes):
    """The trace's `config`: the run's flags and environment, and hashes of its data and initial weights."""
    from bkd.data.cifar import local_images
    from bkd.data.custom import data_file
    from bkd.utils.files import portable

    train_pos, val_pos = data.train_pos.astype(np.int64), data.val_pos.astype(np.int64)
    images = data_file(args) if args.dataset == "custom" else local_images(args.dataset, args.data_root)
    return {
        "args_as_parsed": {k: portable(v) if isinstance(v, str) and os.path.isabs(v) else v for k, v in vars(args).items()},
        "argv": [portable(a) if os.path.isabs(a) else a for a in sys.argv[1:]],
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "npz_sha256": file_sha256(images) if images and os.path.isfile(images) and images.endswith(".npz") else None,
        "noise_path_sha256": file_sha256(data.label_path) if data.label_path else None,
        "subset_size": len(data.subset),
        "subset_sha256": array_sha256(np.asarray(data.subset, dtype=np.int64)),
        "n_train_full": len(data.subset),
        "n_train_split": len(train_pos),
        "n_val_split": len(val_pos),
        "n_test": 0 if data.y_test is None else len(data.y_test),
        "train_positions_sha256": array_sha256(train_pos),
        "val_positions_sha256": array_sha256(val_pos),
        "val_positions_first10": val_pos[:10].tolist(),
        "train_noisy_labels_sha256": array_sha256(data.labels[train_pos].astype(np.int64)),
        "full_noisy_labels_sha256": array_sha256(data.labels.astype(np.int64)),
        "full_noise_or_not_sum": None if data.truly_noisy is None else int(data.truly_noisy.sum()),
        "teacher_init_sha256": init_hashes[0],
        "student_init_sha256": init_hashes[1],
    }


def _split_record(stat, split, groups):
    record = {"p_sha256": array_sha256(np.asarray(stat, dtype=np.float32)), "p_len": len(stat),
              "up_mean": split["mu2"], "up_sigma": split["sigma2"], "lo_mean": split["mu1"], "lo_sigma": split["sigma1"],
              "thresh": split["threshold"], "thresh_type": "torch.float32"}
    for k in (1, 2, 3, 4):
        mask = np.asarray(groups) == k
        record.update({f"group_{k}_size": int(mask.sum()), f"group_{k}_sha256": array_sha256(mask),
                       f"group_{k}_dtype": "torch.bool"})
    return record


# --- comparison -------------------------------------------------------------------------------
# What does not depend on float rounding: the data, the random streams (initial weights, the
# loaders' draws) and the schedule. Compared on every machine.
DATA_CONFIG = ("npz_sha256", "noise_path_sha256", "subset_size", "subset_sha256", "n_train_full", "n_train_split",
               "n_val_split", "n_test", "train_positions_sha256", "val_positions_sha256", "val_positions_first10",
               "train_noisy_labels_sha256", "full_noisy_labels_sha256", "full_noise_or_not_sum", "teacher_init_sha256",
               "student_init_sha256")
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
    yield from _rows("iterations", ours["iterations"], theirs["iterations"], lambda r: f"epoch {r['epoch']}, iter {r['iter']}",
                     lambda r: DATA_ITERATION + (FLOAT_ITERATION if floats else ("target_sha256",) if r["epoch"] in warmup else ()))
    yield from _rows("epochs", ours["epochs"], theirs["epochs"], lambda r: f"epoch {r['epoch']}",
                     lambda r: [k for k in r if k not in FREE_EPOCH] if floats else DATA_EPOCH)
    if not floats:
        return
    for section in ("overfitting", "detection_sha256", "detection"):
        if ours.get(section) != theirs.get(section):
            yield from _nested(section, ours.get(section), theirs.get(section))
    yield from _rows("checkpoints", ours["checkpoints"], theirs["checkpoints"], lambda r: f"save {r['kind']}@{r['epoch']}",
                     lambda r: list(r))


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


def first_difference(ours, theirs, floats=True):
    return next(compare(ours, theirs, floats), None)


# The golden traces were recorded on an Intel Xeon, family 6 model 207, with torch's capability AVX512
# (reference-traces/README.md); our traces record their CPU themselves (machine.cpu_kind).
GOLDEN_CPU_KIND = {"vendor": "GenuineIntel", "family": 6, "model": 207, "capability": "AVX512"}


def trace_machine(trace):
    """(CPU kind, thread count) a trace was recorded with (utils.runtime.cpu_kind: vendor, family, model, capability)."""
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
_PATHS = [(re.compile(r"^(Loaded \S+ from ).*(\.)$"), r"\1<path>\2"), (re.compile(r"^(noisy labels loaded from ).*$"), r"\1<path>")]
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
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i + 1, x, y
    if len(a) != len(b):
        n = min(len(a), len(b))
        return n + 1, a[n] if n < len(a) else "(end)", b[n] if n < len(b) else "(end)"
    return None
