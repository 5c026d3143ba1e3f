"""Train teacher and student with Blind Knowledge Distillation on CIFAR-N (spec sections 2-5 and 7).

Read top to bottom: flags, data, networks, then the epoch loop (warm-up until the
overfitting epoch is found, then the robust phase), writing checkpoints,
detection.npy, metrics.json and a resumable state into the run directory.
Standard output carries the original's lines (0-based epochs); ours start with `[bkd] `.
"""
import time

import numpy as np
import torch

from bkd.engine import (CPU_CHANNELS_LAST_MIN_WIDTH, Precision, StopFlag, evaluate, group_alphas, train_epoch,
                        use_channels_last)
from bkd.method import first_detectable_epoch
from bkd.state import MethodState
from bkd.issues import write_label_issues
from data.cifar import DATASETS
from data.loaders import make_loader
from data.setup import load_run_data
from models import PreResNet18
from utils import checkpoint as ck
from utils import logfmt
from flags import base_parser, parse, require_non_negative, require_positive, require_unit_interval
from utils.errors import DataError, DivergedError, Interrupted, RunDirError, UsageError, first_line, run_cli
from utils.files import portable, save_json, save_numpy, save_torch
from utils.hashing import array_sha256
from utils.metrics import detection_scores, ranking_line, ranking_scores
from utils.runtime import machine_info, resolve_device, rng_state, set_global_seeds, set_rng_state
from bkd.trace import TraceRecorder, run_config, state_sha256, tensor_sha256

# Flags whose value must match when a run is resumed: every flag that changes what the run computes.
RESUME_MUST_MATCH = (
    "dataset", "noise_type", "seed", "lr", "val_ratio", "n_epoch", "batch_size", "momentum", "weight_decay",
    "alpha1", "alpha2", "alpha3", "alpha4", "width", "subset", "lr_step", "noisy_val_freq", "detach_robust_target",
    "reference", "overfitting_epoch", "loader", "image_size", "eval_batch_size", "amp", "no_channels_last", "compile",
    "legacy_cifar100_val_norm",
)
RESUME_MUST_MATCH_TORCHVISION = ("num_workers",)  # the PIL workers' random streams depend on their number
PATH_FLAGS = ("data_root", "noise_path", "results_dir", "run_dir", "trace")


def build_parser():
    p = base_parser("Blind Knowledge Distillation training (teacher + student).")
    p.set_defaults(print_freq=100)  # the original training script's default
    p.add_argument("--batch_size", type=int, default=128, help="training batch size")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay")
    p.add_argument("--clean_test_freq", type=int, default=10, help="report clean test accuracy at epochs e %% freq == 0 (and the last)")
    p.add_argument("--noisy_val_freq", type=int, default=10, help="validate (and keep the best checkpoint) at epochs e %% freq == 0 (and the last)")
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
    p.add_argument("--amp", action="store_true", help="CUDA: bf16/fp16 mixed precision (not yet validated against fp32 at full scale)")
    p.add_argument("--no_channels_last", action="store_true", help="keep the NCHW memory format (channels-last is faster on CUDA and CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile both networks")
    p.add_argument("--overfitting_epoch", type=int, default=None,
                   help="skip the confidence rule and split at this (0-based) epoch, acted upon when the rule could first have found it")
    p.add_argument("--trace", type=str, default=None, help="write the run's trace (golden-trace schema) to this JSON file")
    p.add_argument("--detach_robust_target", action="store_true", help="not the original: no gradient from the robust target into the student")
    p.add_argument("--legacy_cifar100_val_norm", action="store_true", help="normalise the CIFAR-100 validation set with CIFAR-10 statistics, as the original")
    return p


