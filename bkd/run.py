"""One BKD training run, in the order the paper tells it (spec sections 3-5).

    fit(config, data, device, computation, listener) -> MethodState

Teacher and student are built and trained together; each epoch is a warm-up epoch until the
student's confidence peaks (the overfitting epoch), whose statistics are then split (Otsu) into
trust groups and the detection result; every later epoch is a robust epoch. Validation and test
run on the original's schedule. The run announces what happens (new best, split, end of an
epoch) to a listener (bkd.outputs): files, a trace and the Python API are listeners; the loop
never knows where anything goes. The order of work and of random draws is the original's, so the
reference mode replays the authors' traces bit for bit.
"""
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from bkd.engine import (CPU_CHANNELS_LAST_MIN_WIDTH, CompiledPair, Precision, StopFlag, evaluate, group_alphas, train_epoch,
                        use_channels_last)
from bkd.method import full_pass_seed, may_still_pick
from bkd.outputs import Listener
from bkd.state import MethodState
from bkd.data.cifar import DATASETS
from bkd.data.loaders import make_loader
from bkd.models import PreResNet18
from bkd.utils import logfmt
from bkd.utils.checkpoint import host_copy
from bkd.utils.errors import DataError, OutOfMemory, UsageError, first_line
from bkd.utils.metrics import detection_scores, ranking_line, ranking_scores
from bkd.utils.runtime import cuda_settings, rng_state, set_global_seeds, set_rng_state, usable_compile_cache


@dataclass
class SplitEvent:
    """The Otsu split of epoch `epoch`'s statistics (spec 4.6), as the listeners hear it."""

    epoch: int  # whose statistics were split
    found_at: int  # the epoch after which the overfitting epoch was found (None: the fallback split)
    state: MethodState  # groups, both splits
    detected: np.ndarray  # detection.npy: full-set group 4
    label_prob: np.ndarray  # full-set pA[y] (agreement.npy, the ranking key of label_issues.csv)
    agreed: np.ndarray  # the label teacher and student agree on
    agreed_prob: np.ndarray  # its agreed probability
    probs: np.ndarray  # (N, C) agreement probabilities (pred_probs.npy)

    @property
    def fallback(self):
        return self.found_at is None


@dataclass
class Trainer:
    """Everything the epoch loop works with, built once in the original's order."""

    teacher: torch.nn.Module
    student: torch.nn.Module
    nets: tuple  # what runs the forward passes (compiled or not)
    optimizer: torch.optim.Optimizer
    scheduler: object
    precision: Precision
    loaders: dict  # full, train, val, test (if any)
    channels_last: bool
    computation: object
    sample_alpha: torch.Tensor = None  # per-sample alpha of the robust phase (None in warm-up)
    snapshots: dict = field(default_factory=dict)  # epoch -> weights the overfitting rule may still pick (deferred pass)


def build(config, data, device, computation, listener, log):
    """Teacher, then student (spec 7.3), one SGD over both, StepLR, then the four views (7.4)."""
    num_classes = data.info["num_classes"]
    log(logfmt.BUILDING)
    teacher = PreResNet18(num_classes, config.width).to(device)
    student = PreResNet18(num_classes, config.width).to(device)
    log(logfmt.BUILT)
    listener.built(teacher, student)
    channels_last = use_channels_last(computation.channels_last, device, config.width)
    if channels_last != computation.channels_last:
        log(logfmt.ours(f"width {config.width} < {CPU_CHANNELS_LAST_MIN_WIDTH} on the CPU: NCHW instead of channels-last "
                        "(oneDNN's 1x1 kernels fail on narrow channels-last convolutions; docs/performance.md)"))
    if channels_last:
        teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay, foreach=computation.sgd_foreach)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=0.1)
    nets = (teacher, student)
    if computation.compile:
        pair = CompiledPair(teacher, student, {True: config.batch_size, False: computation.eval_batch_size}, log)
        nets = (pair.teacher, pair.student)
    precision = Precision(device, computation.precision)
    if precision.enabled:
        log(logfmt.ours(f"--amp: {precision.name} autocast on {device.type}"
                        f"{' with gradient scaling (this GPU has no native bf16)' if precision.name == 'fp16' else ''} "
                        "(opt-in: on the quick preset it moved the overfitting epoch and lowered detection F1 against fp32; "
                        "docs/performance.md)"))
    return Trainer(teacher, student, nets, optimizer, scheduler, precision, build_loaders(config, computation, data, device),
                   channels_last, computation)


