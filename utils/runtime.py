"""Seeding, device selection and settings, and what machine a result comes from."""
import contextlib
import os
import platform
import random
import sys

import numpy as np
import torch
import torch.utils.deterministic  # noqa: F401 (fill_uninitialized_memory, in cuda_settings)

from bkd.utils.errors import UsageError

# The oldest torch with every API this project calls: torch.amp.GradScaler(device) is 2.3's (requirements.txt
# says the same; tests/test_cuda_path.py checks both against the code).
MIN_TORCH = (2, 3)


def torch_version(version=None):
    """(major, minor) of a torch version string such as '2.11.0+cu128'."""
    major, minor = (version or torch.__version__).split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_torch_version(version=None):
    version = version or torch.__version__
    if torch_version(version) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise UsageError(f"torch {version} is older than this project needs ({need}); pip install -r requirements.txt")


def set_global_seeds(seed):
    """Seed Python's `random`, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def preserved_global_rng():
    """Leave Python's, numpy's and torch's global generators (CUDA's too, where present) as they were found.

    (Seeding torch seeds CUDA too, lazily, at its first use: so where CUDA is present its state is read here, which
    starts CUDA, and put back after.)"""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def resolve_device(name="auto"):
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


def cuda_index(device):
    return device.index if device.index is not None else torch.cuda.current_device()


def rng_state(device):
    """Every random number generator state the training depends on (for exact resume): the run device's CUDA one."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(cuda_index(device))
    return state


def set_rng_state(state, device):
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], cuda_index(device))


# --- precision, determinism, TF32 -------------------------------------------------------------------------------
def cpu_native_bf16():
    """AVX-512 BF16 or AMX: the CPUs where bf16 autocast pays (elsewhere it runs many times slower than fp32)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_kernels_avx2_at_most():
    """An x86 CPU whose kernels are AVX2's at most (torch's capability: a CPU without AVX-512, or ATEN_CPU_CAPABILITY)."""
    return (platform.machine().lower() in ("x86_64", "amd64", "x86", "i686")
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT"))


def cuda_native_bf16(device):
    """bf16 in hardware: compute capability 8.0 (Ampere) or newer. Older GPUs emulate it, far slower than fp32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


CUBLAS_WORKSPACE = ":4096:8"  # what torch.use_deterministic_algorithms needs of cuBLAS (PyTorch's reproducibility notes)


def _read(owner, name):
    try:
        return getattr(owner, name)
    except RuntimeError:  # torch refuses to answer after its legacy and its new TF32 settings were mixed
        return None


def _legacy_tf32_flags():
    return [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]


def _precision_settings():
    """torch's per-operation fp32 precisions (newer torch; absent on older), parents before children."""
    b = torch.backends
    owners = [b, b.cuda.matmul, b.cudnn, getattr(b.cudnn, "conv", None), getattr(b.cudnn, "rnn", None)]
    return [(owner, "fp32_precision") for owner in owners if owner is not None and hasattr(owner, "fp32_precision")]


def tf32_settings():
    """TF32 in cuDNN convolutions and cuBLAS matrix products, as torch's flags read (None: torch refuses to say)."""
    conv, matmul = (_read(owner, name) for owner, name in _legacy_tf32_flags())
    return {"cudnn_conv": conv, "cuda_matmul": matmul}


def _set_tf32(enabled):
    # Through torch's legacy flags: setting them sets the new per-operation precisions too, so that both readings
    # agree. Setting only the new ones (cudnn.conv / cuda.matmul fp32_precision) leaves the legacy getters raising,
    # and inductor versions that still read them fail to compile (tests/test_cuda_path.py shows both).
    for owner, name in _legacy_tf32_flags():
        setattr(owner, name, enabled)


def _tf32_state():
    return ([_read(owner, name) for owner, name in _legacy_tf32_flags()],
            [getattr(owner, name) for owner, name in _precision_settings()])


def _restore_tf32(state):
    legacy, precisions = state
    for (owner, name), value in zip(_legacy_tf32_flags(), legacy):
        if value is not None:
            setattr(owner, name, value)
    for (owner, name), value in zip(_precision_settings(), precisions):
        if getattr(owner, name) != value:
            setattr(owner, name, value)


