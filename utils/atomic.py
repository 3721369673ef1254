"""Atomic file writes: the one way Text2Sign writes a file that something else will read back."""
from __future__ import annotations

import contextlib
import os
import tempfile

TEMP_SUFFIX = ".tmp"  # temp files are `.<name>.<random>.tmp` beside their target: hidden, and easy to find


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb"):
    """Yield a file object; on success its bytes appear at `path` all at once, else nothing changes.

    The data goes to a temp file in the target's folder (so the rename never crosses file systems), is fsynced,
    gets the permissions a plain open() would give, and is renamed over `path`; the folder is fsynced so the rename
    survives a power cut. On any failure, KeyboardInterrupt included, the temp file is removed and `path` keeps
    its previous content (or stays absent). Text mode ("w") writes UTF-8 with "\n" line ends on every platform.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every platform or file system can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_temp_file(name: str) -> bool:
    """A temp file of atomic_write (`.<name>.<random>.tmp`), or of the older `<name>.tmp<PID>` checkpoint writer."""
    return (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or (
        ".tmp" in name and name.rsplit(".tmp", 1)[1].isdigit())
