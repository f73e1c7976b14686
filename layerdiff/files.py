"""Writing files for users: checked before any work is done, written atomically (a temporary file
beside the target, then a rename), with the permissions a new file gets from the umask."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from layerdiff.errors import OutputPathError


def check_writable(path: str | Path, protect: tuple[str | Path, ...] = ()) -> Path:
    """Fail before any work is done if `path` cannot be written, or would overwrite one of `protect`
    (the user's own input files)."""
    path = Path(path)
    for p in protect:
        if p is not None and Path(p).exists() and path.exists() and path.resolve() == Path(p).resolve():
            raise OutputPathError(f"refusing to write {path}: it is an input of this run; give another file name")
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a directory; give a file name")
    if not path.parent.is_dir():
        raise OutputPathError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputPathError(f"cannot write {path}: permission denied; give a path you can write")
    try:  # some places refuse new files whatever the permission bits say (/proc, read-only mounts)
        fd, probe = _new_file(path)
    except OSError as err:
        raise OutputPathError(f"cannot write {path}: {err.strerror or err}; give another path") from err
    os.close(fd)
    os.unlink(probe)
    return path


def _new_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, created with mode 0666 less the umask (as any new file)."""
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = check_writable(path)
    fd, tmp = _new_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
