"""Archiving: moving consumed files from the new folder into the history folder.

A file is moved, never copied and deleted, and never lands on top of an existing name.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Sequence

from retraining.datafiles import LoadedFile
from retraining.errors import NeedsAttention

log = logging.getLogger(__name__)


def free_name(used_dir: Path, loaded: LoadedFile) -> Path:
    """The name the file gets in history: its own, or one tagged with its hash if taken."""
    target = used_dir / loaded.name
    stem, suffix = Path(loaded.name).stem, Path(loaded.name).suffix
    attempt = 0
    while os.path.lexists(target):  # a dangling link is a taken name too
        attempt += 1
        tag = loaded.sha256[:12] if attempt == 1 else f"{loaded.sha256[:12]}-{attempt}"
        target = used_dir / f"{stem}.{tag}{suffix}"
    return target


def move_without_overwrite(source: Path, target: Path) -> None:
    """Move `source` to `target`, refusing atomically if `target` appears meanwhile.

    A hard link then an unlink: the link fails if the name exists (rename would silently
    replace it), and at no moment is the file absent from both folders.
    """
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno == errno.EEXIST:
            raise FileExistsError(target) from error
        if error.errno in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise NeedsAttention(
                f"cannot move {source.name} into {target.parent} without risking an overwrite "
                f"({os.strerror(error.errno)})",
                fix="keep new_gts/ and used_gts/ on one filesystem that supports hard links"
            ) from error
        raise
    os.unlink(source)


def _identity(path: Path) -> tuple | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def archive_files(files: Sequence[LoadedFile], used_dir: Path) -> list[str]:
    """Move each consumed file into `used_dir`; return the names they now have there."""
    archived = []
    for loaded in files:
        if _identity(loaded.path) != loaded.identity:
            log.warning("%s changed after it was read; left in place for the next cycle",
                        loaded.name)
            continue
        while True:
            target = free_name(used_dir, loaded)
            try:
                move_without_overwrite(loaded.path, target)
                break
            except FileExistsError:
                continue  # another writer took the name between the check and the link
        if target.name != loaded.name:
            log.warning("%s already exists in %s; archived as %s", loaded.name, used_dir,
                        target.name)
        archived.append(target.name)
    return archived
