"""Crash-safe file writes: readers see the old content or the new, never half a file.

A write goes to a temp file beside the target, is fsynced, renamed over the target, and then the
directory is fsynced, so after a crash (or power loss) at any point the target holds either its
old bytes or its new ones. A full disk or an unwritable folder is a user problem, not a bug: it
becomes one `NanoftError` line naming the path, and the temp file is removed.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Union

from nanoft.errors import NanoftError

# errno name -> (what happened, how to fix it), for the OSErrors a user causes and can mend
_DISK_ERRORS = {getattr(errno, name): text for name, text in {  # EDQUOT is missing on some platforms
    "ENOSPC": ("no space left on device", "free space or choose another --output"),
    "EDQUOT": ("disk quota exceeded", "free space or choose another --output"),
    "EACCES": ("permission denied", "choose a writable --output"),
    "EPERM": ("operation not permitted", "choose a writable --output"),
    "EROFS": ("read-only file system", "choose a writable --output"),
}.items() if hasattr(errno, name)}


def disk_error(e: OSError, path: Union[str, Path], fix: Optional[str] = None) -> Union[NanoftError, OSError]:
    """The one-line NanoftError for a full or unwritable disk (fix: the caller's advice), else `e` itself."""
    if e.errno not in _DISK_ERRORS:
        return e
    what, default_fix = _DISK_ERRORS[e.errno]
    err = NanoftError(f"{what} writing {path}", fix=fix or default_fix)
    err.path = str(path)
    return err


@contextlib.contextmanager
def writing(path: Union[str, Path], fix: Optional[str] = None) -> Iterator[None]:
    """Turn a full/unwritable-disk OSError raised inside the block into `disk_error(e, path, fix)`."""
    try:
        yield
    except OSError as e:
        err = disk_error(e, path, fix)
        if err is e:
            raise
        raise err from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Union[str, Path]) -> None:
    """Make a rename or a new file in directory `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # e.g. Windows: no directory handles; renames there are durable on their own
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on a directory; nothing more can be done there
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: Union[str, Path], write: Callable[[BinaryIO], Any], *, fix: Optional[str] = None) -> None:
    """Run `write(file)` on a temp file beside `path`, fsync it, rename it over `path`, fsync the folder.

    fix: the advice in the error for a full or unwritable disk (default: choose another --output)."""
    path = Path(path)
    with writing(path, fix):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # the first error is the one to report
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: Union[str, Path], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def fsync_tree(path: Union[str, Path]) -> None:
    """fsync every file and folder under `path` (and `path`): its content is on disk before a rename publishes it."""
    for root, _dirs, files in os.walk(str(path)):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def atomic_replace_dir(tmp_dir: Union[str, Path], final_dir: Union[str, Path]) -> None:
    """Publish the finished folder `tmp_dir` as `final_dir`, replacing any old one.

    The new tree is fsynced first; the old folder is moved to `<final>.old` and deleted only after
    the new one is in place, so a crash leaves `final_dir` whole (old or new), or, in the moment
    between the two renames, `<final>.old` whole: `recover_dir(final_dir)` puts it back."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    with writing(final_dir):
        fsync_tree(tmp_dir)
        if old.exists():
            shutil.rmtree(old)
        if final_dir.exists():
            os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        fsync_dir(final_dir.parent)
        if old.exists():
            shutil.rmtree(old)


def recover_dir(final_dir: Union[str, Path]) -> bool:
    """After a crash inside `atomic_replace_dir`: if only `<final>.old` is there, make it `final_dir` again.

    Returns True when it restored one."""
    final_dir = Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if final_dir.exists() or not old.is_dir():
        return False
    with writing(final_dir):
        os.replace(old, final_dir)
        fsync_dir(final_dir.parent)
    return True


__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_replace_dir", "recover_dir",
           "fsync_dir", "fsync_tree", "disk_error", "writing"]
