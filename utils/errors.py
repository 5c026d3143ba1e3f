"""Errors a user can fix, each printed as one line with its exit code (see README, 'Exit codes')."""

import io
import os
import sys
import threading
from collections.abc import Callable, Sequence
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
    from bkd.utils import stops  # (it raises this module's errors)

    stops.python_handling()  # (after interrupt_quietly_while_starting): a KeyboardInterrupt, until the script's own
    print_names_as_stored()
    try:
        main(argv)
    except BKDError as err:
        _report(f"error: {err}", err.exit_code)
    except KeyboardInterrupt as err:  # a stop the script did not turn into its own line: say what is kept
        _report(f"error: {err}" if str(err) else f"error: {stops.interrupted_line()}", EXIT_INTERRUPTED)
    except BrokenPipeError:  # standard output closed before the script could say what its run directory holds
        _report(f"error: {OUTPUT_CLOSED}", EXIT_OUTPUT_CLOSED)


def _report(message: str, code: int) -> NoReturn:
    if sys.stdout is not None:  # (None where the process started with its standard output closed: `>&-`)
        try:
            sys.stdout.flush()
        except (OSError, ValueError):  # closed, or on a full disk: nothing more can go there
            _silence_stdout()
    if sys.stderr is not None:
        print(message, file=sys.stderr, flush=True)
    if _stdout_is_separate_file():
        try:
            print(f"[bkd] {message}", flush=True)
        except OSError:
            _silence_stdout()
    sys.exit(code)


WRITE_WAIT_S = 1.0  # how long report_and_exit waits for each stream (a pipe nobody reads takes nothing)


def report_and_exit(message: str, code: int) -> NoReturn:
    """From any thread: `message` on standard error (and standard output where that is a log file of its own), then end
    the process at once with `code`, as _report's line would say it; no cleanup runs (a process stuck in native
    code). It never blocks: each line is written straight to its descriptor (Python's stream may be locked by the stuck
    thread) by a thread of its own, given WRITE_WAIT_S (a pipe nobody reads, `| less` paused, takes nothing)."""
    lines = [(sys.stderr, message)] + [(sys.stdout, f"[bkd] {message}")] * _stdout_is_separate_file()
    for stream, line in lines:
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # None, closed, or no descriptor
            continue
        writer = threading.Thread(target=_write_all, args=(fd, (line + "\n").encode(errors="replace")), daemon=True)
        writer.start()
        writer.join(WRITE_WAIT_S)
    os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


def _silence_stdout() -> None:
    """Standard output is closed: point it at /dev/null, so that Python's flush at exit prints no second error."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
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
