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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bkd.outputs import Output
from bkd.utils.errors import DataError
from bkd.utils.files import read_json_object, save_json
from bkd.utils.hashing import array_sha256, file_sha256
from bkd.utils.machine import machine_info

if TYPE_CHECKING:
    from bkd.data.datasets import DataSelection, RunData
    from bkd.run import Run, Step


def state_sha256(module: torch.nn.Module) -> str:
    """One sha256 over the bytes of every state-dict value, in state-dict order (names not hashed)."""
    return array_sha256(*module.state_dict().values())


class Trace(Output):
    """Records a run's trace from its events (after the files: bkd.outputs); written atomically after every epoch, so a
    killed run keeps one, and a resumed run keeps what its completed epochs recorded."""

    def __init__(self, path: str, flags: dict[str, Any], selection: "DataSelection", data: "RunData") -> None:
        """`flags`: the command line's values by name (recorded as parsed); `selection`: what picked `data`."""
        self.path, self.flags, self.selection, self.data = path, flags, selection, data
        self.trace: dict[str, Any] = {
            "config": {},
            "iterations": [],
            "epochs": [],
            "overfitting": None,
            "detection_sha256": None,
            "detection": None,
            "checkpoints": [],
            "run": {"t_start": time.time()},
        }
        self.epoch_began = time.time()

    def start(self, run: "Run", start_epoch: int) -> None:
        if start_epoch == 0:
            init = (state_sha256(run.teacher), state_sha256(run.student))  # nothing has trained them yet
            self.trace["config"].update(run_config(self.flags, self.selection, self.data, init))
            self.trace["config"].setdefault("machine", machine_info())
        elif os.path.exists(self.path):  # --resume: keep what the completed epochs recorded
            old = read_json_object(self.path)
            if not all(isinstance(old.get(key), list) for key in ("iterations", "epochs", "checkpoints")):
                raise DataError(
                    f"--trace {self.path}: not a trace this project wrote; give another --trace file, or move it aside"
                )
            self.trace.update(old)
            for key in ("iterations", "epochs", "checkpoints"):
                self.trace[key] = [r for r in old[key] if r["epoch"] < start_epoch]
        self.epoch_began = time.time()

    def iteration(self, run: "Run", step: "Step") -> None:
        self.trace["iterations"].append(
            {
                "epoch": step.epoch,
                "iter": step.i,
                "batch": len(step.y),
                "index_sha256": array_sha256(step.idx),
                "img_sha256": array_sha256(step.x),
                "labels_sha256": array_sha256(step.y),
                "target_sha256": array_sha256(step.target),
                "loss": step.loss.item(),
                "naive_loss": step.naive.item(),
                "compensation_loss": step.comp.item(),
            }
        )

    def save_models(self, run: "Run", kind: str, best: bool) -> None:
        self.trace["checkpoints"].append(
            {
                "kind": kind,
                "epoch": run.epoch,
                "teacher_sha256": state_sha256(run.teacher),
                "student_sha256": state_sha256(run.student),
            }
        )

    def split(self, run: "Run") -> None:
        state, epoch, detected = run.state, run.state.split_epoch, run.state.detected
        assert epoch is not None and detected is not None  # (the split just made)
        found_at = run.epoch if state.overfit_epoch is not None else None
        stats = state.stats[epoch]
        self.trace["overfitting"] = {
            "epoch": state.overfit_epoch,
            "found_at_epoch": found_at,
            "train_split": _split_record(stats["train"], state.split, state.groups),
            "full_set": _split_record(stats["full"], state.full_split, state.full_groups),
        }
        if found_at is None:  # no peak: the last epoch was split (not in the original)
            self.trace["overfitting"]["fallback_split_epoch"] = epoch
        buffer = io.BytesIO()
        np.save(buffer, detected)  # the bytes np.save writes to detection.npy
        digest = hashlib.sha256(buffer.getvalue()).hexdigest()
        self.trace["detection_sha256"] = digest
        self.trace["detection"] = {
            "file_sha256": digest,
            "array_sha256": array_sha256(detected),
            "sum": int(detected.sum()),
            "len": len(detected),
            "dtype": str(detected.dtype),
        }

    def epoch_end(self, run: "Run") -> None:
        state, epoch, last = run.state, run.epoch, run.last
        warmup = last.warmup
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": last.lr,
            "mean_max_student_prob": last.mean_top_student if warmup else None,
        }
        if warmup and state.overfit_epoch is not None:  # found in this epoch: the last of the warm-up
            row["overfitting_epoch_found"] = state.overfit_epoch
        for key, which in (("val_acc", "val"), ("test_acc", "test")):
            if state.accuracy_at(epoch, which) is not None:
                row[key] = state.accuracy_at(epoch, which)
        if warmup:  # pT[y], pS[y], pA[y] of the training pass
            row.update(
                train_agreement_sha256=array_sha256(last.label_prob["agreement"]),
                train_teacher_prob_sha256=array_sha256(last.label_prob["teacher"]),
                train_student_prob_sha256=array_sha256(last.label_prob["student"]),
            )
        full = state.stats.get(epoch, {}).get("full")
        if warmup and full is not None:  # a full-set pass of this epoch ran in this epoch
            row["full_agreement_sha256"] = array_sha256(full)
        row.update(
            wall_s=time.time() - self.epoch_began,
            teacher_sha256=state_sha256(run.teacher),
            student_sha256=state_sha256(run.student),
        )
        self.trace["epochs"].append(row)
        self.trace["run"]["wall_total_s"] = time.time() - self.trace["run"]["t_start"]
        save_json(self.trace, self.path, sort_keys=False, indent=None)
        self.epoch_began = time.time()


def run_config(
    flags: dict[str, Any], selection: "DataSelection", data: "RunData", init_hashes: tuple[str, str]
) -> dict[str, Any]:
    """The trace's `config`: the run's flags and environment, and hashes of its data and initial weights."""
    from bkd.data.cifar import local_images
    from bkd.utils.files import portable

    train_pos, val_pos = data.train_pos.astype(np.int64), data.val_pos.astype(np.int64)
    images = selection.custom_file if selection.custom else local_images(selection.dataset, selection.data_root)
    return {
        "args_as_parsed": {k: portable(v) if isinstance(v, str) and os.path.isabs(v) else v for k, v in flags.items()},
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


def _split_record(stat: np.ndarray, split: dict[str, float] | None, groups: np.ndarray | None) -> dict[str, Any]:
    assert split is not None and groups is not None  # (the split just made)
    record = {
        "p_sha256": array_sha256(np.asarray(stat, dtype=np.float32)),
        "p_len": len(stat),
        "up_mean": split["mu2"],
        "up_sigma": split["sigma2"],
        "lo_mean": split["mu1"],
        "lo_sigma": split["sigma1"],
        "thresh": split["threshold"],
        "thresh_type": "torch.float32",
    }
    for k in (1, 2, 3, 4):
        mask = np.asarray(groups) == k
        record.update(
            {
                f"group_{k}_size": int(mask.sum()),
                f"group_{k}_sha256": array_sha256(mask),
                f"group_{k}_dtype": "torch.bool",
            }
        )
    return record
