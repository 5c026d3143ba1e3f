"""Learning task: clean test accuracy of a trained run's teacher-student agreement (docs/method.md, 'One epoch').

Prints the original's start-up lines and its `Best test acc selected by val is <acc>` line
(for teacher.pth.tar / student.pth.tar), then ours, prefixed `[bkd] `, for the last epoch.
"""

if __name__ == "__main__":  # Ctrl-C while the libraries load: one line, not a traceback (utils/errors.py)
    from bkd.utils.stops import interrupt_quietly_while_starting

    interrupt_quietly_while_starting()

import argparse
import os
from collections.abc import Sequence
from typing import Any

import torch

from bkd import rundir as rd
from bkd.config import ORIGINAL_TEST_BATCH, resolve_evaluation
from bkd.data.loaders import Loader, LoaderSpec, make_loader
from bkd.engine import Nets, Precision, evaluate
from bkd.evaluations import evaluated_data, evaluating
from bkd.models import PreResNet18
from bkd.utils import logfmt
from bkd.utils.checkpoint import load_model
from bkd.utils.cuda import cuda_settings
from bkd.utils.devices import resolve_device
from bkd.utils.errors import DataError, run_cli
from bkd.utils.files import update_json
from bkd.utils.seeds import set_global_seeds
from bkd.utils.stops import stop_on_signals
from flags import Parser, base_parser, data_selection, parse, run_dir_path, training_config


def build_parser() -> Parser:
    p = base_parser("Evaluate a BKD run on the clean test set (agreement of teacher and student).")
    p.add_argument(
        "--eval_batch_size",
        type=int,
        default=256,
        help=f"batch size of the test pass ({ORIGINAL_TEST_BATCH} with --reference)",
    )
    return p


def load_pair(run_dir: str, teacher_name: str, student_name: str, device: torch.device) -> tuple[Nets, dict[str, Any]]:
    """The pair of checkpoints as Nets (fp32, NCHW) on `device`, and the teacher's checkpoint."""
    build = lambda num_classes, width: PreResNet18(num_classes, width)  # noqa: E731
    teacher, t_ckpt = load_model(os.path.join(run_dir, teacher_name), build)
    student, s_ckpt = load_model(os.path.join(run_dir, student_name), build)
    if t_ckpt.get("epoch") != s_ckpt.get("epoch"):
        raise DataError(
            f"{run_dir}: {teacher_name} (epoch {t_ckpt.get('epoch')}) and {student_name} "
            f"(epoch {s_ckpt.get('epoch')}) are from different epochs"
        )
    return Nets(teacher.to(device), student.to(device), Precision(device)), t_ckpt


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(build_parser(), argv)
    config = training_config(args)
    set_global_seeds(config.seed)
    device = resolve_device(args.device)
    print(logfmt.device_line(device))
    run_dir = run_dir_path(args)
    stop_on_signals(
        f"learning.py stopped before writing its result ({os.path.join(run_dir, rd.METRICS)} is as it was); "
        "run it again"
    )
    with evaluating(run_dir, needs=(rd.TEACHER, rd.STUDENT)) as metrics:
        evaluate_run(args, device, run_dir, metrics)


def evaluate_run(args: argparse.Namespace, device: torch.device, run_dir: str, metrics: dict[str, Any]) -> None:
    """The run's test accuracy (best-by-validation and last pair) into metrics.json."""
    selection = data_selection(args)
    data = evaluated_data(selection, training_config(args), run_dir, metrics)
    print(logfmt.BUILDING)
    nets, ckpt = load_pair(run_dir, rd.TEACHER, rd.STUDENT, device)
    print(logfmt.BUILT)
    width, trained = ckpt["state_dict"]["conv1.weight"].shape[0], (metrics.get("config") or {}).get("width")
    if trained is not None and width != trained:
        raise DataError(
            f"{run_dir}: {rd.TEACHER} holds a network of width {width}, and the run was trained at --width "
            f"{trained}: not this run's checkpoints; put its own back, or train the run again (--overwrite)"
        )
    num_classes = data.info["num_classes"]
    if ckpt["state_dict"]["linear.weight"].shape[0] != num_classes:
        raise DataError(
            f"{run_dir}: checkpoints have {ckpt['state_dict']['linear.weight'].shape[0]} classes, "
            f"--dataset {args.dataset} has {num_classes}"
        )
    if data.x_test is None or data.y_test is None:
        print(logfmt.ours("the data has no test set: no test accuracy"))
        update_json(
            os.path.join(run_dir, rd.METRICS), {"learning": {"best_epoch": ckpt.get("epoch"), "best_test_acc": None}}
        )
        return
    computation = resolve_evaluation(args.reference, args.eval_batch_size)
    spec = LoaderSpec(
        computation.eval_batch_size,
        device,
        data.info["mean"],
        data.info["std"],
        num_workers=args.num_workers,
        kind=computation.loader,
    )
    test_loader = make_loader(data.x_test, data.y_test, spec)
    with cuda_settings(device, computation.deterministic, computation.tf32):
        evaluate_pairs(run_dir, (nets, ckpt), test_loader, computation.eval_autograd)


def evaluate_pairs(run_dir: str, best: tuple[Nets, dict[str, Any]], test_loader: Loader, autograd: bool) -> None:
    """The best-by-validation pair (the original's line), then the last epoch's (ours), into metrics.json."""
    nets, ckpt = best
    best_acc = evaluate(nets, test_loader, autograd=autograd, description="test").accuracy
    print(logfmt.learning(best_acc))
    print(logfmt.ours(f"{rd.TEACHER} / {rd.STUDENT} are from epoch {ckpt.get('epoch')}"), flush=True)
    results = {"best_epoch": ckpt.get("epoch"), "best_test_acc": best_acc}
    if os.path.exists(os.path.join(run_dir, rd.TEACHER_LAST)):
        nets, last = load_pair(run_dir, rd.TEACHER_LAST, rd.STUDENT_LAST, nets.device)
        last_acc = best_acc  # the same weights when the best epoch is the last (always with --reference)
        if last.get("epoch") != ckpt.get("epoch"):
            last_acc = evaluate(nets, test_loader, autograd=autograd, description="test").accuracy
        print(logfmt.ours(f"last epoch ({last.get('epoch')}) test acc is {last_acc}"))
        results.update(last_epoch=last.get("epoch"), last_test_acc=last_acc)
    update_json(os.path.join(run_dir, rd.METRICS), {"learning": results})


if __name__ == "__main__":
    run_cli(main)
