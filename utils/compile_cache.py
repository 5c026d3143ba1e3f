"""torch's compile cache: a folder torch's compiler can write, for a run."""

import contextlib
import os
from collections.abc import Iterator

from bkd.utils.errors import UsageError
from bkd.utils.logfmt import Log

COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def _compile_cache_dir() -> str:
    """The folder torch's compiler caches in, created as torch creates it (raises OSError where it cannot be). As
    torch's torch/_inductor/runtime/cache_dir_utils.py resolves it, without importing torch's compiler: an import
    that fails there leaves it half imported for the rest of the process."""
    import getpass
    import re
    import tempfile

    path = os.environ.get(COMPILE_CACHE_ENV)
    if not path:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this user id (some containers)
            user = f"uid_{os.getuid()}"
        path = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".bkd_write_test_{os.getpid()}")
    with open(probe, "w"):
        pass
    os.remove(probe)
    return path


@contextlib.contextmanager
def usable_compile_cache(log: Log) -> Iterator[None]:
    """A writable cache folder for torch's compiler, for a run. Building the optimiser imports torch's compiler, which
    creates its cache folder (even with --no_compile): where that folder cannot be written, the run uses a new temporary
    one, saying so; where there is none, one line naming the variable. The variable is put back after the run."""
    try:
        _compile_cache_dir()
        reason = None
    except OSError as err:
        reason = f"{err.strerror or err}: {err.filename}" if getattr(err, "filename", None) else str(err)
    if reason is None:
        yield  # (outside the try: an OSError of the run itself is not the cache's)
        return
    import tempfile

    saved = os.environ.get(COMPILE_CACHE_ENV)
    try:
        os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix="bkd_torchinductor_")
    except OSError as err:
        raise UsageError(
            f"torch's compile cache cannot be created ({reason}) and no temporary folder can be "
            f"({err.strerror}); set {COMPILE_CACHE_ENV} to a writable folder"
        ) from None
    from bkd.utils import logfmt

    log(
        logfmt.ours(
            f"torch's compile cache cannot be created ({reason}); this run caches in "
            f"{os.environ[COMPILE_CACHE_ENV]} ({COMPILE_CACHE_ENV} sets another)"
        )
    )
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(COMPILE_CACHE_ENV, None)
        else:
            os.environ[COMPILE_CACHE_ENV] = saved
