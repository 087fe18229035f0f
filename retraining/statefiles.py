"""The files the product itself writes (locks, the archive plan, the ledger, reasons).

Every one of them is opened here and nowhere else, without following a symbolic link and
only if it is a plain file with no other name. The cycle runs as root from cron, in folders
that other people write into: a link or a hard link planted at `new_gts/.retraining.lock`
would otherwise make it overwrite any file on the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from retraining.errors import NeedsAttention

_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO never hangs us


def _refused(path: Path, what: str, fix: str | None = None) -> NeedsAttention:
    return NeedsAttention(f"{path} is {what}, where this program keeps a file of its own; "
                          "nothing was read or written through it",
                          fix=fix or f"remove {path} (this program makes the file itself), "
                                     "then run again")


def _link_refused(path: Path) -> NeedsAttention:
    return _refused(path, f"a symbolic link (to {os.readlink(path)})",
                    fix=f"remove the link (rm {path}); if it pointed at this program's own "
                        f"file, move that file to {path} instead")


def open_own_file(path: Path, flags: int, mode: int = 0o644) -> int:
    """Open one of the product's own files (os.open flags); return the descriptor.

    Refused with one line (NeedsAttention) when the name is a symbolic link, a folder, a
    FIFO or a device, or a file with another name elsewhere (a hard link to a file the
    writer does not own): nothing is read from it or written to it.
    """
    try:
        descriptor = os.open(path, flags | _NO_FOLLOW, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _link_refused(path) from None
        if error.errno == errno.EISDIR:
            raise _refused(path, "a folder") from None
        if error.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise _refused(path, "a FIFO") from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            kind = ("a folder" if stat.S_ISDIR(status.st_mode)
                    else "a FIFO" if stat.S_ISFIFO(status.st_mode)
                    else "a socket" if stat.S_ISSOCK(status.st_mode) else "a device")
            raise _refused(path, kind)
        if status.st_nlink > 1:
            # Writing would change the other names too (a backup made with cp -al, or a
            # file elsewhere that someone linked here).
            raise _refused(path, f"a file with {status.st_nlink - 1} other name(s) (a hard "
                                 "link)",
                           fix=f"give it a name of its own: cp -p {path} {path}.copy && "
                               f"mv {path}.copy {path}")
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


@contextlib.contextmanager
def own_file(path: Path, flags: int, mode: str) -> Iterator:
    """`open_own_file` as a file object (`mode` as for `open`), closed after the block."""
    encoding = None if "b" in mode else "utf-8"
    with os.fdopen(open_own_file(path, flags), mode, encoding=encoding) as handle:
        yield handle


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write then rename, so a reader or a crash sees the old file or the whole new one.

    The partial file is created afresh (a stale one, or anything planted under its name, is
    unlinked first, which removes a link and never its target); the rename replaces the
    name `path` itself, never what a link there points to.
    """
    partial = path.with_name(path.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(partial) and not os.path.islink(partial):
            raise _refused(partial, "a folder")
        os.unlink(partial)
    mode = "wb" if isinstance(content, bytes) else "w"
    with own_file(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode) as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    if os.path.isdir(path) and not os.path.islink(path):
        os.unlink(partial)
        raise _refused(path, "a folder")
    os.replace(partial, path)


def own_folder(path: Path) -> None:
    """Make sure `path` is a folder of the product's own, creating it if it is missing.

    Refused with one line (NeedsAttention) when the name is a symbolic link or anything but
    a folder: what is written into it would land wherever the link points.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    status = os.lstat(path)
    if stat.S_ISLNK(status.st_mode):
        raise _link_refused(path)
    if not stat.S_ISDIR(status.st_mode):
        raise _refused(path, "a file, not a folder")
