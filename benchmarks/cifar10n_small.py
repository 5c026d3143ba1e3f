"""BKD vs cross-entropy vs cleanlab on real CIFAR-10N noise at CPU scale (the quick preset's budget).

    BKD_DATA_ROOT=../shared/data/cifar10-jpeg python benchmarks/cifar10n_small.py \
        --noise_path ../shared/data/cifar-n/CIFAR-10_human.pt

For each label set (default aggre and worst), on the quick preset's stratified subset, seed and network:
 (1) BKD: the three scripts with --preset quick;
 (2) cross-entropy: one network, the same schedule, augmentation, optimiser and validation split
     (the challenge baseline);
 (3) cleanlab's find_label_issues on out-of-sample predicted probabilities from K-fold
     cross-validation of (2) over the subset, and the small-loss rule on the same probabilities
     (flag the fraction of images equal to the true noise rate with the lowest p[label]).
Writes <out>.md and <out>.json (table, command, wall times) and the BKD runs under <out>_runs/.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np
import torch
import torch.nn.functional as F

from bkd.config import TrainConfig
from bkd.data.cifar import DATASETS
from bkd.data.datasets import DataSelection, input_dataset
from bkd.data.loaders import DeviceLoader, LoaderSpec
from bkd.models import PreResNet18
from bkd.utils.files import portable
from bkd.utils.machine import machine_info
from bkd.utils.metrics import detection_scores
from bkd.utils.seeds import set_global_seeds
from flags import PRESETS

INFO = DATASETS["cifar10"]
AUG = {"pad_mode": INFO["pad_mode"], "flip_first": INFO["flip_first"]}
QUICK = dict(PRESETS["quick"], lr=0.02, momentum=0.9, weight_decay=5e-4, batch_size=128, val_ratio=0.1)


def loader(x, y, shuffle=False, augment=None, seed=0, batch_size=256):
    return DeviceLoader(
        x, y, LoaderSpec(batch_size, "cpu", INFO["mean"], INFO["std"], augment=augment, shuffle=shuffle, seed=seed)
    )


@torch.inference_mode()
def probabilities(model, x, y):
    model.eval()
    return torch.cat(
        [model(b.contiguous(memory_format=torch.channels_last)).softmax(1) for b, _, _ in loader(x, y)]
    ).numpy()


def accuracy(model, x, y):
    return 100.0 * float(np.mean(probabilities(model, x, y).argmax(1) == y))


def train_cross_entropy(x, y, seed, evaluate=None, log=print):
    """Cross-entropy training of one PreResNet18 with the quick preset's schedule and augmentation."""
    set_global_seeds(seed)
    model = PreResNet18(10, QUICK["width"]).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=QUICK["lr"], momentum=QUICK["momentum"], weight_decay=QUICK["weight_decay"], foreach=True
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=QUICK["lr_step"], gamma=0.1)
    train = loader(x, y, shuffle=True, augment=AUG, seed=seed, batch_size=QUICK["batch_size"])
    history = []
    for epoch in range(QUICK["n_epoch"]):
        model.train()
        for xb, yb, _ in train:
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if evaluate and (epoch % QUICK["noisy_val_freq"] == 0 or epoch == QUICK["n_epoch"] - 1):  # 0-based, as BKD
            history.append([epoch, *evaluate(model)])
            log(f"  CE epoch {epoch}: val {history[-1][1]:.2f} %, test {history[-1][2]:.2f} %")
    return model, history


def cross_validated_probs(x, labels, seed, folds=3, log=print):
    """Out-of-sample predicted probabilities: each image judged by a cross-entropy model that never saw it."""
    from sklearn.model_selection import StratifiedKFold

    pred_probs = np.zeros((len(labels), 10), dtype=np.float32)
    for fold, (fit, held) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels)):
        model, _ = train_cross_entropy(x[fit], labels[fit], seed + fold)
        pred_probs[held] = probabilities(model, x[held], labels[held])
        log(f"  fold {fold + 1}/{folds} done")
    return pred_probs


def run_bkd(label_set, args, runs_dir):
    common = [
        "--noise_type",
        label_set,
        "--preset",
        "quick",
        "--seed",
        str(args.seed),
        "--results_dir",
        runs_dir,
        "--data_root",
        args.data_root,
        "--noise_path",
        args.noise_path,
        "--no_download",
    ]
    start = time.time()
    for script, extra in (
        ("blind_knowledge_dist_training.py", ["--overwrite"]),
        ("learning.py", []),
        ("detection.py", []),
    ):
        name = os.path.join(runs_dir, f"cifar10_{label_set}_seed_{args.seed}_quick")
        os.makedirs(name, exist_ok=True)
        log_name = {"blind_knowledge_dist_training.py": "training.log"}.get(script, script.replace(".py", ".log"))
        with open(os.path.join(name, log_name), "w") as out:
            subprocess.run([sys.executable, os.path.join(ROOT, script), *common, *extra], stdout=out, check=True)
    with open(os.path.join(runs_dir, f"cifar10_{label_set}_seed_{args.seed}_quick", "metrics.json")) as fh:
        return json.load(fh), time.time() - start


