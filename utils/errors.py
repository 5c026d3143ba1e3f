"""Errors a user can fix, each printed as one line with its exit code (see README, 'Exit codes')."""

import io
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import NoReturn

EXIT_USAGE = 2  # bad flag value or combination
EXIT_DATA = 3  # missing, corrupt or mismatched input file
EXIT_RUN_DIR = 4  # run directory in use, already holding a run, or unwritable
EXIT_DIVERGED = 5  # non-finite loss
EXIT_MEMORY = 6  # the device ran out of memory
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM; resumable with --resume
EXIT_OUTPUT_CLOSED = (
    141  # standard output closed (`| head`): 128 + SIGPIPE, what a shell reports for a Unix tool so stopped
)


class BKDError(Exception):
    """An error with a one-line message naming the bad value and the fix."""

    exit_code = 1


class UsageError(BKDError):
    exit_code = EXIT_USAGE


class DataError(BKDError):
    exit_code = EXIT_DATA


class RunDirError(BKDError):
    exit_code = EXIT_RUN_DIR


class DivergedError(BKDError):
    exit_code = EXIT_DIVERGED


class OutOfMemory(BKDError):
    exit_code = EXIT_MEMORY


class Interrupted(BKDError):
    exit_code = EXIT_INTERRUPTED


class OutputClosed(BKDError):
    exit_code = EXIT_OUTPUT_CLOSED


OUTPUT_CLOSED = "standard output was closed (the pipe's reader ended), so the run stopped as a Unix tool does"


def interrupt_quietly_while_starting() -> None:
    """Ctrl-C or SIGTERM while a script imports its libraries (seconds for torch): one line instead of a traceback or a
    silent exit 143. Called first thing when a script runs (never on import); run_cli hands both to Python's own
    handling (KeyboardInterrupt), until the script installs its own."""

    def starting(signum: int, frame: FrameType | None) -> None:
        os.write(2, b"error: interrupted while starting: nothing was started and nothing was written\n")
        os._exit(EXIT_INTERRUPTED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, starting)


def stop_on_signals(kept: str) -> None:
    """SIGINT and SIGTERM end an evaluation at once with one line (exit 130) saying what it `kept`, instead of a
    traceback or a silent exit 143. Its result is written last, atomically: until then there is nothing to keep."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(f"{signal.Signals(signum).name} received: {kept}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def print_names_as_stored() -> None:
    """File and class names that are not valid UTF-8 (Latin-1 names of old archives, which Python holds as lone
    surrogates) are printed as the bytes the file system holds, as label_issues.csv writes them, instead of failing
    under a strict UTF-8 standard output (PYTHONIOENCODING=utf-8, or a UTF-8 locale's)."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):  # (not a test's capture, nor a stream that is None)
            try:
                stream.reconfigure(errors="surrogateescape")
            except ValueError:
                pass


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Call main(argv); turn a BKDError into `error: <message>` on stderr and its exit code.

    When standard output goes to a log file (run.sh, the launcher), the same line goes there too,
    as `[bkd] error: ...`, so that the log a report points to says why the step stopped.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):  # (after interrupt_quietly_while_starting): a KeyboardInterrupt
        signal.signal(sig, signal.default_int_handler)
    print_names_as_stored()
    try:
        main(argv)
    except BKDError as err:
        _report(f"error: {err}", err.exit_code)
    except KeyboardInterrupt:  # Ctrl-C before the script installed its own handling
        _report("error: interrupted before anything was written", EXIT_INTERRUPTED)
    except BrokenPipeError:  # standard output closed before the script could say what its run directory holds
        _report(f"error: {OUTPUT_CLOSED}", EXIT_OUTPUT_CLOSED)


def _report(message: str, code: int) -> NoReturn:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # closed, or on a full disk: nothing more can go there
        _silence_stdout()
    print(message, file=sys.stderr, flush=True)
    if _stdout_is_separate_file():
        try:
            print(f"[bkd] {message}", flush=True)
        except OSError:
            _silence_stdout()
    sys.exit(code)


def report_and_exit(message: str, code: int) -> NoReturn:
    """From any thread: `message` on standard error (and standard output where that is a log file of its own), then end
    the process at once with `code`, as _report's line would say it; no cleanup runs (a process stuck in native
    code)."""
    lines = [(sys.stderr, message)] + [(sys.stdout, f"[bkd] {message}")] * _stdout_is_separate_file()
    for stream, line in lines:
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _silence_stdout() -> None:
    """Standard output is closed: point it at /dev/null, so that Python's flush at exit prints no second error."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _stdout_is_separate_file() -> bool:
    try:
        out, err = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return not sys.stdout.isatty() and (out.st_dev, out.st_ino) != (err.st_dev, err.st_ino)


# Libraries' hints that would have the user disable a safety check (torch.load's weights_only, numpy's allow_pickle).
_UNSAFE_HINTS = ("weights_only", "allow_pickle", "can still be loaded")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its type name), without hints to load files unsafely."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    safe = [line for line in lines if not any(hint in line for hint in _UNSAFE_HINTS)]
    if safe:
        return safe[0]
    return "it holds objects other than plain tensors and arrays" if lines else type(err).__name__
