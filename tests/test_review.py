"""The review page (bkd/review.py) and the corrections that go back into training (data/corrections.py), the page
tested in a real browser (tests/browser.py): thumbnails that decode, filters and counts, keyboard decisions that
survive a reload, the exported file, a training on it, and names of the data that are hostile HTML."""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import blind_knowledge_dist_training as training
from bkd import rundir as rd
from bkd.issues import read_label_issues
from tests import browser
from tests.cli import ROOT, run
from tests.synthetic import write_custom
from tests.test_bad_input import call

TRAIN = "blind_knowledge_dist_training.py"
TINY = ["--n_epoch", "3", "--width", "4", "--batch_size", "32", "--device", "cpu", "--eval_batch_size", "128"]


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """A finished tiny run on a custom .npz data set (5 classes, a fifth of the labels flipped): its page and table."""
    root = tmp_path_factory.mktemp("custom")
    data, _, _ = write_custom(str(root / "data"), n_train=300, n_test=60)
    run_dir = str(root / "run")
    run(TRAIN, "--dataset", "custom", "--data_file", data, "--run_dir", run_dir, *TINY, cwd=str(root))
    return data, run_dir, read_label_issues(os.path.join(run_dir, rd.LABEL_ISSUES))


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    d = browser.start(str(folder / "downloads"), str(folder / "profile"))
    d.downloads = str(folder / "downloads")
    yield d
    d.quit()


def _cards(d):
    """(position, shown) of every card, in the page's order."""
    return d.execute_script(
        "return Array.from(document.querySelectorAll('article.card')).map(c => [Number(c.dataset.position), !c.hidden])"
    )


def _open(d, page):
    d.get("file://" + page)
    d.execute_script("localStorage.clear()")
    d.get("file://" + page)


# --- one self-contained file ------------------------------------------------------------------------------------------
def test_every_run_writes_its_page_with_its_table_self_contained(custom_run):
    _, run_dir, rows = custom_run
    html = open(os.path.join(run_dir, rd.REVIEW), encoding="utf-8").read()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in policy and "img-src data:" in policy and "'unsafe-inline'" not in policy
    assert not re.search(r"(src|href)=\"(?!data:)", html) and "http://" not in html and "https://" not in html
    positions = [int(p) for p in re.findall(r'data-position="(\d+)"', html)]
    assert positions == [r["position"] for r in rows]  # (300 images: every one, most suspect first)


# --- in a real browser ------------------------------------------------------------------------------------------------
def test_every_thumbnail_decodes_and_nothing_is_refused(custom_run, driver):
    _, run_dir, rows = custom_run
    _open(driver, os.path.join(run_dir, rd.REVIEW))
    broken = driver.execute_script(
        "return Promise.all(Array.from(document.images).map(i => i.decode().then(() => i.naturalWidth, () => 0)))"
    )
    assert len(broken) == len(rows) and min(broken) == 32
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []  # (no request refused by the page's policy, no error of its script)


def _stats(d):
    return d.find_element("id", "stats").text


def test_the_filters_show_the_right_cards_and_counts(custom_run, driver):
    from selenium.webdriver.support.ui import Select

    _, run_dir, rows = custom_run
    _open(driver, os.path.join(run_dir, rd.REVIEW))
    assert _stats(driver).startswith(f"showing 300 of 300 images; {sum(r['flagged'] for r in rows)} flagged")
    Select(driver.find_element("id", "f-given")).select_by_value("2")
    Select(driver.find_element("id", "f-group")).select_by_value("4")
    expected = [r["position"] for r in rows if r["given_label"] == 2 and r["group"] == 4]
    assert [p for p, shown in _cards(driver) if shown] == expected
    assert _stats(driver).startswith(f"showing {len(expected)} of 300 images; {len(expected)} flagged")
    Select(driver.find_element("id", "f-given")).select_by_value("")
    Select(driver.find_element("id", "f-group")).select_by_value("")
    Select(driver.find_element("id", "f-suggested")).select_by_value("1")
    driver.find_element("id", "f-flagged").click()
    expected = [r["position"] for r in rows if r["agreed_label"] == 1 and r["flagged"]]
    assert [p for p, shown in _cards(driver) if shown] == expected
    driver.find_element("id", "f-flagged").click()
    Select(driver.find_element("id", "f-suggested")).select_by_value("")
    driver.find_element("id", "f-text").send_keys("_001")  # photo_0010 .. photo_0019
    assert [p for p, shown in _cards(driver) if shown] == [r["position"] for r in rows if "_001" in r["id"]]
    assert _stats(driver).startswith("showing 10 of 300 images")


