"""How an exported ONNX graph is compared with the PyTorch module it came from.

`python -m model_pkg.export onnx` refuses a graph whose outputs drift from PyTorch's, and records the agreement
of the int8 graph; these are the numbers it uses. Kept apart from the export itself because the same checks
apply to any graph file (fp32 or quantised), whoever wrote it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .onnx_runtime import create_session

__all__ = ["check_image_graph", "pooled_cosines", "relative_error"]


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """Largest |actual - reference| over the largest |reference|: the export's tolerance is on this."""
    return float(np.abs(reference - actual).max() / max(float(np.abs(reference).max()), 1e-12))


def pooled_cosines(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Cosine per row of the mean over tokens (the pooled feature): how the float error shows downstream."""
    a = reference.reshape(len(reference), -1, reference.shape[-1]).mean(1)
    b = actual.reshape(len(actual), -1, actual.shape[-1]).mean(1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def check_image_graph(path: Path, graph: nn.Module, pixels: torch.Tensor) -> dict[str, float]:
    """Run `path` with onnxruntime on `pixels` at batch 1 and the whole batch; -> agreement with `graph` on PyTorch
    (`model_pkg.export.ImageTowerGraph`: what the image graph computes)."""
    session = create_session(path)
    with torch.no_grad():
        reference = graph(pixels).numpy()
    outputs = [session.run(None, {"pixel_values": pixels[:1].numpy()})[0], session.run(None, {"pixel_values": pixels.numpy()})[0]]
    cosines = np.concatenate([pooled_cosines(reference[:1], outputs[0]), pooled_cosines(reference, outputs[1])])
    return {
        "max_abs_diff": float(max(np.abs(reference[: len(o)] - o).max() for o in outputs)),
        "relative_error": max(relative_error(reference[: len(o)], o) for o in outputs),
        "min_pooled_cosine": float(cosines.min()),
        "mean_pooled_cosine": float(cosines.mean()),
    }
