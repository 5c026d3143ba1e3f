"""The smallest reproduction of oneDNN's faulty AVX2 kernel (docs/performance.md, 'oneDNN and narrow networks').

    python benchmarks/onednn_1x1.py            # every case below, AVX2 forced, each in a process of its own

One 1x1 convolution, forward and backward at batch 32 on 32x32 maps, as PreResNet18's projection shortcuts are, with
oneDNN and ATen limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2: on a CPU with more, the kernels
of an AVX2-only one). Each case compares the weight gradient with float64's and says "ok", "wrong gradient" (relative
error above 1e-4), "crashed (signal)" or "hung" (killed after --timeout_s). `--native` keeps the CPU's own kernels.
"""

import argparse
import os
import subprocess
import sys

CASE = """
import sys, torch, torch.nn.functional as F
cin, stride, channels_last = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.manual_seed(0)
x, w = torch.randn(32, cin, 32, 32), torch.randn(2 * cin, cin, 1, 1)
fmt = torch.channels_last if channels_last else torch.contiguous_format
xs, ws = x.clone(memory_format=fmt).requires_grad_(), w.clone(memory_format=fmt).requires_grad_()
out = F.conv2d(xs, ws, stride=stride)
grad = torch.randn_like(out)
out.backward(grad)
w64 = w.double().requires_grad_()
F.conv2d(x.double(), w64, stride=stride).backward(grad.double())
print(((ws.grad.double() - w64.grad).abs().max() / w64.grad.abs().max()).item())
"""


def run_case(cin, stride, channels_last, env, timeout_s):
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CASE, str(cin), str(stride), str(int(channels_last))],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return "hung"
    if proc.returncode < 0:
        return f"crashed (signal {-proc.returncode})"
    if proc.returncode != 0:
        return f"crashed (exit {proc.returncode})"
    error = float(proc.stdout.split()[-1])
    return "ok" if error < 1e-4 else f"wrong gradient (relative error {error:.2f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, nargs="+", default=[1, 2, 3, 4, 6, 7, 8, 16])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout_s", type=float, default=30)
    p.add_argument("--native", action="store_true", help="the CPU's own kernels, not AVX2's")
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if not args.native:
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    print("input channels | stride | format | result")
    for cin in args.channels:
        for stride in (1, 2):
            for channels_last in (True, False):
                result = run_case(cin, stride, channels_last, env, args.timeout_s)
                print(f"{cin} | {stride} | {'channels-last' if channels_last else 'NCHW'} | {result}", flush=True)


if __name__ == "__main__":
    main()
