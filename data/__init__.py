"""The data of a run, the package bkd.data (imports bkd.utils only).

cifar.py    CIFAR images (prepared npz or torchvision), download and checks
labels.py   CIFAR-N label files: safe unpickling, download with checksum, validation
custom.py   your own data: an npz or an image folder
split.py    stratified subset and the noisy validation split
datasets.py DataSelection and input_dataset (the original's name): everything a run needs, as one RunData, and the
            original's start-up lines
npz.py      the one .npz reader
loaders.py  the two input pipelines (device-resident batches, the original's PIL workers)
corrections.py  a person's decisions on labels (--corrections), applied before anything is chosen

The default CIFAR-N label paths (as in the original) are data/CIFAR-10_human.pt and
data/CIFAR-100_human.pt (git-ignored, never committed).
"""

if __name__ != "bkd.data":  # one module, one name: data.x and bkd.data.x would be two modules (and two sets of errors)
    raise ImportError(
        f"import bkd.data, not {__name__}: the repository's data/ folder is the package bkd.data (docs/layout.md)"
    )
