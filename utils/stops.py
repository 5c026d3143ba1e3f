"""How a process of this project stops on SIGINT and SIGTERM: every process-wide hook for them, in one place.

Who installs what (docs/reliability.md, 'Signals'), and until when:

* the three scripts, first thing: `interrupt_quietly_while_starting` (a signal while the libraries load is one line),
  until `run_cli` (errors.py) sets Python's own handling (KeyboardInterrupt, reported in one line with what is kept);
* training: `StopFlag.install` (both handlers, `signal.set_wakeup_fd` and a watchdog thread, and an at-fork hook that
  keeps forked children, the DataLoader workers, from waking the watchdog), until the process ends;
* the evaluations: `stop_on_signals` (a signal ends them at once: they write their result last);
* a run directory being put in order: `held()` (both signals held back, blocked, for its few renames);
* the launcher: launch/local.py's `stop_all` (a stop forwarded to each run), until the launch returns.

The Python API (bkd.api) installs none of them: it takes whatever the caller's process does with a signal.
"""

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from bkd.utils.errors import EXIT_INTERRUPTED, Interrupted, first_line, report_and_exit

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the process is: a KeyboardInterrupt, so that no `except Exception` of a reader
    takes it for a damaged file; its message says which signal came, and when."""


def interrupt_quietly_while_starting() -> None:
    """Ctrl-C or SIGTERM while a script imports its libraries (seconds for torch): one line instead of a traceback or a
    silent exit 143. Called first thing when a script runs (never on import); run_cli hands both to Python's own
    handling (KeyboardInterrupt), until the script installs its own."""

    def starting(signum: int, frame: FrameType | None) -> None:
        os.write(2, b"error: interrupted while starting: nothing was started and nothing was written\n")
        os._exit(EXIT_INTERRUPTED)

    for sig in SIGNALS:
        signal.signal(sig, starting)


def python_handling() -> None:
    """Both signals raise KeyboardInterrupt, as Ctrl-C does in any Python program (run_cli reports it in one line)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.default_int_handler)


def stop_on_signals(kept: str) -> None:
    """SIGINT and SIGTERM end an evaluation at once with one line (exit 130) saying what it `kept`, instead of a
    traceback or a silent exit 143. Its result is written last, atomically: until then there is nothing to keep."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(f"{signal.Signals(signum).name} received: {kept}")

    for sig in SIGNALS:
        signal.signal(sig, stop)


@contextlib.contextmanager
def held(drop: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM held back (blocked) in this thread for the block: a handful of renames that put a run
    directory in order complete whatever the timing of signals. After the block they arrive as usual, or, with
    `drop` (the process is already stopping, and the block reports it), they are dropped."""
    if threading.current_thread() is not threading.main_thread():  # (Python's handlers run in the main thread only)
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        if drop:
            pending = set(SIGNALS) & signal.sigpending()
            while pending:
                taken = signal.sigtimedwait(pending, 0)  # (dequeued: never delivered)
                if taken is None:
                    break
                pending.discard(taken.si_signo)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


_ACTIVE: "StopFlag | None" = None  # the installed StopFlag of this process (one per process: the training's)
_FORK_HOOK = False


