"""Model checkpoints in the original's format ({'state_dict', 'epoch'}, plus the architecture), as CPU tensors."""

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bkd.utils.errors import DataError, first_line
from bkd.utils.files import open_regular

if TYPE_CHECKING:
    import torch


def convert(obj: Any, kind: type | tuple[type, ...], fn: Callable[[Any], Any]) -> Any:
    """`obj` (nested dicts, lists and tuples) with every value of type `kind` replaced by fn(value)."""
    if isinstance(obj, kind):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: convert(v, kind, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(convert(v, kind, fn) for v in obj)
    return obj


def host_copy(obj: Any) -> Any:
    """A copy of `obj` (tensors in dicts, lists and tuples) whose tensors are in host memory: a checkpoint made on a GPU
    loads on a CPU-only machine, even with a plain torch.load, and the copy stays as it is while training goes on."""
    import torch

    return convert(obj, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))


def model_checkpoint(model: "torch.nn.Module", epoch: int, num_classes: int, width: int) -> dict[str, Any]:
    """The original's checkpoint ({'state_dict', 'epoch'}) plus the architecture, in host memory."""
    return {"state_dict": host_copy(model.state_dict()), "epoch": epoch, "num_classes": num_classes, "width": width}


def load_model(path: str, build: Callable[[int, int], "torch.nn.Module"]) -> tuple["torch.nn.Module", dict[str, Any]]:
    """Load a checkpoint (model_checkpoint, written with utils.files.save_torch) into `build(num_classes, width)`;
    clear errors on bad files."""
    import torch  # here, so that the launcher's bookkeeping imports this module without torch

    if not os.path.exists(path):
        raise DataError(f"{path}: checkpoint not found; train this run first (blind_knowledge_dist_training.py)")
    try:
        with open_regular(path, "rb") as fh:
            ckpt = torch.load(fh, map_location="cpu", weights_only=True)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: unreadable checkpoint ({first_line(err)}); truncated or not a checkpoint") from None
    weights = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise DataError(f"{path}: not a model checkpoint (no 'state_dict' of named tensors)")
    try:
        num_classes = int(ckpt.get("num_classes") or weights["linear.weight"].shape[0])
        width = int(ckpt.get("width") or weights["conv1.weight"].shape[0])
        model = build(num_classes, width)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise DataError(f"{path}: not a PreResNet18 checkpoint ({type(err).__name__}: {first_line(err)})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = first_line(err)
        raise DataError(
            f"{path}: weights do not fit PreResNet18(num_classes={num_classes}, width={width}) ({first})"
        ) from None
    return model, ckpt
