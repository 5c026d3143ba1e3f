"""Atomic file writes: a kill at any moment, or a full disk, leaves the old complete file or the new complete one."""

import errno
import json
import os
import queue
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, overload

import numpy as np

from bkd.utils.errors import DataError, RunDirError, first_line


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: mkstemp's 0600 would hide results from the group


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    A failed write (disk full, read-only folder) removes the temporary file, keeps any earlier
    `path` as it was and raises a one-line RunDirError naming the file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        os.close(fd)
        os.chmod(tmp, FILE_MODE)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except UnicodeError as err:  # a name or label in the data that is no text: not the disk's fault
        kept = "the earlier file is kept" if os.path.exists(path) else "nothing was written"
        raise RunDirError(
            f"cannot write {shown(path)} ({first_line(err)}); {kept}; rename the files or classes of "
            "the data to valid UTF-8"
        ) from None
    except OSError as err:
        kept = "the earlier file is kept" if os.path.exists(path) else "nothing was written"
        try:
            free = f"; {shutil.disk_usage(directory).free:,} bytes free there"
        except OSError:
            free = ""
        raise RunDirError(
            f"cannot write {shown(path)} ({err.strerror or err}{free}); {kept}; free space or make "
            f"{shown(directory)} writable"
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # utils/ -> the root (bkd/utils is a link)


@overload
def portable(path: str) -> str: ...
@overload
def portable(path: None) -> None: ...
def portable(path: str | None) -> str | None:
    """A path to write into a result file: relative to the project root when given as an absolute path."""
    if path is None or not os.path.isabs(path):
        return path
    return os.path.relpath(path, PROJECT_ROOT)


@overload
def from_portable(path: str) -> str: ...
@overload
def from_portable(path: None) -> None: ...
def from_portable(path: str | None) -> str | None:
    """A path `portable` wrote, to use here: relative ones are the project root's."""
    if path is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(PROJECT_ROOT, path))


def shown(path: str) -> str:
    """A path in a message, as the reader can use it where they stand: relative to the working folder where it lies
    below it, else absolute (`portable` is for files, which may be read on another machine)."""
    relative = os.path.relpath(os.path.abspath(path))
    return relative if relative != os.pardir and not relative.startswith(os.pardir + os.sep) else os.path.abspath(path)


_KINDS = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}
_OPEN_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}


def open_regular(path: str, mode: str = "r", **kwargs: Any) -> IO[Any]:
    """open(path, mode, **kwargs) of a regular file only: a named pipe, a device or a socket put where a file of the
    project belongs would block the reader (or never end) and is one line instead (exit 3). It is opened without
    waiting (O_NONBLOCK: a pipe with no writer cannot hold the open), checked as opened (no race with a rename), and
    only then read or written as usual."""
    try:
        fd = os.open(path, _OPEN_FLAGS[mode[0]] | os.O_NONBLOCK, 0o666)  # (a new file: as open() makes it)
    except OSError as err:
        if err.errno == errno.ENXIO:  # a pipe opened for writing with no reader
            raise DataError(
                f"{shown(path)}: a named pipe (FIFO), not a regular file; put the file itself there"
            ) from None
        raise
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        raise DataError(
            f"{shown(path)}: {_KINDS.get(kind, 'not a regular file')}, not a regular file; put the file itself there"
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, **kwargs)


def save_torch(obj: Any, path: str) -> None:
    """torch.save, atomically (atomic_path)."""
    import torch  # here, so that modules needing only the other writers load without torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            raise OSError(errno.EIO, f"torch.save could not write it: {first_line(err)}") from None


def save_numpy(array: np.ndarray, path: str) -> None:
    """np.save, atomically (atomic_path)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def save_json(obj: Any, path: str, sort_keys: bool = True, indent: int | None = 2) -> None:
    """Strict JSON, which every reader takes (jq, JavaScript): an undefined value (NaN, infinity) is written as null."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(_defined(obj), fh, indent=indent, sort_keys=sort_keys, default=_json_default, allow_nan=False)
            fh.write("\n")


def _defined(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _defined(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_defined(v) for v in value]
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return _defined(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in `path` ({} if the file does not exist); a one-line DataError if it is not one."""
    if not os.path.exists(path):
        return {}
    try:
        with open_regular(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise DataError(
            f"{shown(path)}: not readable JSON ({getattr(err, 'strerror', None) or err}); it is truncated "
            "or damaged: repair it, or move it aside to start a new one"
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"{shown(path)}: holds a JSON {type(data).__name__}, not an object; move it aside to start a new one"
        )
    return data


def update_json(path: str, updates: dict[str, Any]) -> None:
    """Merge `updates` into the JSON object at `path` (created if missing), atomically, one writer at a time: two
    evaluations of one run finishing together each keep their result (each merges into the other's)."""
    import fcntl

    lock = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.lock")
    try:
        fh = open(lock, "a+")
    except OSError as err:
        raise RunDirError(
            f"cannot write {shown(path)} ({err.strerror}); make {shown(os.path.dirname(lock))} writable"
        ) from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        data = read_json_object(path)
        data.update(updates)
        save_json(data, path)


class BackgroundWriter:
    """Writes files on one thread of its own, in the order asked, so that the caller does not wait for the disk
    (with background=False, at once in the caller's thread).

    A job that fails (a full disk) keeps its error: every job after it is skipped, and every later `submit` or
    `drain` raises it in the caller's thread. `drain()` waits until everything asked is written.
    """

    def __init__(self, background: bool = True) -> None:
        self.background = background
        self._jobs: queue.Queue[tuple[Callable[..., object], tuple[Any, ...]]] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """fn(*args) after the jobs before it (at once, without a background thread)."""
        self._raise()
        if not self.background:
            fn(*args)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="bkd-writer", daemon=True)
            self._thread.start()
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            fn, args = self._jobs.get()
            try:
                if self._error is None:
                    fn(*args)
            except BaseException as err:  # noqa: B902 - handed to the caller's thread
                self._error = err
            finally:
                self._jobs.task_done()

    def drain(self) -> None:
        self._jobs.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
