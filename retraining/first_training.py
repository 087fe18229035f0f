"""Training the first model from a folder of CSV files: the domain file's command line.

Kept here rather than in the domain file, so a user who edits or copies that file never
carries the product's own code. Unusable files are moved to quarantine/ with their reasons
(retraining/screening.py).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from retraining.cli import ArgumentParser, run_entry_point
from retraining.config import add_options


def main(argv=None) -> int:
    parser = ArgumentParser(prog="train_classification_model.py",
                            description="Train the first model from a folder of CSVs.")
    parser.add_argument("data_dir", type=Path, help="folder of labelled CSV files")
    parser.add_argument("--output", type=Path, required=True,
                        help="where to write the pickle (required)")
    add_options(parser, ["label_column", "seed", "domain_file", "quarantine_dir",
                         "strict_history", "threads", "json"])
    return run_entry_point(parser, argv, train)


def train(settings, args) -> dict:
    from retraining.datafiles import concat_files, list_data_files
    from retraining.domain import load_domain
    from retraining.errors import UsageError
    from retraining.screening import read_history
    from retraining.statefiles import write_atomically

    domain = load_domain(settings.domain_file)
    data_dir = args.data_dir.resolve()
    if not list_data_files(data_dir):
        raise UsageError(f"no CSV files in {args.data_dir}",
                         fix="point DATA_DIR at a folder of labelled CSV files")
    history = read_history(settings, domain, data_dir)
    features, labels = concat_files(history.files, history.columns)
    model = domain.train(features, labels, random_state=settings.seed,
                         threads=settings.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # Written then renamed, never through a link planted at the partial's name.
    write_atomically(args.output, pickle.dumps(model))
    return {"model_file": str(args.output), "files": len(history.files),
            "rows": len(labels), "quarantined_files": history.quarantined}
