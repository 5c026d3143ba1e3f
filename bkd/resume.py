"""What a resumed run must find again, in one place: its flags, its data, its device and its thread count.

A resume state (state.pth.tar) carries, besides the training state, the run's identity: the settings that change what
it computes (run_args: the training values, torch.compile as resolved, the data selection), a fingerprint of its
data, the thread count and the device. Resuming compares each: another setting or other data is refused in one line
naming it; another kind of device is refused (the device loader's random stream cannot continue there); another
model of the same kind of device, or another thread count, continues with a `[bkd] ` notice that the result is no
longer bit-equal to an uninterrupted run. The evaluations (bkd/evaluations.py) and the launcher (launch/grid.py)
compare a finished run's recorded settings and data by the same functions.
"""

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from bkd.utils import logfmt
from bkd.utils.errors import DataError, UsageError, first_line
from bkd.utils.files import open_regular
from bkd.utils.logfmt import Log
from bkd.utils.machine import describe_device, device_identity

if TYPE_CHECKING:
    from bkd.config import TrainConfig
    from bkd.data.datasets import DataSelection
    from bkd.run import Job

NOT_COMPARED = ("print_freq",)  # changes what is printed, not what is computed
PIL_ONLY = ("num_workers",)  # the PIL workers' random streams depend on their number; the device loader has none


@dataclass(frozen=True)
class Advice:
    """How the caller says a flag, keeps it, or starts afresh: the command line and the Python API differ."""

    same: str
    restart: str
    api: bool = False

    def flag(self, name: str, value: Any) -> str:
        """How the caller gives `name` = `value`: `--name value` or `name=value`."""
        return f"{name}={value!r}" if self.api else f"--{name} {value}"


SCRIPT = Advice("resume with the same flags", "start a new run with --overwrite")
API = Advice("call with the same arguments", "give another run_dir", api=True)


def uses_pil_workers(config: "TrainConfig") -> bool:
    """The PIL loader (the reference mode's too), whose random streams depend on the number of its workers."""
    return config.reference or config.loader == "torchvision"


def run_args(config: "TrainConfig", compile_resolved: bool, selection: "DataSelection") -> dict[str, Any]:
    """The settings that make a run what it is: every training value that changes the computation (torch.compile as
    resolved), plus what picks the data (`selection`: a bkd.data.datasets.DataSelection)."""
    args = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in NOT_COMPARED}
    if not uses_pil_workers(config):
        for name in PIL_ONLY:
            args.pop(name)
    args["compile"] = compile_resolved
    args.update(selection.identity())
    return args


def differing_args(recorded: dict[str, Any], args: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, recorded value, this value) of every setting in both that differs, in `args`' order."""
    return [(key, recorded[key], value) for key, value in args.items() if key in recorded and recorded[key] != value]


FINGERPRINT_NAMES = {
    "images": "the training images",
    "labels": "the training labels (label file or --noise_path)",
    "subset": "the training subset",
    "split": "the validation split",
    "test": "the test set",
    "num_images": "the number of training images",
}


def check_same_data(
    recorded: dict[str, Any], fingerprint: dict[str, Any], fix: str, what: str = "the run being resumed"
) -> None:
    """One line naming what differs between a recorded fingerprint and this data's, and how to `fix` it (exit 3)."""
    for key, name in FINGERPRINT_NAMES.items():
        if key in fingerprint and recorded.get(key) != fingerprint[key]:
            raise DataError(
                f"{name} differ from those of {what} ({key} {fingerprint[key]} vs {recorded.get(key)}); {fix}"
            )


def identity(job: "Job", selection: "DataSelection") -> dict[str, Any]:
    """What a resume state records about the run of `job` (a bkd.run.Job) on the data `selection` picked, and what a
    resumed run must match."""
    import torch

    return {
        "args": run_args(job.config, job.computation.compile, selection),
        "data": job.data.fingerprint(),
        "num_threads": torch.get_num_threads(),
        "device": device_identity(job.device),
    }


def load(path: str, advice: Advice = SCRIPT) -> dict[str, Any]:
    """The resume state at `path` (CPU tensors), or one line saying why it cannot be one (exit 3)."""
    import torch

    try:
        with open_regular(path, "rb") as fh:
            saved = torch.load(fh, map_location="cpu", weights_only=True)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: unreadable resume state ({first_line(err)}); {advice.restart}") from None
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("args"), dict)
        or not isinstance(saved.get("epoch"), int)
    ):
        raise DataError(f"{path}: not a resume state of this project; {advice.restart}")
    if not all(isinstance(saved.get(key), dict) for key in ("data", "device")):
        raise DataError(
            f"{path}: a resume state of an earlier version of this project (it records no data fingerprint "
            f"or device), which cannot be checked; {advice.restart}"
        )
    return saved


def check(saved: dict[str, Any], current: dict[str, Any], path: str, advice: Advice = SCRIPT, log: Log = print) -> None:
    """Refuse, in one line, to resume `saved` as a run of another identity; say what continues without bit-equality."""
    differ = differing_args(saved["args"], current["args"])
    if differ:
        key, recorded, value = differ[0]
        raise UsageError(
            f"{advice.flag(key, value)} differs from the run being resumed ({recorded}); "
            f"{advice.same}, or {advice.restart}"
        )
    check_same_data(saved["data"], current["data"], f"resume with the same data, or {advice.restart}")
    check_device(saved["device"], current["device"], path, advice, log)
    threads = saved.get("num_threads")
    if threads is not None and threads != current["num_threads"]:
        log(
            logfmt.ours(
                f"resuming with {current['num_threads']} threads where the run used {threads}: it continues, but "
                "its result is no longer bit-equal to an uninterrupted run (float sums round differently)"
            )
        )


def check_device(
    recorded: dict[str, Any], current: dict[str, Any], path: str, advice: Advice = SCRIPT, log: Log = print
) -> None:
    """Refuse another kind of device in one line; say that another model continues without bit-equality."""
    if recorded.get("type") != current["type"]:
        raise UsageError(
            f"{path} was trained on {describe_device(recorded)} and this run is on {describe_device(current)}: "
            f"its random streams cannot continue on another kind of device; resume it on "
            f"{recorded.get('type')} (--device), or {advice.restart}"
        )
    if recorded != current:
        log(
            logfmt.ours(
                f"resuming on {describe_device(current)} where the run trained on {describe_device(recorded)}: it "
                "continues, but its result is no longer bit-equal to an uninterrupted run (other kernels round "
                "differently)"
            )
        )