def check_args(args):
    require_positive(args, "n_epoch", "batch_size", "lr", "print_freq", "clean_test_freq", "noisy_val_freq", "width", "lr_step")
    if args.eval_batch_size < 0:
        raise UsageError(f"--eval_batch_size {args.eval_batch_size} must be positive (0 = automatic)")
    require_non_negative(args, "momentum", "weight_decay")
    require_unit_interval(args, "alpha1", "alpha2", "alpha3", "alpha4")
    if args.subset < 0:
        raise UsageError(f"--subset {args.subset} must be 0 (all images) or a positive count")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")
    if args.num_workers < 0:
        raise UsageError(f"--num_workers {args.num_workers} must be >= 0")
    if args.overfitting_epoch is not None:
        acted = first_detectable_epoch(args.overfitting_epoch)
        if args.overfitting_epoch < 0 or acted >= args.n_epoch:
            raise UsageError(f"--overfitting_epoch {args.overfitting_epoch} would be acted upon after epoch {acted}, "
                             f"outside 0..{args.n_epoch - 1}; give an epoch below {args.n_epoch - 5} or more --n_epoch")
    if args.reference:
        clash = [f"--{k}" for k in ("amp", "compile", "detach_robust_target") if getattr(args, k)]
        if clash:
            raise UsageError(f"--reference runs the original's computation; drop {', '.join(clash)}")
        # The original's computation: PIL transforms in DataLoader workers, every loader at the training batch
        # size, fp32 NCHW, its SGD call, autograd on in evaluation, CIFAR-10 statistics for CIFAR-100's validation set.
        args.loader, args.eval_batch_size, args.no_channels_last, args.legacy_cifar100_val_norm = \
            "torchvision", args.batch_size, True, True


def log(message=""):
    print(message, flush=True)


def main(argv=None):
    args = parse(build_parser(), argv)
    check_args(args)
    device = resolve_device(args.device)
    run = ck.RunDir(ck.resolve_run_dir(args)).open(resume=args.resume, overwrite=args.overwrite)
    try:
        train(args, device, run)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, and say what the directory holds
        raise Interrupted(f"interrupted; {run.describe()}") from None
    except (Interrupted, DivergedError, RunDirError) as err:
        raise type(err)(f"{err}; {run.describe()}") from None
    finally:
        run.close()


