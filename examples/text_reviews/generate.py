"""Seeded customer reviews for the text example domain: one CSV per day of reviews.

Each row is a review (`review`, free text; `channel`, where it was written) and `sentiment`
says whether it was `positive` or `negative`. Before the change, customers praise and
complain in plain words about phones. After it (a new product line, and a younger crowd
writing), most reviews are about earbuds and say "fire" or "mid": words history never saw,
so a model trained on the old reviews guesses, and one retrained on the new ones does not.

    python examples/text_reviews/generate.py --used-dir used_gts --new-dir new_gts
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

OLD = {
    "positive": ["great", "love", "excellent", "perfect", "happy", "recommend", "reliable"],
    "negative": ["terrible", "broken", "hate", "awful", "disappointed", "refund", "useless"],
    "things": ["phone", "battery", "screen", "charger", "camera", "case", "update"],
}
NEW = {
    "positive": ["fire", "goated", "slaps", "bussin", "clean", "elite", "vibes"],
    "negative": ["mid", "trash", "janky", "laggy", "meh", "scuffed", "cringe"],
    "things": ["earbuds", "bluetooth", "pairing", "bass", "noise", "cancelling", "app"],
}
FILLER = ["the", "this", "it", "is", "was", "really", "so", "and", "my", "after", "week",
          "honestly", "pretty", "just", "with", "very", "quite", "for", "of", "day"]
CHANNELS = ["app", "web", "email"]


def reviews(rows: int, changed: bool, generator: np.random.Generator,
            label_noise: float = 0.03) -> pd.DataFrame:
    """`rows` reviews; `changed` picks the new vocabulary for most of them."""
    texts, labels = [], []
    for _ in range(rows):
        label = "positive" if generator.random() < 0.6 else "negative"
        words = NEW if changed and generator.random() < 0.85 else OLD
        chosen = [*generator.choice(words[label], size=generator.integers(1, 3)),
                  *generator.choice(words["things"], size=generator.integers(1, 3)),
                  *generator.choice(FILLER, size=generator.integers(3, 10))]
        generator.shuffle(chosen)
        texts.append(" ".join(chosen))
        labels.append(label)
    labels = np.array(labels)
    flip = generator.random(rows) < label_noise
    labels[flip] = np.where(labels[flip] == "positive", "negative", "positive")
    return pd.DataFrame({"review": texts, "channel": generator.choice(CHANNELS, rows),
                         "sentiment": labels})


def days(count: int, changed: bool, seed: int, rows: int = 200) -> list[pd.DataFrame]:
    generator = np.random.default_rng(seed)
    return [reviews(rows, changed, generator) for _ in range(count)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--used-dir", type=Path, required=True)
    parser.add_argument("--new-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for folder, prefix, frames in ((args.used_dir, "reviews_old", days(12, False, args.seed)),
                                   (args.new_dir, "reviews_new",
                                    days(15, True, args.seed + 1))):
        folder.mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(frames):
            frame.to_csv(folder / f"{prefix}_{index:03d}.csv", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