def build_loaders(config, computation, data, device):
    """The full training set (detection, with the training augmentation), the training split, the noisy
    validation split and the clean test set, built in the original's order."""
    info, x, kind = data.info, data.images, computation.loader
    augment = {"pad_mode": info["pad_mode"], "flip_first": info["flip_first"]}
    norm = {"mean": info["mean"], "std": info["std"]}
    val_norm = norm
    if data.name == "cifar100" and computation.legacy_cifar100_val_norm:  # the original's defect (spec section 6)
        val_norm = {"mean": DATASETS["cifar10"]["mean"], "std": DATASETS["cifar10"]["std"]}
    common = {"device": device, "seed": config.seed, "num_workers": config.num_workers}
    evals = computation.eval_batch_size
    loaders = {"full": make_loader(kind, x, data.labels, batch_size=evals, augment=augment, **norm, **common)}
    if kind == "torchvision" and len(data.train_pos) % config.batch_size == 1 and x.shape[1] < 16:
        raise UsageError(f"--batch_size {config.batch_size} leaves a last training batch of one {x.shape[1]}x{x.shape[1]} "
                         "image, on which BatchNorm cannot train with the PIL loader; pick another --batch_size")
    loaders["train"] = make_loader(kind, x[data.train_pos], data.labels[data.train_pos], batch_size=config.batch_size,
                                   shuffle=True, augment=augment, merge_single=True, **norm, **common)
    loaders["val"] = (make_loader(kind, x[data.val_pos], data.labels[data.val_pos], batch_size=evals, **val_norm, **common)
                      if len(data.val_pos) else loaders["train"])  # --val_ratio 0: select on the training loader
    if data.x_test is not None:
        loaders["test"] = make_loader(kind, data.x_test, data.y_test, batch_size=evals, **norm, **common)
    return loaders


def fit(config, data, device, computation, listener=None, log=print, resume=None, resume_name="resume state", stop=None,
        time_start=None):
    """Train teacher and student on `data` (a data.setup.RunData) as `computation` (bkd.config.resolve_computation of
    `config` on `device`) says; returns the MethodState.

    `resume`: a resume state a listener saved at the end of an epoch (continue after it), read from `resume_name`.
    `time_start`: when the script started (the original's `time elapsed` lines count from there).
    The listener hears `finish()` last, however the run ends.
    """
    listener = listener or Listener()
    try:
        # a compile cache that can be written, and the CUDA arithmetic, before the run's first CUDA operation
        with usable_compile_cache(log), cuda_settings(device, computation.deterministic, computation.tf32):
            return _fit(config, data, device, computation, listener, log, resume, resume_name, stop, time_start or time.time())
    except torch.cuda.OutOfMemoryError as err:
        raise OutOfMemory(f"{device} ran out of memory ({first_line(err)}); lower --batch_size ({config.batch_size}) or "
                          f"--eval_batch_size ({computation.eval_batch_size}), or free the device's memory") from None
    finally:
        listener.finish()


def _fit(config, data, device, computation, listener, log, resume, resume_name, stop, time_start):
    set_global_seeds(config.seed)
    t = build(config, data, device, computation, listener, log)
    state, start = MethodState(), 0
    if resume is not None:
        state, start = restore(resume, t, resume_name, device)
    listener.start(start)
    stop = stop or StopFlag().install()
    if not state.warmup:
        t.sample_alpha = group_alphas(state.groups, config.alphas, device)
    for epoch in range(start, config.n_epoch):
        epoch_start, last = time.time(), epoch == config.n_epoch - 1
        phase = "warm-up" if state.warmup else "robust"
        listener.epoch_start(epoch)
        row = {"epoch": epoch, "lr": t.optimizer.param_groups[0]["lr"], "mean_max_student_prob": None}
        log(logfmt.epoch_start(epoch))
        # One pass over the training split: warm-up (one-hot targets) or robust (per-group soft targets)
        out = train_epoch(*t.nets, t.loaders["train"], t.optimizer, t.precision, epoch=epoch, n_epoch=config.n_epoch,
                          num_classes=data.info["num_classes"], sample_alpha=t.sample_alpha,
                          detach_target=config.detach_robust_target, print_freq=config.print_freq,
                          channels_last=t.channels_last, stop=stop, log=log, on_iteration=listener.iteration)
        state.mean_top_all.append(out["mean_top_student"])
        state.losses.append([out["loss"], out["naive"], out["comp"]])
        if state.warmup:
            after_warmup_epoch(config, data, t, state, epoch, out, row, listener, stop, log)
        validate_and_test(config, t, state, epoch, row, listener, stop, log)
        if last:
            end_of_training(t, state, epoch, listener, log)
        state.epoch_seconds.append(time.time() - epoch_start)
        log(logfmt.ours(f"epoch {epoch} ({phase}): loss {out['loss']:.4f}, naive loss {out['naive']:.4f}, compensation "
                        f"loss {out['comp']:.4f}, student mean top probability {out['mean_top_student']:.4f}, "
                        f"{state.epoch_seconds[-1]:.1f} s"))
        log(logfmt.elapsed(epoch, time.time() - time_start))
        log()
        t.scheduler.step()
        listener.epoch_end(epoch, row, t.teacher, t.student, resume_state(t, state, epoch, device), state)
    return state


