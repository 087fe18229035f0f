"""Archiving: moving consumed files from the new folder into the history folder.

A file is moved, never copied and deleted, and never lands on top of an existing name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from retraining.datafiles import LoadedFile, batch_key, file_identity
from retraining.errors import NeedsAttention, UsageError
from retraining.ledger import record_batch, stat_fields
from retraining.statefiles import own_file, write_atomically  # noqa: F401 (used by callers)

log = logging.getLogger(__name__)

ARCHIVE_PLAN = ".archive_in_progress.json"


# The longest file name most filesystems take, in bytes (NAME_MAX of ext4, XFS, tmpfs...).
NAME_MAX = 255
REASON_SUFFIX = ".reason.txt"


def free_name(folder: Path, name: str, tag: str, reserve: int = 0) -> Path:
    """`folder/name` if free, else the name with `tag` (and a counter) before its suffix.

    Every name returned fits NAME_MAX bytes less `reserve` (room for a companion file's
    suffix): a long name is shortened, whole characters at a time, before the tag, so a file
    arriving with a 250-byte name is still archived or quarantined.
    """
    stem, suffix = Path(name).stem, Path(name).suffix
    limit = NAME_MAX - reserve
    attempt = 0
    target = folder / name
    if len(os.fsencode(name)) > limit:
        attempt, target = 1, folder / _fitted(stem, f".{tag}{suffix}", limit)
    while os.path.lexists(target):  # a dangling link is a taken name too
        attempt += 1
        label = tag if attempt == 1 else f"{tag}-{attempt}"
        target = folder / _fitted(stem, f".{label}{suffix}", limit)
    return target


def _fitted(stem: str, ending: str, limit: int) -> str:
    """`stem + ending`, the stem cut to whole characters so that it fits `limit` bytes."""
    room = limit - len(os.fsencode(ending))
    encoded = os.fsencode(stem)[:max(room, 0)]
    # Cutting inside a multi-byte character would leave a name that is not UTF-8.
    while encoded and not _decodes(encoded):
        encoded = encoded[:-1]
    return os.fsdecode(encoded) + ending


def _decodes(encoded: bytes) -> bool:
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def move_to_free_name(source: Path, folder: Path, tag: str,
                      before_move: Callable[[Path], None] | None = None,
                      reserve: int = 0, name: str | None = None) -> Path:
    """Move `source` into `folder` under a name no other file has; return the new path.

    The name is `name` (default: the source's), or that name tagged (free_name).
    `before_move(target)` runs once the name is chosen, before the file takes it.
    """
    while True:
        target = free_name(folder, name or source.name, tag, reserve)
        if before_move is not None:
            before_move(target)
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
        os.link(source, target, follow_symlinks=False)  # a link moves as a link
    except OSError as error:
        if error.errno == errno.EEXIST:
            raise FileExistsError(target) from error
        if error.errno in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise NeedsAttention(
                f"cannot move {source.name} into {target.parent} without risking an overwrite "
                f"({os.strerror(error.errno)})",
                fix="keep new_gts/, used_gts/ and the quarantine folder on one filesystem "
                    "that supports hard links"
            ) from error
        raise
    os.unlink(source)


def _identity(path: Path) -> tuple | None:
    try:
        return file_identity(os.stat(path))
    except FileNotFoundError:
        return None


def archive_files(files: Sequence[LoadedFile], used_dir: Path,
                  columnar_history: bool = True) -> list[str]:
    """Move each consumed file into `used_dir`, record it in the ledger, write its columnar
    copy (retraining/columnar.py) unless `columnar_history` is False; return its new names.

    The plan is written first (`.archive_in_progress.json` in `used_dir`), so a cycle killed
    halfway through leaves work that the next run finishes rather than a batch half consumed.
    """
    unchanged = []
    for loaded in files:
        if _identity(loaded.path) != loaded.identity:
            log.warning("%s changed after it was read; left in place for the next cycle",
                        loaded.name)
            continue
        unchanged.append(loaded)
    if not unchanged:
        return []
    plan = {"archive_id": f"{time.time_ns()}-{batch_key(unchanged)[:16]}",
            "columnar_history": columnar_history,
            "files": [{"path": str(loaded.path), "sha256": loaded.sha256,
                       "content_sha256": loaded.content_sha256,
                       "identity": list(loaded.identity)} for loaded in unchanged]}
    write_atomically(used_dir / ARCHIVE_PLAN, json.dumps(plan, indent=1))
    return finish_archive(used_dir)


def archive_interrupted(used_dir: Path) -> bool:
    """True when a cycle was killed while archiving: its plan is still in `used_dir`."""
    return os.path.lexists(used_dir / ARCHIVE_PLAN)


def finish_archive(used_dir: Path) -> list[str]:
    """Carry out the archive plan in `used_dir` from wherever it stopped; return the names.

    Each step can be repeated: a file already moved is found in `used_dir` by its inode, a
    file left under both names loses its old one, and the ledger gets each file once.
    """
    plan = _read_plan(used_dir)
    in_history = {(status.st_dev, status.st_ino): path for path, status in
                  ((path, os.lstat(path)) for path in used_dir.iterdir())}
    arrivals = []
    for item in plan["files"]:
        source, identity = Path(item["path"]), tuple(item["identity"])
        status = _lstat(source)
        if status is not None and file_identity(status) == identity:
            target = in_history.get((status.st_dev, status.st_ino))
            if target is not None:
                os.unlink(source)  # the kill came between the link and the unlink
            else:
                target = move_to_free_name(source, used_dir, item["sha256"][:12])
        else:
            target = next((path for (_, inode), path in in_history.items()
                           if inode == identity[0]
                           and file_identity(os.lstat(path)) == identity), None)
            if target is None:
                log.warning("%s is no longer as the cycle read it, in %s or in %s; it is "
                            "left for the next cycle", source.name, source.parent, used_dir)
                continue
        if target.name != source.name:
            log.warning("%s already exists in %s; archived as %s", source.name, used_dir,
                        target.name)
        arrivals.append({"name": target.name, "arrived_as": source.name,
                         "sha256": item["sha256"],
                         **({"content_sha256": item["content_sha256"]}
                            if item.get("content_sha256") else {}),
                         **stat_fields(os.stat(target))})
    record_batch(used_dir, plan["archive_id"], arrivals)
    os.unlink(used_dir / ARCHIVE_PLAN)
    if plan.get("columnar_history", True):
        from retraining.columnar import copy_archived

        copy_archived(used_dir, arrivals)
    return [arrival["name"] for arrival in arrivals]


def _read_plan(used_dir: Path) -> dict:
    path = used_dir / ARCHIVE_PLAN
    unreadable = NeedsAttention(
        f"the archive plan {path} of an interrupted cycle cannot be read",
        fix=f"every file it named is whole, in {used_dir} or still waiting; move the plan "
            f"aside (mv {path} {path}.bad) and run again")
    try:
        with own_file(path, os.O_RDONLY, "rb") as handle:
            plan = json.loads(handle.read().decode("utf-8"))
        valid = isinstance(plan.get("archive_id"), str) and all(
            {"path", "sha256", "identity"} <= item.keys() for item in plan["files"])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError,
            TypeError) as error:
        raise unreadable from error
    if not valid:
        raise unreadable
    return plan


def check_one_filesystem(new_dir: Path, used_dir: Path, quarantine_dir: Path) -> None:
    """Files move by hard link, which cannot cross filesystems: refuse before any move."""
    def device(folder: Path) -> int:
        while not folder.exists():  # the quarantine folder is made on first use
            folder = folder.parent
        return os.stat(folder).st_dev

    for folder in (used_dir, quarantine_dir):
        if device(folder) != device(new_dir):
            raise UsageError(f"{folder} is on another filesystem than {new_dir}, so files "
                             "cannot be moved there without a copy",
                             fix=f"put {folder.name} on the filesystem of {new_dir}")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def quarantine_file(path: Path, reason: str, quarantine_dir: Path) -> str:
    """Move an unusable file aside, with `<name>.reason.txt` beside it; return its new name.

    Nothing is deleted: the file keeps its bytes, and the reason says what to fix. The reason
    is written first, so a quarantined file is never found without one.
    """
    from retraining.datafiles import shown_name

    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = move_to_free_name(
        path, quarantine_dir, time.strftime("%Y%m%dT%H%M%S"),
        before_move=lambda target: write_atomically(
            target.with_name(target.name + REASON_SUFFIX), f"{shown_name(path)}: {reason}\n"),
        # The reason is written as .part, then renamed; a name that is not UTF-8 is set aside
        # under the text it is shown as, so the summary names the file exactly.
        reserve=len(REASON_SUFFIX + ".part"), name=shown_name(path))
    log.warning("quarantined %s as %s: %s", shown_name(path), target.name, reason)
    return target.name


def undo_quarantine(path: Path, quarantine_dir: Path) -> bool:
    """If `path` is also linked into quarantine (an interrupted move), drop that name.

    The kill may have come before the reason was written: the file is judged again instead.
    """
    target = _other_name(path, quarantine_dir) if quarantine_dir.is_dir() else None
    if target is not None:
        os.unlink(target)
        with contextlib.suppress(FileNotFoundError):  # the note may not be written yet
            os.unlink(target.with_name(target.name + REASON_SUFFIX))
        log.warning("took back the interrupted quarantining of %s; it is checked again",
                    path.name)
    return target is not None


def _other_name(path: Path, folder: Path) -> Path | None:
    # lstat, not samefile: a symbolic link to the file is not a second name of it, and
    # unlinking the file's only name because of one would lose it.
    status = os.lstat(path)
    for candidate in folder.iterdir():
        other = os.lstat(candidate)
        if (other.st_ino, other.st_dev) == (status.st_ino, status.st_dev) \
                and candidate != path:
            return candidate
    return None
