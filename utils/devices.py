"""The device a run computes on: torch's version, the device named by --device, and what the device can do natively."""

import platform

import torch

from bkd.utils.errors import UsageError

# The oldest torch with every API this project calls: torch.amp.GradScaler(device) is 2.3's (requirements.txt
# says the same; tests/test_cuda_path.py checks both against the code).
MIN_TORCH = (2, 3)


def torch_version(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of a torch version string such as '2.11.0+cu128'."""
    major, minor = (version or torch.__version__).split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_torch_version(version: str | None = None) -> None:
    """One line (exit 2) where torch is older than MIN_TORCH."""
    version = version or torch.__version__
    if torch_version(version) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise UsageError(f"torch {version} is older than this project needs ({need}); pip install -r requirements.txt")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; an explicit device must exist. Checks torch's version first."""
    check_torch_version()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0..")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu or auto")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: unsupported device type; use auto, cpu, cuda or cuda:N")
    return device


def cuda_index(device: torch.device) -> int:
    """The CUDA device's index (the current device where the name has none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def cpu_native_bf16() -> bool:
    """AVX-512 BF16 or AMX, with torch's AVX-512 kernels: the CPUs where bf16 autocast pays (elsewhere it runs many
    times slower than fp32; also where ATEN_CPU_CAPABILITY=avx2 limits torch to the kernels of an AVX2-only CPU)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks) and not cpu_kernels_avx2_at_most()


def cpu_kernels_avx2_at_most() -> bool:
    """An x86 CPU whose kernels are AVX2's at most (torch's capability: a CPU without AVX-512, or
    ATEN_CPU_CAPABILITY)."""
    return platform.machine().lower() in (
        "x86_64",
        "amd64",
        "x86",
        "i686",
    ) and torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT")


def cuda_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: compute capability 8.0 (Ampere) or newer. Older GPUs emulate it, far slower than fp32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)