def after_warmup_epoch(config, data, t, state, epoch, out, row, listener, stop, log):
    """The overfitting rule on the student's confidence so far; at its peak, the split; else the full-set pass.

    The original runs the full-set pass in every warm-up epoch, in case the rule later picks that epoch
    (the reference mode still does). By default only the weights of the epochs the rule may still
    pick are kept, and the pass runs once, for the epoch it picks (or the last, as the fallback),
    with that epoch's augmentation draws: the same statistic, at a fraction of the work.
    """
    label_prob = {who: p.cpu().numpy() for who, p in out["label_prob"].items()}  # of each training sample, this epoch
    row.update(mean_max_student_prob=out["mean_top_student"], train_label_prob=label_prob)
    found = state.record_warmup_epoch(epoch, out["mean_top_student"], label_prob["agreement"], forced=config.overfitting_epoch)
    last = epoch == config.n_epoch - 1
    if found is not None:  # the student's confidence peaked at `found`: split its statistics
        row["overfitting_epoch_found"] = found
        for line in logfmt.overfitting_block(found):
            log(line)
        if t.computation.defer_full_pass:
            full_set_pass(t, state, found, stop, config.seed, weights=t.snapshots.pop(found))
        split(config, data, t, state, found, epoch, listener, log)
        t.snapshots = {}
        return
    if t.computation.defer_full_pass:  # keep the weights of the epochs the rule may still pick, this one too
        t.snapshots = {e: w for e, w in t.snapshots.items() if may_still_pick(e, epoch + 1)}
        if not last:
            t.snapshots[epoch] = weights_snapshot(t)
    if not t.computation.defer_full_pass or last:
        row["full_agreement"] = full_set_pass(t, state, epoch, stop, config.seed)
    if last:  # no peak in the whole run: split the last epoch (not the original: it crashed)
        log(logfmt.ours(f"no overfitting epoch found in epochs 0..{epoch}; splitting the last epoch's statistics instead"))
        split(config, data, t, state, epoch, None, listener, log)


def weights_snapshot(t):
    return {"teacher": _copy(t.teacher.state_dict()), "student": _copy(t.student.state_dict())}


def _copy(state_dict):
    return {k: v.detach().clone() for k, v in state_dict.items()}


def full_set_pass(t, state, epoch, stop, seed, weights=None):
    """The full-set statistic of `epoch` (spec 4.5): both networks in eval mode over every image of the run, with
    the training augmentation; with `weights` (a snapshot of that epoch) instead of the current ones."""
    stop.check(f"epoch {epoch}, full-set pass")
    current = weights_snapshot(t) if weights is not None else None
    if weights is not None:
        t.teacher.load_state_dict(weights["teacher"])
        t.student.load_state_dict(weights["student"])
    if t.computation.defer_full_pass:
        t.loaders["full"].reseed(full_pass_seed(seed, epoch))  # that epoch's draws, whenever it runs
    full = evaluate(*t.nets, t.loaders["full"], t.precision, t.channels_last, description="full set", keep_probs=True)
    if current is not None:
        t.teacher.load_state_dict(current["teacher"])
        t.student.load_state_dict(current["student"])
    state.add_full_stat(epoch, *(v.cpu().numpy() for v in (full.label_prob, full.agreed, full.agreed_prob, full.probs)))
    return full.label_prob


def split(config, data, t, state, epoch, found_at, listener, log):
    """Otsu split of epoch `epoch`'s statistics (spec 4.6): training groups for the robust phase, detection.npy."""
    detected = state.split_at(epoch)
    t.sample_alpha = group_alphas(state.groups, config.alphas, _device(t))
    for which, result in (("training split", state.split), ("full set", state.full_split)):
        if found_at is None:  # not the original's split, so not its lines
            log(logfmt.ours(f"fallback Otsu split of epoch {epoch} ({which}): up_mean {result['mu2']:0.5f}, up_sigma "
                            f"{result['sigma2']:0.5f}, lo_mean {result['mu1']:0.5f}, lo_sigma {result['sigma1']:0.5f}, "
                            f"thresh {result['threshold']:0.5f}"))
        else:
            for line in logfmt.otsu_block(result):
                log(line)
    full = state.stats[epoch]
    sizes = np.bincount(state.groups, minlength=5)[1:]
    log(logfmt.ours(f"split of epoch {epoch}: training groups G1-G4 {sizes.tolist()}; "
                    f"{int(detected.sum())} of {len(detected)} labels flagged as noisy (detection.npy)"))
    truly_noisy = data.truly_noisy  # None without clean labels (custom data)
    if truly_noisy is not None and truly_noisy.any():
        d = detection_scores(detected, truly_noisy)
        log(logfmt.ours(f"detection against the clean labels: precision {d['precision']:.4f}, recall {d['recall']:.4f}, "
                        f"F1 {d['f1']:.4f}"))
        state.ranking = ranking_scores(full["full"], truly_noisy)
        log(logfmt.ours(ranking_line(state.ranking)))
    listener.split(SplitEvent(epoch, found_at, state, detected, full["full"], full["full_agreed"], full["full_agreed_prob"],
                              full.get("full_probs")))


