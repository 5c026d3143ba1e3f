"""The CUDA path, checked on the CPU: what a GPU would decide is mocked (compute capability, properties), and what
the code does with it is real. tests/test_cuda.py runs the same promises on a real GPU (skipped without one)."""

import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bkd import resume
from bkd.config import TrainConfig, resolve_computation, resolve_precision
from bkd.utils import cuda, devices, machine
from bkd.utils.errors import UsageError
from tests.cli import ROOT, run, tiny_flags

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
TRAIN = "blind_knowledge_dist_training.py"


# 1. torch's version ------------------------------------------------------------------------------------------------
# Every API the code calls that needs a newer torch than 2.0, with the release that brought it.
NEEDS = {"torch.amp.GradScaler(": (2, 3)}


def _requirement_floor(name):
    text = open(os.path.join(ROOT, "requirements.txt")).read()
    return tuple(int(v) for v in re.search(rf"^{name}>=(\d+)\.(\d+)", text, re.M).groups())


def test_requirements_floor_is_what_the_code_needs():
    code = "".join(
        open(os.path.join(ROOT, d, f)).read()
        for d in ("bkd", "utils", "data")
        for f in os.listdir(os.path.join(ROOT, d))
        if f.endswith(".py")
    )
    for api, version in NEEDS.items():
        assert api in code, f"{api} is no longer called: drop it from NEEDS"
        assert devices.MIN_TORCH >= version, api
    assert _requirement_floor("torch") == devices.MIN_TORCH
    assert _requirement_floor("torchvision") == (0, devices.MIN_TORCH[1] + 15)  # torchvision 0.18 goes with torch 2.3


def test_an_older_torch_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu121")
    with pytest.raises(
        UsageError,
        match=r"^torch 2.1.2\+cu121 is older than this project needs \(2.3\); pip install -r "
        r"requirements.txt$",
    ):
        devices.resolve_device("cpu")
    assert devices.torch_version("2.11.0+cu128") == (2, 11) and devices.torch_version("2.3.0a0") == (2, 3)


# 2. mixed precision by the device's native support -------------------------------------------------------------------
@pytest.mark.parametrize("capability, name", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_amp_on_cuda_is_bf16_only_where_the_gpu_has_it(monkeypatch, capability, name):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulated bf16: not asked
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision(CUDA, amp=True) == name
    assert resolve_precision(CUDA, amp=False) == "fp32"
    computation = resolve_computation(TrainConfig(amp=True), CUDA)
    assert computation.precision == name and computation.amp


def test_fp16_scales_its_gradients_and_bf16_does_not(monkeypatch):
    from bkd.engine import Precision

    asked = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: asked.append((device, enabled)))
    assert Precision(CUDA, "fp16").dtype == torch.float16 and Precision(CUDA, "bf16").dtype == torch.bfloat16
    assert Precision(CPU, "fp32").dtype == torch.float32
    assert asked == [("cuda", True), ("cuda", False), ("cpu", False)]


def test_amp_is_refused_where_the_device_has_no_mixed_precision(monkeypatch):
    monkeypatch.setattr(devices.torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(devices.torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    with pytest.raises(UsageError, match="has no native bf16"):
        resolve_precision(CPU, amp=True)
    assert resolve_precision(CPU, amp=False) == "fp32"  # without --amp nothing is asked of the CPU
    with pytest.raises(UsageError, match="^--amp: mixed precision is not supported on mps; drop --amp$"):
        resolve_precision(torch.device("mps"), amp=True)


@pytest.mark.slow
def test_setup_line_and_metrics_say_which_precision(synthetic_root, tmp_path):
    if not devices.cpu_native_bf16():
        pytest.skip("this CPU has no native bf16: --amp is refused here (tested above)")
    proc = run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), n_epoch=1, amp=True), cwd=str(tmp_path))
    assert "device cpu (bf16 mixed precision), loader device" in proc.stdout
    config = json.load(open(tmp_path / "cifar10_worst_seed_0" / "metrics.json"))["config"]
    assert config["precision"] == "bf16" and config["deterministic"] is True and config["tf32"] is False


