"""Run a grid on a SLURM cluster through submitit: one job array, one task per run.

A task runs the run's three steps (launch.grid.Pipeline). On pre-emption or time-out SLURM
signals the task (USR2); submitit calls `RunTask.checkpoint`, which stops the training step at
its next iteration and has the task requeued. A task killed without that warning (`scontrol
requeue`, node failure) is simply started again. Either way the restarted task continues from
the run's own resume state (`--resume`, the last completed epoch), never from submitit's pickle,
so no epoch is lost or trained twice.
"""

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bkd.utils.files import save_json
from bkd.utils.logfmt import Log
from launch.grid import Pipeline, Run, read_json, status, write_record

JOBS_FILE = "launch_slurm.json"  # <results_dir>/launch_slurm.json: run name -> job id of the last submission
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING")  # SLURM states of a job not yet ended
STOP_WAIT_S = 60  # how long checkpoint() waits for the training step to stop after SIGTERM


class RunTask:
    """The callable submitit pickles: run one run's pipeline; on USR2 stop it and ask to be requeued."""

    def __init__(self, train_flags: Sequence[str], eval_flags: Sequence[str]) -> None:
        self.train_flags, self.eval_flags = list(train_flags), list(eval_flags)
        self._pipeline: Pipeline | None = None

    def __call__(self, run: Run) -> dict[str, Any]:
        threads = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID"))
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        write_record(run, job_id=f"{job}_{task}" if task else job, host=os.uname().nodename)
        self._pipeline = Pipeline(run, self.train_flags, self.eval_flags, env=env, capture_stderr=True)
        outcome = self._pipeline()
        if outcome["outcome"] == "failed":
            raise RuntimeError(f"{run.name}: {outcome['step']} exited {outcome['exit_code']}; see {outcome['log']}")
        return outcome

    def checkpoint(self, run: Run) -> Any:
        """Called by submitit on USR2 (pre-emption, time limit): stop cleanly, then requeue this task."""
        import submitit

        pipeline = self._pipeline
        if pipeline is not None:
            pipeline.stop()
            deadline = time.time() + STOP_WAIT_S
            while pipeline.child is not None and pipeline.child.poll() is None and time.time() < deadline:
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(RunTask(self.train_flags, self.eval_flags), run)


@dataclass(frozen=True)
class Resources:
    """What each run of a job array asks of SLURM, and where submitit keeps its files."""

    folder: str
    partition: str | None = None
    gpus: int = 1
    cpus: int = 4
    mem_gb: float = 20
    time_min: int = 1440
    array_parallelism: int = 256
    sbatch: tuple[str, ...] = ()  # more sbatch options, "--name=value" or "--flag"


def submit(
    runs: Sequence[Run], train_flags: Sequence[str], eval_flags: Sequence[str], resources: Resources, log: Log = print
) -> dict[str, str]:
    """Submit every run that is neither finished nor running as one job array (with `resources`); returns {run name:
    job id}."""
    import submitit

    todo: list[Run] = []
    skipped: list[tuple[Run, str]] = []
    known = job_states(recorded_jobs(runs))
    for run in runs:
        state = status(run)
        job = state.get("job_id") or ""
        if state["state"] in ("done", "running") or known.get(job) in ACTIVE:
            skipped.append((run, state["state"] if state["state"] in ("done", "running") else "queued"))
        else:
            todo.append(run)
    for run, why in skipped:
        log(f"== {run.name}: {why}; not submitted again")
    if not todo:
        return {}
    # a long run may be pre-empted or time out many times; each resumes from its last completed epoch
    r = resources
    executor = submitit.AutoExecutor(folder=r.folder, cluster="slurm", slurm_max_num_timeout=1000)
    extra = {key: value or None for key, _, value in (item.partition("=") for item in r.sbatch)}
    root = os.path.relpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    executor.update_parameters(
        name="bkd",
        timeout_min=r.time_min,
        slurm_partition=r.partition,
        gpus_per_node=r.gpus or None,
        cpus_per_task=r.cpus,
        mem_gb=r.mem_gb,
        slurm_array_parallelism=r.array_parallelism,
        slurm_additional_parameters={k.lstrip("-"): v for k, v in extra.items()},
        slurm_setup=[f'export PYTHONPATH="{root}${{PYTHONPATH:+:$PYTHONPATH}}"'],
    )
    for run in todo:
        os.makedirs(run.path, exist_ok=True)
        write_record(run, failed=None)
    jobs = executor.map_array(RunTask(train_flags, eval_flags), todo)
    ids = {run.name: job.job_id for run, job in zip(todo, jobs, strict=True)}
    for run, job in zip(todo, jobs, strict=True):
        write_record(run, job_id=job.job_id)
        log(f"== {run.name}: submitted as job {job.job_id}")
    save_jobs(runs, ids)
    return ids


def jobs_path(runs: Sequence[Run]) -> str:
    """<results_dir>/launch_slurm.json."""
    return os.path.join(runs[0].results_dir, JOBS_FILE)


def save_jobs(runs: Sequence[Run], ids: dict[str, str]) -> None:
    """Merge {run name: job id} into launch_slurm.json."""
    path = jobs_path(runs)
    jobs = read_json(path) or {}
    jobs.update(ids)
    save_json(jobs, path)


def recorded_jobs(runs: Sequence[Run], statuses: Sequence[dict[str, Any]] | None = None) -> list[str]:
    """The job ids the runs' records name."""
    statuses = statuses or [status(run) for run in runs]
    return [s["job_id"] for s in statuses if s.get("job_id")]


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: SLURM state} from squeue (finished jobs stay listed for MinJobAge); {} without SLURM."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)


def wait(runs: Sequence[Run], poll_s: float = 10, log: Log = print) -> list[dict[str, Any]]:
    """Block until no run is running or queued on the cluster; returns the final statuses."""
    while True:
        statuses = [status(run) for run in runs]
        states = job_states(recorded_jobs(runs, statuses))
        if not any(s["state"] == "running" or states.get(s.get("job_id") or "") in ACTIVE for s in statuses):
            return statuses
        time.sleep(poll_s)
