"""`--trace FILE`: a run's trace in the schema of the authors' golden traces (docs/reference-mode.md).

It records, read-only, what a run computes: hashes of every training batch and target, the losses,
per-epoch statistics and weights, both Otsu splits, the detection file and every checkpoint save.
Comparing traces is verification, not the product: benchmarks/traces.py.
"""
import hashlib
import io
import os
import sys
import time

import numpy as np
import torch

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