def determinism_settings():
    return {"cudnn_deterministic": torch.backends.cudnn.deterministic, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


def cuda_arithmetic(deterministic=True, tf32=True, fill_uninitialized_memory=True):
    """The CUDA settings of a run, as cuda_settings applies them and metrics.json records them (gpu_info's keys)."""
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG") or (CUBLAS_WORKSPACE if deterministic else None)
    return {"tf32": {"cudnn_conv": tf32, "cuda_matmul": tf32},
            "determinism": {"cudnn_deterministic": deterministic, "cudnn_benchmark": not deterministic,
                            "deterministic_algorithms": deterministic,
                            "fill_uninitialized_memory": fill_uninitialized_memory, "cublas_workspace_config": workspace}}


@contextlib.contextmanager
def cuda_settings(device, deterministic=True, tf32=True, fill_uninitialized_memory=True):
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
    fill = torch.utils.deterministic  # (fill_uninitialized_memory: torch 2.1+)
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"), _tf32_state(), fill.fill_uninitialized_memory)
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


# --- torch's compile cache ------------------------------------------------------------------------------------------
COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def _compile_cache_dir():
    """The folder torch's compiler caches in, created as torch creates it (raises OSError where it cannot be). As torch's
    torch/_inductor/runtime/cache_dir_utils.py resolves it, without importing torch's compiler: an import that fails
    there leaves it half imported for the rest of the process."""
    import getpass
    import re
    import tempfile

    path = os.environ.get(COMPILE_CACHE_ENV)
    if not path:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this user id (some containers)
            user = f"uid_{os.getuid()}"
        path = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".bkd_write_test_{os.getpid()}")
    with open(probe, "w"):
        pass
    os.remove(probe)
    return path


@contextlib.contextmanager
def usable_compile_cache(log):
    """A writable cache folder for torch's compiler, for a run. Building the optimiser imports torch's compiler, which
    creates its cache folder (even with --no_compile): where that folder cannot be written, the run uses a new temporary
    one, saying so; where there is none, one line naming the variable. The variable is put back after the run."""
    try:
        _compile_cache_dir()
        reason = None
    except OSError as err:
        reason = f"{err.strerror or err}: {err.filename}" if getattr(err, "filename", None) else str(err)
    if reason is None:
        yield  # (outside the try: an OSError of the run itself is not the cache's)
        return
    import tempfile

    saved = os.environ.get(COMPILE_CACHE_ENV)
    try:
        os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix="bkd_torchinductor_")
    except OSError as err:
        raise UsageError(f"torch's compile cache cannot be created ({reason}) and no temporary folder can be "
                         f"({err.strerror}); set {COMPILE_CACHE_ENV} to a writable folder") from None
    from bkd.utils import logfmt

    log(logfmt.ours(f"torch's compile cache cannot be created ({reason}); this run caches in "
                    f"{os.environ[COMPILE_CACHE_ENV]} ({COMPILE_CACHE_ENV} sets another)"))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(COMPILE_CACHE_ENV, None)
        else:
            os.environ[COMPILE_CACHE_ENV] = saved


# --- what a result comes from ----------------------------------------------------------------------------------
def _cpuinfo():
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


def cpu_model():
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_kind():
    """What decides the CPU's float rounding besides the thread count: vendor, family and model (oneDNN's kernels and
    their blocking follow the CPU model, not only the instruction set), and torch's kernel capability."""
    info = _cpuinfo()
    number = lambda key: int(info[key]) if info.get(key, "").isdigit() else None  # noqa: E731
    return {"vendor": info.get("vendor_id"), "family": number("cpu family"), "model": number("model"),
            "capability": torch.backends.cpu.get_cpu_capability()}


def device_identity(device):
    """The device a run computes on, as resume compares it: its type and its model (rounding follows both)."""
    if device.type == "cuda":
        index = cuda_index(device)
        major, minor = torch.cuda.get_device_capability(index)
        return {"type": "cuda", "name": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}
    if device.type == "cpu":
        kind = cpu_kind()
        return {"type": "cpu", "name": cpu_model(), "capability": kind["capability"],
                "model": f"{kind['vendor']} family {kind['family']} model {kind['model']}"}
    return {"type": device.type, "name": device.type}


def describe_device(identity):
    return f"{identity.get('type')} ({identity.get('name')})"


def _driver_version():
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info(device):
    """The GPU facts a CUDA result depends on: model, compute capability, memory, driver, CUDA, cuDNN, TF32, determinism."""
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


def machine_info(device=None, computation=None):
    """What a result depends on beyond the code: CPU type (float rounding differs between CPU kernels), threads, versions,
    and on CUDA the GPU, its driver and libraries, TF32 and determinism settings: as torch reads them now, or those a
    run with `computation` (its `deterministic` and `tf32`) computes with, which cuda_settings sets when it starts."""
    from importlib.metadata import version  # not `import torchvision`: that takes seconds

    info = {
        "cpu_model": cpu_model(),
        "cpu_kind": cpu_kind(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
                            for name in ("avx512_bf16", "amx_tile")},
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": version("torchvision"),
                     "numpy": np.__version__, "PIL": version("pillow")},
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = gpu_info(device)
            if computation is not None:
                info["gpu"].update(cuda_arithmetic(computation.deterministic, computation.tf32))
    return info
