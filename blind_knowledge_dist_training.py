"""Train teacher and student with Blind Knowledge Distillation on CIFAR-N (spec sections 2-5).

Read top to bottom: flags, data, networks, then the epoch loop (warm-up until the
overfitting epoch is found, then the robust phase), writing checkpoints,
detection.npy, metrics.json and a resumable state into the run directory.
"""
import os
import time

import numpy as np
import torch

from bkd.engine import Precision, StopFlag, evaluate, group_alphas, train_epoch
from bkd.state import MethodState
from data.cifar import DATASETS, dataset_info
from data.loaders import make_loader
from data.setup import load_run_data
from models import PreResNet18
from utils import checkpoint as ck
from utils.cli import base_parser, parse, require_positive, require_unit_interval
from utils.errors import DataError, UsageError, first_line, run_cli
from utils.files import save_json, save_numpy, save_torch
from utils.metrics import detection_scores
from utils.runtime import resolve_device, rng_state, set_global_seeds, set_rng_state

# Flags whose value must match when a run is resumed.
RESUME_MUST_MATCH = (
    "dataset", "noise_type", "seed", "lr", "val_ratio", "n_epoch", "batch_size", "momentum", "weight_decay",
    "alpha1", "alpha2", "alpha3", "alpha4", "width", "subset", "lr_step", "noisy_val_freq", "detach_robust_target",
)


def build_parser():
    p = base_parser("Blind Knowledge Distillation training (teacher + student).")
    p.add_argument("--batch_size", type=int, default=128, help="training batch size")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay")
    p.add_argument("--clean_test_freq", type=int, default=10, help="report clean test accuracy every this many epochs (and the last)")
    p.add_argument("--noisy_val_freq", type=int, default=10, help="validate (and keep the best checkpoint) every this many epochs (and the last)")
    p.add_argument("--alpha1", type=float, default=0.30, help="robust-phase alpha of group 1 (most trusted)")
    p.add_argument("--alpha2", type=float, default=0.45, help="robust-phase alpha of group 2")
    p.add_argument("--alpha3", type=float, default=0.55, help="robust-phase alpha of group 3")
    p.add_argument("--alpha4", type=float, default=0.70, help="robust-phase alpha of group 4 (flagged as noisy)")
    # Ours (README, 'Flags added to the original')
    p.add_argument("--width", type=int, default=64, help="channels of the first stage of PreResNet18 (64 = original)")
    p.add_argument("--lr_step", type=int, default=150, help="StepLR step size in epochs (gamma 0.1)")
    p.add_argument("--subset", type=int, default=0, help="train on a stratified, seeded subset of this many images (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory from its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in the run directory")
    p.add_argument("--loader", choices=("device", "torchvision"), default="device", help="input pipeline: batched on the device, or the original's PIL workers")
    p.add_argument("--eval_batch_size", type=int, default=0, help="batch size of evaluation passes (0 = 1024 on CUDA, 256 on CPU)")
    p.add_argument("--no_amp", action="store_true", help="CUDA: train in fp32 instead of bf16/fp16 mixed precision")
    p.add_argument("--no_channels_last", action="store_true", help="keep the NCHW memory format (channels-last is faster on CUDA and CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--detach_robust_target", action="store_true", help="not the original: no gradient from the robust target into the student")
    p.add_argument("--legacy_cifar100_val_norm", action="store_true", help="normalise the CIFAR-100 validation set with CIFAR-10 statistics, as the original")
    return p


def check_args(args):
    require_positive(args, "n_epoch", "batch_size", "lr", "print_freq", "clean_test_freq", "noisy_val_freq", "width", "lr_step")
    if args.eval_batch_size < 0:
        raise UsageError(f"--eval_batch_size {args.eval_batch_size} must be positive (0 = automatic)")
    require_unit_interval(args, "alpha1", "alpha2", "alpha3", "alpha4")
    if args.subset < 0:
        raise UsageError(f"--subset {args.subset} must be 0 (all images) or a positive count")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    if args.num_workers < 0:
        raise UsageError(f"--num_workers {args.num_workers} must be >= 0")


def log(message):
    print(message, flush=True)


def main(argv=None):
    args = parse(build_parser(), argv)
    check_args(args)
    device = resolve_device(args.device)
    run = ck.RunDir(ck.resolve_run_dir(args)).open(resume=args.resume, overwrite=args.overwrite)
    try:
        train(args, device, run)
    finally:
        run.close()