def train(args, device, run):
    time_start = time.time()
    set_global_seeds(args.seed)
    log(logfmt.device_line(device))
    log(str(device))
    if not args.eval_batch_size:
        args.eval_batch_size = 1024 if device.type == "cuda" else 256
    saved = load_resume_state(run, args) if args.resume and run.started else None
    data = load_run_data(args)
    for line in data.banner:
        log(line)
    info, num_classes = data.info, data.info["num_classes"]

    # Teacher, then student: the same architecture, one SGD optimiser over both (spec section 3).
    log(logfmt.BUILDING)
    teacher = PreResNet18(num_classes, args.width).to(device)
    student = PreResNet18(num_classes, args.width).to(device)
    log(logfmt.BUILT)
    init_hashes = (state_sha256(teacher), state_sha256(student)) if args.trace else None
    channels_last = use_channels_last(not args.no_channels_last, device, args.width)
    if channels_last != (not args.no_channels_last):
        log(logfmt.ours(f"width {args.width} < {CPU_CHANNELS_LAST_MIN_WIDTH} on the CPU: NCHW instead of channels-last "
                        "(oneDNN's 1x1 kernels fail on narrow channels-last convolutions; README, 'Performance')"))
    if channels_last:
        teacher, student = (m.to(memory_format=torch.channels_last) for m in (teacher, student))
    optimizer = torch.optim.SGD(list(teacher.parameters()) + list(student.parameters()), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, foreach=None if args.reference else True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.1)
    precision = Precision(device, amp=args.amp)
    net_t, net_s = (torch.compile(teacher), torch.compile(student)) if args.compile else (teacher, student)

    # Four views, built in the original's order: the full training set (for detection, with the
    # training augmentation), the training split, the noisy validation split and the clean test set.
    augment = {"pad_mode": info["pad_mode"], "flip_first": info["flip_first"]}
    norm = {"mean": info["mean"], "std": info["std"]}
    val_norm = dict(norm)
    if args.dataset == "cifar100" and args.legacy_cifar100_val_norm:
        val_norm = {"mean": DATASETS["cifar10"]["mean"], "std": DATASETS["cifar10"]["std"]}
    common = {"device": device, "seed": args.seed, "num_workers": args.num_workers}
    x_full = data.x_full
    full_loader = make_loader(args.loader, x_full, data.noisy, batch_size=args.eval_batch_size, augment=augment, **norm, **common)
    if args.loader == "torchvision" and len(data.train_pos) % args.batch_size == 1 and x_full.shape[1] < 16:
        raise UsageError(f"--batch_size {args.batch_size} leaves a last training batch of one {x_full.shape[1]}x{x_full.shape[1]} "
                         "image, on which BatchNorm cannot train with the PIL loader; pick another --batch_size")
    train_loader = make_loader(args.loader, x_full[data.train_pos], data.noisy[data.train_pos], batch_size=args.batch_size,
                               shuffle=True, augment=augment, merge_single=True, **norm, **common)
    val_loader = (
        make_loader(args.loader, x_full[data.val_pos], data.noisy[data.val_pos], batch_size=args.eval_batch_size, **val_norm, **common)
        if len(data.val_pos) else train_loader  # --val_ratio 0: select on the training loader, as the original
    )
    test_loader = None if data.x_test is None else make_loader(args.loader, data.x_test, data.y_test,
                                                               batch_size=args.eval_batch_size, **norm, **common)
    loaders = {name: loader for name, loader in (("full", full_loader), ("train", train_loader), ("val", val_loader),
                                                  ("test", test_loader)) if loader is not None}

    state, start_epoch = MethodState(), 0
    fingerprint = data_fingerprint(data)
    if saved is not None:
        check_resumable_data(saved, fingerprint, run.file(ck.STATE))
        state, start_epoch = restore(saved, run.file(ck.STATE), teacher, student, optimizer, scheduler, precision, loaders)
        log(logfmt.ours(f"resumed {portable(run.path)} after epoch {start_epoch - 1} of 0..{args.n_epoch - 1}"))
    else:
        run.start_fresh()  # leftovers go, an --overwritten run goes aside: only now that data and networks are ready
        if args.subset:
            save_numpy(data.subset, run.file(ck.SUBSET))
    for notice in run.notices:
        log(logfmt.ours(notice))
    recorder = TraceRecorder(args.trace, resume_epoch=start_epoch) if args.trace else None
    if recorder is not None and not start_epoch:
        recorder.config(**run_config(args, data, init_hashes))
    log(logfmt.ours(f"{args.dataset} {args.noise_type}, seed {args.seed}: {len(data.train_pos)} training / "
                    f"{len(data.val_pos)} validation / {len(data.noisy)} detection images, PreResNet18 width {args.width}, "
                    f"device {device} ({precision.name}), {'reference mode' if args.reference else 'loader ' + args.loader}, "
                    f"run directory {portable(run.path)}"))
    alphas = (args.alpha1, args.alpha2, args.alpha3, args.alpha4)
    sample_alpha = None if state.warmup else group_alphas(state.groups, alphas, device)
    truly_noisy = data.truly_noisy  # None without clean labels (custom data)
    machine = machine_info()  # for metrics.json, rewritten every epoch
    stop = StopFlag().install()

    def save_pair(teacher_name, student_name, epoch, kind):
        ck.save_model(teacher, run.file(teacher_name), epoch, num_classes, args.width)
        ck.save_model(student, run.file(student_name), epoch, num_classes, args.width)
        if recorder is not None:
            recorder.checkpoint(kind, epoch, teacher, student)

    def split(epoch, now, fallback):
        """Otsu-split the statistics of `epoch` (after epoch `now`): training groups, detection.npy (spec 4.6)."""
        nonlocal sample_alpha
        detected = state.split_at(epoch)
        sample_alpha = group_alphas(state.groups, alphas, device)
        for which, result in (("training split", state.split), ("full set", state.full_split)):
            if fallback:  # not the original's split, so not its lines
                log(logfmt.ours(f"fallback Otsu split of epoch {epoch} ({which}): up_mean {result['mu2']:0.5f}, up_sigma "
                                f"{result['sigma2']:0.5f}, lo_mean {result['mu1']:0.5f}, lo_sigma {result['sigma1']:0.5f}, "
                                f"thresh {result['threshold']:0.5f}"))
            else:
                for line in logfmt.otsu_block(result):
                    log(line)
        save_numpy(detected, run.file(ck.DETECTION))
        full = state.stats[epoch]
        save_numpy(full["full"], run.file(ck.AGREEMENT))
        write_label_issues(run.file(ck.LABEL_ISSUES), data.noisy, full["full"], full["full_agreed"], full["full_agreed_prob"],
                           state.full_groups, data.classes, data.ids[data.subset])
        sizes = np.bincount(state.groups, minlength=5)[1:]
        log(logfmt.ours(f"split of epoch {epoch}: training groups G1-G4 {sizes.tolist()}; "
                        f"{int(detected.sum())} of {len(detected)} labels flagged as noisy (detection.npy)"))
        if truly_noisy is not None and truly_noisy.any():
            d = detection_scores(detected, truly_noisy)
            log(logfmt.ours(f"detection against the clean labels: precision {d['precision']:.4f}, recall {d['recall']:.4f}, "
                            f"F1 {d['f1']:.4f}"))
            state.ranking = ranking_scores(full["full"], truly_noisy)
            log(logfmt.ours(ranking_line(state.ranking)))
        if recorder is not None:
            recorder.split(state.overfit_epoch, None if fallback else now, state.stats[epoch]["train"], state.split,
                           state.groups, state.stats[epoch]["full"], state.full_split, state.full_groups,
                           fallback_epoch=epoch if fallback else None)
            recorder.detection(run.file(ck.DETECTION), detected)

    for epoch in range(start_epoch, args.n_epoch):
        epoch_start = time.time()
        last = epoch == args.n_epoch - 1
        phase = "warm-up" if state.warmup else "robust"
        if recorder is not None:
            recorder.start_epoch()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "mean_max_student_prob": None}
        log(logfmt.epoch_start(epoch))
        out = train_epoch(net_t, net_s, train_loader, optimizer, precision, epoch=epoch, n_epoch=args.n_epoch,
                          num_classes=num_classes, sample_alpha=sample_alpha, detach_target=args.detach_robust_target,
                          print_freq=args.print_freq, channels_last=channels_last, stop=stop, log=log, recorder=recorder)
        state.mean_top_all.append(out["mean_top_student"])

        if state.warmup:
            probs = out["probs"].cpu().numpy()
            row.update(mean_max_student_prob=out["mean_top_student"], train_agreement_sha256=tensor_sha256(probs[2]),
                       train_teacher_prob_sha256=tensor_sha256(probs[0]), train_student_prob_sha256=tensor_sha256(probs[1]))
            found = state.end_warmup_epoch(epoch, out["mean_top_student"], probs[2], forced=args.overfitting_epoch)
            if found is not None:
                # The student's confidence peaked at `found`: split its statistics now (no full-set pass this epoch).
                row["overfitting_epoch_found"] = found
                for line in logfmt.overfitting_block(found):
                    log(line)
                split(found, epoch, fallback=False)
            else:
                # The full-set statistic, kept per warm-up epoch for detection (spec 4.5).
                stop.check(f"epoch {epoch}, full-set pass")
                full = evaluate(net_t, net_s, full_loader, precision, channels_last, description="full set")
                state.add_full_stat(epoch, full.label_prob.cpu().numpy(), full.agreed.cpu().numpy(),
                                    full.agreed_prob.cpu().numpy())
                row["full_agreement_sha256"] = tensor_sha256(full.label_prob)
                if last:
                    log(logfmt.ours(f"no overfitting epoch found in epochs 0..{epoch}; splitting the last epoch's statistics instead"))
                    split(epoch, epoch, fallback=True)

        if epoch % args.noisy_val_freq == 0 or last:
            stop.check(f"epoch {epoch}, validation")
            acc = evaluate(net_t, net_s, val_loader, precision, channels_last, autograd=args.reference, description="validation").accuracy
            row["val_acc"] = acc
            state.val_acc.append([epoch, acc])
            if acc > state.best_val:
                log(logfmt.new_best(state.best_val, state.best_epoch))
                state.best_val, state.best_epoch = acc, epoch
                save_pair(ck.TEACHER, ck.STUDENT, epoch, "best_val")
            log(logfmt.validation(epoch, acc, state.best_val, state.best_epoch))
        if test_loader is not None and (epoch % args.clean_test_freq == 0 or last):
            stop.check(f"epoch {epoch}, test")
            acc = evaluate(net_t, net_s, test_loader, precision, channels_last, autograd=args.reference, description="test").accuracy
            row["test_acc"] = acc
            state.test_acc.append([epoch, acc])
            if acc > state.best_test:
                state.best_test, state.best_test_epoch = acc, epoch
            log(logfmt.test(epoch, acc, state.best_test, state.best_test_epoch))
        if last:
            if args.reference:  # the original overwrites the best-by-validation checkpoint here (spec section 6)
                save_pair(ck.TEACHER, ck.STUDENT, epoch, "end_of_training")
            elif not run.has(ck.TEACHER):  # no validation accuracy above 0: the last epoch is the best there is
                log(logfmt.ours(f"no validation accuracy above 0; {ck.TEACHER} / {ck.STUDENT} hold the last epoch"))
                save_pair(ck.TEACHER, ck.STUDENT, epoch, "best_val")
            ck.save_model(teacher, run.file(ck.TEACHER_LAST), epoch, num_classes, args.width)
            ck.save_model(student, run.file(ck.STUDENT_LAST), epoch, num_classes, args.width)
            if recorder is not None and not args.reference:
                recorder.checkpoint("end_of_training", epoch, teacher, student)
            log(logfmt.END_SAVE)

        state.epoch_seconds.append(time.time() - epoch_start)
        log(logfmt.ours(f"epoch {epoch} ({phase}): loss {out['loss']:.4f}, naive loss {out['naive']:.4f}, compensation "
                        f"loss {out['comp']:.4f}, student mean top probability {out['mean_top_student']:.4f}, "
                        f"{state.epoch_seconds[-1]:.1f} s"))
        log(logfmt.elapsed(epoch, time.time() - time_start))
        log()
        scheduler.step()
        save_torch({
            "epoch": epoch + 1,
            "args": resume_flags(args),
            "data": fingerprint,
            "num_threads": torch.get_num_threads(),
            "teacher": teacher.state_dict(),
            "student": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": precision.scaler.state_dict(),
            "method": state.state_dict(),
            "loaders": {name: loader.state_dict() for name, loader in loaders.items()},
            "rng": rng_state(),
        }, run.file(ck.STATE))
        save_json(metrics(args, state, data, epoch + 1, machine), run.file(ck.METRICS))
        run.epoch_completed()
        if recorder is not None:
            recorder.epoch(row, teacher, student)
            recorder.save()

    log(logfmt.ours(f"finished: best noisy validation accuracy {state.best_val:.2f} % at epoch {state.best_epoch}; "
                    f"outputs in {portable(run.path)}"))


