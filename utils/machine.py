"""What a result comes from besides the code: the CPU (its kind decides float rounding), threads, versions, the GPU."""

import os
import platform
import sys
from typing import Any, Protocol

import numpy as np
import torch

from bkd.utils.cuda import cuda_arithmetic, determinism_settings, tf32_settings
from bkd.utils.devices import cuda_index


class CudaArithmetic(Protocol):
    """What a run's computation says of its CUDA arithmetic (bkd.config.Computation has it)."""

    @property
    def deterministic(self) -> bool: ...
    @property
    def tf32(self) -> bool: ...


def _cpuinfo() -> dict[str, str]:
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform says."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_kind() -> dict[str, Any]:
    """What decides the CPU's float rounding besides the thread count: vendor, family and model (oneDNN's kernels and
    their blocking follow the CPU model, not only the instruction set), and torch's kernel capability."""
    info = _cpuinfo()

    def number(key: str) -> int | None:
        return int(info[key]) if info.get(key, "").isdigit() else None

    return {
        "vendor": info.get("vendor_id"),
        "family": number("cpu family"),
        "model": number("model"),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def device_identity(device: torch.device) -> dict[str, str]:
    """The device a run computes on, as resume compares it: its type and its model (rounding follows both)."""
    if device.type == "cuda":
        index = cuda_index(device)
        major, minor = torch.cuda.get_device_capability(index)
        return {"type": "cuda", "name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}
    if device.type == "cpu":
        kind = cpu_kind()
        return {
            "type": "cpu",
            "name": cpu_model(),
            "capability": kind["capability"],
            "model": f"{kind['vendor']} family {kind['family']} model {kind['model']}",
        }
    return {"type": device.type, "name": device.type}


def describe_device(identity: dict[str, Any]) -> str:
    """A device identity (device_identity) in words, e.g. 'cuda (NVIDIA H100 80GB HBM3)'."""
    return f"{identity.get('type')} ({identity.get('name')})"


def _driver_version() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info(device: torch.device) -> dict[str, Any]:
    """The GPU facts a CUDA result depends on: model, compute capability, memory, driver, CUDA, cuDNN, TF32,
    determinism."""
    index = cuda_index(device)
    props = torch.cuda.get_device_properties(index)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "driver": _driver_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32": tf32_settings(),
        "determinism": determinism_settings(),
        "visible_devices": torch.cuda.device_count(),
    }


def machine_info(device: torch.device | None = None, computation: CudaArithmetic | None = None) -> dict[str, Any]:
    """What a result depends on beyond the code: CPU type (float rounding differs between CPU kernels), threads,
    versions, and on CUDA the GPU, its driver and libraries, TF32 and determinism settings: as torch reads them now,
    or those a run with `computation` (its `deterministic` and `tf32`) computes with, which cuda_settings sets when it
    starts."""
    from importlib.metadata import version  # not `import torchvision`: that takes seconds

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_kind": cpu_kind(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": {
            name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
            for name in ("avx512_bf16", "amx_tile")
        },
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchvision": version("torchvision"),
            "numpy": np.__version__,
            "PIL": version("pillow"),
        },
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = gpu_info(device)
            if computation is not None:
                info["gpu"].update(cuda_arithmetic(computation.deterministic, computation.tf32))
    return info
