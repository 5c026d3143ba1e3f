"""Learning task: clean test accuracy of a trained run's teacher-student agreement (spec section 5)."""
import os

import torch

from bkd.engine import Precision, evaluate
from data.cifar import dataset_info
from data.loaders import make_loader
from data.setup import load_run_data
from models import PreResNet18
from utils import checkpoint as ck
from utils.cli import base_parser, parse
from utils.errors import DataError, run_cli
from utils.files import update_json
from utils.runtime import resolve_device, set_global_seeds


def build_parser():
    p = base_parser("Evaluate a BKD run on the clean test set (agreement of teacher and student).")
    p.add_argument("--eval_batch_size", type=int, default=256, help="batch size of the test pass")
    return p


def load_pair(run_dir, teacher_name, student_name, device):
    build = lambda num_classes, width: PreResNet18(num_classes, width)  # noqa: E731
    teacher, t_ckpt = ck.load_model(os.path.join(run_dir, teacher_name), build)
    student, s_ckpt = ck.load_model(os.path.join(run_dir, student_name), build)
    if t_ckpt.get("epoch") != s_ckpt.get("epoch"):
        raise DataError(f"{run_dir}: {teacher_name} (epoch {t_ckpt.get('epoch')}) and {student_name} "
                        f"(epoch {s_ckpt.get('epoch')}) are from different epochs")
    return teacher.to(device), student.to(device), t_ckpt


def main(argv=None):
    args = parse(build_parser(), argv)
    device = resolve_device(args.device)
    run_dir = ck.resolve_run_dir(args)
    set_global_seeds(args.seed)
    teacher, student, ckpt = load_pair(run_dir, ck.TEACHER, ck.STUDENT, device)
    info = dataset_info(args.dataset)
    if ckpt["state_dict"]["linear.weight"].shape[0] != info["num_classes"]:
        raise DataError(f"{run_dir}: checkpoints have {ckpt['state_dict']['linear.weight'].shape[0]} classes, "
                        f"--dataset {args.dataset} has {info['num_classes']}")
    images = load_run_data(args, with_labels=False)
    test_loader = make_loader("device", images.x_test, images.y_test, batch_size=args.eval_batch_size, device=device,
                              mean=info["mean"], std=info["std"])
    precision = Precision(device)
    best_acc, _ = evaluate(teacher, student, test_loader, precision)
    print(f"Best test acc selected by val is {best_acc}")
    results = {"best_epoch": ckpt.get("epoch"), "best_test_acc": best_acc}
    if os.path.exists(os.path.join(run_dir, ck.TEACHER_LAST)):
        teacher, student, last = load_pair(run_dir, ck.TEACHER_LAST, ck.STUDENT_LAST, device)
        last_acc, _ = evaluate(teacher, student, test_loader, precision)
        print(f"Last epoch ({last.get('epoch')}) test acc is {last_acc}")
        results.update(last_epoch=last.get("epoch"), last_test_acc=last_acc)
    update_json(os.path.join(run_dir, ck.METRICS), {"learning": results})


if __name__ == "__main__":
    run_cli(main)
