"""The CUDA arithmetic of a run: TF32 and determinism, set before its first CUDA operation and restored after it."""

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils.deterministic

# torch's fill_uninitialized_memory (torch 2.1+) is a property of this module, which type checkers cannot see
_DETERMINISTIC: Any = torch.utils.deterministic

CUBLAS_WORKSPACE = (
    ":4096:8"  # what torch.use_deterministic_algorithms needs of cuBLAS (PyTorch's reproducibility notes)
)


def _read(owner: object, name: str) -> Any:
    try:
        return getattr(owner, name)
    except RuntimeError:  # torch refuses to answer after its legacy and its new TF32 settings were mixed
        return None


def _legacy_tf32_flags() -> list[tuple[object, str]]:
    return [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]


def _precision_settings() -> list[tuple[object, str]]:
    """torch's per-operation fp32 precisions (newer torch; absent on older), parents before children."""
    b = torch.backends
    owners = [b, b.cuda.matmul, b.cudnn, getattr(b.cudnn, "conv", None), getattr(b.cudnn, "rnn", None)]
    return [(owner, "fp32_precision") for owner in owners if owner is not None and hasattr(owner, "fp32_precision")]


def tf32_settings() -> dict[str, bool | None]:
    """TF32 in cuDNN convolutions and cuBLAS matrix products, as torch's flags read (None: torch refuses to say)."""
    conv, matmul = (_read(owner, name) for owner, name in _legacy_tf32_flags())
    return {"cudnn_conv": conv, "cuda_matmul": matmul}


def _set_tf32(enabled: bool) -> None:
    # Through torch's legacy flags: setting them sets the new per-operation precisions too, so that both readings
    # agree. Setting only the new ones (cudnn.conv / cuda.matmul fp32_precision) leaves the legacy getters raising,
    # and inductor versions that still read them fail to compile (tests/test_cuda_path.py shows both).
    for owner, name in _legacy_tf32_flags():
        setattr(owner, name, enabled)


def _tf32_state() -> tuple[list[Any], list[Any]]:
    return (
        [_read(owner, name) for owner, name in _legacy_tf32_flags()],
        [getattr(owner, name) for owner, name in _precision_settings()],
    )


def _restore_tf32(state: tuple[list[Any], list[Any]]) -> None:
    legacy, precisions = state
    for (owner, name), value in zip(_legacy_tf32_flags(), legacy, strict=True):
        if value is not None:
            setattr(owner, name, value)
    for (owner, name), value in zip(_precision_settings(), precisions, strict=True):
        if getattr(owner, name) != value:
            setattr(owner, name, value)


def determinism_settings() -> dict[str, Any]:
    """torch's determinism settings as they are now."""
    return {
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "fill_uninitialized_memory": _DETERMINISTIC.fill_uninitialized_memory,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def cuda_arithmetic(
    deterministic: bool = True, tf32: bool = True, fill_uninitialized_memory: bool = True
) -> dict[str, dict[str, Any]]:
    """The CUDA settings of a run, as cuda_settings applies them and metrics.json records them (gpu_info's keys)."""
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG") or (CUBLAS_WORKSPACE if deterministic else None)
    return {
        "tf32": {"cudnn_conv": tf32, "cuda_matmul": tf32},
        "determinism": {
            "cudnn_deterministic": deterministic,
            "cudnn_benchmark": not deterministic,
            "deterministic_algorithms": deterministic,
            "fill_uninitialized_memory": fill_uninitialized_memory,
            "cublas_workspace_config": workspace,
        },
    }


@contextlib.contextmanager
def cuda_settings(
    device: torch.device, deterministic: bool = True, tf32: bool = True, fill_uninitialized_memory: bool = True
) -> Iterator[None]:
    """A run's CUDA arithmetic, set before its first CUDA operation and restored after it.

    deterministic: cuDNN's deterministic algorithms, no autotuning (cudnn.benchmark off), and
    torch.use_deterministic_algorithms with the cuBLAS workspace it needs; otherwise cuDNN autotunes
    (cudnn.benchmark), faster and nondeterministic. fill_uninitialized_memory: torch's filling of new
    memory under deterministic algorithms (its default; benchmarks/gpu_check.py measures its cost).
    tf32: TF32 in cuDNN convolutions and cuBLAS matrix products (PyTorch's and the authors' numerics on
    CUDA); otherwise strict IEEE fp32. On other devices nothing is changed: the CPU's kernels are
    deterministic at a fixed thread count.
    """
    if device.type != "cuda":
        yield
        return
    fill = _DETERMINISTIC
    saved = (
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        _tf32_state(),
        fill.fill_uninitialized_memory,
    )
    wanted = cuda_arithmetic(deterministic, tf32, fill_uninitialized_memory)
    try:
        if wanted["determinism"]["cublas_workspace_config"] is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = wanted["determinism"]["cublas_workspace_config"]
        torch.backends.cudnn.deterministic = wanted["determinism"]["cudnn_deterministic"]
        torch.backends.cudnn.benchmark = wanted["determinism"]["cudnn_benchmark"]
        torch.use_deterministic_algorithms(wanted["determinism"]["deterministic_algorithms"])
        fill.fill_uninitialized_memory = wanted["determinism"]["fill_uninitialized_memory"]
        _set_tf32(tf32)
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2])
        if saved[3] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        _restore_tf32(saved[4])
        fill.fill_uninitialized_memory = saved[5]
