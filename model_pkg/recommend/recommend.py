"""`recommend_backbones`: rank candidate backbones for a class / identity folder without fine-tuning.

A sample of the folder (at most `per_class` photos of at most `max_classes` classes with two photos or
more) is embedded once per candidate model and size; each candidate's features are scored with LogME
and the kNN leave-one-out accuracy, and the two are combined by their average rank among the
candidates; the table is ordered by one of the three (`rank_by`, default the kNN score: over the 17
candidates of `bench/bench_recommend.py` its mean Kendall tau against the true ranking is 0.80, the rank
average's 0.74 and LogME's 0.68, which favours high-dimensional layers). The table holds every score, the seconds spent embedding (shared by the candidates of one
forward pass) and scoring, and the memory of the candidate's forward pass: `peak_memory_mb`, the peak
resident memory above the level before the pass (memory freed by an earlier pass is reused, so later
passes can show less), and `peak_rss_mb`, the process's peak resident memory during the pass.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psutil

from ..data import DatasetLayoutError, load_identity_folder
from ..data.folders import column_values
from .candidates import Candidate, CandidateError, FeatureExtractor, parse_candidates
from .scores import ScoreInputError, knn_loo_score, logme, rank_average

__all__ = ["CandidateResult", "Recommendation", "RecommendationError", "recommend_backbones", "sample_folder"]

SCORES = ("logme", "knn_loo", "combined")


class RecommendationError(ValueError):
    """The folder or the candidates cannot be ranked (one class, too few photos, invalid features)."""


@dataclass
class CandidateResult:
    """One candidate's row: scores (higher is better), `rank` by the `rank_by` score (1 = recommended)."""

    candidate: str
    layer: str
    image_size: int
    feature_dim: int
    logme: float
    knn_loo: float
    combined: float
    rank: int = 0
    embed_seconds: float = 0.0
    score_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    peak_rss_mb: float = 0.0
    shares_pass_with: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    """The ranked table (`rows`, best first) and what it was computed on."""

    data_dir: str
    num_images: int
    num_classes: int
    k: int
    rows: list[CandidateResult]
    rank_by: str = "knn_loo"

    @property
    def best(self) -> str:
        return self.rows[0].candidate

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "num_images": self.num_images,
            "num_classes": self.num_classes,
            "k": self.k,
            "rank_by": self.rank_by,
            "recommended": self.best,
            "candidates": [asdict(r) for r in self.rows],
        }

    def table(self) -> str:
        head = "| rank | candidate | dim | LogME | kNN LOO acc. | combined | embed s | score s | peak MB |"
        lines = [head, "|" + "---|" * 9]
        for r in self.rows:
            lines.append(
                f"| {r.rank} | {r.candidate} | {r.feature_dim} | {r.logme:.4f} | {r.knn_loo:.4f} | {r.combined:.2f} | "
                f"{r.embed_seconds:.1f} | {r.score_seconds:.2f} | {r.peak_memory_mb:.0f} |"
            )
        return "\n".join(lines)


class _PeakMemory:
    """Peak resident memory above the starting level while the block runs (psutil, sampled every 20 ms)."""

    def __enter__(self):
        self._process = psutil.Process(os.getpid())
        self._start = self._peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.megabytes = (self._peak - self._start) / 2**20
        self.peak_rss_mb = self._peak / 2**20
        return False


def sample_folder(
    data_dir: str | os.PathLike, per_class: int = 4, max_classes: int = 100, seed: int = 0, layout: str = "auto"
) -> tuple[list[str], list[str]]:
    """-> (image paths, labels): up to `per_class` photos of up to `max_classes` classes holding >= 2 photos."""
    if per_class < 2:
        raise RecommendationError(f"per_class must be at least 2 (a photo needs a same-class neighbour), got {per_class}.")
    if max_classes < 2:
        raise RecommendationError(f"max_classes must be at least 2, got {max_classes}.")
    try:
        dataset = load_identity_folder(data_dir, layout=layout)
    except DatasetLayoutError as err:
        raise RecommendationError(f"Cannot rank backbones on {str(data_dir)!r}: {err}") from err
    by_class: dict[str, list[str]] = {}
    for path, label in zip(column_values(dataset, "image_path"), column_values(dataset, "label")):
        by_class.setdefault(label, []).append(path)
    usable = sorted(c for c, paths in by_class.items() if len(paths) >= 2)
    if len(usable) < 2:
        raise RecommendationError(
            f"{str(data_dir)!r} has {len(usable)} class(es) with at least 2 photos ({len(by_class)} classes in all): "
            "the scores compare photos of the same class against other classes, so give at least 2 classes "
            "with 2 or more photos each."
        )
    rng = random.Random(seed)
    chosen = sorted(rng.sample(usable, min(max_classes, len(usable))))
    paths, labels = [], []
    for label in chosen:
        picked = sorted(rng.sample(by_class[label], min(per_class, len(by_class[label]))))
        paths += picked
        labels += [label] * len(picked)
    return paths, labels