def metrics(args, state, data, epochs_done, machine):
    return {
        "config": {k: portable(v) if k in PATH_FLAGS else v for k, v in vars(args).items()},
        "machine": machine,
        "epochs_completed": epochs_done,
        "mean_top_student": state.mean_top_student,
        "mean_top_student_all_epochs": state.mean_top_all,
        "overfit_epoch": state.overfit_epoch,
        "split_epoch": state.split_epoch,
        "split_fallback": state.split_epoch is not None and state.overfit_epoch is None,
        "otsu_train": state.split,
        "otsu_full": state.full_split,
        "group_sizes": None if state.groups is None else np.bincount(state.groups, minlength=5)[1:].tolist(),
        "val_acc": state.val_acc,
        "test_acc": state.test_acc,
        "best_val_acc": state.best_val if state.val_acc else None,
        "best_epoch": state.best_epoch,
        "epoch_seconds": state.epoch_seconds,
        "noise_rate": None if data.truly_noisy is None else float(np.mean(data.truly_noisy)),
        "detection": None if state.detected is None or data.truly_noisy is None else
        dict(detection_scores(state.detected, data.truly_noisy), **(state.ranking or {})),
    }


def resume_flags(args):
    names = RESUME_MUST_MATCH + (RESUME_MUST_MATCH_TORCHVISION if args.loader == "torchvision" else ())
    return {k: getattr(args, k) for k in names}


