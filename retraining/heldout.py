"""Which new files are held out for the comparison, and whether they are enough to judge.

The held-out files are all the evidence the gate has. A fixed share of a batch cannot always
be judged: 3 of 15 files of 40 rows are 120 rows, under the row floor, and 3 files are fewer
than a per-file metric's significance test can ever separate. So the share of
`--holdout-fraction` is where the count starts, and it grows, file by file in a seeded
order, until the gate's needs are met (the files, the rows, and the units the bootstrap
resamples), up to half the batch: the other half is what the challenger learns the batch's
concept from. When earlier versions are judged beside the challenger, each at a stricter
level, the files grow on to what that level needs, if the batch allows it. A batch that even
then cannot be judged is not consumed (`Heldout.lacks`): its files wait in new_gts/ for the
next delivery, and the next cycle judges them all together.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from retraining.config import Settings
from retraining.datafiles import LoadedFile, batch_key
from retraining.errors import DataError

log = logging.getLogger("retraining.cycle")

# At most this share of a batch is held out when the gate needs more than
# --holdout-fraction, so that the challenger still learns from most of what is new.
MAX_GROWN_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class Heldout:
    names: set[str]
    # Why these files cannot be judged even at the largest share allowed, or None.
    lacks: str | None = None


def choose_heldout(files: Sequence[LoadedFile], settings: Settings, *,
                   seen_sha256: set[str] = frozenset(), units_are_files: bool = True,
                   fraction: float | None = None,
                   earlier_level: float | None = None) -> Heldout:
    """The held-out files: whole files, at least one, as many as the gate needs if the batch
    allows.

    Only files whose content neither model can have been trained on are eligible: not in
    `seen_sha256` (the history's content hashes) and not duplicated within the batch. Seeded
    by the setting and the batch itself, so a rerun on the same batch holds out the same
    files. `units_are_files` says whether the bootstrap can resample only whole files (a
    per-file metric, or one that is not a mean over rows) or row slices of them.
    `earlier_level`: the stricter level earlier versions are judged at beside the
    challenger; the files grow on to what it needs when the batch allows that, and stay
    at the challenger's need when it does not.
    """
    import numpy as np

    fraction = settings.holdout_fraction if fraction is None else fraction
    counts: dict[str, int] = {}
    for loaded in files:
        counts[loaded.content_sha256] = counts.get(loaded.content_sha256, 0) + 1
    eligible = sorted((loaded for loaded in files
                       if loaded.content_sha256 not in seen_sha256
                       and counts[loaded.content_sha256] == 1), key=lambda f: f.name)
    if not eligible:
        raise DataError("every new file repeats the content of another file or of history, "
                        "so no file is left that neither model has seen",
                        fix="remove the re-delivered files from new_gts/")
    generator = np.random.default_rng([settings.seed, int(batch_key(files)[:15], 16)])
    order = [eligible[index] for index in generator.permutation(len(eligible))]
    start = min(len(order), max(1, round(len(files) * fraction)))
    largest = max(start, min(len(order), int(len(files) * MAX_GROWN_SHARE)))

    def grown(count: int, needs: Settings) -> int:
        while count < largest and lacking(order[:count], needs, units_are_files):
            count += 1
        return count

    count = grown(start, settings)
    if earlier_level is not None and not lacking(order[:count], settings, units_are_files):
        stricter = dataclasses.replace(settings, confidence_level=earlier_level)
        more = grown(count, stricter)
        still_lacks = lacking(order[:more], stricter, units_are_files)
        if still_lacks:
            log.info("earlier versions cannot be judged on this batch: with %d of its %d "
                     "files held out, the most a batch may, %s", more, len(files), still_lacks)
        else:
            count = more
    chosen = order[:count]
    lacks = lacking(chosen, settings, units_are_files)
    if lacks:
        lacks = (f"with {count} of its {len(files)} files held out"
                 + (", the most a batch may," if count == largest else "") + f" {lacks}")
    return Heldout({loaded.name for loaded in chosen}, lacks)


def lacking(heldout: Sequence[LoadedFile], settings: Settings,
            units_are_files: bool) -> str | None:
    """What the gate needs that these held-out files do not have, or None."""
    from retraining.gate import slice_bounds, units_needed

    files, rows = len(heldout), sum(loaded.rows for loaded in heldout)
    missing = []
    if files < settings.min_heldout_files:
        missing.append(f"{files} files where the gate needs {settings.min_heldout_files}")
    if rows < settings.min_heldout_rows:
        missing.append(f"{rows} rows where the gate needs {settings.min_heldout_rows}")
    if settings.require_significance:
        needed = units_needed(settings.confidence_level)
        units = files if units_are_files else sum(len(slice_bounds(loaded.rows, files))
                                                  for loaded in heldout)
        if units < needed:
            what = "files" if units_are_files else "row slices"
            missing.append(f"{units} {what} to resample where a difference at "
                           f"{settings.confidence_level:.0%} needs {needed}")
    return "; ".join(missing) or None
