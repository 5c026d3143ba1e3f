"""Label files, image files, splits and the two input pipelines."""

import os
import pickle
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from bkd.data.cifar import load_images
from bkd.data.labels import load_noisy_labels, safe_load
from bkd.data.loaders import DeviceLoader, LoaderSpec, TorchvisionLoader, crop_flip, pad_images, torchvision_transform
from bkd.data.split import stratified_subset, train_val_split
from bkd.utils.errors import DataError, UsageError
from tests.conftest import SHARED_DATA

CIFAR10 = dict(mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))


def _labels(n=50, seed=0):
    return np.random.RandomState(seed).randint(0, 10, n).astype(np.int64)


def _write_label_file(path, **arrays):
    torch.save(arrays, str(path))
    return str(path)


def test_safe_load_reads_numpy_dict(tmp_path):
    clean = _labels()
    path = _write_label_file(tmp_path / "f.pt", clean_label=clean, worse_label=(clean + 1) % 10)
    data = safe_load(path)
    assert np.array_equal(data["clean_label"], clean)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_safe_load_refuses_code(tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"clean_label": _Evil()}, protocol=2))
    with pytest.raises(DataError, match="refusing to load posix.system|refusing to load os.system"):
        safe_load(str(path))
    assert not os.path.exists("pwned")


def test_safe_load_refuses_truncated_and_foreign_files(tmp_path):
    good = _write_label_file(tmp_path / "f.pt", clean_label=_labels())
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(open(good, "rb").read()[:300])
    with pytest.raises(DataError, match="t.pt"):
        safe_load(str(truncated))
    text = tmp_path / "x.pt"
    text.write_text("hello")
    with pytest.raises(DataError, match="not a CIFAR-N label file"):
        safe_load(str(text))


def test_load_noisy_labels_validates(tmp_path):
    clean = _labels()
    noisy = clean.copy()
    noisy[:5] = (noisy[:5] + 1) % 10
    path = _write_label_file(tmp_path / "f.pt", clean_label=clean, worse_label=noisy)
    got_noisy, got_clean = load_noisy_labels("cifar10", "worst", path, clean)
    assert np.array_equal(got_noisy, noisy) and np.array_equal(got_clean, clean)
    with pytest.raises(DataError, match="no 'aggre_label' entry"):
        load_noisy_labels("cifar10", "aggre", path, clean)
    with pytest.raises(DataError, match="has 50 labels for 60 training images"):
        load_noisy_labels("cifar10", "worst", path, np.concatenate([clean, clean[:10]]))
    shuffled = clean[::-1].copy()
    with pytest.raises(DataError, match="clean_label differs from the training images' labels"):
        load_noisy_labels("cifar10", "worst", path, shuffled)
    bad = _write_label_file(tmp_path / "b.pt", clean_label=clean, worse_label=clean + 10)
    with pytest.raises(DataError, match="outside 0..9"):
        load_noisy_labels("cifar10", "worst", bad, clean)
    with pytest.raises(DataError, match="no such file"):
        load_noisy_labels("cifar10", "worst", str(tmp_path / "missing.pt"), clean)


def test_noise_type_must_match_dataset():
    with pytest.raises(UsageError, match="noisy100 belongs to cifar100"):
        load_noisy_labels("cifar10", "noisy100", None, None)
    with pytest.raises(UsageError, match="'bogus' is unknown"):
        load_noisy_labels("cifar10", "bogus", None, None)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(SHARED_DATA, "cifar-n", "CIFAR-10_human.pt")), reason="no shared CIFAR-N files"
)
@pytest.mark.parametrize(
    "dataset, noise_type, rate",
    [
        ("cifar10", "aggre", 9.01),
        ("cifar10", "rand1", 17.23),
        ("cifar10", "rand2", 18.12),
        ("cifar10", "rand3", 17.64),
        ("cifar10", "worst", 40.21),
        ("cifar10", "clean", 0.0),
        ("cifar100", "noisy100", 40.20),
        ("cifar100", "clean100", 0.0),
    ],
)
def test_real_cifar_n_noise_rates(dataset, noise_type, rate):
    name = "CIFAR-10_human.pt" if dataset == "cifar10" else "CIFAR-100_human.pt"
    noisy, clean = load_noisy_labels(dataset, noise_type, os.path.join(SHARED_DATA, "cifar-n", name), download=False)
    assert len(noisy) == 50000
    assert 100 * np.mean(noisy != clean) == pytest.approx(rate, abs=0.005)


def test_npz_images_and_errors(tmp_path, synthetic_root):
    images = load_images("cifar10", synthetic_root, download=False)
    assert images.x_train.shape == (400, 32, 32, 3) and images.x_train.dtype == np.uint8
    np.savez(
        tmp_path / "cifar10.npz",
        x_train=np.zeros((4, 32, 32), np.uint8),
        y_train=np.zeros(4),
        x_test=np.zeros((1, 32, 32, 3), np.uint8),
        y_test=np.zeros(1),
    )
    with pytest.raises(DataError, match=r"x_train must be uint8 \(N, 32, 32, 3\)"):
        load_images("cifar10", str(tmp_path), download=False)
    with pytest.raises(DataError, match="cifar100.npz"):  # nothing there, downloads off: says how to supply data
        load_images("cifar100", str(tmp_path / "empty"), download=False)


