"""Helpers the tests share (conftest.py holds only fixtures and hooks): labeled texts and small tables.

Test modules import them by name (`from helpers import make_texts`): tests/ is on sys.path (pyproject.toml,
[tool.pytest.ini_options] pythonpath), so no module depends on which conftest.py pytest imported last.
"""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq

POSITIVE = ["great", "excellent", "wonderful", "love", "superb", "happy", "fantastic", "brilliant"]
NEGATIVE = ["awful", "terrible", "horrible", "hate", "dreadful", "sad", "boring", "broken"]
FILLER = ["the", "movie", "food", "service", "was", "really", "quite", "and", "a", "day", "it", "our", "trip"]


def make_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sentences whose label is carried by sentiment words, with varied lengths (3..60 words)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.choices(FILLER, k=rng.choice([2, 4, 8, 20, 50]))
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def write_parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path