def train(args, device, run):
    set_global_seeds(args.seed)
    info = dataset_info(args.dataset)
    if not args.eval_batch_size:
        args.eval_batch_size = 1024 if device.type == "cuda" else 256
    data = load_run_data(args)
    num_classes = info["num_classes"]

    # Three views of the training images (spec section 2) and the clean test set.
    augment = {"pad_mode": info["pad_mode"], "flip_first": info["flip_first"]}
    norm = {"mean": info["mean"], "std": info["std"]}
    val_norm = dict(norm)
    if args.dataset == "cifar100" and args.legacy_cifar100_val_norm:
        val_norm = {"mean": DATASETS["cifar10"]["mean"], "std": DATASETS["cifar10"]["std"]}
    common = {"device": device, "seed": args.seed, "num_workers": args.num_workers}
    x_full = data.x_full
    train_loader = make_loader(args.loader, x_full[data.train_pos], data.noisy[data.train_pos], batch_size=args.batch_size,
                               shuffle=True, augment=augment, **norm, **common)
    full_loader = make_loader(args.loader, x_full, data.noisy, batch_size=args.eval_batch_size, augment=augment, **norm, **common)
    val_loader = (
        make_loader(args.loader, x_full[data.val_pos], data.noisy[data.val_pos], batch_size=args.eval_batch_size, **val_norm, **common)
        if len(data.val_pos) else train_loader  # --val_ratio 0: select on the training loader, as the original
    )
    test_loader = make_loader(args.loader, data.images.x_test, data.images.y_test, batch_size=args.eval_batch_size, **norm, **common)
    loaders = {"train": train_loader, "full": full_loader, "val": val_loader, "test": test_loader}

    # Teacher and student: the same architecture, one SGD optimiser over both (spec section 3).
    teacher = PreResNet18(num_classes, args.width).to(device)
    student = PreResNet18(num_classes, args.width).to(device)
    channels_last = not args.no_channels_last
    if channels_last:
        teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.1)
    precision = Precision(device, enabled=not args.no_amp)
    net_t, net_s = (torch.compile(teacher), torch.compile(student)) if args.compile else (teacher, student)

    state, start_epoch = MethodState(), 0
    if args.resume:
        state, start_epoch = restore(run, args, teacher, student, optimizer, scheduler, precision, loaders)
        log(f"Resumed {run.path} after epoch {start_epoch} of {args.n_epoch}")
    else:
        run.clear()  # --overwrite: only now that data and networks are ready
        if args.subset:
            save_numpy(data.subset, run.file("train_subset.npy"))
    log(f"BKD training: {args.dataset} {args.noise_type}, seed {args.seed}, {len(data.train_pos)} training / "
        f"{len(data.val_pos)} validation / {len(data.noisy)} detection images, PreResNet18 width {args.width}, "
        f"device {device} ({precision.name}), loader {args.loader}, run directory {run.path}")
    alphas = (args.alpha1, args.alpha2, args.alpha3, args.alpha4)
    sample_alpha = None if state.warmup else group_alphas(state.groups, alphas, device)
    stop = StopFlag().install()
    total_start = time.time()

    for epoch in range(start_epoch, args.n_epoch):
        epoch_start = time.time()
        last = epoch == args.n_epoch - 1
        phase = "warm-up" if state.warmup else "robust"
        out = train_epoch(net_t, net_s, train_loader, optimizer, precision, epoch=epoch, n_epoch=args.n_epoch,
                          sample_alpha=sample_alpha, detach_target=args.detach_robust_target, print_freq=args.print_freq,
                          channels_last=channels_last, stop=stop, log=log)
        scheduler.step()
        state.mean_top_all.append(out["mean_top_student"])
        log(f"Epoch {epoch + 1} ({phase}): loss {out['loss']:.4f}, naive loss {out['naive']:.4f}, compensation loss "
            f"{out['comp']:.4f}, student mean top probability {out['mean_top_student']:.4f}")

        if state.warmup:
            # The full-set statistic, kept per warm-up epoch for detection (spec 4.5).
            stop.check(f"epoch {epoch + 1}, full-set pass")
            _, full_stat = evaluate(net_t, net_s, full_loader, precision, channels_last)
            found = state.record_warmup_epoch(epoch, out["mean_top_student"], out["label_agreement"], full_stat)
            split_epoch = None
            if found is not None:
                log(f"Overfitting epoch found: {found + 1} (student confidence peak); robust phase from epoch {epoch + 2}")
                split_epoch = found
            elif last:
                log(f"No overfitting epoch found in {args.n_epoch} epochs; splitting at the last epoch {epoch + 1} instead")
                split_epoch = epoch
            if split_epoch is not None:
                detected = state.split_at(split_epoch)
                sample_alpha = group_alphas(state.groups, alphas, device)
                report_split(state, detected, data.noisy != data.clean)
                save_numpy(detected, run.file(ck.DETECTION))
                save_numpy(state.stats[split_epoch]["full"], run.file(ck.AGREEMENT))

        if (epoch + 1) % args.noisy_val_freq == 0 or last:
            stop.check(f"epoch {epoch + 1}, validation")
            acc, _ = evaluate(net_t, net_s, val_loader, precision, channels_last)
            state.val_acc.append([epoch + 1, acc])
            log(f"Epoch {epoch + 1}: noisy validation accuracy {acc:.4f} %")
            if acc > state.best_val:
                state.best_val, state.best_epoch = acc, epoch + 1
                ck.save_model(teacher, run.file(ck.TEACHER), epoch + 1, num_classes, args.width)
                ck.save_model(student, run.file(ck.STUDENT), epoch + 1, num_classes, args.width)
                log(f"New best validation accuracy {acc:.4f} %: saved {ck.TEACHER} and {ck.STUDENT}")
        if (epoch + 1) % args.clean_test_freq == 0 or last:
            stop.check(f"epoch {epoch + 1}, test")
            acc, _ = evaluate(net_t, net_s, test_loader, precision, channels_last)
            state.test_acc.append([epoch + 1, acc])
            log(f"Epoch {epoch + 1}: clean test accuracy {acc:.4f} %")
        if last:
            ck.save_model(teacher, run.file(ck.TEACHER_LAST), epoch + 1, num_classes, args.width)
            ck.save_model(student, run.file(ck.STUDENT_LAST), epoch + 1, num_classes, args.width)

        state.epoch_seconds.append(time.time() - epoch_start)
        log(f"Epoch {epoch + 1} took {state.epoch_seconds[-1]:.1f} s (total {time.time() - total_start:.1f} s)")
        save_torch({
            "epoch": epoch + 1,
            "args": {k: getattr(args, k) for k in RESUME_MUST_MATCH},
            "teacher": teacher.state_dict(),
            "student": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict(),
            "method": state.state_dict(),
            "loaders": {name: loader.state_dict() for name, loader in loaders.items()},
            "rng": rng_state(),
        }, run.file(ck.STATE))
        save_json(metrics(args, state, data, epoch + 1), run.file(ck.METRICS))

    log(f"Finished: best noisy validation accuracy {state.best_val:.4f} % at epoch {state.best_epoch}; "
        f"outputs in {run.path}")


