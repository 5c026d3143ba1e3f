"""One BKD training run, read top to bottom as the method (arXiv 2211.11355; docs/method.md).

    state = fit(Job(config, data, device, computation), outputs)

Teacher and student train together. Each epoch is a warm-up epoch (one-hot targets) until the student's
confidence peaks (the overfitting epoch); that epoch's statistics are then split (Otsu) into trust groups and the
detection result, and every later epoch is a robust epoch (per-group soft targets). Validation and test run on the
original's schedule. A `Run` holds everything the loop works with, built once; its steps take the epoch. What the
run writes is its outputs' business (bkd/outputs.py); the loop tells them when something happened. The order of
work and of random draws is the original's, so --reference replays the authors' traces bit for bit.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from bkd.config import Computation, TrainConfig, compile_refusal
from bkd.data.cifar import DATASETS
from bkd.data.datasets import RunData
from bkd.data.loaders import DeviceLoader, Loader, LoaderSpec, make_loader
from bkd.engine import (
    CPU_CHANNELS_LAST_MIN_WIDTH,
    CompiledPair,
    Nets,
    Precision,
    evaluate,
    progress,
    show,
    use_channels_last,
)
from bkd.method import (
    agreement,
    compensation_loss,
    full_pass_seed,
    group_alphas,
    label_probability,
    may_still_pick,
    one_hot,
    robust_targets,
    teacher_loss,
)
from bkd.models import PreResNet18
from bkd.state import MethodState
from bkd.utils import logfmt
from bkd.utils.checkpoint import host_copy
from bkd.utils.compile_cache import usable_compile_cache
from bkd.utils.cuda import cuda_settings
from bkd.utils.errors import DataError, DivergedError, OutOfMemory, UsageError, first_line
from bkd.utils.logfmt import Log
from bkd.utils.metrics import detection_scores, ranking_line, ranking_scores
from bkd.utils.seeds import rng_state, set_global_seeds, set_rng_state
from bkd.utils.stops import StopFlag

if TYPE_CHECKING:
    from bkd.outputs import Output

Weights = dict[str, dict[str, torch.Tensor]]  # {"teacher": state dict, "student": state dict}


@dataclass
class Job:
    """What a run is given: its flags, its data, its device, how it computes there (bkd.config.resolve_computation),
    where its lines go, and when it started (the original's `time elapsed` lines count from there)."""

    config: TrainConfig
    data: RunData
    device: torch.device
    computation: Computation
    log: Log = print
    started: float = field(default_factory=time.time)


class Saved(NamedTuple):
    """A resume state (bkd.resume.load) and the file it was read from."""

    path: str
    state: dict[str, Any]


class Step(NamedTuple):
    """One training iteration, as the outputs' `iteration` hook hears it (a trace records it)."""

    epoch: int
    i: int
    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor
    loss: torch.Tensor
    naive: torch.Tensor
    comp: torch.Tensor


@dataclass
class EpochResult:
    """What one training pass measured."""

    warmup: bool  # a warm-up pass (one-hot targets), else a robust one
    lr: float  # the learning rate it trained at
    mean_top_student: float  # mean over the training split of max_c pS (a float32 sum, as the original)
    label_prob: dict[str, torch.Tensor]  # "teacher", "student", "agreement": pT[y], pS[y], pA[y] per training sample
    losses: list[float]  # [loss, naive, compensation], means over the epoch


def fit(
    job: Job, outputs: Sequence["Output"] = (), resume: Saved | None = None, stop: StopFlag | None = None
) -> MethodState:
    """Train teacher and student as `job` says, every epoch from the first (or the one after `resume`'s).

    Parameters
    ----------
    job : Job
        The run's values, data, device, computation and log.
    outputs : sequence of bkd.outputs.Output, default ()
        What hears the run's events and writes its files (RunFiles, Trace). Every output hears `finish()` last,
        however the run ends.
    resume : Saved, optional
        A resume state (bkd.resume.load) to continue after its epoch; None (the default) starts a fresh run.
    stop : StopFlag, optional
        What the loop checks between iterations; None (the default): one that SIGINT and SIGTERM set.

    Returns
    -------
    MethodState
        The overfitting epoch, the split (`split_result()`), accuracies and histories.

    Raises
    ------
    bkd.utils.errors.OutOfMemory
        The device ran out of memory (one line naming the batch sizes to lower).
    bkd.utils.errors.Interrupted, bkd.utils.errors.DivergedError
        A stop was asked for, or the loss was not finite.
    """
    try:
        # a compile cache that can be written, and the CUDA arithmetic, before the run's first CUDA operation
        with (
            usable_compile_cache(job.log),
            cuda_settings(job.device, job.computation.deterministic, job.computation.tf32),
        ):
            set_global_seeds(job.config.seed)
            if stop is not None:
                stop.phase = "while building the networks and the loaders"
            run = Run(job, outputs)
            return run.loop(resume, stop)
    except torch.cuda.OutOfMemoryError as err:
        raise OutOfMemory(
            f"{job.device} ran out of memory ({first_line(err)}); lower --batch_size ({job.config.batch_size}) "
            f"or --eval_batch_size ({job.computation.eval_batch_size}), or free the device's memory"
        ) from None
    finally:
        for output in outputs:
            output.finish()


class Run:
    """Everything one run works with, built in the original's order: teacher, then student, one SGD over both, its
    StepLR, then the loaders; the method's state; the epoch in progress and what its training pass measured."""

    def __init__(self, job: Job, outputs: Sequence["Output"] = ()) -> None:
        self.job, self.config, self.computation, self.log = job, job.config, job.computation, job.log
        self.outputs = tuple(outputs)
        self.state = MethodState()
        self.epoch = 0  # the epoch in progress
        self.last: EpochResult  # its training pass (set by train())
        self.sample_alpha: torch.Tensor | None = None  # per-sample alpha of the robust phase (None in warm-up)
        # epoch -> weights the overfitting rule may still pick (the deferred full-set pass)
        self.snapshots: dict[int, Weights] = {}
        self.stop = StopFlag()
        c, log, device = job.config, job.log, job.device
        log(logfmt.BUILDING)
        self.teacher = PreResNet18(job.data.info["num_classes"], c.width).to(device)
        self.student = PreResNet18(job.data.info["num_classes"], c.width).to(device)
        log(logfmt.BUILT)
        channels_last = use_channels_last(self.computation.channels_last, device, c.width)
        if channels_last != self.computation.channels_last:
            log(
                logfmt.ours(
                    f"width {c.width} < {CPU_CHANNELS_LAST_MIN_WIDTH} on the CPU: NCHW instead of channels-last "
                    "(oneDNN's 1x1 kernels fail on narrow channels-last convolutions; docs/performance.md)"
                )
            )
        refusal = compile_refusal(c, device) if c.compile else None
        if refusal:
            log(logfmt.ours(refusal))
        if channels_last:
            self.teacher, self.student = (m.to(memory_format=torch.channels_last) for m in (self.teacher, self.student))
        self.optimizer = torch.optim.SGD(
            list(self.teacher.parameters()) + list(self.student.parameters()),
            lr=c.lr,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            foreach=self.computation.sgd_foreach,
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=c.lr_step, gamma=0.1)
        self.compiled: CompiledPair | None = None  # (None: the modules themselves run)
        if self.computation.compile:
            batches = {True: c.batch_size, False: self.computation.eval_batch_size}
            self.compiled = CompiledPair(self.teacher, self.student, batches, log)
        precision = Precision(device, self.computation.precision)
        if precision.enabled:
            log(
                logfmt.ours(
                    f"--amp: {precision.name} autocast on {device.type}"
                    f"{' with gradient scaling (this GPU has no native bf16)' if precision.name == 'fp16' else ''} "
                    "(opt-in: on the quick preset it moved the overfitting epoch and lowered detection F1 against "
                    "fp32; docs/performance.md)"
                )
            )
        forward = self.compiled.nets if self.compiled is not None else None
        self.nets = Nets(self.teacher, self.student, precision, channels_last, forward)
        self.loaders = build_loaders(job)

    # --- the loop ---------------------------------------------------------------------------------------------------
    def loop(self, resume: Saved | None = None, stop: StopFlag | None = None) -> MethodState:
        """Every epoch from the first (or the one after `resume`'s) to the last; returns the MethodState."""
        self.stop = stop or self.stop.install()  # (fit without a stop: SIGINT and SIGTERM stop it between iterations)
        start = self.restore(resume) if resume is not None else 0
        c, state, log = self.config, self.state, self.log
        self.stop.defer("at the start of the run")  # from here a signal stops the run where it keeps what it completed
        self.tell("start", start)
        if state.groups is not None:  # resumed in the robust phase
            self.sample_alpha = group_alphas(state.groups, c.alphas, self.job.device)
        for epoch in range(start, c.n_epoch):
            self.epoch, began = epoch, time.time()
            log(logfmt.epoch_start(epoch))
            self.last = self.train()  # warm-up: one-hot targets; robust: each group's soft targets
            state.mean_top_all.append(self.last.mean_top_student)
            state.losses.append(self.last.losses)
            if self.last.warmup:
                self.after_warmup_epoch()  # the overfitting rule; at the student's confidence peak, the Otsu split
            self.validate_and_test()  # noisy validation (a new best is a checkpoint), clean test
            if self.at_last_epoch:
                self.end_of_training()
            state.epoch_seconds.append(time.time() - began)
            loss, naive, comp = self.last.losses
            log(
                logfmt.ours(
                    f"epoch {epoch} ({'warm-up' if self.last.warmup else 'robust'}): loss {loss:.4f}, naive loss "
                    f"{naive:.4f}, compensation loss {comp:.4f}, student mean top probability "
                    f"{self.last.mean_top_student:.4f}, {state.epoch_seconds[-1]:.1f} s"
                )
            )
            log(logfmt.elapsed(epoch, time.time() - self.job.started))
            log()
            self.scheduler.step()
            self.tell("epoch_end")
        return state

    @property
    def at_last_epoch(self) -> bool:
        """The epoch in progress is the run's last."""
        return self.epoch == self.config.n_epoch - 1

    def tell(self, event: str, *args: Any) -> None:
        """Every output hears `event` (bkd.outputs.Output), in the order given (the run's files first)."""
        for output in self.outputs:
            getattr(output, event)(self, *args)

    def train(self) -> EpochResult:
        """One pass over the training split in the original's order of work (docs/method.md, 'One iteration'):
        warm-up when there are no groups yet, else the robust phase with each sample's group alpha."""
        c, epoch, loader, nets = self.config, self.epoch, self.loaders["train"], self.nets
        nets.train()
        device, n = self.job.device, loader.num_samples
        probs = torch.zeros(3, n, device=device)  # pT[y], pS[y], pA[y] by sample index
        sum_max_student: Any = 0  # running float32 sum of max_c pS, as the original (a tensor from the first batch)
        sums = torch.zeros(3, device=device)  # loss, naive, comp, weighted by batch size (our epoch summary)
        first_bad = torch.tensor(-1, device=device)
        last_iter = n // c.batch_size  # the original prints len(train set) // batch size as the last iteration
        lr = self.optimizer.param_groups[0]["lr"]
        bar = progress(loader, f"epoch {epoch}", total=len(loader))
        printed = i = 0
        step: Step | None = None
        for i, (x, y, idx) in enumerate(bar):
            self.stop.check(f"epoch {epoch}, iteration {i}")
            zt, zs = nets(x)
            onehot = one_hot(y, zt.shape[1])
            comp = compensation_loss(zt, zs, onehot)
            ps, pt = zs.softmax(dim=1), zt.softmax(dim=1)
            with torch.no_grad():
                probs[:, idx] = torch.stack([label_probability(p, y) for p in (pt, ps, agreement(pt, ps))])
                sum_max_student = sum_max_student + ps.max(dim=1)[0].sum()
            if self.sample_alpha is None:
                target = onehot
            else:  # (--detach_robust_target, not the original: no gradient from the target into the student)
                target = robust_targets(onehot, ps.detach() if c.detach_robust_target else ps, self.sample_alpha[idx])
            naive = teacher_loss(zt, target)
            loss = naive + comp
            nets.precision.step(loss, self.optimizer)
            with torch.no_grad():
                sums += torch.stack([loss, naive, comp]) * len(y)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)
            step = Step(epoch, i, idx, x, y, target, loss, naive, comp)
            self.tell("iteration", step)
            if i % c.print_freq == 0:
                _check_finite(first_bad, epoch)
                printed = i
                self.log(logfmt.iteration(epoch, c.n_epoch, i, last_iter, loss.item(), naive.item(), comp.item()))
                show(bar, loss=f"{loss.item():.4f}")
        _check_finite(first_bad, epoch)
        if step is not None and printed != i:  # the last iteration's line, where its own print_freq did not print it
            self.log(
                logfmt.iteration(epoch, c.n_epoch, i, last_iter, step.loss.item(), step.naive.item(), step.comp.item())
            )
        self.log("")
        return EpochResult(
            self.sample_alpha is None,
            lr,
            (sum_max_student / n).item(),
            dict(zip(("teacher", "student", "agreement"), probs, strict=True)),
            (sums / n).tolist(),
        )

    def after_warmup_epoch(self) -> None:
        """The overfitting rule on the student's confidence so far; at its peak, the split; else the full-set pass.

        The original runs the full-set pass in every warm-up epoch, in case the rule later picks that epoch
        (the reference mode still does). By default only the weights of the epochs the rule may still
        pick are kept, and the pass runs once, for the epoch it picks (or the last, as the fallback),
        with that epoch's augmentation draws: the same statistic, at a fraction of the work.
        """
        state, epoch, deferred, last = self.state, self.epoch, self.computation.defer_full_pass, self.at_last_epoch
        found = state.record_warmup_epoch(
            epoch,
            self.last.mean_top_student,
            self.last.label_prob["agreement"].cpu().numpy(),
            forced=self.config.overfitting_epoch,
        )
        if found is not None:  # the student's confidence peaked at `found`: split its statistics
            for line in logfmt.overfitting_block(found):
                self.log(line)
            if deferred:
                self.calc_noise_probability(found, weights=self.snapshots.pop(found))
            self.split_dataset(found)
            self.snapshots = {}
            return
        if deferred:  # keep the weights of the epochs the rule may still pick, this one too
            self.snapshots = {e: w for e, w in self.snapshots.items() if may_still_pick(e, epoch + 1)}
            if not last:
                self.snapshots[epoch] = self.weights()
        if not deferred or last:
            self.calc_noise_probability(epoch)
        if last:  # no peak in the whole run: split the last epoch (not the original: it crashed)
            self.log(
                logfmt.ours(
                    f"no overfitting epoch found in epochs 0..{epoch}; splitting the last epoch's statistics instead"
                )
            )
            self.split_dataset(epoch)

    def calc_noise_probability(self, epoch: int, weights: Weights | None = None) -> None:
        """The full-set statistic of `epoch`: both networks in eval mode over every image of the run, with the training
        augmentation; with `weights` (a snapshot of that epoch) instead of the current ones, restored after."""
        self.stop.check(f"epoch {epoch}, full-set pass")
        current = self.weights() if weights is not None else None
        if weights is not None:
            self.load_weights(weights)
        loader = self.loaders["full"]
        if self.computation.defer_full_pass:  # (the device loader's: its augmentation can be re-drawn)
            assert isinstance(loader, DeviceLoader)
            loader.reseed(full_pass_seed(self.config.seed, epoch))  # that epoch's draws, whenever it runs
        full = evaluate(self.nets, loader, description="full set", keep_probs=True)
        if current is not None:
            self.load_weights(current)
        assert full.probs is not None  # (keep_probs)
        self.state.add_full_stat(
            epoch, *(v.cpu().numpy() for v in (full.label_prob, full.agreed, full.agreed_prob, full.probs))
        )

    def split_dataset(self, epoch: int) -> None:
        """Otsu split of `epoch`'s statistics: the training groups of the robust phase, and detection.npy."""
        state, log = self.state, self.log
        detected = state.split_at(epoch)
        assert state.groups is not None and state.split is not None and state.full_split is not None  # (split_at's)
        self.sample_alpha = group_alphas(state.groups, self.config.alphas, self.job.device)
        for which, result in (("training split", state.split), ("full set", state.full_split)):
            if state.overfit_epoch is None:  # the fallback: not the original's split, so not its lines
                log(
                    logfmt.ours(
                        f"fallback Otsu split of epoch {epoch} ({which}): up_mean {result['mu2']:0.5f}, up_sigma "
                        f"{result['sigma2']:0.5f}, lo_mean {result['mu1']:0.5f}, lo_sigma {result['sigma1']:0.5f}, "
                        f"thresh {result['threshold']:0.5f}"
                    )
                )
            else:
                for line in logfmt.otsu_block(result):
                    log(line)
        sizes = np.bincount(state.groups, minlength=5)[1:]
        log(
            logfmt.ours(
                f"split of epoch {epoch}: training groups G1-G4 {sizes.tolist()}; "
                f"{int(detected.sum())} of {len(detected)} labels flagged as noisy (detection.npy)"
            )
        )
        truly_noisy = self.job.data.truly_noisy  # None without clean labels (custom data)
        if truly_noisy is not None and truly_noisy.any():
            d = detection_scores(detected, truly_noisy)
            log(
                logfmt.ours(
                    f"detection against the clean labels: precision {d['precision']:.4f}, recall "
                    f"{d['recall']:.4f}, F1 {d['f1']:.4f}"
                )
            )
            state.ranking = ranking_scores(state.stats[epoch]["full"], truly_noisy)
            log(logfmt.ours(ranking_line(state.ranking)))
        self.tell("split")

    def validate_and_test(self) -> None:
        """Noisy validation (a new best is a checkpoint) and clean test accuracy, at e % freq == 0 and the last
        epoch."""
        c, state, epoch, log, last = self.config, self.state, self.epoch, self.log, self.at_last_epoch
        autograd = self.computation.eval_autograd
        if epoch % c.noisy_val_freq == 0 or last:
            self.stop.check(f"epoch {epoch}, validation")
            acc = evaluate(self.nets, self.loaders["val"], autograd=autograd, description="validation").accuracy
            state.val_acc.append([epoch, acc])
            if acc > state.best_val:
                log(logfmt.new_best(state.best_val, state.best_epoch))
                state.best_val, state.best_epoch = acc, epoch
                self.tell("save_models", "best_val", True)
            log(logfmt.validation(epoch, acc, state.best_val, state.best_epoch))
        if "test" in self.loaders and (epoch % c.clean_test_freq == 0 or last):
            self.stop.check(f"epoch {epoch}, test")
            acc = evaluate(self.nets, self.loaders["test"], autograd=autograd, description="test").accuracy
            state.test_acc.append([epoch, acc])
            if acc > state.best_test:
                state.best_test, state.best_test_epoch = acc, epoch
            log(logfmt.test(epoch, acc, state.best_test, state.best_test_epoch))

    def end_of_training(self) -> None:
        """The last epoch's weights; the best-by-validation ones stay, where the original overwrote them (README,
        'Differences from the original'; the reference mode's end save is also the best checkpoint, as the
        original's)."""
        overwrites = self.computation.end_save_overwrites_best
        if not overwrites and self.state.best_val == 0.0:  # never a validation accuracy above 0
            self.log(logfmt.ours("no validation accuracy above 0; the best-by-validation weights are the last epoch's"))
            self.tell("save_models", "best_val", True)
        self.tell("save_models", "end_of_training", overwrites)
        self.log(logfmt.END_SAVE)

    # --- weights and the resume state -------------------------------------------------------------------------------
    def weights(self) -> Weights:
        """A copy of both networks' weights (on their device)."""
        return {
            name: {k: v.detach().clone() for k, v in net.state_dict().items()}
            for name, net in (("teacher", self.teacher), ("student", self.student))
        }

    def load_weights(self, weights: Weights) -> None:
        """Both networks' weights from a copy (weights(), or a resume state's)."""
        self.teacher.load_state_dict(weights["teacher"])
        self.student.load_state_dict(weights["student"])

    def resume_state(self) -> dict[str, Any]:
        """Everything needed to continue after the epoch just completed exactly (with the same data, flags and thread
        count), as a copy in host memory: CPU tensors only, which a CPU-only machine can read, and which the training
        goes on without."""
        return host_copy(
            {
                "epoch": self.epoch + 1,
                "teacher": self.teacher.state_dict(),
                "student": self.student.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.nets.precision.scaler.state_dict(),
                "method": self.state.state_dict(),
                "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()},
                "rng": rng_state(self.job.device),
                "snapshots": self.snapshots,
            }
        )

    def restore(self, saved: Saved) -> int:
        """Load a Saved resume state; returns the epoch to continue with. Another structure is one line (exit 3)."""
        device, state = self.job.device, saved.state
        try:
            self.load_weights(state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.nets.precision.scaler.load_state_dict(state["scaler"])
            for view, loader in self.loaders.items():
                loader.load_state_dict(state["loaders"][view])
            set_rng_state(state["rng"], device)
            self.snapshots = {
                e: {net: {k: v.to(device) for k, v in w.items()} for net, w in weights.items()}
                for e, weights in (state.get("snapshots") or {}).items()
            }
            self.state = MethodState.from_state_dict(state["method"])
            return int(state["epoch"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise DataError(
                f"{saved.path}: not a resume state of this run ({type(err).__name__}: {first_line(err)}); "
                "start again with --overwrite"
            ) from None


def build_loaders(job: Job) -> dict[str, Loader]:
    """The full training set (detection, with the training augmentation), the training split, the noisy validation
    split and the clean test set, built in the original's order."""
    config, data, computation = job.config, job.data, job.computation
    info, x = data.info, data.images
    assert x is not None  # (a run trains on images: only detection.py loads labels alone)
    base = LoaderSpec(
        computation.eval_batch_size,
        job.device,
        info["mean"],
        info["std"],
        seed=config.seed,
        num_workers=config.num_workers,
        kind=computation.loader,
    )
    augmented = replace(base, augment={"pad_mode": info["pad_mode"], "flip_first": info["flip_first"]})
    val = base
    # the original's defect (README, 'Differences')
    if data.name == "cifar100" and computation.legacy_cifar100_val_norm:
        val = replace(base, mean=DATASETS["cifar10"]["mean"], std=DATASETS["cifar10"]["std"])
    loaders = {"full": make_loader(x, data.labels, augmented)}
    if computation.loader == "torchvision" and len(data.train_pos) % config.batch_size == 1 and x.shape[1] < 16:
        raise UsageError(
            f"--batch_size {config.batch_size} leaves a last training batch of one {x.shape[1]}x{x.shape[1]} "
            "image, on which BatchNorm cannot train with the PIL loader; pick another --batch_size"
        )
    train = replace(augmented, batch_size=config.batch_size, shuffle=True, merge_single=True)
    loaders["train"] = make_loader(x[data.train_pos], data.labels[data.train_pos], train)
    # --val_ratio 0: select on the training loader
    loaders["val"] = (
        make_loader(x[data.val_pos], data.labels[data.val_pos], val) if len(data.val_pos) else loaders["train"]
    )
    if data.x_test is not None and data.y_test is not None:
        loaders["test"] = make_loader(data.x_test, data.y_test, base)
    return loaders


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    bad = int(first_bad)
    if bad >= 0:
        raise DivergedError(
            f"non-finite loss at epoch {epoch}, iteration {bad} (lower --lr); stopped before saving the epoch"
        )
