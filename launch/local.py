"""Run a grid on this machine: in parallel over the visible GPUs (k runs per GPU), or n at a time on the CPU.

Each run gets its device with CUDA_VISIBLE_DEVICES, and an explicit thread count
(OMP_NUM_THREADS / MKL_NUM_THREADS: the cores divided between the runs at once). A failed run
does not stop the others. Ctrl-C (or SIGTERM) stops every run cleanly: each keeps its last
completed epoch and continues when the same grid is launched again.
"""

import os
import queue
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from bkd.utils.errors import EXIT_RUN_DIR, BKDError, first_line
from bkd.utils.files import open_regular
from bkd.utils.logfmt import Log
from launch.grid import Pipeline, Run, status


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


def slots(
    parallel: int | None = None, per_gpu: int = 1, cpu: bool = False, threads: int | None = None
) -> list[dict[str, str]]:
    """One environment per run that may go at once."""
    gpus = [] if cpu else visible_gpus()
    if gpus:
        envs = [{"CUDA_VISIBLE_DEVICES": g} for g in gpus for _ in range(per_gpu)]
        if parallel:
            envs = envs[:parallel]
    else:
        envs = [{"CUDA_VISIBLE_DEVICES": ""} for _ in range(parallel or 1)]
    per_run = threads or max(1, (os.cpu_count() or 1) // len(envs))
    for env in envs:
        env.update(OMP_NUM_THREADS=str(per_run), MKL_NUM_THREADS=str(per_run))
    return envs


def run_local(
    runs: Sequence[Run],
    train_flags: Sequence[str] = (),
    eval_flags: Sequence[str] = (),
    envs: Sequence[dict[str, str]] | None = None,
    log: Log = print,
) -> dict[str, dict[str, Any]]:
    """Run every unfinished run of `runs`, as many at once as `envs` (slots(): one environment per run that may go at
    once; default one run at a time); returns {run name: outcome dict}. Interrupts stop all runs cleanly."""
    envs = envs or slots()
    free: queue.Queue[dict[str, str]] = queue.Queue()
    for env in envs:
        free.put(env)
    sequential = len(envs) == 1
    todo: queue.Queue[Run] = queue.Queue()
    for run in runs:
        todo.put(run)
    outcomes: dict[str, dict[str, Any]] = {}
    active: dict[str, Pipeline] = {}
    lock = threading.Lock()
    interrupted = threading.Event()

    def worker() -> None:
        while not interrupted.is_set():
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            env = free.get()
            pipeline = Pipeline(
                run, train_flags, eval_flags, env=dict(os.environ, **env), capture_stderr=not sequential
            )
            with lock:
                active[run.name] = pipeline
            where = (
                f"GPU {env['CUDA_VISIBLE_DEVICES']}"
                if env["CUDA_VISIBLE_DEVICES"]
                else f"CPU, {env['OMP_NUM_THREADS']} threads"
            )
            if not interrupted.is_set():
                log(f"== {run.name}: starting ({where}; log: {run.file('training.log')})")
                outcome = start(pipeline)
            else:
                outcome = {"outcome": "interrupted", "log": run.file("training.log")}
            with lock:
                active.pop(run.name, None)
                outcomes[run.name] = outcome
            free.put(env)
            log(f"== {run.name}: {describe(outcome)}")
            if sequential and outcome["outcome"] == "done":
                show_results(run, log)

    def stop_all(signum: int, frame: FrameType | None) -> None:
        first = not interrupted.is_set()
        interrupted.set()
        with lock:
            pipelines = list(active.values())
        for pipeline in pipelines:  # a second interrupt is forwarded as SIGINT: the scripts then stop at once
            pipeline.stop(signal.SIGTERM if first else signal.SIGINT)
        if first:
            log(
                f"== interrupted: stopping {len(pipelines)} run(s); each keeps its last completed epoch "
                "(launch the same grid again to continue)"
            )

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        threads_ = [threading.Thread(target=worker, daemon=True) for _ in envs]
        for t in threads_:
            t.start()
        for t in threads_:
            while t.is_alive():
                t.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for run in runs:
        outcomes.setdefault(run.name, {"outcome": "interrupted", "log": run.file("training.log")})
    return outcomes


def start(pipeline: Pipeline) -> dict[str, Any]:
    """A run's outcome; one that cannot even start (its path is a file, its folder read-only) has failed, saying why."""
    try:
        return pipeline()
    except (OSError, BKDError) as err:
        reason = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.filename else first_line(err)
        return {
            "outcome": "failed",
            "step": "start",
            "exit_code": getattr(err, "exit_code", EXIT_RUN_DIR),
            "log": None,
            "reason": reason,
        }


def show_results(run: Run, log: Log) -> None:
    """A finished run's evaluation logs, when runs go one at a time (as the original's run.sh showed them)."""
    for name in ("learning.log", "detection.log"):
        with open_regular(run.file(name)) as fh:
            log(fh.read().rstrip("\n"))
    log(f"== {run.name}: outputs in {run.path}")


def describe(outcome: dict[str, Any]) -> str:
    """A run's outcome in words."""
    kind = outcome["outcome"]
    if kind == "failed" and outcome.get("reason"):
        return f"FAILED to start ({outcome['reason']})"
    if kind == "failed":
        return f"FAILED in {outcome['step']} (exit {outcome['exit_code']}); see {outcome['log']}"
    if kind == "running":
        return "already running elsewhere; left alone"
    if kind == "skipped" and outcome.get("other_flags"):
        from launch.grid import describe_differences

        return (
            f"already finished, trained with other flags ({describe_differences(outcome['other_flags'])}); kept as "
            "it is: add --overwrite to train it again with this launch's flags"
        )
    if kind == "skipped":
        return "already finished; skipped"
    if kind == "interrupted":
        return f"interrupted; resumable (launch again), log {outcome['log']}"
    return "done"


def report(runs: Sequence[Run], outcomes: dict[str, dict[str, Any]], log: Log = print) -> int:
    """The final report; returns the exit code (0 all finished, 130 interrupted, else the first failure's code)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[outcomes[run.name]["outcome"]] = counts.get(outcomes[run.name]["outcome"], 0) + 1
    log("== grid: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" of {len(runs)} runs")
    failed = [(run, outcomes[run.name]) for run in runs if outcomes[run.name]["outcome"] == "failed"]
    for run, outcome in failed:
        log(
            f"   failed: {run.name}: "
            + (
                f"could not start ({outcome['reason']})"
                if outcome.get("reason")
                else f"{outcome['step']} exited {outcome['exit_code']}; log {outcome['log']}"
            )
        )
    other = [run.name for run in runs if outcomes[run.name].get("other_flags")]
    if other:
        log(
            f"   {len(other)} finished run(s) were trained with other flags and kept as they are "
            f"({', '.join(other)}): add --overwrite to train them again with this launch's flags"
        )
    if failed:
        return failed[0][1]["exit_code"] or 1
    if counts.get("interrupted"):
        return 130
    if counts.get("running"):
        log(
            "   runs still running elsewhere: "
            + ", ".join(r.name for r in runs if outcomes[r.name]["outcome"] == "running")
        )
    return 0


def print_status(
    runs: Sequence[Run], log: Log = print, job_states: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """A table of the runs' states (with SLURM's word for queued and running jobs); returns its rows."""
    rows = [status(run) for run in runs]
    job_states = job_states or {}
    width = max(len(r["run"]) for r in rows)
    log(f"{'run':<{width}}  {'state':<12} {'epoch':>9}  {'job':<12} detail")
    for r in rows:
        epoch = "-" if r["epoch"] is None else f"{r['epoch']}/{(r['n_epoch'] or 0) - 1}"
        state = r["state"]
        job = r.get("job_id") or ""
        if (
            job
            and state in ("not started", "interrupted", "trained", "failed")
            and job_states.get(job) in ("PENDING", "REQUEUED", "CONFIGURING")
        ):
            state = "queued"
        elif job and state in ("interrupted", "trained") and job_states.get(job) in ("RUNNING", "COMPLETING"):
            state = "running"
        log(
            f"{r['run']:<{width}}  {state:<12} {epoch:>9}  {job:<12} "
            f"{r['detail'] or (r['log'] if state == 'failed' else '')}"
        )
    return rows
