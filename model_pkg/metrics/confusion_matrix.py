"""Classification-style confusion matrices: computed with a fixed label order, saved as CSV and PNG.

Apart from the other metrics because it writes files (atomically) and draws with matplotlib, imported only
when a PNG is asked for.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..fileio import atomic_write
from .inputs import sklearn_metrics

__all__ = ["confusion", "save_confusion"]

PathLike = str | os.PathLike


def confusion(labels_true: Sequence[Any], labels_pred: Sequence[Any], labels: list[Any]) -> np.ndarray:
    """Confusion matrix (sklearn ``confusion_matrix``) with a fixed label order.

    ``matrix[i, j]`` = number of samples whose true label is ``labels[i]`` and
    predicted label is ``labels[j]`` (rows = truth, columns = prediction).
    Samples whose true or predicted label is not in ``labels`` are not counted.
    """
    if len(labels_true) != len(labels_pred):
        raise ValueError(f"labels_true and labels_pred have different lengths: {len(labels_true)} vs {len(labels_pred)}")
    if len(labels) == 0:
        raise ValueError("labels must list at least one class")
    if len(set(labels)) != len(labels):
        raise ValueError("labels contains duplicates")
    return sklearn_metrics().confusion_matrix(list(labels_true), list(labels_pred), labels=list(labels))


def save_confusion(
    matrix: np.ndarray,
    labels: Sequence[Any],
    csv_path: PathLike,
    png_path: PathLike | None = None,
) -> None:
    """Write a confusion matrix to CSV (and optionally a PNG heat map), atomically.

    CSV layout: first row ``true\\pred, label_1, ..., label_n``; then one row per
    true label: ``label_i, count_i1, ..., count_in``.  The PNG is rendered with
    matplotlib's Agg canvas (no display needed, global pyplot state untouched).
    Each file is written to a temporary file in the same directory and moved in
    place with ``os.replace``.
    """
    m = np.asarray(matrix)
    labels = list(labels)
    if m.ndim != 2 or m.shape != (len(labels), len(labels)):
        raise ValueError(f"matrix must have shape ({len(labels)}, {len(labels)}) to match labels, got {m.shape}")
    is_int = np.issubdtype(m.dtype, np.integer)

    def fmt(v: Any) -> str:
        return str(int(v)) if is_int else repr(float(v))

    def write_csv(fh) -> None:
        w = csv.writer(fh)
        w.writerow(["true\\pred", *[str(lab) for lab in labels]])
        for lab, row in zip(labels, m):
            w.writerow([str(lab), *[fmt(v) for v in row]])

    atomic_write(csv_path, write_csv)

    if png_path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n = len(labels)
        # a gallery of a few hundred dogs must still give a readable, bounded image: past 60 labels the
        # cells shrink, tick labels go (the CSV has them) and the figure stops growing at 20 inches
        size = min(20.0, max(4.0, 0.5 * n + 2.0))
        fig = Figure(figsize=(size, size))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        # one big cell (e.g. every unknown query on the unknown row) would wash a large matrix out to
        # white: past 30 labels the colours show log(1 + count) so the diagonal stays visible
        shown = m.astype(np.float64) if n <= 30 else np.log1p(np.maximum(m.astype(np.float64), 0.0))
        im = ax.imshow(shown, cmap="Blues", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="count" if n <= 30 else "log(1 + count)")
        if n <= 60:
            ax.set_xticks(range(n))
            ax.set_yticks(range(n))
            ax.set_xticklabels([str(lab) for lab in labels], rotation=45, ha="right")
            ax.set_yticklabels([str(lab) for lab in labels])
        else:
            ax.set_title(f"{n} labels (names in the CSV, same order)")
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        if n <= 30:
            vmax = float(m.max()) if m.size else 0.0
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        fmt(m[i, j]) if is_int else f"{float(m[i, j]):.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if vmax > 0 and float(m[i, j]) > vmax / 2 else "black",
                    )
        fig.tight_layout()
        atomic_write(png_path, lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
