"""Label issues in data no one labelled for us: CIFAR-10N `worst` treated as a custom data set.

    python benchmarks/custom_label_issues.py [--probs benchmarks/results/cv_probs_worst_seed_0.npy]

1. Writes the quick preset's stratified 4,000-image subset of CIFAR-10 with its CIFAR-10N `worst`
   labels as `custom.npz` (x_train, y_train = the human labels, the test set, class names, ids) -
   without clean labels, as a user's own data would come.
2. Runs the three scripts with `--dataset custom` and the quick preset's schedule (width 16,
   40 epochs, StepLR at 20), as a user would.
3. Scores the ranking of `label_issues.csv` against the truly wrong labels (worst != clean, known
   to this benchmark only): precision among the top 100 / 500 / 1,000 rows, and the flagged set's
   precision, recall and F1; and the same for cleanlab's ranking (`get_label_quality_scores`,
   self-confidence) and flags (`find_label_issues`) on out-of-sample probabilities of the same
   network from 3-fold cross-validation (benchmarks/cifar10n_small.py's; reused from --probs).
Writes <out>.md and <out>.json.
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

from benchmarks import SHARED
from bkd.config import TrainConfig
from bkd.data.datasets import CIFAR10_CLASSES, DataSelection, input_dataset
from bkd.issues import read_label_issues
from bkd.utils.files import portable, save_json
from bkd.utils.machine import machine_info
from bkd.utils.metrics import PRECISION_AT, detection_scores, ranking_scores
from flags import PRESETS


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", default=os.path.join(SHARED, "cifar10-jpeg"))
    p.add_argument("--noise_path", default=os.path.join(SHARED, "cifar-n", "CIFAR-10_human.pt"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--probs",
        default=None,
        help="out-of-sample probabilities saved by cifar10n_small.py --save_probs "
        "(computed here with its 3-fold cross-validation if absent)",
    )
    p.add_argument("--workdir", default=os.path.join(ROOT, "results", "custom_worst"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "custom_label_issues"))
    args = p.parse_args()
    start = time.time()
    quick = PRESETS["quick"]
    selection = DataSelection(noise_type="worst", noise_path=args.noise_path, data_root=args.data_root, download=False)
    data = input_dataset(selection, TrainConfig(subset=quick["subset"], seed=args.seed, val_ratio=0.1))
    given, clean = data.labels, data.clean[data.subset]
    truth = given != clean
    os.makedirs(args.workdir, exist_ok=True)
    custom = os.path.join(args.workdir, "custom.npz")
    np.savez(
        custom,
        x_train=data.images,
        y_train=given,
        x_test=data.x_test,
        y_test=data.y_test,
        classes=np.array(CIFAR10_CLASSES),
        ids=np.array([f"cifar10-train-{i}" for i in data.subset]),
    )
    print(
        f"wrote {custom}: {len(given)} images, {truth.mean():.1%} of their labels wrong (the file does not say which)"
    )

    # BKD as a user runs it on their own data
    flags = ["--dataset", "custom", "--data_file", custom, "--results_dir", args.workdir, "--seed", str(args.seed)]
    schedule = [f"--{k}={v}" for k, v in quick.items() if k != "subset"] + ["--overwrite"]
    bkd_start = time.time()
    run_dir = os.path.join(args.workdir, f"custom_custom_seed_{args.seed}")
    for script, extra in (("blind_knowledge_dist_training.py", schedule), ("learning.py", []), ("detection.py", [])):
        log = os.path.join(args.workdir, script.replace(".py", ".log"))
        with open(log, "w") as out:
            subprocess.run([sys.executable, os.path.join(ROOT, script), *flags, *extra], stdout=out, check=True)
    bkd_seconds = time.time() - bkd_start
    rows = read_label_issues(os.path.join(run_dir, "label_issues.csv"))
    bkd_quality = np.zeros(len(given))  # the given label's agreed probability: the csv's ranking key
    bkd_quality[[r["position"] for r in rows]] = [r["given_prob"] for r in rows]
    bkd_flags = np.zeros(len(given), bool)
    bkd_flags[[r["position"] for r in rows if r["flagged"]]] = True
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))

    # cleanlab on out-of-sample probabilities of the same network
    if args.probs and os.path.exists(args.probs):
        probs, cv_note = np.load(args.probs), f"loaded from {portable(os.path.abspath(args.probs))}"
    else:
        from benchmarks.cifar10n_small import cross_validated_probs

        cv_start = time.time()
        probs = cross_validated_probs(data.images, given, args.seed)
        cv_note = f"3-fold cross-validation here, {time.time() - cv_start:.0f} s"
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    cl_quality = get_label_quality_scores(given, probs)
    cl_flags = find_label_issues(labels=given, pred_probs=probs)

    results = {}
    for name, quality, flagged in (
        ("BKD label_issues.csv", bkd_quality, bkd_flags),
        ("cleanlab", cl_quality, cl_flags),
    ):
        results[name] = dict(ranking_scores(quality, truth), flagged=detection_scores(flagged, truth))
    floor = results["cleanlab"]["flag_all_f1"]
    lines = [
        "| ranking | AUROC | AP | "
        + " | ".join(f"precision, top {k:,}" for k in PRECISION_AT)
        + " | flagged | precision | recall | F1 |",
        "|---|" + "---|" * (len(PRECISION_AT) + 6),
    ]
    for name, r in results.items():
        d = r["flagged"]
        lines.append(
            f"| {name} | {r['auroc']:.3f} | {r['average_precision']:.3f} | "
            + " | ".join(f"{r[f'precision_at_{k}']:.3f}" for k in PRECISION_AT)
            + f" | {d['flagged']:,} | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} |"
        )
    lines.append(
        f"| random ranking, flagging every label (the floors) | 0.500 | {truth.mean():.3f} | "
        + " | ".join(f"{truth.mean():.3f}" for _ in PRECISION_AT)
        + f" | {len(given):,} | {truth.mean():.3f} | 1.000 | {floor:.3f} |"
    )
    text = "\n".join(lines)
    report = {
        "command": " ".join(["python", portable(os.path.abspath(sys.argv[0]))] + [portable(a) for a in sys.argv[1:]]),
        "machine": machine_info(),
        "images": len(given),
        "wrong_labels": int(truth.sum()),
        "base_rate": float(truth.mean()),
        "bkd_seconds": bkd_seconds,
        "cleanlab_probs": cv_note,
        "bkd_overfit_epoch": metrics["overfit_epoch"],
        "bkd_test_acc": (metrics.get("learning") or {}).get("best_test_acc"),
        "results": results,
        "table": text,
        "wall_seconds": time.time() - start,
    }
    save_json(report, args.out + ".json")
    m = report["machine"]
    with open(args.out + ".md", "w") as fh:
        fh.write(
            f"Command: `{report['command']}` ({m['cpu_model']}, {m['cpu_capability']}, {m['num_threads']} threads; "
            f"BKD {bkd_seconds:.0f} s; cleanlab probabilities: {cv_note})\n\n{len(given):,} images, "
            f"{truth.sum():,} wrong labels (base rate {truth.mean():.3f}).\n\n{text}\n"
        )
    print(text)
    print(f"written to {args.out}.md / .json")


if __name__ == "__main__":
    main()