def _download(d, name="corrections.csv", timeout=20):
    path = os.path.join(d.downloads, name)
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # (written in full)
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def decided(custom_run, driver):
    """Decisions made with the keyboard alone on the first four cards, the page reloaded, then exported."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _, run_dir, rows = custom_run
    _open(driver, os.path.join(run_dir, rd.REVIEW))
    for name in os.listdir(driver.downloads) if os.path.isdir(driver.downloads) else ():
        os.remove(os.path.join(driver.downloads, name))
    driver.execute_script("document.querySelector('article.card').focus()")
    keys = ActionChains(driver)
    keys.send_keys("a", Keys.ARROW_RIGHT, "r", Keys.ARROW_RIGHT, "g", Keys.ARROW_RIGHT, "3", Keys.ENTER).perform()
    driver.refresh()  # decisions survive a reload
    shown = driver.execute_script(
        "return Array.from(document.querySelectorAll('article.card')).slice(0, 5).map(c => "
        "c.querySelector('.decision').textContent)"
    )
    driver.find_element("id", "export").click()
    return rows, shown, _download(driver)


def test_keyboard_decisions_survive_a_reload_and_export_as_decided(decided):
    rows, shown, exported = decided
    classes = ["red square", "green square", "blue square", "red bar", "green bar"]
    first = rows[:4]
    assert shown == [
        f"relabel as {first[0]['agreed_label']} ({classes[first[0]['agreed_label']]})",
        "remove this image",
        f"keep {first[2]['given_label']} ({classes[first[2]['given_label']]})",
        "relabel as 3 (red bar)",
        "",
    ]
    assert exported == [
        ["id", "position", "given_label", "new_label"],
        [first[0]["id"], str(first[0]["position"]), str(first[0]["given_label"]), str(first[0]["agreed_label"])],
        [first[1]["id"], str(first[1]["position"]), str(first[1]["given_label"]), "remove"],
        [first[2]["id"], str(first[2]["position"]), str(first[2]["given_label"]), str(first[2]["given_label"])],
        [first[3]["id"], str(first[3]["position"]), str(first[3]["given_label"]), "3"],
    ]


def test_the_mouse_decides_through_the_bar_for_the_selected_card(custom_run, driver):
    from selenium.webdriver.common.keys import Keys

    _, run_dir, rows = custom_run
    _open(driver, os.path.join(run_dir, rd.REVIEW))
    cards = driver.find_elements("css selector", "article.card")
    cards[5].click()
    driver.find_element("css selector", "#actions button[data-act=accept]").click()
    cards[6].click()
    driver.find_element("id", "set").send_keys("green bar", Keys.TAB)  # a class by its name (or its number)
    cards[7].click()
    driver.find_element("css selector", "#actions button[data-act=remove]").click()
    decisions = driver.execute_script("return JSON.parse(localStorage.getItem(Object.keys(localStorage)[0]))")
    assert decisions == {
        str(rows[5]["position"]): {"kind": "accept", "label": rows[5]["agreed_label"]},
        str(rows[6]["position"]): {"kind": "set", "label": 4},
        str(rows[7]["position"]): {"kind": "remove", "label": None},
    }


@pytest.mark.slow
def test_a_training_with_the_exported_file_trains_on_the_corrected_labels(custom_run, decided, driver, tmp_path):
    data, _, _ = custom_run
    rows, _, exported = decided
    corrections = os.path.join(driver.downloads, "corrections.csv")
    run_dir = str(tmp_path / "corrected")
    run(TRAIN, "--dataset", "custom", "--data_file", data, "--run_dir", run_dir, "--corrections", corrections, *TINY)
    after = {r["id"]: r for r in read_label_issues(os.path.join(run_dir, rd.LABEL_ISSUES))}
    _, relabelled, removed, kept, set_three = exported
    assert removed[0] not in after and len(after) == 299
    assert after[relabelled[0]]["given_label"] == int(relabelled[3]) and after[kept[0]]["given_label"] == int(kept[2])
    assert after[set_three[0]]["given_label"] == 3 and after[set_three[0]]["position"] == int(set_three[1])
    metrics = json.load(open(os.path.join(run_dir, rd.METRICS)))
    assert metrics["corrections_sha256"] == hashlib.sha256(open(corrections, "rb").read()).hexdigest()
    other = tmp_path / "other.csv"
    other.write_text("id,new_label\nphoto_0000.jpg,remove\n")
    proc = run(
        TRAIN,
        "--dataset",
        "custom",
        "--data_file",
        data,
        "--run_dir",
        run_dir,
        "--corrections",
        other,
        *TINY,
        "--resume",
        check=False,
    )
    assert (
        proc.returncode == 2 and "--corrections" in proc.stderr and "differs from the run being resumed" in proc.stderr
    )


HOSTILE = ["<script>window.pwned = 1</script>", '" onerror="window.pwned = 2', "</style><b>bold</b>", "two\nlines"]
# A folder's and a file's name cannot hold "/": those without it, as class folders and file names.
FOLDERS = ["<script>window.pwned = 4", '" onerror="window.pwned = 5']
FILES = ['"><img src=x onerror="window.pwned=6">', "two\nlines", "<style>"]


def _look(d, run_dir):
    """window.pwned is unset and no element came from a name; the given classes and the ids as shown."""
    _open(d, os.path.join(run_dir, rd.REVIEW))
    assert d.execute_script(
        "return window.pwned === undefined && document.querySelector('b, main img:not([src^=data])') === null"
    )
    given = d.execute_script("return Array.from(document.querySelectorAll('.given')).map(e => e.textContent)")
    ids = d.execute_script("return Array.from(document.querySelectorAll('.id')).map(e => e.textContent)")
    return set(given), ids


@pytest.mark.slow
def test_hostile_names_are_text_and_run_nothing(tmp_path, driver):
    """Class names and image ids that are HTML, an attribute's end or a newline show as written and run nothing: from
    an array file's names, and from an image folder's class folders and file names."""
    from PIL import Image

    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 80, (80, 32, 32, 3)).astype(np.uint8), np.arange(80) % 4
    for i, label in enumerate(y):
        x[i, 4 + 6 * label : 10 + 6 * label] = 250
    ids = np.array([HOSTILE[i % 4] + f" {i}" for i in range(80)])
    np.savez(tmp_path / "hostile.npz", x_train=x, y_train=y, classes=np.array(HOSTILE), ids=ids)
    run(TRAIN, "--dataset", "custom", "--data_file", tmp_path / "hostile.npz", "--run_dir", tmp_path / "a", *TINY)
    given, shown = _look(driver, str(tmp_path / "a"))
    assert given == set(HOSTILE) and sorted(shown) == sorted(ids.tolist())
    for c, name in enumerate(FOLDERS):
        os.makedirs(tmp_path / "images" / name)
        for i in range(12):
            image = rng.randint(0, 80, (32, 32, 3)).astype(np.uint8)
            image[4 + 8 * c : 12 + 8 * c] = 250
            Image.fromarray(image).save(tmp_path / "images" / name / f"{FILES[i % 3]} {i}.png")
    run(TRAIN, "--dataset", "custom", "--data_file", tmp_path / "images", "--run_dir", tmp_path / "b", *TINY)
    given, shown = _look(driver, str(tmp_path / "b"))
    assert (
        given == set(FOLDERS)
        and f"{FOLDERS[0]}/{FILES[0]} 0.png" in shown
        and f"{FOLDERS[1]}/two\nlines 1.png" in shown
    )
    assert driver.title == "BKD review: b"


# --- corrections that cannot be applied -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, says",
    [
        ("id,new_label\nphoto_9999.jpg,1\n", "line 2: id 'photo_9999.jpg' is not an image of the data"),
        ("id,new_label\nphoto_0001.jpg,5\n", "line 2: new_label '5' is neither a class index 0..4 nor remove"),
        ("position,new_label\n3,1\n3,remove\n", "line 3: image at position 3 is named twice"),
        ("id,label\nphoto_0001.jpg,1\n", "needs the columns id (or position) and new_label; it has id, label"),
        ("position,new_label\n300,1\n", "line 2: position '300' is not one of the data's 0..299"),
        (
            "id,given_label,new_label\nphoto_0001.jpg,9,1\n",
            "line 2: given_label 9 of image 'photo_0001.jpg' is not its",
        ),
    ],
)
def test_a_corrections_file_that_cannot_be_applied_is_one_line_and_nothing_is_trained(
    custom_run, tmp_path, capsys, text, says
):
    data, _, _ = custom_run
    path = tmp_path / "corrections.csv"
    path.write_text(text)
    run_dir = tmp_path / "run"
    code, err = call(
        training,
        ["--dataset", "custom", "--data_file", data, "--run_dir", run_dir, "--corrections", path, *TINY],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not os.path.exists(run_dir)


# --- the page again, and from the Python API --------------------------------------------------------------------------
def test_a_finished_runs_page_is_made_again_from_its_directory(custom_run, tmp_path):
    _, run_dir, rows = custom_run
    out = str(tmp_path / "top.html")
    proc = subprocess.run(
        [sys.executable, "-m", "bkd.review", run_dir, "--top", "7", "--out", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith(f"wrote {out}"), proc.stderr
    html = open(out, encoding="utf-8").read()
    assert [int(p) for p in re.findall(r'data-position="(\d+)"', html)] == [r["position"] for r in rows[:7]]


def test_a_finished_runs_page_is_written_while_the_run_is_locked(custom_run, tmp_path, monkeypatch):
    """The page is written with the run's lock held (shared, as the evaluations'), so no training (--overwrite) takes
    the directory while a page of the run it replaces is still being written (it was written after the lock went)."""
    import fcntl

    from bkd import review

    _, run_dir, _ = custom_run
    exclusive = []

    def write(path, html):
        with open(os.path.join(run_dir, ".lock")) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a training takes
                exclusive.append(True)
            except BlockingIOError:
                exclusive.append(False)

    monkeypatch.setattr(review, "write", write)
    review.review_run(run_dir, 5, str(tmp_path / "page.html"))
    assert exclusive == [False]


@pytest.mark.slow
def test_the_api_writes_the_page_in_its_run_dir_and_from_its_result(tmp_path):
    from bkd import find_label_issues

    rng = np.random.RandomState(0)
    images, labels = rng.randint(0, 255, (60, 32, 32, 3)).astype(np.uint8), np.arange(60) % 3
    ids = [f"cat <{i}>.jpg" for i in range(60)]
    result = find_label_issues(
        images,
        labels,
        ids=ids,
        device="cpu",
        run_dir=str(tmp_path / "run"),
        n_epoch=2,
        width=2,
        batch_size=16,
        eval_batch_size=60,
    )
    assert os.path.exists(tmp_path / "run" / rd.REVIEW)
    page = result.write_review(tmp_path / "mine.html", images, labels, classes=["a", "b", "c"], ids=ids, top=10)
    html = open(page, encoding="utf-8").read()
    shown = [int(p) for p in re.findall(r'data-position="(\d+)"', html)]
    assert shown == result.ranked[:10].tolist() and "cat &lt;" in html and "cat <" not in html
    proc = subprocess.run(
        [sys.executable, "-m", "bkd.review", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3 and "result.write_review(path, images, labels)" in proc.stderr, proc.stderr
