"""One epoch of BKD training and the evaluation passes, wiring the pieces of bkd.method.

Statistics stay on the training device; values are read back to the host only
when a progress line is printed or the epoch ends.
"""
import contextlib
import math
import signal

import numpy as np
import torch
import torch.nn.functional as F

from bkd.method import agreement, compensation_loss, label_probability, robust_targets, soft_cross_entropy
from utils.errors import DivergedError, Interrupted


class Precision:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with gradient scaling); fp32 elsewhere."""

    def __init__(self, device, enabled=True):
        self.device_type = device.type
        self.enabled = enabled and device.type == "cuda"
        self.dtype = torch.float32
        if self.enabled:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def step(self, loss, optimizer):
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    @property
    def name(self):
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop checks between iterations."""

    def __init__(self):
        self.signal = None

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def check(self, where):
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            raise Interrupted(f"{name} received during {where}; the run directory keeps the last completed epoch, "
                              "continue it by running the same command with --resume")


def forward_pair(teacher, student, x, precision, channels_last=False):
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        zt, zs = teacher(x), student(x)
    return zt.float(), zs.float()


def train_epoch(teacher, student, loader, optimizer, precision, *, epoch, n_epoch, sample_alpha=None,
                detach_target=False, print_freq=50, channels_last=False, stop=None, log=print):
    """One epoch. Warm-up when `sample_alpha` is None, else the robust phase with per-sample alphas.

    `detach_target` (not the original) stops the robust target's gradient into the student.

    Returns dict(mean_top_student, label_agreement (per-sample pA[y], warm-up only), loss, naive, comp).
    """
    teacher.train()
    student.train()
    device = next(teacher.parameters()).device
    n = loader.num_samples
    warmup = sample_alpha is None
    stat = torch.full((n,), math.nan, device=device) if warmup else None
    sums = torch.zeros(4, device=device)  # loss, naive, comp, sum of max pS
    first_bad = torch.tensor(-1, device=device)
    iters = len(loader)
    for i, (x, y, idx) in enumerate(loader):
        if stop is not None:
            stop.check(f"epoch {epoch + 1}, iteration {i + 1}")
        zt, zs = forward_pair(teacher, student, x, precision, channels_last)
        pt, ps = zt.softmax(1), zs.softmax(1)
        comp = compensation_loss(zt, zs, y)
        if warmup:
            naive = F.cross_entropy(zt, y)
        else:
            naive = soft_cross_entropy(zt, robust_targets(y, ps.detach() if detach_target else ps, sample_alpha[idx]))
        loss = naive + comp
        precision.step(loss, optimizer)
        with torch.no_grad():
            if warmup:
                stat[idx] = label_probability(agreement(pt, ps), y)
            batch = torch.stack([loss * len(y), naive * len(y), comp * len(y), ps.max(1).values.sum()])
            sums += batch.detach()
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)
        if (i + 1) % print_freq == 0:
            _check_finite(first_bad, epoch)
            log(
                "Epoch [%d/%d], Iter [%d/%d] Loss: %.4f, Naive Loss: %.4f, Compensation Loss: %.4f"
                % (epoch + 1, n_epoch, i + 1, iters, loss.item(), naive.item(), comp.item())
            )
    _check_finite(first_bad, epoch)
    totals = (sums / n).tolist()
    return {
        "loss": totals[0],
        "naive": totals[1],
        "comp": totals[2],
        "mean_top_student": totals[3],
        "label_agreement": stat.cpu().numpy() if warmup else None,
    }


def _check_finite(first_bad, epoch):
    bad = int(first_bad)
    if bad >= 0:
        raise DivergedError(
            f"non-finite loss at epoch {epoch + 1}, iteration {bad + 1}; stopped before saving it, the run "
            "directory keeps the last good epoch (lower --lr, or --resume to retry from it)"
        )


@torch.inference_mode()
def evaluate(teacher, student, loader, precision, channels_last=False):
    """Eval-mode pass: (agreement accuracy in %, per-sample agreed probability of the given label)."""
    teacher.eval()
    student.eval()
    device = next(teacher.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    stat = torch.empty(loader.num_samples, device=device)
    for x, y, idx in loader:
        zt, zs = forward_pair(teacher, student, x, precision, channels_last)
        pa = agreement(zt.softmax(1), zs.softmax(1))
        correct += (pa.argmax(1) == y).sum()
        stat[idx] = label_probability(pa, y)
    return 100.0 * int(correct) / max(loader.num_samples, 1), stat.cpu().numpy()


def group_alphas(groups, alphas, device):
    """Per-sample alpha tensor from group ids 1..4 and (alpha1, alpha2, alpha3, alpha4)."""
    table = torch.tensor((0.0,) + tuple(alphas), device=device)
    return table[torch.as_tensor(np.asarray(groups), device=device)]