def data_fingerprint(data):
    """What a resumed run must find again: the images and labels it trains on, its subset, split and test set."""
    test = () if data.x_test is None else (data.x_test, data.y_test)
    return {
        "images": array_sha256(data.x_full),
        "labels": array_sha256(np.asarray(data.noisy, dtype=np.int64)),
        "subset": array_sha256(np.asarray(data.subset, dtype=np.int64)),
        "split": array_sha256(np.asarray(data.train_pos, dtype=np.int64), np.asarray(data.val_pos, dtype=np.int64)),
        "test": array_sha256(*test),
        "num_images": len(data.subset),
    }


FINGERPRINT_NAMES = {"images": "the training images", "labels": "the training labels (label file or --noise_path)",
                     "subset": "the training subset", "split": "the validation split", "test": "the test set",
                     "num_images": "the number of training images"}


def load_resume_state(run, args):
    """The resume state of a started run, checked against the flags before any data is loaded."""
    path = run.file(ck.STATE)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: unreadable resume state ({first_line(err)}); start again with --overwrite") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict):
        raise DataError(f"{path}: not a resume state of this project; start again with --overwrite")
    flags = saved["args"]
    for key, value in resume_flags(args).items():
        if key in flags and flags[key] != value:
            raise UsageError(f"--{key} {value} differs from the run being resumed ({flags[key]}); resume with the same flags, "
                             "or start a new run with --overwrite")
    return saved


