"""Batches of (image, label, index) for the engine, from two interchangeable input pipelines.

* `DeviceLoader` (default, `--loader device`): the whole split lives on the
  training device as one (pre-padded) uint8 tensor; flip, random crop and
  normalisation run as batched tensor operations with a seeded generator.
* `TorchvisionLoader` (`--loader torchvision`): the original's pipeline, per-image
  PIL transforms in DataLoader worker processes.
Both draw a 50 % horizontal flip and crop offsets uniform over 0..8 on each axis
per image, in the dataset's order (CIFAR-10 flips then crops with reflect
padding, CIFAR-100 crops with zero padding then flips). `index` is the position
of the image within the split, which addresses per-sample statistics.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4
CROP = 32

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # normalised images, labels, indices within the split


class Loader(Protocol):
    """What the run and the evaluation read of an input pipeline (DeviceLoader, TorchvisionLoader)."""

    @property
    def num_samples(self) -> int: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LoaderSpec:
    """How a loader turns images into batches of (normalised images, labels, indices) on a device."""

    batch_size: int
    device: torch.device | str  # where the batches go (the device loader keeps its images there)
    mean: tuple[float, ...]  # per-channel normalisation, as torchvision's Normalize
    std: tuple[float, ...]
    augment: dict[str, Any] | None = None  # the training augmentation, {"pad_mode": ..., "flip_first": ...}
    shuffle: bool = False
    merge_single: bool = False  # device loader: a last batch of one image joins the batch before it
    seed: int = 0  # device loader: the seed of its generator
    num_workers: int = 4  # PIL loader: its worker processes
    kind: str = "device"  # "device" (DeviceLoader) or "torchvision" (TorchvisionLoader)


def pad_images(x: torch.Tensor, pad_mode: str) -> torch.Tensor:
    """Pad a uint8 batch (N, C, H, W) by 4 pixels on each side ('reflect' or 'constant' = zeros)."""
    if pad_mode == "constant":
        return F.pad(x, (PAD, PAD, PAD, PAD))
    return F.pad(x.float(), (PAD, PAD, PAD, PAD), mode="reflect").to(x.dtype)


def crop_flip(
    padded: torch.Tensor, flip: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor, flip_first: bool
) -> torch.Tensor:
    """Random horizontal flip and SxS crop of padded images (B, C, S+8, S+8), as two gathers (rows, columns).

    `flip` (B,) bool, `offset_y`/`offset_x` (B,) ints in 0..8: the top/left corner of
    the crop in the padded image, as torchvision's RandomCrop draws them. Padding is
    symmetric, so flipping before the crop equals cropping at 8 - offset_x and then
    flipping; a flip is a reversed column index.
    """
    batch, channels = padded.shape[:2]
    size = padded.shape[-1] - 2 * PAD
    span = torch.arange(size, device=padded.device)
    if flip_first:
        offset_x = torch.where(flip, 2 * PAD - offset_x, offset_x)
    rows = offset_y[:, None] + span
    cols = offset_x[:, None] + torch.where(flip[:, None], size - 1 - span, span)
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, size, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, size, size))


class DeviceLoader:
    """Device-resident split: uint8 NHWC numpy images -> normalised float batches on `spec.device`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: LoaderSpec) -> None:
        self.device = torch.device(spec.device)
        # A last batch of one image goes with the batch before it: BatchNorm cannot train on one image
        # when the last stage's maps are 1x1 (8x8 inputs), and a lone image makes a noisy step anyway.
        self.merge_single = spec.merge_single
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.augment = spec.augment  # None or dict(pad_mode=..., flip_first=...)
        # Augmented splits are padded once, up front, so a batch is two gathers from uint8 memory.
        self.images = pad_images(x, self.augment["pad_mode"]) if self.augment else x
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=self.device)
        self.batch_size = spec.batch_size
        self.shuffle = spec.shuffle
        std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        # ToTensor + Normalize as one multiply-add: x / 255 / std - mean / std
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1) / std
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(spec.seed)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def _bounds(self) -> list[tuple[int, int]]:
        n, b = self.num_samples, self.batch_size
        starts = list(range(0, n, b))
        if self.merge_single and len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()
        return list(zip(starts, starts[1:] + [n], strict=True))

    def __len__(self) -> int:
        return len(self._bounds())

    def __iter__(self) -> Iterator[Batch]:
        n, g, dev = self.num_samples, self.generator, self.device
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        for start, stop in self._bounds():
            idx = order[start:stop]
            x = self.images[idx]
            if self.augment is not None:
                b = len(idx)
                flip = torch.rand(b, generator=g, device=dev) < 0.5
                oy = torch.randint(0, 2 * PAD + 1, (b,), generator=g, device=dev)
                ox = torch.randint(0, 2 * PAD + 1, (b,), generator=g, device=dev)
                x = crop_flip(x, flip, oy, ox, self.augment["flip_first"])
            yield torch.addcmul(self.shift, x.float(), self.scale), self.labels[idx], idx

    def reseed(self, seed: int) -> None:
        """Draw the next pass's augmentation from `seed`: the same draws whenever that pass runs."""
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """Its generator's state (resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def torchvision_transform(
    mean: tuple[float, ...], std: tuple[float, ...], augment: dict[str, Any] | None = None, size: int = CROP
) -> Any:
    """The original's per-image transform (PIL -> tensor)."""
    from torchvision import transforms

    steps = []
    if augment is not None:
        flip = transforms.RandomHorizontalFlip()
        crop = transforms.RandomCrop(size, padding=PAD, padding_mode=augment["pad_mode"])
        steps += [flip, crop] if augment["flip_first"] else [crop, flip]
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


class IndexedImages(torch.utils.data.Dataset):
    """Map-style dataset of uint8 HWC images returning (transform(PIL image), label, index)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, np.asarray(labels), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index]), index


class TorchvisionLoader:
    """The original-style pipeline: PIL transforms in `spec.num_workers` DataLoader processes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, spec: LoaderSpec) -> None:
        self.device = torch.device(spec.device)
        dataset = IndexedImages(
            images, labels, torchvision_transform(spec.mean, spec.std, spec.augment, size=images.shape[1])
        )
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=spec.batch_size,
            shuffle=spec.shuffle,
            num_workers=spec.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.num_samples = len(dataset)
        self.batch_size = spec.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for x, y, idx in self.loader:
            yield (
                x.to(self.device, non_blocking=True),
                y.to(self.device, non_blocking=True),
                idx.to(self.device, non_blocking=True),
            )

    def state_dict(self) -> dict[str, Any]:
        return {}  # its randomness comes from torch's global generator, saved with the run

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def make_loader(images: np.ndarray, labels: np.ndarray, spec: LoaderSpec) -> Loader:
    """The loader `spec.kind` of (images, labels): DeviceLoader or TorchvisionLoader."""
    if spec.kind == "device":
        return DeviceLoader(images, labels, spec)
    if spec.kind == "torchvision":
        return TorchvisionLoader(images, labels, spec)
    raise ValueError(f"unknown loader {spec.kind!r}")
