"""What BKD remembers across epochs, and the split that ends the warm-up phase."""

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bkd.method import assign_groups, detect_overfitting_epoch, first_detectable_epoch, may_still_pick, otsu
from bkd.utils.checkpoint import convert


@dataclass
class Split:
    """What the split decided, per image of the run (the full set): detection.npy, agreement.npy, pred_probs.npy and
    label_issues.csv hold it."""

    epoch: int  # whose statistics were split
    detected: np.ndarray  # bool: group 4 of the full-set split, the label flagged as noisy
    label_prob: np.ndarray  # pA[y], the agreed probability of the given label (the ranking key)
    agreed: np.ndarray  # the label teacher and student agree on
    agreed_prob: np.ndarray  # its agreed probability
    probs: np.ndarray | None  # (N, C) agreement probabilities (None: a run of an earlier version kept none)
    groups: np.ndarray  # trust group 1..4


@dataclass
class MethodState:
    """What the method remembers across epochs (and a resume state keeps): the student's confidence, the statistics
    of the epochs the overfitting rule may still pick, the split and its groups, the accuracies and histories."""

    mean_top_student: list[float] = field(default_factory=list)  # m_e per warm-up epoch (what the rule sees)
    mean_top_all: list[float] = field(default_factory=list)  # m_e of every epoch, warm-up and robust (the report)
    # epoch -> {"train": pA[y], "full": pA[y], ...}, of the epochs the rule may still pick
    stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    overfit_epoch: int | None = None  # the overfitting epoch, 0-based (None until found)
    split_epoch: int | None = None  # the epoch whose statistics were split (overfit epoch, or the last as fallback)
    split: dict[str, float] | None = None  # Otsu split of the training statistic
    full_split: dict[str, float] | None = None  # Otsu split of the full-set statistic (detection)
    groups: np.ndarray | None = None  # group id 1..4 per training sample, fixed once split
    full_groups: np.ndarray | None = None  # group id 1..4 per image of the full set
    detected: np.ndarray | None = None  # detection result: G4 of the full-set split (True = label flagged noisy)
    ranking: dict[str, Any] | None = None  # ranking scores of the full-set statistic against the clean labels
    best_val: float = 0.0  # as the original: a checkpoint is saved on a validation accuracy above this
    best_epoch: int = 0
    best_test: float = 0.0  # best test accuracy so far, printed only
    best_test_epoch: int = 0
    val_acc: list[list[float]] = field(default_factory=list)  # [epoch, acc]
    test_acc: list[list[float]] = field(default_factory=list)  # [epoch, acc]
    epoch_seconds: list[float] = field(default_factory=list)
    # [loss, naive, comp] epoch means of every epoch since the run (re)started
    losses: list[list[float]] = field(default_factory=list)

    @property
    def warmup(self) -> bool:
        return self.groups is None

    def record_warmup_epoch(
        self, epoch: int, mean_top: float, train_stat: np.ndarray, forced: int | None = None
    ) -> int | None:
        """Keep this warm-up epoch's statistic; return the overfitting epoch if it is found now.

        `forced` (--overfitting_epoch) replaces the rule: that epoch is reported when the rule
        could first have reported it, so the run's schedule of work is the same as if found.
        """
        self.mean_top_student.append(float(mean_top))
        self.stats[epoch] = {"train": train_stat}
        for old in [e for e in self.stats if not may_still_pick(e, epoch)]:
            del self.stats[old]
        if forced is None:
            found = detect_overfitting_epoch(self.mean_top_student)
        else:
            found = forced if epoch == first_detectable_epoch(forced) else None
        if found is not None:
            self.overfit_epoch = found
        return found

    def add_full_stat(
        self,
        epoch: int,
        full_stat: np.ndarray,
        agreed: np.ndarray | None = None,
        agreed_prob: np.ndarray | None = None,
        probs: np.ndarray | None = None,
    ) -> None:
        """The full-set pass of a warm-up epoch: pA[y], the agreed label and its probability (label_issues.csv),
        and the (N, C) agreement probabilities (pred_probs.npy)."""
        self.stats[epoch].update(full=full_stat, full_agreed=agreed, full_agreed_prob=agreed_prob, full_probs=probs)

    def split_at(self, epoch: int) -> np.ndarray:
        """Otsu split of the statistics of `epoch`; fixes the training groups, returns the detection mask."""
        stats = self.stats[epoch]
        self.split_epoch = epoch
        self.split = otsu(stats["train"])
        self.groups = assign_groups(stats["train"], self.split)
        self.full_split = otsu(stats["full"])
        self.full_groups = assign_groups(stats["full"], self.full_split)
        self.detected = detected = self.full_groups == 4
        return detected

    def accuracy_at(self, epoch: int, which: str) -> float | None:
        """The validation ("val") or test ("test") accuracy measured at `epoch`, or None."""
        measured = self.val_acc if which == "val" else self.test_acc
        return measured[-1][1] if measured and measured[-1][0] == epoch else None

    def split_result(self) -> Split | None:
        """The split's result (None before the split)."""
        if self.split_epoch is None or self.detected is None or self.full_groups is None:  # (split_at sets all three)
            return None
        full = self.stats[self.split_epoch]
        return Split(
            self.split_epoch,
            self.detected,
            full["full"],
            full["full_agreed"],
            full["full_agreed_prob"],
            full.get("full_probs"),
            self.full_groups,
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only, so it loads with torch.load(weights_only=True)."""
        return convert(asdict(self), np.ndarray, torch.from_numpy)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "MethodState":
        """The MethodState a state_dict() was made of."""
        return cls(**convert(state, torch.Tensor, lambda t: t.numpy()))
