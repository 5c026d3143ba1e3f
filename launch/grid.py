"""A grid of BKD runs (seeds x label sets), each run's state on disk, and one run's three steps.

A run is training, then learning.py, then detection.py, with their standard output in the
run directory (training.log appended, learning.log, detection.log), as run.sh always did.
What a run's files say is the truth about it: a finished run has both evaluation logs; a run
with a resume state and no finished logs continues with --resume; a run whose pipeline lock
(`.launch.lock`, an flock held by whoever runs its steps) is held is running and never gets a
second writer.
"""

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bkd import rundir as rd
from bkd.data.labels import NOISE_TYPES
from bkd.utils.errors import DataError
from bkd.utils.files import open_regular, read_json_object, save_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (  # name, script, log file, open mode
    ("training", "blind_knowledge_dist_training.py", "training.log", "a"),
    ("learning", "learning.py", "learning.log", "w"),
    ("detection", "detection.py", "detection.log", "w"),
)
RECORD = "launch.json"  # the launcher's notes on a run: last failure, SLURM job id, step times
PIPELINE_LOCK = rd.PIPELINE_LOCK
GRIDS: dict[str, tuple[tuple[int, ...], tuple[tuple[str, str], ...]]] = {
    # the authors' run.sh: one seed, CIFAR-10N aggre, worst, rand1
    "original": ((0,), (("cifar10", "aggre"), ("cifar10", "worst"), ("cifar10", "rand1"))),
    # the challenge's scoring: 5 seeds per label set
    "challenge": (
        (0, 1, 2, 3, 4),
        (("cifar10", "aggre"), ("cifar10", "rand1"), ("cifar10", "worst"), ("cifar100", "noisy100")),
    ),
}
INTERRUPTED = 130


@dataclass(frozen=True)
class Run:
    """One run of a grid: what selects it in all three scripts, and its run directory."""

    dataset: str
    noise_type: str
    seed: int
    results_dir: str = "results"
    preset: str = "default"

    @property
    def name(self) -> str:
        return rd.run_dir_name(self.dataset, self.noise_type, self.seed, self.preset)

    @property
    def path(self) -> str:
        return os.path.join(self.results_dir, self.name)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def flags(self) -> list[str]:
        """The flags that select this run in all three scripts."""
        return [
            "--dataset",
            self.dataset,
            "--noise_type",
            self.noise_type,
            "--seed",
            str(self.seed),
            "--results_dir",
            self.results_dir,
            "--preset",
            self.preset,
        ]


def make_grid(
    grid: str = "original",
    seeds: Sequence[int] | None = None,
    noise_types: Sequence[str] | None = None,
    dataset: str | None = None,
    results_dir: str = "results",
    preset: str = "default",
) -> list[Run]:
    """The runs of a grid: its seeds and label sets, or the ones given (a label set's dataset unless `dataset`)."""
    grid_seeds, grid_pairs = GRIDS[grid]
    pairs = list(grid_pairs)
    if noise_types:
        pairs = [(dataset or NOISE_TYPES.get(nt, ("cifar10",))[0], nt) for nt in noise_types]
    elif dataset:
        pairs = [(d, nt) for d, nt in pairs if d == dataset]
    # each once (`--seeds 0 0`)
    seeds = list(dict.fromkeys(int(s) for s in (seeds if seeds is not None else grid_seeds)))
    return [Run(d, nt, s, results_dir, preset) for s in seeds for d, nt in dict.fromkeys(pairs)]


# --- a run's state on disk ----------------------------------------------------------------------
def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in `path`, or None where it is missing, damaged or no object: a status reports what it can."""
    try:
        return read_json_object(path) or None
    except DataError:
        return None


def write_record(run: Run, **fields: Any) -> None:
    """Merge `fields` into the run's launch.json."""
    record = read_json(run.file(RECORD)) or {}
    record.update(fields)
    save_json(record, run.file(RECORD))


def progress(run: Run) -> tuple[int | None, int | None]:
    """(last completed epoch or None, n_epoch or None) from the run's metrics.json."""
    done, n_epoch = rd.recorded_progress(read_json(run.file(rd.METRICS)) or {})
    return (done - 1 if done else None), n_epoch


def _contains(path: str, text: str) -> bool:
    try:
        with open_regular(path) as fh:
            return text in fh.read()
    except (OSError, DataError):
        return False