def run_label_set(label_set, args, runs_dir, log=print):
    selection = DataSelection(
        noise_type=label_set, noise_path=args.noise_path, data_root=args.data_root, download=False
    )
    data = input_dataset(selection, TrainConfig(subset=QUICK["subset"], seed=args.seed, val_ratio=QUICK["val_ratio"]))
    x, noisy, clean = data.images, data.labels, data.clean[data.subset]
    truth = noisy != clean
    result = {"label_set": label_set, "images": len(noisy), "noise_rate": float(truth.mean())}

    log(f"[{label_set}] BKD (quick preset)")
    bkd, seconds = run_bkd(label_set, args, runs_dir)
    result["bkd"] = {
        "test_acc_best_val": bkd["learning"]["best_test_acc"],
        "test_acc_last": bkd["learning"]["last_test_acc"],
        "detection": bkd["detection"],
        "overfit_epoch": bkd["overfit_epoch"],
        "split_fallback": bkd["split_fallback"],
        "split_epoch": bkd["split_epoch"],
        "seconds": seconds,
    }

    log(f"[{label_set}] cross-entropy baseline")
    tr, va = data.train_pos, data.val_pos
    x_test, y_test = data.x_test, data.y_test
    start = time.time()
    _, history = train_cross_entropy(
        x[tr],
        noisy[tr],
        args.seed,
        evaluate=lambda m: (accuracy(m, x[va], noisy[va]), accuracy(m, x_test, y_test)),
        log=log,
    )
    best = max(history, key=lambda h: h[1])  # first epoch with the best validation accuracy
    result["ce"] = {
        "test_acc_best_val": best[2],
        "test_acc_last": history[-1][2],
        "history": history,
        "seconds": time.time() - start,
    }

    log(f"[{label_set}] {args.folds}-fold cross-validated probabilities for cleanlab and small-loss")
    start = time.time()
    pred_probs = cross_validated_probs(x, noisy, args.seed, args.folds, log)
    cv_seconds = time.time() - start
    if args.save_probs:  # out-of-sample probabilities, for benchmarks/custom_label_issues.py
        np.save(os.path.join(args.save_probs, f"cv_probs_{label_set}_seed_{args.seed}.npy"), pred_probs)
    from cleanlab.filter import find_label_issues

    flagged = find_label_issues(labels=noisy, pred_probs=pred_probs)
    result["cleanlab"] = {"detection": detection_scores(flagged, truth), "seconds": cv_seconds}
    k = int(round(truth.mean() * len(noisy)))
    small_loss = np.zeros(len(noisy), bool)
    small_loss[np.argsort(pred_probs[np.arange(len(noisy)), noisy])[:k]] = True
    result["small_loss"] = {"detection": detection_scores(small_loss, truth), "flag_fraction": k / len(noisy)}
    result["cv_out_of_sample_acc_vs_clean"] = 100.0 * float(np.mean(pred_probs.argmax(1) == clean))
    return result


def table(results):
    lines = [
        "| label set (noise) | method | test acc, best val (%) | test acc, last (%) | precision | recall | F1 "
        "| wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = f"{r['label_set']} ({100 * r['noise_rate']:.1f} %)"
        b, c = r["bkd"], r["ce"]
        split = (
            f"overfit epoch {b['overfit_epoch']}"
            if not b["split_fallback"]
            else f"no peak, split at epoch {b['split_epoch']}"
        )
        lines.append(
            f"| {head} | BKD ({split}) | {b['test_acc_best_val']:.2f} | {b['test_acc_last']:.2f} | "
            + " | ".join(f"{b['detection'][k]:.3f}" for k in ("precision", "recall", "f1"))
            + f" | {b['seconds']:.0f} s |"
        )
        lines.append(
            f"| {head} | cross-entropy | {c['test_acc_best_val']:.2f} | {c['test_acc_last']:.2f} | | | "
            f"| {c['seconds']:.0f} s |"
        )
        d = r["cleanlab"]["detection"]
        lines.append(
            f"| {head} | cleanlab ({ARGS.folds}-fold CV) | | | "
            + " | ".join(f"{d[k]:.3f}" for k in ("precision", "recall", "f1"))
            + f" | {r['cleanlab']['seconds']:.0f} s (CV) |"
        )
        d = r["small_loss"]["detection"]
        lines.append(
            f"| {head} | small-loss at the true rate | | | "
            + " | ".join(f"{d[k]:.3f}" for k in ("precision", "recall", "f1"))
            + " | (same CV) |"
        )
    return "\n".join(lines)


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=os.environ.get("BKD_DATA_ROOT", "~/data"))
    p.add_argument("--noise_path", default=os.environ.get("NOISE_PATH", "./data/CIFAR-10_human.pt"))
    p.add_argument("--label_sets", nargs="+", default=["aggre", "worst"])
    p.add_argument(
        "--folds", type=int, default=3, help="cross-validation folds for cleanlab's out-of-sample probabilities"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cifar10n_small"))
    p.add_argument("--runs_dir", default=None, help="where the BKD run directories go (default <out>_runs)")
    p.add_argument(
        "--save_probs",
        default=None,
        help="folder for the cross-validated probabilities (cv_probs_<label set>_seed_<s>.npy)",
    )
    ARGS = args = p.parse_args()
    start = time.time()
    results = [run_label_set(ls, args, args.runs_dir or args.out + "_runs") for ls in args.label_sets]
    text = table(results)
    command = " ".join(["python", portable(os.path.abspath(sys.argv[0]))] + [portable(a) for a in sys.argv[1:]])
    report = {
        "command": command,
        "machine": machine_info(),
        "wall_seconds": time.time() - start,
        "preset": QUICK,
        "folds": args.folds,
        "results": results,
        "table": text,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump(report, fh, indent=2)
    with open(args.out + ".md", "w") as fh:
        m = report["machine"]
        fh.write(
            f"Command: `{command}` (wall time {report['wall_seconds'] / 60:.1f} min; {m['cpu_model']}, "
            f"{m['cpu_capability']}, {m['num_threads']} threads, torch {m['versions']['torch']})\n\n{text}\n"
        )
    print(text)
    print(f"written to {args.out}.md / .json")


if __name__ == "__main__":
    main()
