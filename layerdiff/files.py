"""Writing files for users: checked before any work is done, written atomically (a temporary file
beside the target, then a rename), with the permissions a new file gets from the umask, or the ones the
file already had when it is replaced.

A symbolic link is followed: the file it points to is replaced, the link stays. A path that is not a
regular file (/dev/null, /dev/stdout, a named pipe) is written through, as a shell redirection would:
it cannot be replaced, and renaming over it would destroy it."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path

from layerdiff.errors import OutputPathError


def _special(path: Path) -> bool:
    """Whether `path` exists and is not a regular file or a directory (a device, a pipe, a socket)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _inside(path: Path, protected: Path) -> bool:
    return path == protected or (protected.is_dir() and protected in path.parents)


def check_writable(path: str | Path, protect: tuple[str | Path | None, ...] = ()) -> Path:
    """Fail before any work is done if `path` cannot be written, or would overwrite one of `protect`
    (the user's own input files, or a file inside an input directory)."""
    given = Path(path)
    resolved = Path(os.path.realpath(given))
    # /dev/stdout when it is a pipe resolves to "/proc/PID/fd/pipe:[N]", which is no path: a device or
    # pipe is written through the name given (and checked against the inputs by its resolved path)
    target = given if _special(given) else resolved
    for p in protect:
        if p is not None and Path(p).exists() and _inside(resolved, Path(os.path.realpath(p))):
            raise OutputPathError(f"refusing to write {given}: it is an input of this run, or inside one; "
                                  "give another file name")
    if target.is_dir():
        raise OutputPathError(f"cannot write {given}: it is a directory; give a file name")
    if _special(target):
        if not os.access(target, os.W_OK):
            raise OutputPathError(f"cannot write {given}: permission denied; give a path you can write")
        return target
    if not target.parent.is_dir():
        raise OutputPathError(f"cannot write {given}: directory {given.parent} does not exist")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputPathError(f"cannot write {given}: permission denied; give a path you can write")
    try:  # some places refuse new files whatever the permission bits say (/proc, read-only mounts)
        fd, probe = _new_file(target)
    except OSError as err:
        raise OutputPathError(f"cannot write {given}: {err.strerror or err}; give another path") from err
    os.close(fd)
    os.unlink(probe)
    return target


# errors of the place written to, not of layerdiff: the user's to fix (free space, another path)
DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large for the file system", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


def disk_error(err: OSError, path: str | Path | None = None) -> OutputPathError | None:
    """The one-line error for `err` raised writing `path` (or the file the error names) when it is the
    disk's doing (full, over quota, read-only, not permitted); None for any other OSError."""
    if err.errno not in DISK_ERRORS:
        return None
    fix = "free some space there or give another path" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) \
        else "give a path you can write"
    if path is None and not err.filename:  # standard output, or a temporary file of a library
        return OutputPathError(f"cannot write standard output or a temporary file (under TMPDIR): "
                               f"{DISK_ERRORS[err.errno]}; {fix}")
    return OutputPathError(f"cannot write {path if path is not None else err.filename}: {DISK_ERRORS[err.errno]}; "
                           f"{fix}")


def _new_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, created with mode 0666 less the umask (as any new file)."""
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file. A file
    replaced keeps its permissions; a device or pipe is written through."""
    target = check_writable(path)
    try:
        if _special(target):
            with open(target, "wb") as f:
                f.write(data)
            return
        fd, tmp = _new_file(target)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if target.exists():
                os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:  # a full or read-only disk: the file as it was is kept (or none is left)
        raise (disk_error(err, path) or err) from None


def read_text(path: Path, what: str, error: type[Exception], missing: str = "", empty: str = "") -> str:
    """The text of a file a user named (`what` says what it should be), or `error` with one line when
    it is missing, unreadable or empty; `missing` and `empty` end those lines with what to do."""
    if not path.is_file():
        raise error(f"{what} not found: {path}{missing}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err}") from err
    if not text.strip():
        raise error(f"{what} {path} is empty{empty}")
    return text