def report_split(state, detected, truly_noisy):
    s, f = state.split, state.full_split
    sizes = np.bincount(state.groups, minlength=5)[1:]
    log(f"Otsu split of epoch {state.split_epoch + 1} (training set): mu1 {s['mu1']:.4f}, mu2 {s['mu2']:.4f}, "
        f"sigma1 {s['sigma1']:.4f}, sigma2 {s['sigma2']:.4f}, threshold {s['threshold']:.3f}; "
        f"groups G1 {sizes[0]}, G2 {sizes[1]}, G3 {sizes[2]}, G4 {sizes[3]}")
    log(f"Otsu split of epoch {state.split_epoch + 1} (full set, detection): mu1 {f['mu1']:.4f}, mu2 {f['mu2']:.4f}, "
        f"sigma1 {f['sigma1']:.4f}, sigma2 {f['sigma2']:.4f}, threshold {f['threshold']:.3f}; "
        f"{int(detected.sum())} of {len(detected)} labels flagged as noisy")
    if truly_noisy.any():
        d = detection_scores(detected, truly_noisy)
        log(f"Detection against the clean labels: precision {d['precision']:.4f}, recall {d['recall']:.4f}, F1 {d['f1']:.4f}")


def metrics(args, state, data, epochs_done):
    return {
        "config": {k: v for k, v in vars(args).items()},
        "epochs_completed": epochs_done,
        "mean_top_student": state.mean_top_student,
        "mean_top_student_all_epochs": state.mean_top_all,
        "overfit_epoch": None if state.overfit_epoch is None else state.overfit_epoch + 1,
        "split_epoch": None if state.split_epoch is None else state.split_epoch + 1,
        "split_fallback": state.split_epoch is not None and state.overfit_epoch is None,
        "otsu_train": state.split,
        "otsu_full": state.full_split,
        "group_sizes": None if state.groups is None else np.bincount(state.groups, minlength=5)[1:].tolist(),
        "val_acc": state.val_acc,
        "test_acc": state.test_acc,
        "best_val_acc": state.best_val if state.best_epoch else None,
        "best_epoch": state.best_epoch,
        "epoch_seconds": state.epoch_seconds,
        "noise_rate": float(np.mean(data.noisy != data.clean)),
        "detection": None if state.detected is None else detection_scores(state.detected, data.noisy != data.clean),
    }


def restore(run, args, teacher, student, optimizer, scheduler, precision, loaders):
    path = run.file(ck.STATE)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: unreadable resume state ({first_line(err)}); start again with --overwrite") from None
    for key, value in saved["args"].items():
        if getattr(args, key) != value:
            raise UsageError(f"--{key} {getattr(args, key)} differs from the run being resumed ({value}); resume with the same flags")
    teacher.load_state_dict(saved["teacher"])
    student.load_state_dict(saved["student"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    precision.scaler.load_state_dict(saved["scaler"])
    for name, loader in loaders.items():
        loader.load_state_dict(saved["loaders"][name])
    set_rng_state(saved["rng"])
    return MethodState.from_state_dict(saved["method"]), saved["epoch"]


if __name__ == "__main__":
    run_cli(main)
