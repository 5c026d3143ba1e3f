"""torch.compile of both networks: on where it pays, eager for odd batch sizes, eager with one line where it fails."""

import json

import numpy as np
import pytest
import torch
from torch._inductor.exc import InvalidCxxCompiler

from bkd.config import COMPILE_MIN_WIDTH, TrainConfig, resolve_computation
from bkd.engine import CompiledPair
from bkd.models.resnet import PreResNet18
from tests.cli import run, tiny_flags

CPU = torch.device("cpu")


def _pair_of_nets():
    torch.manual_seed(0)
    # (narrower: eager on AVX2 CPUs, compile_refusal)
    teacher, student = (PreResNet18(3, width=8), PreResNet18(3, width=8))
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():  # running statistics of their own, so that eval mode is not the identity
        teacher(x), student(x)
    return teacher.eval(), student.eval()


def test_compile_by_default_from_the_quick_presets_width_and_never_in_reference_mode():
    assert resolve_computation(TrainConfig(width=COMPILE_MIN_WIDTH), CPU).compile
    assert not resolve_computation(TrainConfig(width=COMPILE_MIN_WIDTH - 1), CPU).compile  # the tests' networks
    assert resolve_computation(TrainConfig(width=8, compile=True), CPU).compile
    assert not resolve_computation(TrainConfig(width=64, compile=False), CPU).compile
    assert not resolve_computation(TrainConfig(width=64, reference=True), CPU).compile


class _NoCompiler(InvalidCxxCompiler):  # inductor's error where a CPU has no C++ compiler
    def __init__(self):
        RuntimeError.__init__(self, "No working C++ compiler found\nsecond line")


def test_a_failing_compiler_falls_back_to_eager_once_with_one_line(monkeypatch):
    teacher, student = _pair_of_nets()
    calls = []

    def broken(net, **kwargs):
        def compiled(x):
            calls.append(len(x))
            raise _NoCompiler()

        return compiled

    monkeypatch.setattr(torch, "compile", broken)
    lines = []
    pair = CompiledPair(teacher, student, {True: 4, False: 8}, lines.append)
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(pair.nets[0](x), teacher(x)) and torch.equal(pair.nets[1](x), student(x))
    assert calls == [8]  # tried once, then eager for both networks
    failed = [line for line in lines if "failed" in line]
    assert failed == [
        "[bkd] torch.compile failed (No working C++ compiler found); the networks "
        "run eager (--no_compile skips the attempt)"
    ]


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: device-side assert triggered"),
    ],
)
def test_errors_of_the_computation_are_not_compilation_failures(monkeypatch, error):
    """Out of memory or a device-side assert inside a compiled graph is raised as it is, not retried eager."""
    teacher, student = _pair_of_nets()
    calls = []

    def failing(net, **kwargs):
        def compiled(x):
            calls.append(len(x))
            raise error

        return compiled

    monkeypatch.setattr(torch, "compile", failing)
    lines = []
    pair = CompiledPair(teacher, student, {True: 4, False: 8}, lines.append)
    with torch.no_grad(), pytest.raises(type(error)):
        pair.nets[0](torch.randn(8, 3, 8, 8))
    assert calls == [8] and not [line for line in lines if "failed" in line] and pair.compiled is not None


