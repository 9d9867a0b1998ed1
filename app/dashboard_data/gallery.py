"""Gallery confusion: the confusion matrix `model_pkg.metrics.save_confusion` writes, the pairs of dogs it
mistakes for one another, and the shipped embedder's stored score threshold (for scale beside their similarities).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .files import SHIPPED_EMBEDDER, read_json

DECISIONS = ("unknown", "reshoot")  # the columns of rejected queries (model_pkg.evaluate)


def load_confusion(path: Path) -> pd.DataFrame:
    """A `save_confusion` CSV: rows = true identity, columns = predicted."""
    frame = pd.read_csv(path, index_col=0)
    frame.index = frame.index.astype(str)
    frame.columns = frame.columns.astype(str)
    return frame


def confusion_pairs(matrix: pd.DataFrame) -> pd.DataFrame:
    """Pairs of dogs mistaken for one another, most mistakes first: dog a, dog b, a->b, b->a, mistakes.

    Only dog-to-dog mistakes count (not the "unknown" / "reshoot" decisions)."""
    dogs = [d for d in matrix.index if d in matrix.columns and d not in DECISIONS]
    m = matrix.loc[dogs, dogs].to_numpy()
    rows = []
    for i, j in zip(*np.nonzero(np.triu(m + m.T, k=1))):
        rows.append({"dog a": dogs[i], "dog b": dogs[j], "a taken for b": int(m[i, j]), "b taken for a": int(m[j, i])})
    frame = pd.DataFrame(rows, columns=["dog a", "dog b", "a taken for b", "b taken for a"])
    frame["mistakes"] = frame["a taken for b"] + frame["b taken for a"]
    return frame.sort_values(["mistakes", "dog a", "dog b"], ascending=[False, True, True], ignore_index=True)


def gallery_score_threshold(root: Path) -> float | None:
    """The shipped embedder's stored gallery score threshold (a top match below it is not accepted), or None."""
    config = read_json(Path(root, SHIPPED_EMBEDDER, "config.json"))
    value = config.get("score_threshold") if isinstance(config, dict) else None
    return float(value) if value is not None else None
