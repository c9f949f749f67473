"""Labeled tables for training and evaluation: read, check columns, encode labels, split."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InputError
from .source import expand_inputs, read_whole_table

log = logging.getLogger(__name__)


@dataclass
class LabeledData:
    """Texts with labels encoded against a fixed label list (multi-class: ints; multi-label: 0/1 rows)."""

    texts: list[str]
    targets: np.ndarray  # (n,) int64 for multi-class, (n, k) float32 for multi-label
    labels: list[str]
    multi_label: bool
    source: str
    skipped: int = 0  # rows left out for null/blank text (skip_blank_text=True)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index) -> "LabeledData":
        index = np.asarray(index, dtype=np.int64)
        return LabeledData([self.texts[i] for i in index], self.targets[index], self.labels, self.multi_label,
                           self.source, self.skipped)


def file_hashes(path: str | Path) -> dict[str, str]:
    """sha256 of every file behind an input path, for the manifest."""
    out = {}
    for file in expand_inputs(path):
        digest = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        out[str(file)] = digest.hexdigest()
    return out


def _check_column(table: pa.Table, column: str, source: str, role: str) -> None:
    if column not in table.column_names:
        hint = next((c for c in table.column_names if c.lower() == column.lower()), None)
        fix = f"Use --{role}-column {hint}." if hint else f"Pass --{role}-column with one of them."
        raise InputError(f"Column '{column}' not found in {source}; columns are {table.column_names}. {fix}")


def _first_null(array: pa.ChunkedArray) -> int | None:
    nulls = np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))
    return int(nulls[0]) if len(nulls) else None


def _split_multi(values: list, delimiter: str) -> list[list[str]]:
    out = []
    for v in values:
        items = v if isinstance(v, list) else str(v).split(delimiter)
        out.append(sorted({str(x).strip() for x in items if str(x).strip()}))
    return out


def _label_order(names: set[str]) -> list[str]:
    """Integer-like labels sort numerically ('2' < '10'), others alphabetically."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def read_labeled(
    path: str | Path,
    text_column: str,
    label_column: str,
    *,
    multi_label: bool = False,
    label_delimiter: str = ",",
    labels: list[str] | None = None,
    skip_blank_text: bool = False,
) -> LabeledData:
    """Read a labeled CSV/Parquet file or directory. `labels` fixes the label set (unknown labels are an error).

    skip_blank_text: leave out rows whose text is null or blank (evaluation) instead of refusing them (training);
    error messages still give the rows' original numbers.
    """
    source = str(path)
    table = read_whole_table(path, columns=None)
    if table.num_rows == 0:
        raise InputError(f"{source} has no data rows; a labeled table with at least two classes is needed.")
    _check_column(table, text_column, source, "text")
    _check_column(table, label_column, source, "label")

    if not pa.types.is_string(table[text_column].type) and not pa.types.is_large_string(table[text_column].type):
        raise InputError(f"Column '{text_column}' in {source} has type {table[text_column].type}; text must be strings.")
    original_rows = np.arange(table.num_rows)
    skipped = 0
    if skip_blank_text:
        keep = np.array([t is not None and bool(t.strip()) for t in table[text_column].to_pylist()], dtype=bool)
        if not keep.any():
            raise InputError(f"{source}: every row has a null or blank '{text_column}': nothing to evaluate. Check --text-column.")
        skipped = int((~keep).sum())
        table, original_rows = table.filter(pa.array(keep)), original_rows[keep]
    text_col, label_col = table[text_column], table[label_column]
    for column, array in ((text_column, text_col), (label_column, label_col)):
        row = _first_null(array)
        if row is not None:
            raise InputError(
                f"{source}, row {original_rows[row] + 1} (data row, header excluded): column '{column}' is null. "
                "Fill or drop rows without a value."
            )

    texts = text_col.to_pylist()
    raw = label_col.to_pylist() if pa.types.is_list(label_col.type) else pc.cast(label_col, pa.string()).to_pylist()

    if multi_label:
        rows = _split_multi(raw, label_delimiter)
        found = {x for r in rows for x in r}
    else:
        if pa.types.is_list(label_col.type):
            raise InputError(f"Column '{label_column}' in {source} holds lists; pass --multi-label for multi-label data.")
        rows = [str(x).strip() for x in raw]
        found = set(rows)

    if labels is not None:
        unknown = sorted(found - set(labels))
        if unknown:
            first = next(i for i, r in enumerate(rows) if (set(r) if multi_label else {r}) & set(unknown))
            raise InputError(
                f"{source}, row {original_rows[first] + 1}, column '{label_column}': label(s) {unknown} are not in the fixed label "
                f"set {labels}. Add them to --labels or fix the data."
            )
        names = list(labels)
    else:
        names = _label_order(found)
    if len(names) < 2:
        raise InputError(
            f"Column '{label_column}' in {source} has a single class {names}; a classifier needs at least two."
        )

    index = {name: i for i, name in enumerate(names)}
    if multi_label:
        targets = np.zeros((len(rows), len(names)), dtype=np.float32)
        for i, r in enumerate(rows):
            targets[i, [index[x] for x in r]] = 1.0
    else:
        targets = np.array([index[r] for r in rows], dtype=np.int64)
    return LabeledData(texts, targets, names, multi_label, source, skipped)


def split(data: LabeledData, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of a train/validation/test split, stratified on the class when every class has enough rows."""
    from sklearn.model_selection import train_test_split

    val_frac, test_frac = fractions
    index = np.arange(len(data))
    strata = None if data.multi_label else data.targets
    if strata is not None and np.bincount(strata).min() < 3:
        log.warning("Some class has fewer than 3 rows; the split is random, not stratified.")
        strata = None
    if len(data) < 6:
        raise InputError(f"{data.source} has {len(data)} rows; at least 6 are needed to split train/validation/test.")
    def cut(idx, size, strata):
        try:
            return train_test_split(idx, test_size=size, random_state=seed, stratify=strata)
        except ValueError:  # a split too small to hold every class: fall back to a random cut
            return train_test_split(idx, test_size=size, random_state=seed)

    rest, test = cut(index, test_frac, strata)
    train, val = cut(rest, val_frac / (1 - test_frac), None if strata is None else strata[rest])
    return train, val, test


def read_eval_data(data, model, text_column: str, label_column: str, label_delimiter: str = ","):
    """(LabeledData without the null/empty-text rows, number of rows left out); labels fixed to the model's."""
    labeled = read_labeled(data, text_column, label_column, multi_label=model.multi_label,
                           label_delimiter=label_delimiter, labels=model.labels, skip_blank_text=True)
    return labeled, labeled.skipped
