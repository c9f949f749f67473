"""The calibration a model directory records, as the Scorer reads it: a module of its own so that `score`
(which applies it) and `calibrate` (which fits it, running a Scorer) import it without importing each other."""

from __future__ import annotations

import numpy as np

METHOD = "temperature"


def recorded_temperature(manifest: dict, labels: list[str], multi_label: bool) -> np.ndarray | None:
    """The temperature(s) recorded in a manifest as a float32 array for the logits' width, or None."""
    record = manifest.get("calibration")
    if not record or record.get("method") != METHOD:
        return None
    if multi_label:
        per_label = record.get("temperatures") or {}
        if set(per_label) != set(labels):
            return None
        return np.array([per_label[name] for name in labels], dtype=np.float32)
    return np.array([record["temperature"]], dtype=np.float32)
