"""Errors a user can fix, each printed as one line with its exit code (see README, 'Exit codes')."""
import sys

EXIT_USAGE = 2  # bad flag value or combination
EXIT_DATA = 3  # missing, corrupt or mismatched input file
EXIT_RUN_DIR = 4  # run directory in use, already holding a run, or unwritable
EXIT_DIVERGED = 5  # non-finite loss
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM; resumable with --resume


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


class Interrupted(BKDError):
    exit_code = EXIT_INTERRUPTED


def run_cli(main, argv=None):
    """Call main(argv); turn a BKDError into `error: <message>` on stderr and its exit code."""
    try:
        main(argv)
    except BKDError as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        sys.stdout.flush()
        print("error: interrupted; the run directory keeps the last completed epoch (rerun with --resume)",
              file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)


def first_line(err):
    """The first line of an exception's message, or its type name when it has none."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