def _score(spec: str, features: np.ndarray, labels: Sequence[str], k: int) -> tuple[float, float, float]:
    try:
        start = time.perf_counter()
        lm = logme(features, np.asarray(labels))
        knn = knn_loo_score(features, np.asarray(labels), k=k)
        return lm, knn, time.perf_counter() - start
    except ScoreInputError as err:
        raise RecommendationError(f"Candidate '{spec}': {err}") from err


def recommend_backbones(
    data_dir: str | os.PathLike,
    candidates: str | Sequence[str],
    per_class: int = 4,
    max_classes: int = 100,
    k: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    layout: str = "auto",
    rank_by: str = "knn_loo",
) -> Recommendation:
    """Rank `candidates` for the class folder `data_dir` (`<data_dir>/<class>/<photo>`), best first.

    Args:
        candidates: specs `NAME[@SIZE][:LAYER]` (a list or one comma-separated string), at least two:
            timm names the backbone factory builds, or saved petmatch model folders (see `candidates.py`).
        per_class, max_classes: the sample that bounds the cost (photos per class, classes).
        k: neighbours of the kNN leave-one-out score.
        seed: which classes and photos are sampled.
        batch_size: photos per forward pass.
        rank_by: the score that orders the table, `"knn_loo"`, `"logme"` or `"combined"` (their rank
            average); ties are broken by the other scores.
    """
    if rank_by not in SCORES:
        raise RecommendationError(f"rank_by={rank_by!r} must be one of {SCORES}")
    try:
        parsed: list[Candidate] = parse_candidates(candidates, min_count=2)
    except CandidateError as err:
        raise RecommendationError(str(err)) from err
    paths, labels = sample_folder(data_dir, per_class=per_class, max_classes=max_classes, seed=seed, layout=layout)
    groups: dict[tuple, list[Candidate]] = {}
    for c in parsed:
        groups.setdefault(c.pass_key, []).append(c)
    # Build every extractor first, so a bad layer or model fails before any photo is embedded.
    extractors = {key: FeatureExtractor(*key) for key in groups}
    layers = {c.spec: extractors[c.pass_key].check_layer(c) for c in parsed}
    rows: dict[str, CandidateResult] = {}
    for key, members in groups.items():
        extractor = extractors[key]
        with _PeakMemory() as memory:
            start = time.perf_counter()
            feats = extractor(paths, sorted({layers[c.spec] for c in members}), batch_size=batch_size)
            embed_seconds = time.perf_counter() - start
        for c in members:
            lm, knn, score_seconds = _score(c.spec, feats[layers[c.spec]], labels, k)
            rows[c.spec] = CandidateResult(
                candidate=c.spec,
                layer=layers[c.spec],
                image_size=extractor.image_size,
                feature_dim=int(feats[layers[c.spec]].shape[1]),
                logme=lm,
                knn_loo=knn,
                combined=0.0,
                embed_seconds=embed_seconds,
                score_seconds=score_seconds,
                peak_memory_mb=memory.megabytes,
                peak_rss_mb=memory.peak_rss_mb,
                shares_pass_with=[m.spec for m in members if m is not c],
            )
    ordered = [rows[c.spec] for c in parsed]
    combined = rank_average({"logme": [r.logme for r in ordered], "knn_loo": [r.knn_loo for r in ordered]})
    for row, value in zip(ordered, combined):
        row.combined = float(value)
    # Best first by `rank_by`; the other scores break its ties (k = 1 accuracies tie often on small samples).
    tie_breaks = [s for s in ("combined", "logme", "knn_loo") if s != rank_by]
    ordered.sort(key=lambda r: tuple(-getattr(r, s) for s in [rank_by, *tie_breaks]))
    for i, row in enumerate(ordered, start=1):
        row.rank = i
    return Recommendation(str(data_dir), len(paths), len(set(labels)), k, ordered, rank_by=rank_by)
