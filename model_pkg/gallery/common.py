"""The gallery's constants, errors and result type, shared by its parts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORMAT = "petmatch-gallery"
FORMAT_VERSION = 2  # 2: IVF indexes; flat and HNSW galleries are still written as version 1
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
META_FILE = "gallery.json"
GALLERY_FILES = (INDEX_FILE, VECTORS_FILE, META_FILE)

MIN_DISTANCE = 1e-6  # clamp for the 1/d vote weight (an exact duplicate gets weight 1e6)
DEFAULT_MARGIN_THRESHOLD = 0.05
MIN_MARGIN_CANDIDATE = 1e-6  # calibrate never goes below this: exact ties stay "reshoot"
MAX_MARGIN_CANDIDATES = 64
MAX_CANDIDATES = 5  # classes listed in Prediction.candidates
ZERO_NORM = 1e-12


# --------------------------------------------------------------------------- #
# Errors and results
# --------------------------------------------------------------------------- #
class GalleryError(RuntimeError):
    """A problem with the gallery's state or its files."""


class EmptyGalleryError(GalleryError):
    """search/classify on a gallery without vectors."""


class GalleryFileError(GalleryError):
    """A saved gallery is missing files, corrupt, or inconsistent."""


class GalleryMismatchError(ValueError):
    """Vectors/gallery made by a different embedder (dimension or model_id differs)."""


@dataclass
class Prediction:
    """Result of :meth:`GalleryIndex.classify` for one query.

    * ``label`` -- the identified animal, or ``None`` when the prediction is rejected.
    * ``confidence`` -- the winning identity's share (0-1) of the total vote weight.
    * ``top_score`` -- similarity of the best neighbour (cosine for "ip", -L2 distance for "l2").
    * ``margin`` -- winner's vote share minus the runner-up's.
    * ``accepted`` -- ``reason is None``.
    * ``reason`` -- ``None``, ``"unknown"`` (``top_score < score_threshold``) or
      ``"reshoot"`` (``margin < margin_threshold``).
    * ``candidates`` -- up to 5 ``(label, vote share)`` pairs, best first (shares of the
      total 1/d weight, so ``candidates[0][1] == confidence``).
    """

    label: str | None
    confidence: float
    top_score: float
    margin: float
    accepted: bool
    reason: str | None
    candidates: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["candidates"] = [[lab, float(w)] for lab, w in self.candidates]
        return out


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer >= 1 (number of neighbours), got {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (number of neighbours to search), got {k}")
    return int(k)


def check_strings(values: Any, n: int, name: str, what: str = "embeddings") -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of strings (one per row of {what}), got {type(values).__name__}")
    out = list(values)
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries but {what} has {n} rows: pass exactly one per row")
    bad = [i for i, v in enumerate(out) if not isinstance(v, str) or not v]
    if bad:
        examples = ", ".join(f"[{i}]={out[i]!r}" for i in bad[:5])
        raise ValueError(f"{name} must be non-empty strings; bad entries: {examples}")
    return out