def _on(device, weights):
    return {net: {k: v.to(device) for k, v in w.items()} for net, w in weights.items()}


def _device(t):
    return next(t.teacher.parameters()).device


def validate_and_test(config, t, state, epoch, row, listener, stop, log):
    """Noisy validation (a new best is a checkpoint) and clean test accuracy, at e % freq == 0 and the last epoch."""
    last = epoch == config.n_epoch - 1
    autograd = t.computation.eval_autograd
    if epoch % config.noisy_val_freq == 0 or last:
        stop.check(f"epoch {epoch}, validation")
        acc = evaluate(*t.nets, t.loaders["val"], t.precision, t.channels_last, autograd=autograd, description="validation").accuracy
        row["val_acc"] = acc
        state.val_acc.append([epoch, acc])
        if acc > state.best_val:
            log(logfmt.new_best(state.best_val, state.best_epoch))
            state.best_val, state.best_epoch = acc, epoch
            listener.checkpoint("best_val", epoch, t.teacher, t.student, best=True)
        log(logfmt.validation(epoch, acc, state.best_val, state.best_epoch))
    if "test" in t.loaders and (epoch % config.clean_test_freq == 0 or last):
        stop.check(f"epoch {epoch}, test")
        acc = evaluate(*t.nets, t.loaders["test"], t.precision, t.channels_last, autograd=autograd, description="test").accuracy
        row["test_acc"] = acc
        state.test_acc.append([epoch, acc])
        if acc > state.best_test:
            state.best_test, state.best_test_epoch = acc, epoch
        log(logfmt.test(epoch, acc, state.best_test, state.best_test_epoch))


def end_of_training(t, state, epoch, listener, log):
    """The last epoch's weights; the best-by-validation ones stay, where the original overwrote them (spec section 6,
    and the reference mode: its end save is also the best checkpoint)."""
    overwrites = t.computation.end_save_overwrites_best
    if not overwrites and state.best_val == 0.0:  # never a validation accuracy above 0
        log(logfmt.ours("no validation accuracy above 0; the best-by-validation weights are the last epoch's"))
        listener.checkpoint("best_val", epoch, t.teacher, t.student, best=True)
    listener.checkpoint("end_of_training", epoch, t.teacher, t.student, best=overwrites)
    log(logfmt.END_SAVE)


def resume_state(t, state, epoch, device):
    """Everything needed to continue after `epoch` exactly (with the same data, flags and thread count), as a copy
    in host memory: CPU tensors only, which a CPU-only machine can read, and which the training goes on without."""
    return host_copy({
        "epoch": epoch + 1,
        "teacher": t.teacher.state_dict(),
        "student": t.student.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.precision.scaler.state_dict(),
        "method": state.state_dict(),
        "loaders": {name: loader.state_dict() for name, loader in t.loaders.items()},
        "rng": rng_state(device),
        "snapshots": t.snapshots,
    })


def restore(saved, t, source, device):
    """Load a resume state into the trainer; a state of another structure is one line (exit 3)."""
    try:
        t.teacher.load_state_dict(saved["teacher"])
        t.student.load_state_dict(saved["student"])
        t.optimizer.load_state_dict(saved["optimizer"])
        t.scheduler.load_state_dict(saved["scheduler"])
        t.precision.scaler.load_state_dict(saved["scaler"])
        for view, loader in t.loaders.items():
            loader.load_state_dict(saved["loaders"][view])
        set_rng_state(saved["rng"], device)
        t.snapshots = {e: _on(device, w) for e, w in (saved.get("snapshots") or {}).items()}
        return MethodState.from_state_dict(saved["method"]), int(saved["epoch"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        raise DataError(f"{source}: not a resume state of this run ({type(err).__name__}: {first_line(err)}); "
                        "start again with --overwrite") from None