# 3. and 4. determinism and TF32 ---------------------------------------------------------------------------------------
def test_cuda_settings_are_deterministic_and_tf32_by_default_and_restored_after(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (cuda.determinism_settings(), cuda.tf32_settings(), cuda._tf32_state())
    with cuda.cuda_settings(CUDA):
        assert cuda.determinism_settings() == {
            "cudnn_deterministic": True,
            "cudnn_benchmark": False,
            "deterministic_algorithms": True,
            "fill_uninitialized_memory": True,
            "cublas_workspace_config": ":4096:8",
        }
        assert cuda.tf32_settings() == {"cudnn_conv": True, "cuda_matmul": True}
    assert (cuda.determinism_settings(), cuda.tf32_settings(), cuda._tf32_state()) == before
    with cuda.cuda_settings(CUDA, deterministic=False, tf32=False, fill_uninitialized_memory=False):
        settings = cuda.determinism_settings()
        assert (
            settings["cudnn_benchmark"]
            and not settings["cudnn_deterministic"]
            and not settings["deterministic_algorithms"]
        )
        assert not settings["fill_uninitialized_memory"]
        assert cuda.tf32_settings() == {"cudnn_conv": False, "cuda_matmul": False}
    assert (cuda.determinism_settings(), cuda.tf32_settings(), cuda._tf32_state()) == before
    with cuda.cuda_settings(CPU, deterministic=True, tf32=False):  # the CPU: nothing changes
        assert (cuda.determinism_settings(), cuda.tf32_settings()) == before[:2]


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_reads_the_same_through_torchs_legacy_and_new_settings(tf32):
    """Setting only the new per-operation precisions leaves torch's legacy getters raising (inductor versions that read
    them fail to compile): the run's settings keep both readings consistent."""
    b = torch.backends
    with cuda.cuda_settings(CUDA, tf32=tf32):
        assert b.cudnn.allow_tf32 is tf32 and b.cuda.matmul.allow_tf32 is tf32  # the legacy getters answer
        if hasattr(b.cuda.matmul, "fp32_precision"):  # newer torch: the new reading agrees
            assert b.cuda.matmul.fp32_precision == ("tf32" if tf32 else "ieee")
            assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
    if not hasattr(b.cuda.matmul, "fp32_precision"):
        return
    # what the new API alone does (the project's earlier way), shown on this torch
    saved = cuda._tf32_state()
    try:
        b.cudnn.conv.fp32_precision = b.cuda.matmul.fp32_precision = "ieee"
        with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
            _ = b.cudnn.allow_tf32
    finally:
        cuda._restore_tf32(saved)


def test_a_callers_own_new_api_precision_is_put_back():
    b = torch.backends
    if not hasattr(b.cuda.matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no per-operation fp32_precision settings")
    saved = cuda._tf32_state()
    try:
        b.cuda.matmul.fp32_precision = "tf32"  # a caller's choice through the new API
        mine = cuda._tf32_state()
        with cuda.cuda_settings(CUDA, tf32=False):
            assert b.cuda.matmul.allow_tf32 is False
        assert cuda._tf32_state()[1] == mine[1] and b.cuda.matmul.fp32_precision == "tf32"
    finally:
        cuda._restore_tf32(saved)


def test_fit_sets_the_cuda_arithmetic_before_anything_else(monkeypatch):
    """bkd.run.fit enters the settings before it builds anything (the first CUDA operation of a run)."""
    from bkd import run as run_module
    from bkd.outputs import Output

    seen = {}

    class FakeRun:  # what fit builds first: the settings are in place by then
        def __init__(self, job, outputs):
            seen.update(cuda.determinism_settings(), **cuda.tf32_settings())

        def loop(self, resume, stop):
            return "state"

    monkeypatch.setattr(run_module, "Run", FakeRun)
    monkeypatch.setattr(run_module, "set_global_seeds", lambda seed: None)  # (it would touch the absent CUDA)
    finished = []
    output = Output()
    output.finish = lambda: finished.append(True)
    computation = resolve_computation(TrainConfig(), CUDA)
    assert run_module.fit(run_module.Job(TrainConfig(), None, CUDA, computation), [output]) == "state" and finished == [
        True
    ]
    assert seen["deterministic_algorithms"] and seen["cudnn_deterministic"] and not seen["cudnn_benchmark"]
    assert seen["cublas_workspace_config"] == ":4096:8" and seen["cudnn_conv"] is True and seen["cuda_matmul"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # restored


def test_computation_decides_determinism_and_tf32_per_mode():
    default, reference = (
        resolve_computation(TrainConfig(), CUDA),
        resolve_computation(TrainConfig(reference=True), CUDA),
    )
    assert default.deterministic and default.tf32  # PyTorch's and the authors' numerics on CUDA, deterministic kernels
    assert reference.deterministic and reference.tf32  # the authors' torch 1.10 ran convolutions and products in TF32
    strict = resolve_computation(TrainConfig(strict_fp32=True), CUDA)
    assert strict.deterministic and not strict.tf32
    fast = resolve_computation(TrainConfig(cudnn_benchmark=True), CUDA)
    assert not fast.deterministic and fast.tf32
    assert not resolve_computation(TrainConfig(), CPU).tf32  # nothing on a CPU computes in TF32: recorded as such
    for flag in ("cudnn_benchmark", "strict_fp32"):
        with pytest.raises(UsageError, match=f"^--{flag} applies to CUDA devices only"):
            resolve_computation(TrainConfig(**{flag: True}), CPU)
    from bkd.config import check_config

    with pytest.raises(UsageError, match="drop --strict_fp32"):
        check_config(TrainConfig(reference=True, strict_fp32=True))


def test_resume_compares_the_kernels_and_tf32_like_any_computation_flag():
    from bkd.data.datasets import DataSelection
    from bkd.resume import run_args

    saved = {"args": run_args(TrainConfig(), resolve_computation(TrainConfig(), CUDA).compile, DataSelection())}
    for flag in ("cudnn_benchmark", "strict_fp32"):
        config = TrainConfig(**{flag: True})
        current = {"args": run_args(config, resolve_computation(config, CUDA).compile, DataSelection())}
        with pytest.raises(UsageError, match=f"^--{flag} True differs from the run being resumed \\(False\\)"):
            resume.check(saved, current, "state.pth.tar", log=lambda *a: None)


def test_global_average_pool_is_one_deterministic_operation(monkeypatch):
    """adaptive_avg_pool2d has no deterministic CUDA backward: the network never calls it, at any image size."""
    import torch.nn.functional as F

    from bkd.models import PreResNet18

    monkeypatch.setattr(F, "adaptive_avg_pool2d", lambda *a, **k: pytest.fail("adaptive_avg_pool2d called"))
    torch.manual_seed(0)
    net = PreResNet18(3, width=2).eval()
    for size in (8, 32, 48):
        x = torch.randn(2, 3, size, size)
        assert net(x).shape == (2, 3)


# 5. the GPU's facts --------------------------------------------------------------------------------------------------
def test_machine_info_records_the_gpu(monkeypatch):
    props = SimpleNamespace(
        name="NVIDIA H200", major=9, minor=0, total_memory=150_000_000_000, multi_processor_count=132
    )
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(machine, "_driver_version", lambda: "570.124.06")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    # the run's settings, although they are set only when its training starts (and were torch's defaults here)
    info = machine.machine_info(torch.device("cuda:0"), resolve_computation(TrainConfig(), CUDA))
    gpu = info["gpu"]
    assert (gpu["name"], gpu["compute_capability"], gpu["memory_gib"], gpu["driver"], gpu["cuda"], gpu["cudnn"]) == (
        "NVIDIA H200",
        "9.0",
        139.7,
        "570.124.06",
        "12.8",
        91002,
    )
    assert gpu["determinism"]["deterministic_algorithms"] and gpu["tf32"] == {"cudnn_conv": True, "cuda_matmul": True}
    assert not torch.are_deterministic_algorithms_enabled()  # and put back
    assert info["device"] == "cuda:0" and "gpu" not in machine.machine_info(CPU)


# 6. checkpoints in host memory ----------------------------------------------------------------------------------------
def test_checkpoints_and_resume_states_are_host_copies_that_training_does_not_change():
    from bkd.utils.checkpoint import model_checkpoint
    from tests.synthetic import tiny_run

    t = tiny_run(TrainConfig(width=2, batch_size=16, eval_batch_size=32), n=64)
    state = t.resume_state()
    checkpoint = model_checkpoint(t.teacher, 0, 4, 2)
    before = {k: v.clone() for k, v in state["teacher"].items()}
    with torch.no_grad():
        for p in t.teacher.parameters():
            p.add_(1.0)  # the next epoch trains on
    assert all(torch.equal(state["teacher"][k], before[k]) for k in before)
    assert all(torch.equal(checkpoint["state_dict"][k], before[k]) for k in before)
    tensors = [v for v in state["teacher"].values()] + [v for v in checkpoint["state_dict"].values()]
    assert all(v.device.type == "cpu" for v in tensors)


def _storage_locations(path):
    """The devices a torch.save file's tensors are stored for, as its pickle names them."""
    import pickle
    import zipfile

    locations = set()

    class Reader(pickle.Unpickler):
        def find_class(self, module, name):
            return getattr(sys.modules.get(module) or __import__(module, fromlist=[name]), name)

        def persistent_load(self, pid):
            locations.add(pid[3])
            return torch.zeros(0)

    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        try:
            Reader(archive.open(name)).load()
        except Exception:
            pass
    return locations


@pytest.mark.slow
def test_a_training_checkpoint_loads_in_a_cpu_only_process(synthetic_root, tmp_path):
    run(TRAIN, *tiny_flags(synthetic_root, str(tmp_path), n_epoch=1), cwd=str(tmp_path))
    run_dir = tmp_path / "cifar10_worst_seed_0"
    for name in ("teacher.pth.tar", "student_last.pth.tar", "state.pth.tar"):
        assert _storage_locations(run_dir / name) == {"cpu"}, name
    # the original's load, with no map_location
    code = (
        "import sys, torch; c = torch.load(sys.argv[1]); s = torch.load(sys.argv[2], weights_only=True); "
        "print(len(c['state_dict']), s['epoch'])"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(
        [sys.executable, "-c", code, str(run_dir / "teacher.pth.tar"), str(run_dir / "state.pth.tar")],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stdout.split() == ["107", "1"]


# 7. resuming on another device ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_epoch_of_two(synthetic_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("resume_device")
    flags = tiny_flags(synthetic_root, str(results), n_epoch=2, noisy_val_freq=1)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, TRAIN), *flags],
        cwd=str(results),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("epoch 1"):  # epoch 0 is complete
            proc.kill()
            break
    proc.wait()
    return flags, results / "cifar10_worst_seed_0"


def _with_device(run_dir, tmp_path, device):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    saved = torch.load(copy / "state.pth.tar", weights_only=True)
    saved["device"] = device
    torch.save(saved, copy / "state.pth.tar")
    return copy


@pytest.mark.slow
def test_resuming_a_cuda_run_on_the_cpu_is_refused_naming_both_devices(one_epoch_of_two, tmp_path):
    flags, run_dir = one_epoch_of_two
    copy = _with_device(run_dir, tmp_path, {"type": "cuda", "name": "NVIDIA H200", "capability": "9.0"})
    proc = run(TRAIN, *flags, "--run_dir", copy, "--resume", check=False)
    assert proc.returncode == 2, proc.stderr
    assert re.search(
        r"was trained on cuda \(NVIDIA H200\) and this run is on cpu \(.+\): its random streams cannot "
        r"continue on another kind of device; resume it on cuda \(--device\), or start a new run with "
        r"--overwrite",
        proc.stderr,
    )
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_resuming_on_another_model_of_the_device_continues_with_a_notice(one_epoch_of_two, tmp_path):
    flags, run_dir = one_epoch_of_two
    recorded = torch.load(run_dir / "state.pth.tar", weights_only=True)["device"]
    assert recorded == machine.device_identity(CPU)
    copy = _with_device(run_dir, tmp_path, dict(recorded, name="Another CPU"))
    out = run(TRAIN, *flags, "--run_dir", copy, "--resume").stdout
    assert (
        "[bkd] resuming on cpu (" in out
        and "where the run trained on cpu (Another CPU): it continues, but its result is no longer bit-equal" in out
        and "[bkd] finished" in out
    )


# 8. out of memory -----------------------------------------------------------------------------------------------------
def test_out_of_memory_is_one_line_naming_the_batch_sizes(synthetic_root, tmp_path, monkeypatch, capsys):
    import blind_knowledge_dist_training as training
    from bkd.models.resnet import ResNet
    from bkd.utils.errors import run_cli

    def exhausted(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")

    monkeypatch.setattr(ResNet, "forward", exhausted)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(training.main, tiny_flags(synthetic_root, str(tmp_path)))
    err = capsys.readouterr().err
    assert exit_info.value.code == 6 and len(err.strip().splitlines()) == 1, err
    assert (
        "error: cpu ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)); lower "
        "--batch_size (32) or --eval_batch_size (256), or free the device's memory; no epoch was completed"
    ) in err


# 9. the state save off the training thread ---------------------------------------------------------------------------
def _job(data):
    """What RunFiles reads of a run's job (bkd.run.Job)."""
    return SimpleNamespace(data=data, log=lambda *a: None, device=CPU, computation=None)


def _ended(epoch):
    """What RunFiles reads of a run whose epoch `epoch` just ended."""
    from bkd.state import MethodState

    return SimpleNamespace(
        epoch=epoch, state=MethodState(), last=SimpleNamespace(lr=0.02), resume_state=lambda: {"epoch": epoch + 1}
    )


def test_epoch_end_does_not_wait_for_the_disk_but_the_next_one_does(tmp_path, monkeypatch):
    from bkd import outputs
    from bkd.rundir import RunDir

    written = []

    def slow_save(obj, path):
        time.sleep(0.6)
        written.append((os.path.basename(path), obj["epoch"]))

    monkeypatch.setattr(outputs, "save_torch", slow_save)
    monkeypatch.setattr(
        outputs, "save_json", lambda obj, path: written.append((os.path.basename(path), obj["epochs_completed"]))
    )
    run_dir = RunDir(str(tmp_path / "run")).open()
    data = SimpleNamespace(truly_noisy=None)
    files = outputs.RunFiles(run_dir, _job(data), {"args": {}, "data": {}}, {}, background=True)
    start = time.time()
    files.epoch_end(_ended(0))
    assert time.time() - start < 0.3 and written == []  # handed to the writer
    files.epoch_end(_ended(1))  # waits for epoch 0's files
    assert written[:2] == [("state.pth.tar", 1), ("metrics.json", 1)]
    files.finish()
    assert written == [("state.pth.tar", 1), ("metrics.json", 1), ("state.pth.tar", 2), ("metrics.json", 2)]
    run_dir.close()


def test_a_failed_background_write_stops_the_run_in_its_thread_and_skips_what_follows(tmp_path, monkeypatch):
    from bkd import outputs
    from bkd.rundir import RunDir
    from bkd.utils.errors import RunDirError

    written = []

    def full_disk(obj, path):
        raise RunDirError(f"cannot write {path} (No space left on device); the earlier file is kept")

    monkeypatch.setattr(outputs, "save_torch", full_disk)
    monkeypatch.setattr(outputs, "save_json", lambda obj, path: written.append(path))
    run_dir = RunDir(str(tmp_path / "run")).open()
    files = outputs.RunFiles(
        run_dir, _job(SimpleNamespace(truly_noisy=None)), {"args": {}, "data": {}}, {}, background=True
    )
    files.epoch_end(_ended(0))
    with pytest.raises(RunDirError, match="No space left on device"):
        files.finish()
    assert written == []  # no metrics.json for a state that was not written
    run_dir.close()


@pytest.mark.slow
def test_a_run_writing_in_the_background_gives_the_files_of_one_writing_at_once(tmp_path, monkeypatch):
    """The GPU's way of writing (a thread of its own), run here on the CPU: the same files, byte for byte."""
    from bkd import api, outputs
    from tests.synthetic import flip_labels, make_images

    rng = np.random.RandomState(0)
    images, clean = make_images(120, 4, rng)
    given = flip_labels(clean, 0.2, 4, rng)
    flags = dict(
        n_epoch=7,
        width=4,
        batch_size=32,
        lr_step=5,
        noisy_val_freq=2,
        clean_test_freq=3,
        eval_batch_size=64,
        device="cpu",
    )
    results = {}
    for background in (False, True):
        monkeypatch.setattr(outputs, "writes_in_background", lambda device, b=background: b)
        results[background] = api.find_label_issues(images, given, run_dir=str(tmp_path / str(background)), **flags)
    assert np.array_equal(results[True].ranked, results[False].ranked)
    for name in ("detection.npy", "agreement.npy", "pred_probs.npy", "label_issues.csv"):
        assert (tmp_path / "True" / name).read_bytes() == (tmp_path / "False" / name).read_bytes(), name
    for name, key in (
        ("teacher.pth.tar", "state_dict"),
        ("student_last.pth.tar", "state_dict"),
        ("state.pth.tar", "teacher"),
    ):
        a, b = (torch.load(tmp_path / d / name, weights_only=True) for d in ("True", "False"))
        assert a["epoch"] == b["epoch"] and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), name
