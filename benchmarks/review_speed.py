"""How fast the review page is written and used: a 50,000-image run's page (its 1,000 most suspect) written, and a
page of 10,000 cards opened and filtered in headless Chromium (tests/browser.py).

    python benchmarks/review_speed.py [--out benchmarks/results/review_speed]

The targets (issue 47): written in under 10 s on the project's 2-core machine; opened in under 2 s and filtered in
under 200 ms. The run is synthetic (random CIFAR-sized images, CIFAR-10's classes, random agreement), as large as
CIFAR-10's training set: what the page costs does not depend on what the images show. Writes <out>.json and <out>.md.
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bkd import review
from bkd.utils.files import save_json
from bkd.utils.machine import cpu_model

TARGETS = {"write_s": 10.0, "open_s": 2.0, "filter_ms": 200.0}


def synthetic_run(n=50_000, classes=10, seed=0):
    """(split, data) of a finished run of `n` images, as bkd.outputs hands them to the page."""
    import numpy as np

    from bkd.data.datasets import CIFAR10_CLASSES, RunData, choose_images
    from bkd.state import Split

    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    clean = rng.randint(0, classes, n)
    given = np.where(rng.rand(n) < 0.4, rng.randint(0, classes, n), clean)
    data = RunData(
        "cifar10", x, given, clean, None, None, {"num_classes": classes}, CIFAR10_CLASSES, np.arange(n).astype(str)
    )
    data = choose_images(data, 0, seed, 0.1)
    probs = rng.dirichlet(np.ones(classes), n).astype(np.float32)
    groups = rng.randint(1, 5, n)
    split = Split(5, groups == 4, probs[np.arange(n), given], probs.argmax(1), probs.max(1), probs, groups)
    return split, data


def write_page(top):
    split, data = synthetic_run()
    from bkd.issues import label_issue_rows

    started = time.perf_counter()
    rows = label_issue_rows(split, data)
    otsu = {"threshold": 0.3, "mu1": 0.1, "mu2": 0.6}
    header = review.header_of("synthetic 50k", 5, 5, otsu, rows, int(data.truly_noisy.sum()))
    path = os.path.join(tempfile.mkdtemp(prefix="bkd_review_"), "review.html")
    review.write(path, review.run_page(rows, data, header, top))
    return time.perf_counter() - started, path


PAINTED = "const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(() => done(0)));"
FILTER = """
const done = arguments[arguments.length - 1];
const select = document.getElementById('f-given');
const t0 = performance.now();
select.value = '3';
select.dispatchEvent(new Event('change'));
requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t0)));
"""


def use_page(path, repeats=3):
    """(seconds to open: from the request to the page's first painted frame after its load, milliseconds to filter: from
    the change to the next painted frame), the best of `repeats`."""
    from tests import browser

    with tempfile.TemporaryDirectory() as tmp:
        driver = browser.start(tmp, os.path.join(tmp, "profile"))
        try:
            opened, filtered = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                driver.get("file://" + path)  # (returns at the load event)
                driver.execute_async_script(PAINTED)
                opened.append(time.perf_counter() - started)
                filtered.append(driver.execute_async_script(FILTER))
                driver.get("about:blank")
        finally:
            driver.quit()
    return min(opened), min(filtered)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "review_speed"))
    args = p.parse_args(argv)
    write_s, small = write_page(review.TOP)
    _, big = write_page(10_000)
    open_s, filter_ms = use_page(big)
    result = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "write_s": write_s,
        "page_mib_1000": os.path.getsize(small) / 2**20,
        "page_mib_10000": os.path.getsize(big) / 2**20,
        "open_s": open_s,
        "filter_ms": filter_ms,
        "targets": TARGETS,
    }
    lines = [
        f"# The review page's speed on {result['machine']} ({result['cpus']} CPUs), headless Chromium",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| a 50,000-image run's page (1,000 cards, {result['page_mib_1000']:.1f} MiB) written | {write_s:.2f} s | "
        f"under {TARGETS['write_s']:.0f} s |",
        f"| a 10,000-card page ({result['page_mib_10000']:.1f} MiB) opened | {open_s:.2f} s | under "
        f"{TARGETS['open_s']:.0f} s |",
        f"| that page filtered (given class), to the next frame | {filter_ms:.0f} ms | "
        f"under {TARGETS['filter_ms']:.0f} ms |",
    ]
    save_json(result, args.out + ".json")
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