def test_torch_compile_unavailable_means_eager(monkeypatch):
    teacher, student = _pair_of_nets()

    def unavailable(net, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    lines = []
    pair = CompiledPair(teacher, student, {True: 4, False: 8}, lines.append)
    with torch.no_grad():
        x = torch.randn(8, 3, 8, 8)
        assert torch.equal(pair.nets[1](x), student(x))
    assert len(lines) == 1 and "not supported on this Python" in lines[0]


@pytest.mark.slow
def test_compiled_networks_match_eager_and_odd_batches_run_eager():
    from torch._dynamo.utils import counters

    counters.clear()
    teacher, student = _pair_of_nets()
    lines = []
    pair = CompiledPair(teacher, student, {True: 4, False: 8}, lines.append)
    x = torch.randn(11, 3, 8, 8)
    with torch.no_grad():
        for net, eager in zip(pair.nets, (teacher, student), strict=True):  # one graph serves both networks
            torch.testing.assert_close(net(x[:8]), eager(x[:8]), rtol=1e-4, atol=1e-5)
            assert torch.equal(net(x[8:]), eager(x[8:]))  # a last batch of 3: eager, not a second compilation
    assert lines == [
        "[bkd] torch.compile: compiling the networks for evaluation at batch 8 (once per process: a minute "
        "or two the first time, seconds from the cache; --no_compile skips it)"
    ]
    assert pair.compiled is not None  # compiled, not fallen back to eager (which would also match eager)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo compiled a graph of its own


@pytest.mark.slow
def test_training_script_with_compile_trains_as_eager_does(synthetic_root, tmp_path):
    common = dict(n_epoch=2, width=8, noisy_val_freq=1, clean_test_freq=1, print_freq=1)
    out = {}
    for name, flag in (("compiled", {"compile": True}), ("eager", {})):
        proc = run(
            "blind_knowledge_dist_training.py",
            *tiny_flags(synthetic_root, str(tmp_path / name), **common, **flag),
            cwd=str(tmp_path),
            timeout=600,
        )
        out[name] = proc.stdout
    assert "device cpu (fp32, torch.compile)" in out["compiled"] and "torch.compile" not in out["eager"]
    assert "torch.compile failed" not in out["compiled"]  # both graphs compiled: no eager fallback behind equal numbers
    assert "compiling the networks for training at batch 32" in out["compiled"]
    assert "compiling the networks for evaluation at batch 256" in out["compiled"]  # the full set: 256 + 144 eager
    losses = {
        name: [line for line in text.splitlines() if line.startswith("epoch:   0/  1\titer:")]
        for name, text in out.items()
    }
    assert losses["compiled"][0] == losses["eager"][0]  # the same weights and batch: equal to the printed digits
    # then rounding compounds: to a unit of the last digit by iteration 2
    values = {
        name: [float(v.split()[-1]) for line in lines[:3] for v in line.split("\t")[2:]]
        for name, lines in losses.items()
    }
    assert np.allclose(values["compiled"], values["eager"], atol=1.5e-5, rtol=0)  # (on an AVX2 CPU too)
    for name in out:  # the run records what it computed with
        metrics = json.load(open(tmp_path / name / "cifar10_worst_seed_0" / "metrics.json"))
        assert metrics["config"]["compile"] is (name == "compiled")
    agreement = {name: np.load(tmp_path / name / "cifar10_worst_seed_0" / "agreement.npy") for name in out}
    assert agreement["compiled"].shape == agreement["eager"].shape and np.isfinite(agreement["compiled"]).all()


def test_the_backward_compiles_with_the_forward_where_a_failure_can_still_fall_back(monkeypatch):
    """torch compiles a graph's backward at its first backward pass, outside CompiledPair's fallback: functorch's
    force_non_lazy_backward_lowering (bkd/engine.py) brings it into the forward call. A backend whose backward
    compiler fails shows both: with the setting, one line and eager; without it, the failure ends the backward."""
    from torch._dynamo.backends.common import aot_autograd

    from bkd import engine

    def backward_fails(gm, example_inputs):
        raise _NoCompiler()

    real_compile = torch.compile
    backend = aot_autograd(fw_compiler=lambda gm, example_inputs: gm, bw_compiler=backward_fails)
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: real_compile(net, backend=backend, dynamic=False))
    x = torch.randn(8, 3, 8, 8)
    for non_lazy in (engine.NON_LAZY_BACKWARD, {}):
        torch._dynamo.reset()
        monkeypatch.setattr(engine, "NON_LAZY_BACKWARD", non_lazy)
        teacher, student = (net.train() for net in _pair_of_nets())
        lines = []
        pair = CompiledPair(teacher, student, {True: 8, False: 8}, lines.append)
        out = pair.nets[0](x)
        if non_lazy:
            out.sum().backward()  # eager: the fallback happened in the forward call
            assert pair.compiled is None and any("torch.compile failed" in line for line in lines)
        else:
            with pytest.raises(Exception, match="No working C"):
                out.sum().backward()
            assert pair.compiled is not None
    torch._dynamo.reset()


def _avx2_can_be_forced():
    """An x86 CPU with AVX2, where ONEDNN_MAX_CPU_ISA=AVX2 and ATEN_CPU_CAPABILITY=avx2 give an AVX2-only CPU's
    kernels."""
    import platform

    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return platform.machine() in ("x86_64", "AMD64") and "avx2" in flags


@pytest.mark.slow
@pytest.mark.skipif(
    not _avx2_can_be_forced(),
    reason="needs an x86 CPU with AVX2, whose kernels can be limited to "
    "AVX2's (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)",
)
def test_a_narrow_network_asked_to_compile_on_an_avx2_cpu_runs_eager_and_says_so(synthetic_root, tmp_path):
    """On an AVX2-only CPU oneDNN's 1x1 stride-2 kernels on channels-last inputs hang, crash or compute wrong values
    below 8 input channels (benchmarks/onednn_1x1.py), and a compiled graph computes convolutions channels-last:
    --compile at width 4 died in its first iteration there (exit -6, -11, or a hang). Forced to AVX2's kernels on any
    such CPU."""
    import os

    # (a compile cache of its own: inductor's cache key does not tell kernels built for a forced ISA from the CPU's own)
    env = dict(
        os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "c")
    )
    common = dict(n_epoch=1, width=4, noisy_val_freq=1, clean_test_freq=1, print_freq=1)
    out = {}
    for name, flag in (("compiled", {"compile": True}), ("eager", {})):
        out[name] = run(
            "blind_knowledge_dist_training.py",
            *tiny_flags(synthetic_root, str(tmp_path / name), **common, **flag),
            cwd=str(tmp_path),
            timeout=300,
            env=env,
        ).stdout
    assert (
        "[bkd] --compile: a network of width 4 runs eager on this CPU without AVX-512: compiled, its shortcut "
        "convolutions would run on oneDNN's AVX2 kernels, which fail below 8 channels (docs/performance.md)"
    ) in out["compiled"]
    assert "compiling the networks" not in out["compiled"]
    losses = {name: [line for line in text.splitlines() if "\titer:" in line] for name, text in out.items()}
    assert losses["compiled"] == losses["eager"] and losses["eager"]  # eager both times: the same numbers


def test_compile_refusal_names_the_narrow_network_on_a_cpu_without_avx512(monkeypatch):
    from bkd import config as bkd_config
    from bkd.utils import devices

    for capability, refused in (("AVX2", True), ("DEFAULT", True), ("AVX512", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        narrow = TrainConfig(width=4, compile=True)
        assert (bkd_config.compile_refusal(narrow, CPU) is not None) is (refused and devices.cpu_kernels_avx2_at_most())
        assert resolve_computation(narrow, CPU).compile is not bkd_config.compile_refusal(narrow, CPU)
        assert bkd_config.compile_refusal(TrainConfig(width=8, compile=True), CPU) is None
        assert bkd_config.compile_refusal(narrow, None) is None  # the flags alone (the launcher's comparison)