def recorded_differences(run: Run, train_flags: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """What a finished run was trained with that this launch asks otherwise: (flag, recorded, asked now) for each
    setting that changes what a run computes (bkd.resume.run_args), from its metrics.json."""
    from bkd.config import compiles
    from bkd.resume import differing_args, run_args
    from flags import data_selection, parse, training_config, training_parser

    args = parse(training_parser(), run.flags() + [t for t in train_flags if t != "--overwrite"])
    config = training_config(args)
    recorded = ((read_json(run.file(rd.METRICS)) or {}).get("config")) or {}
    return differing_args(recorded, run_args(config, compiles(config), data_selection(args)))


def describe_differences(differences: Sequence[tuple[str, Any, Any]]) -> str:
    """recorded_differences in words."""
    return ", ".join(f"--{name} {recorded} where this launch asks {asked}" for name, recorded, asked in differences)


def training_finished(run: Run) -> bool:
    """The run's metrics.json records its last epoch."""
    last, n_epoch = progress(run)
    return last is not None and n_epoch is not None and last == n_epoch - 1


def finished(run: Run) -> bool:
    """Trained, and both evaluations wrote their results."""
    return (
        training_finished(run)
        and _contains(run.file("learning.log"), "Best test acc selected by val is")
        and _contains(run.file("detection.log"), "The f-score is")
    )


def status(run: Run) -> dict[str, Any]:
    """dict(state: done | running | failed | trained | interrupted | not started, epoch: last completed, log, job_id,
    detail). `trained`: the training finished, its evaluations did not run (the next launch runs them)."""
    record = read_json(run.file(RECORD)) or {}
    last, n_epoch = progress(run)
    info: dict[str, Any] = {
        "run": run.name,
        "epoch": last,
        "n_epoch": n_epoch,
        "job_id": record.get("job_id"),
        "log": os.path.join(run.path, "training.log"),
        "detail": "",
    }
    if rd.lock_held(run.file(PIPELINE_LOCK)) or rd.lock_held(run.file(".lock")):
        info["state"] = "running"
    elif finished(run):
        info["state"] = "done"
    elif record.get("failed"):
        failure = record["failed"]
        info.update(state="failed", log=failure["log"], detail=f"{failure['step']} exited {failure['exit_code']}")
    elif training_finished(run):
        info.update(state="trained", detail="learning.py and detection.py not run yet: launching again runs them")
    elif os.path.exists(run.file(rd.STATE)) or os.path.exists(run.file("training.log")):
        info["state"] = "interrupted"
    else:
        info["state"] = "not started"
    return info


# --- one run's steps ----------------------------------------------------------------------------
class Pipeline:
    """Runs the three steps of one run as child processes, holding the run's pipeline lock.

    `stop()` (from a signal handler or another thread) sends SIGTERM to the step in progress:
    training then stops at its next iteration, keeping the last completed epoch (exit 130).
    """

    def __init__(
        self,
        run: Run,
        train_flags: Sequence[str] = (),
        eval_flags: Sequence[str] = (),
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        capture_stderr: bool = False,
    ) -> None:
        self.run, self.python, self.env = run, python, env
        self.train_flags, self.eval_flags = list(train_flags), list(eval_flags)
        self.capture_stderr = capture_stderr
        self.child: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop after the step in progress (which gets `sig`), and start no other."""
        self.stopped = True
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                pass

    def __call__(self) -> dict[str, Any]:
        """Returns dict(outcome: done | skipped | running | failed | interrupted, step, exit_code, log)."""
        run = self.run
        os.makedirs(run.path, exist_ok=True)
        with open(run.file(PIPELINE_LOCK), "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return {"outcome": "running", "log": run.file("training.log")}
            overwrite = "--overwrite" in self.train_flags
            other = recorded_differences(run, self.train_flags) if training_finished(run) else []
            retrain = bool(other) and overwrite  # trained with other flags, and --overwrite: trained again with these
            if finished(run) and not retrain:
                return {"outcome": "skipped", "log": run.file("training.log"), "other_flags": other}
            write_record(run, failed=None, started=time.time())
            for step, script, log_name, mode in STEPS:
                if step == "training" and training_finished(run) and not retrain:
                    continue
                flags = run.flags() + (self.train_flags if step == "training" else self.eval_flags)
                if step == "training" and os.path.exists(run.file(rd.STATE)) and not overwrite:
                    flags.append("--resume")
                code = self._step(script, flags, run.file(log_name), mode, step)
                if code != 0 or self.stopped:
                    log = run.file(f"{step}.stderr") if self.capture_stderr else run.file(log_name)
                    if code == INTERRUPTED or self.stopped:
                        return {"outcome": "interrupted", "step": step, "exit_code": code, "log": log}
                    write_record(run, failed={"step": step, "exit_code": code, "log": log})
                    return {"outcome": "failed", "step": step, "exit_code": code, "log": log}
            write_record(run, finished=time.time())
            return {"outcome": "done", "log": run.file("training.log")}

    def _step(self, script: str, flags: Sequence[str], log_path: str, mode: str, step: str) -> int:
        if self.stopped:
            return INTERRUPTED
        stderr = open_regular(self.run.file(f"{step}.stderr"), "w") if self.capture_stderr else None
        try:
            with open_regular(log_path, mode) as out:
                self.child = subprocess.Popen(
                    [self.python, os.path.join(ROOT, script), *flags],
                    stdout=out,
                    stderr=stderr,
                    env=self.env,
                    start_new_session=True,
                )
                while True:
                    try:
                        return self.child.wait()
                    except KeyboardInterrupt:  # the launcher forwards the interrupt; wait for the clean stop
                        self.stop()
        finally:
            self.child = None
            if stderr is not None:
                stderr.close()
