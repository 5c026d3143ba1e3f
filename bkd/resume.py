"""What a resumed run must find again, checked in one place for the training script and the Python API.

A resume state (state.pth.tar) carries, besides the training state, the run's identity: the flags that
change what it computes (torch.compile as resolved), a fingerprint of its data, the thread count and the
device. Resuming compares each: another flag or other data is refused in one line naming it; another
kind of device is refused (the device loader's random stream cannot continue there); another model of
the same kind of device, or another thread count, continues with a `[bkd] ` notice that the result is no
longer bit-equal to an uninterrupted run.
"""
from dataclasses import dataclass

import torch

from bkd.config import differing_args, run_args
from bkd.data.datasets import check_same_data
from bkd.utils import logfmt
from bkd.utils.errors import DataError, UsageError, first_line
from bkd.utils.machine import describe_device, device_identity

@dataclass(frozen=True)
class Advice:
    """How the caller says a flag, keeps it, or starts afresh: the command line and the Python API differ."""

    same: str
    restart: str
    api: bool = False

    def flag(self, name, value):
        return f"{name}={value!r}" if self.api else f"--{name} {value}"


SCRIPT = Advice("resume with the same flags", "start a new run with --overwrite")
API = Advice("call with the same arguments", "give another run_dir", api=True)


def identity(job, selection):
    """What a resume state records about the run of `job` (a bkd.run.Job) and `selection` (what picked its data), and
    what a resumed run must match."""
    return {"args": run_args(job.config, job.computation.compile, selection), "data": job.data.fingerprint(),
            "num_threads": torch.get_num_threads(), "device": device_identity(job.device)}


def load(path, advice=SCRIPT):
    """The resume state at `path` (CPU tensors), or one line saying why it cannot be one (exit 3)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DataError(f"{path}: unreadable resume state ({first_line(err)}); {advice.restart}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict) or not isinstance(saved.get("epoch"), int):
        raise DataError(f"{path}: not a resume state of this project; {advice.restart}")
    return saved


def check(saved, current, path, advice=SCRIPT, log=print):
    """Refuse, in one line, to resume `saved` as a run of another identity; say what continues without bit-equality."""
    differ = differing_args(recorded_args(saved), current["args"])
    if differ:
        key, recorded, value = differ[0]
        raise UsageError(f"{advice.flag(key, value)} differs from the run being resumed ({recorded}); "
                         f"{advice.same}, or {advice.restart}")
    recorded = saved.get("data")
    if recorded is None:
        log(logfmt.ours(f"{path} records no data fingerprint (an earlier version wrote it): the data is not checked"))
    else:
        check_same_data(recorded, current["data"], f"resume with the same data, or {advice.restart}")
    check_device(saved.get("device"), current["device"], path, advice, log)
    threads = saved.get("num_threads")
    if threads is not None and threads != current["num_threads"]:
        log(logfmt.ours(f"resuming with {current['num_threads']} threads where the run used {threads}: it continues, but "
                        "its result is no longer bit-equal to an uninterrupted run (float sums round differently)"))


def recorded_args(saved):
    """The recorded flags in today's names: a CUDA run recorded before TF32 became the default there recorded `tf32`
    (False: strict fp32), which is `strict_fp32` now; on a CPU neither changes what is computed."""
    args = dict(saved["args"])
    if "tf32" in args and "strict_fp32" not in args and (saved.get("device") or {}).get("type") == "cuda":
        args["strict_fp32"] = not args["tf32"]
    return args


def check_device(recorded, current, path, advice=SCRIPT, log=print):
    if recorded is None:
        log(logfmt.ours(f"{path} records no device (an earlier version wrote it): the device is not checked"))
    elif recorded.get("type") != current["type"]:
        raise UsageError(f"{path} was trained on {describe_device(recorded)} and this run is on {describe_device(current)}: "
                         f"its random streams cannot continue on another kind of device; resume it on "
                         f"{recorded.get('type')} (--device), or {advice.restart}")
    elif recorded != current:
        log(logfmt.ours(f"resuming on {describe_device(current)} where the run trained on {describe_device(recorded)}: it "
                        "continues, but its result is no longer bit-equal to an uninterrupted run (other kernels round "
                        "differently)"))