def test_split_is_numpy_permutation_after_seeding():
    train, val = train_val_split(1000, 0.1, seed=7)
    np.random.seed(7)
    perm = np.random.permutation(1000)
    assert np.array_equal(val, perm[:100]) and np.array_equal(train, perm[100:])
    train, val = train_val_split(1000, 0.0, seed=7)
    assert len(val) == 0 and sorted(train) == list(range(1000))


def test_stratified_subset_keeps_class_shares():
    labels = np.repeat(np.arange(10), [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000])
    sub = stratified_subset(labels, 550, seed=1)
    assert len(sub) == 550 and len(set(sub)) == 550 and np.all(np.diff(sub) > 0)
    assert np.bincount(labels[sub]).tolist() == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert np.array_equal(sub, stratified_subset(labels, 550, seed=1))
    assert not np.array_equal(sub, stratified_subset(labels, 550, seed=2))


@pytest.mark.parametrize("pad_mode, flip_first", [("reflect", True), ("constant", False)])
def test_batched_augmentation_equals_torchvision_pixels(pad_mode, flip_first):
    import torchvision.transforms.functional as TF
    from PIL import Image

    images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    flip = torch.tensor([True, False, True, False, True, True])
    oy, ox = torch.tensor([0, 3, 8, 4, 1, 8]), torch.tensor([8, 0, 2, 4, 7, 0])
    out = crop_flip(pad_images(x, pad_mode), flip, oy, ox, flip_first)
    for b in range(6):
        img = Image.fromarray(images[b])
        if flip_first and flip[b]:
            img = TF.hflip(img)
        img = TF.crop(TF.pad(img, 4, padding_mode=pad_mode), int(oy[b]), int(ox[b]), 32, 32)
        if not flip_first and flip[b]:
            img = TF.hflip(img)
        assert torch.equal(TF.to_tensor(img), out[b])


def test_device_loader_draws_uniform_offsets_and_fair_flips():
    """Every image is all-distinct pixels, so the output reveals each image's flip and offsets."""
    n = 3000
    base = np.arange(32 * 32 * 3, dtype=np.int64).reshape(32, 32, 3) % 251
    spec = LoaderSpec(100, "cpu", (0, 0, 0), (1, 1, 1), augment={"pad_mode": "constant", "flip_first": False}, seed=3)
    loader = DeviceLoader(np.repeat(base[None].astype(np.uint8), n, 0), np.zeros(n), spec)
    ref = torch.from_numpy(base).permute(2, 0, 1).float()[None] / 255
    flips, offsets = [], []
    all_choices = [(f, i, j) for f in (False, True) for i in range(9) for j in range(9)]
    candidates = torch.cat(
        [
            crop_flip(pad_images(ref, "constant"), torch.tensor([f]), torch.tensor([i]), torch.tensor([j]), False)
            for f, i, j in all_choices
        ]
    )
    for x, _, _ in loader:
        dist = torch.cdist(x.flatten(1), candidates.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
        assert dist.min(1).values.max() < 1e-3  # each output is exactly one flip/offset choice
        match = dist.argmin(1)
        for m in match.tolist():
            f, i, j = all_choices[m]
            flips.append(f)
            offsets.append((i, j))
    assert len(flips) == n
    assert abs(np.mean(flips) - 0.5) < 0.035
    oy = np.bincount([o[0] for o in offsets], minlength=9) / n
    ox = np.bincount([o[1] for o in offsets], minlength=9) / n
    assert np.all(np.abs(oy - 1 / 9) < 0.025) and np.all(np.abs(ox - 1 / 9) < 0.025)


def test_loaders_agree_without_augmentation_and_are_seeded():
    images = np.random.RandomState(1).randint(0, 256, (70, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(70) % 10
    spec = LoaderSpec(32, "cpu", CIFAR10["mean"], CIFAR10["std"])
    dev = DeviceLoader(images, labels, spec)
    tv = TorchvisionLoader(images, labels, replace(spec, num_workers=0, kind="torchvision"))
    for (xa, ya, ia), (xb, yb, ib) in zip(dev, tv, strict=True):
        assert torch.allclose(xa, xb, atol=1e-6) and torch.equal(ya, yb) and torch.equal(ia, ib)
    aug = {"pad_mode": "reflect", "flip_first": True}
    a = [b[0] for b in DeviceLoader(images, labels, replace(spec, shuffle=True, augment=aug, seed=5))]
    b = [b[0] for b in DeviceLoader(images, labels, replace(spec, shuffle=True, augment=aug, seed=5))]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert torchvision_transform(CIFAR10["mean"], CIFAR10["std"], aug).transforms[1].padding_mode == "reflect"


def test_device_loader_merges_a_last_batch_of_one():
    from bkd.data.loaders import DeviceLoader

    x = np.zeros((33, 8, 8, 3), dtype=np.uint8)
    common = LoaderSpec(16, "cpu", (0, 0, 0), (1, 1, 1), shuffle=True)
    merged = DeviceLoader(x, np.zeros(33), replace(common, merge_single=True))
    plain = DeviceLoader(x, np.zeros(33), common)
    assert [len(y) for _, y, _ in merged] == [16, 17] and len(merged) == 2
    assert [len(y) for _, y, _ in plain] == [16, 16, 1] and len(plain) == 3
    assert sorted(torch.cat([i for _, _, i in merged]).tolist()) == list(range(33))
    two = DeviceLoader(x[:18], np.zeros(18), replace(common, merge_single=True))
    assert [len(y) for _, y, _ in two] == [16, 2]  # only a batch of exactly one is merged