class StopFlag:
    """SIGINT and SIGTERM for a training run: until the loop starts, a signal stops the process at once (there is
    nothing to keep yet); from `defer()` on, it is a flag the loop checks between iterations and before each pass, so
    that what the run completed is kept.

    Python runs a signal handler only between bytecodes: a process inside a long native call (a hung kernel, a
    compilation, a minutes-long pass or read) would not stop, and a second signal would not either. So the signal also
    wakes a watchdog thread (through `signal.set_wakeup_fd`, written by the C-level handler at once): if the process is
    still running `grace_s` seconds after the first signal, or `SECOND_S` after the second, the watchdog ends it (exit
    130) with one line naming what the process was doing (`phase`) and, from `describe()`, what the run directory
    holds. Every file is written atomically, so nothing on disk is half-written by that; the epoch in progress is lost,
    as with any stop. Only this process's own signals count: a forked child (a DataLoader worker, which a terminal's
    Ctrl-C reaches too) does not write to the watchdog's pipe.
    """

    GRACE_S = 30.0  # an iteration, a pass's start or a pending write takes less; a hung kernel or a compilation longer
    SECOND_S = 3.0

    def __init__(self, describe: Callable[[], str] | None = None, grace_s: float = GRACE_S) -> None:
        self.signal: int | None = None
        self.describe, self.grace_s = describe, grace_s
        self.phase = "while starting"  # what the process is doing, as the lines say it
        self.deferred = False
        self._signals, self._signum = 0, 0
        self._deadline: float | None = None
        self._wakeup: int | None = None  # the write end of the watchdog's pipe

    def install(self) -> "StopFlag":
        """Handle SIGINT and SIGTERM from now on (the main thread's handlers) and start the watchdog."""
        global _ACTIVE, _FORK_HOOK
        for sig in SIGNALS:
            signal.signal(sig, self._handler)
        self._start_watchdog()
        _ACTIVE = self
        if not _FORK_HOOK:
            os.register_at_fork(
                before=_hold_for_fork, after_in_parent=_release_after_fork, after_in_child=_forget_in_child
            )
            _FORK_HOOK = True
        return self

    def defer(self, phase: str) -> None:
        """From now on a first signal is a flag (check raises it where the loop can stop), not an exception."""
        self.deferred, self.phase = True, phase

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum
        if not self.deferred:  # nothing to keep yet: stop where the process is
            raise Stopped(f"{signal.Signals(signum).name} received {self.phase}")

    def check(self, where: str) -> None:
        """Raise Interrupted, naming `where` the run stopped, if a signal came; else note `where` the run is."""
        self.phase = f"in {where}"
        if self.signal is not None:
            raise Interrupted(f"{signal.Signals(self.signal).name} received during {where}")  # the caller adds more

    def _start_watchdog(self) -> None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        try:
            signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        except ValueError:  # not the main thread: Python delivers no signals here anyway
            os.close(read)
            os.close(write)
            return
        self._wakeup = write
        threading.Thread(target=self._watch, args=(read,), name="bkd-stop-watchdog", daemon=True).start()

    def _watch(self, read: int) -> None:
        while True:
            wait = None if self._deadline is None else max(0.0, self._deadline - time.time())
            ready = select.select([read], [], [], wait)
            if ready[0]:
                for byte in os.read(read, 64):
                    if byte in SIGNALS:
                        self._signals += 1
                        self._signum = byte
                        after = self.grace_s if self._signals == 1 else self.SECOND_S
                        self._deadline = min(self._deadline or float("inf"), time.time() + after)
            elif self._deadline is not None and time.time() >= self._deadline:
                self._stop_now()

    def _stop_now(self) -> None:
        name = signal.Signals(self._signum).name
        after = f"{self.grace_s:.0f} s after {name}" if self._signals == 1 else f"after a second {name}"
        message = (
            f"error: still running {after} {self.phase} (inside a long native call: a kernel, a compilation, a pass "
            "or a read), so it was stopped at once"
        )
        try:
            if self.describe is not None:
                message += f"; {self.describe()}"
        except Exception as err:  # noqa: BLE001 - the line must still be printed
            message += f"; (what the run directory holds could not be read: {first_line(err)})"
        report_and_exit(message, EXIT_INTERRUPTED)


_BEFORE_FORK = threading.local()  # the forking thread's signal mask, held across its fork


def _hold_for_fork() -> None:
    """Before a fork: both signals held, so that a child gets none before it has forgotten the parent's watchdog."""
    _BEFORE_FORK.mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def _release_after_fork() -> None:
    mask = getattr(_BEFORE_FORK, "mask", None)
    if mask is not None:
        _BEFORE_FORK.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker): its signals (a terminal sends Ctrl-C to the whole process group) must
    not reach the parent's watchdog, which would count them as the parent's second signal. They were held since before
    the fork: what came meanwhile arrives now, to the child alone."""
    flag = _ACTIVE
    if flag is not None and flag._wakeup is not None:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        with contextlib.suppress(OSError):
            os.close(flag._wakeup)
    _release_after_fork()


def interrupted_line() -> str:
    """What a KeyboardInterrupt that reached run_cli stopped: what the training's run directory holds, where one is
    being trained, else the evaluations' and the start's truth, that nothing was written."""
    flag = _ACTIVE
    if flag is not None and flag.describe is not None:
        with held(drop=True):
            return f"interrupted; {flag.describe()}"
    return "interrupted before anything was written"
