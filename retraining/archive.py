"""Archiving: moving consumed files from the new folder into the history folder.

A file is moved, never copied and deleted, and never lands on top of an existing name.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from retraining.datafiles import LoadedFile, file_identity
from retraining.errors import NeedsAttention

log = logging.getLogger(__name__)


def free_name(folder: Path, name: str, tag: str) -> Path:
    """`folder/name` if free, else the name with `tag` (and a counter) before its suffix."""
    target = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    attempt = 0
    while os.path.lexists(target):  # a dangling link is a taken name too
        attempt += 1
        target = folder / f"{stem}.{tag if attempt == 1 else f'{tag}-{attempt}'}{suffix}"
    return target


def move_to_free_name(source: Path, folder: Path, tag: str) -> Path:
    """Move `source` into `folder` under a name no other file has; return the new path."""
    while True:
        target = free_name(folder, source.name, tag)
        try:
            move_without_overwrite(source, target)
            return target
        except FileExistsError:
            continue  # another writer took the name between the check and the link


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
        return file_identity(os.stat(path))
    except FileNotFoundError:
        return None


def archive_files(files: Sequence[LoadedFile], used_dir: Path) -> list[str]:
    """Move each consumed file into `used_dir`; return the names they now have there."""
    archived = []
    for loaded in files:
        if _identity(loaded.path) != loaded.identity:
            log.warning("%s changed after it was read; left in place for the next cycle",
                        loaded.name)
            continue
        target = move_to_free_name(loaded.path, used_dir, loaded.sha256[:12])
        if target.name != loaded.name:
            log.warning("%s already exists in %s; archived as %s", loaded.name, used_dir,
                        target.name)
        archived.append(target.name)
    return archived


def quarantine_file(path: Path, reason: str, quarantine_dir: Path) -> str:
    """Move an unusable file aside, with `<name>.reason.txt` beside it; return its new name.

    Nothing is deleted: the file keeps its bytes, and the reason says what to fix.
    """
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    tag = time.strftime("%Y%m%dT%H%M%S")
    target = move_to_free_name(path, quarantine_dir, tag)
    note = target.with_name(target.name + ".reason.txt")
    partial = note.with_name(note.name + ".part")
    partial.write_text(f"{path.name}: {reason}\n")
    os.replace(partial, note)
    log.warning("quarantined %s as %s: %s", path.name, target.name, reason)
    return target.name


def finish_move(path: Path, used_dir: Path) -> bool:
    """If `path` is also linked into `used_dir` (an interrupted move), drop the new name."""
    for candidate in used_dir.iterdir():
        if candidate.is_file() and os.path.samefile(candidate, path):
            os.unlink(path)
            log.warning("finished the interrupted archiving of %s (already in %s as %s)",
                        path.name, used_dir, candidate.name)
            return True
    return False