def check_resumable_data(saved, fingerprint, path):
    """Refuse, in one line, to resume a run on other data; a thread count may differ, with a notice."""
    recorded = saved.get("data")
    if recorded is None:
        log(logfmt.ours(f"{path} records no data fingerprint (an earlier version wrote it): the data is not checked"))
    else:
        for key, name in FINGERPRINT_NAMES.items():
            if recorded.get(key) != fingerprint[key]:
                raise DataError(f"{name} differ from those of the run being resumed ({key} {fingerprint[key]} vs "
                                f"{recorded.get(key)}); resume with the same data, or start a new run with --overwrite")
    threads = saved.get("num_threads")
    if threads is not None and threads != torch.get_num_threads():
        log(logfmt.ours(f"resuming with {torch.get_num_threads()} threads where the run used {threads}: it continues, but its "
                        "result is no longer bit-equal to an uninterrupted run (float sums round differently)"))


def restore(saved, path, teacher, student, optimizer, scheduler, precision, loaders):
    try:
        teacher.load_state_dict(saved["teacher"])
        student.load_state_dict(saved["student"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        precision.scaler.load_state_dict(saved["scaler"])
        for name, loader in loaders.items():
            loader.load_state_dict(saved["loaders"][name])
        set_rng_state(saved["rng"])
        return MethodState.from_state_dict(saved["method"]), int(saved["epoch"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        raise DataError(f"{path}: not a resume state of this run ({type(err).__name__}: {first_line(err)}); "
                        "start again with --overwrite") from None

if __name__ == "__main__":
    run_cli(main)
