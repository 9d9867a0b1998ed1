"""mini-vec2vec: learn a linear map from embedding space A to space B with no paired data.

The use in petmatch: a gallery embedded with an old model A is searched with queries from a new
model B, mapped into A's space, so the gallery need not be re-embedded (a model upgrade without a
backfill). Any two embedders that saw the same kind of data can be aligned this way.

Pipeline (`MiniVec2VecAligner.align`), after Dar (2025), with the paper's reference settings as the
defaults of `MiniVec2VecConfig`:

1. Preprocess: subtract each side's mean, L2-normalise.
2. Anchors: `anchor_runs` times, k-means (`anchor_clusters`) on `anchor_sample` points per side;
   the two sets of centroids are matched by quadratic assignment (`scipy.optimize.quadratic_assignment`,
   best of `qap_restarts` randomised restarts) of their centred kernels `H C C^T H`. The matched
   centroids of all runs are the anchors.
3. Pseudo-pairs: each point is described by its cosine to its side's anchors (relative
   representation); each A point is paired with the mean of its `match_k` nearest B points there.
4. Orthogonal Procrustes (`scipy.linalg.orthogonal_procrustes`) on the pseudo-pairs -> W.
5. Refine-1: `refine1_iterations` times, map `refine1_sample` random A points, pair each with the mean
   of its `refine1_k` nearest B points, refit, `W = a W + (1 - a) W_new`.
6. Refine-2: k-means (`refine2_clusters`) on A, k-means on B initialised from the mapped A centres,
   Procrustes between the centres, smoothed the same way.
7. CSLS self-learning (ours, off by default: `csls_iterations`): pair every A point with its best B
   point and every B point with its best A point by CSLS, refit Procrustes on that dictionary.

A vector x of A maps to `normalize(normalize(x - mean_A) @ W)` in B's centred, normalised space, and
from there back to B's raw space as `mean_B + scale_B * that` (`scale_B`: the mean norm of B's
centred training vectors), which is what a gallery of raw B vectors is searched with.

The numerical steps (k-means, centroid matching, Procrustes, CSLS, ...) are functions in `steps.py`; this
file runs them in the order above and holds the fitted map.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from tqdm.auto import trange

from ..fileio import atomic_write, atomic_write_json
from ..metrics import alignment_metrics
from .configuration_mini_vec2vec import MiniVec2VecConfig
from .steps import centre_and_normalize, csls_dictionary, kmeans, match_centroids, mean_of_nearest, normalize, procrustes

__all__ = ["MiniVec2VecAligner", "AlignerNotFittedError", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_OUTPUTS = ("target", "normalized")


class AlignerNotFittedError(RuntimeError):
    """The aligner has no map yet: call `align(XA, XB)` or load a saved one with `from_pretrained`."""


def _as_matrix(x: Any, name: str, dim: int | None = None, dim_name: str = "") -> np.ndarray:
    """float32 (N, D) copy of `x` (numpy, torch, lists), or a ValueError saying what is wrong."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    try:
        arr = np.array(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape (N, D): {err}") from err
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of embeddings, one row per item, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): pass at least one embedding")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name} have dimension {arr.shape[1]}, but this aligner maps {dim_name} of dimension {dim}: "
            "they come from another embedder than the one it was fitted on. Embed with that model, or fit a new aligner."
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} row(s) {rows[:10].tolist()}{' ...' if rows.size > 10 else ''} contain NaN or infinite values: "
            "the embedder failed on those items; embed them again or drop them"
        )
    zero = ~np.any(arr != 0, axis=1)
    if zero.any():
        rows = np.flatnonzero(zero)
        raise ValueError(
            f"{name} row(s) {rows[:10].tolist()}{' ...' if rows.size > 10 else ''} are zero vectors, which have no "
            "direction to align: embed those items again or drop them"
        )
    return arr


def _check_fit_inputs(xa: Any, xb: Any, cfg: MiniVec2VecConfig) -> tuple[np.ndarray, np.ndarray]:
    """XA and XB as float32 matrices of the config's dimensions, each with enough points for its settings."""
    xa = _as_matrix(xa, "XA (space-A embeddings)", cfg.source_dim, "space-A vectors")
    xb = _as_matrix(xb, "XB (space-B embeddings)", cfg.target_dim, "into space-B vectors")
    for name, x in (("XA", xa), ("XB", xb)):
        if len(x) < cfg.min_points:
            raise ValueError(
                f"{name} has {len(x)} vectors, fewer than the {cfg.min_points} this configuration needs "
                f"(anchor_clusters={cfg.anchor_clusters}, match_k={cfg.match_k}, refine1_k={cfg.refine1_k}, "
                f"refine2_clusters={cfg.refine2_clusters}): give more vectors (the method is meant for thousands "
                "per side) or lower those settings in MiniVec2VecConfig"
            )
    return xa, xb


class MiniVec2VecAligner:
    """A linear map W from embedding space A (source) to B (target), fitted without pairs.

    Fit with `align(XA, XB)`, map new A vectors with `aligner(X)`, save with `save_pretrained(dir)`
    (`config.json` + `model.safetensors`) and load with `MiniVec2VecAligner.from_pretrained(dir)`.
    """

    config_class = MiniVec2VecConfig

    def __init__(self, config: MiniVec2VecConfig | None = None, **kwargs):
        if config is None:
            config = MiniVec2VecConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either a MiniVec2VecConfig or keyword settings, not both")
        self.config = config
        self.weight: np.ndarray | None = None  # (source_dim, target_dim)
        self.source_mean: np.ndarray | None = None  # (source_dim,)
        self.target_mean: np.ndarray | None = None  # (target_dim,)
        self.target_scale: float | None = None
        self.history: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        state = f"{self.config.source_dim} -> {self.config.target_dim}" if self.is_fitted else "not fitted"
        return f"{type(self).__name__}({state})"

    @property
    def is_fitted(self) -> bool:
        return self.weight is not None

    def _fitted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(weight, source_mean, target_mean, target_scale); `AlignerNotFittedError` before a map exists."""
        if self.weight is None or self.source_mean is None or self.target_mean is None or self.target_scale is None:
            raise AlignerNotFittedError(
                "this aligner has no map yet: call align(XA, XB) first, or load a fitted one with "
                "MiniVec2VecAligner.from_pretrained(dir)"
            )
        return self.weight, self.source_mean, self.target_mean, self.target_scale

    # ------------------------------------------------------------------ mapping
    def normalize_source(self, x: Any) -> np.ndarray:
        """Space-A vectors (N, source_dim) -> centred, L2-normalised, as the map expects them."""
        _, source_mean, _, _ = self._fitted()
        return centre_and_normalize(
            _as_matrix(x, "source vectors", self.config.source_dim, "space-A vectors"), source_mean, "source vectors"
        )

    def normalize_target(self, y: Any) -> np.ndarray:
        """Space-B vectors (N, target_dim) -> centred, L2-normalised: the space `output="normalized"` maps into."""
        _, _, target_mean, _ = self._fitted()
        return centre_and_normalize(
            _as_matrix(y, "target vectors", self.config.target_dim, "into space-B vectors"), target_mean, "target vectors"
        )

    def __call__(self, x: Any, output: str = "target") -> np.ndarray | torch.Tensor:
        """Map space-A vectors (N, source_dim) into space B.

        Args:
            x: numpy array, torch tensor or nested list; a tensor in gives a float32 tensor out (same device).
            output: `"target"`: in B's raw space (`mean_B + scale_B * u`), ready to be searched against
                vectors B produced, e.g. a gallery; `"normalized"`: the unit vector u in B's centred space.
        """
        if output not in _OUTPUTS:
            raise ValueError(f"output={output!r} must be one of {_OUTPUTS}")
        weight, _, target_mean, target_scale = self._fitted()
        mapped = normalize(self.normalize_source(x) @ weight)  # (N, target_dim)
        if output == "target":
            mapped = target_mean + target_scale * mapped
        mapped = mapped.astype(np.float32)
        if isinstance(x, torch.Tensor):
            return torch.from_numpy(mapped).to(x.device)
        return mapped

    # ------------------------------------------------------------------ fitting
    def _kmeans(self, x: np.ndarray, k: int, rng: np.random.Generator, init: np.ndarray | None = None) -> np.ndarray:
        """`steps.kmeans` with this config's backend and iteration cap."""
        return kmeans(x, k, rng, backend=self.config.kmeans_backend, max_iter=self.config.kmeans_max_iter, init=init)

    def _anchors(
        self, xa: np.ndarray, xb: np.ndarray, rng: np.random.Generator, progress: bool
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Anchors (runs * k, Da), (runs * k, Db): each run's k-means centroids of a sample per side, B's
        permuted onto A's by `match_centroids`; and each run's matching score."""
        cfg = self.config
        anchors_a, anchors_b, scores = [], [], []
        for _ in trange(cfg.anchor_runs, desc="mini-vec2vec anchors", disable=not progress):
            sa = xa[rng.choice(len(xa), min(cfg.anchor_sample, len(xa)), replace=False)]
            sb = xb[rng.choice(len(xb), min(cfg.anchor_sample, len(xb)), replace=False)]
            ca = self._kmeans(sa, cfg.anchor_clusters, rng)  # (k, Da)
            cb = self._kmeans(sb, cfg.anchor_clusters, rng)  # (k, Db)
            perm, score = match_centroids(ca, cb, rng, method=cfg.qap_method, restarts=cfg.qap_restarts)
            anchors_a.append(ca)
            anchors_b.append(cb[perm])
            scores.append(score)
        return np.concatenate(anchors_a), np.concatenate(anchors_b), scores

    def _refine1(
        self, xa: np.ndarray, xb: np.ndarray, w: np.ndarray, rng: np.random.Generator, progress: bool = False
    ) -> np.ndarray:
        """Refine-1 on centred, normalised vectors: refit on sampled points paired with the mean of their
        `refine1_k` nearest B points, smoothed by `refine1_alpha`."""
        cfg = self.config
        for _ in trange(cfg.refine1_iterations, desc="mini-vec2vec refine-1", disable=not progress):
            sample = xa[rng.choice(len(xa), min(cfg.refine1_sample, len(xa)), replace=False)]
            matched = mean_of_nearest(sample @ w, xb, xb, cfg.refine1_k)
            w = cfg.refine1_alpha * w + (1.0 - cfg.refine1_alpha) * procrustes(sample, matched)
        return w

    def _csls_self_learning(
        self, xa: np.ndarray, xb: np.ndarray, w: np.ndarray, rng: np.random.Generator, progress: bool = False
    ) -> np.ndarray:
        """The CSLS stage on centred, normalised vectors: Procrustes on a CSLS dictionary, `csls_iterations` times."""
        cfg = self.config
        for _ in trange(cfg.csls_iterations, desc="mini-vec2vec CSLS self-learning", disable=not progress):
            sa = xa if len(xa) <= cfg.csls_sample else xa[rng.choice(len(xa), cfg.csls_sample, replace=False)]
            sb = xb if len(xb) <= cfg.csls_sample else xb[rng.choice(len(xb), cfg.csls_sample, replace=False)]
            rows_a, rows_b = csls_dictionary(sa @ w, sb, cfg.csls_k)
            w = procrustes(sa[rows_a], sb[rows_b])
        return w

    def align(
        self,
        xa: Any,
        xb: Any,
        eval_pairs: tuple[Any, Any] | None = None,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Fit the map from A's vectors `xa` (Na, Da) to B's `xb` (Nb, Db), which need not be paired.

        Args:
            xa, xb: embeddings of two samples of the same kind of data by the two embedders.
            eval_pairs: optional paired held-out vectors `(A, B)` (row i = the same item), only to
                monitor the fit: `alignment_metrics` after each stage are added to the history. They
                never influence the map.
            progress: show tqdm progress bars.

        Returns the history: one dict per stage (`stage`, `seconds`, stage statistics, eval metrics).
        """
        cfg = self.config
        xa, xb = _check_fit_inputs(xa, xb, cfg)
        if eval_pairs is not None:
            eval_a = _as_matrix(eval_pairs[0], "eval_pairs[0]", xa.shape[1], "space-A vectors")
            eval_b = _as_matrix(eval_pairs[1], "eval_pairs[1]", xb.shape[1], "into space-B vectors")
            if len(eval_a) != len(eval_b):
                raise ValueError(f"eval_pairs must be paired row by row, got {len(eval_a)} and {len(eval_b)} rows")
        rng = np.random.default_rng(cfg.seed)
        source_mean, target_mean = xa.mean(axis=0), xb.mean(axis=0)
        target_scale = float(np.linalg.norm(xb - target_mean, axis=1).mean())
        xa = centre_and_normalize(xa, source_mean, "XA")  # (Na, Da)
        xb = centre_and_normalize(xb, target_mean, "XB")  # (Nb, Db)
        if eval_pairs is not None:
            eval_a = centre_and_normalize(eval_a, source_mean, "eval_pairs[0]")
            eval_b = centre_and_normalize(eval_b, target_mean, "eval_pairs[1]")
        history: list[dict[str, Any]] = []

        def record(stage: str, start: float, w: np.ndarray, **stats) -> None:
            entry = {"stage": stage, "seconds": round(time.perf_counter() - start, 3), **stats}
            if eval_pairs is not None:
                entry["eval"] = alignment_metrics(eval_a @ w, eval_b)
            history.append(entry)

        start = time.perf_counter()
        anchors_a, anchors_b, qap_scores = self._anchors(xa, xb, rng, progress)
        relative_a = xa @ normalize(anchors_a).T  # (Na, runs * k) cosine to the anchors
        relative_b = xb @ normalize(anchors_b).T  # (Nb, runs * k)
        matched = mean_of_nearest(relative_a, relative_b, xb, min(cfg.match_k, len(xb)))  # (Na, Db)
        w = procrustes(xa, matched)
        record("anchors+procrustes", start, w, anchors=len(anchors_a), qap_score_mean=float(np.mean(qap_scores)))

        start = time.perf_counter()
        w = self._refine1(xa, xb, w, rng, progress)
        if cfg.refine1_iterations:
            record("refine1", start, w, iterations=cfg.refine1_iterations)

        start = time.perf_counter()
        for _ in trange(cfg.refine2_iterations, desc="mini-vec2vec refine-2", disable=not progress):
            centres_a = self._kmeans(xa, cfg.refine2_clusters, rng)
            centres_b = self._kmeans(xb, cfg.refine2_clusters, rng, init=centres_a @ w)
            w = cfg.refine2_alpha * w + (1.0 - cfg.refine2_alpha) * procrustes(centres_a, centres_b)
        if cfg.refine2_iterations:
            record("refine2", start, w, iterations=cfg.refine2_iterations)

        start = time.perf_counter()
        w = self._csls_self_learning(xa, xb, w, rng, progress)
        if cfg.csls_iterations:
            record("csls", start, w, iterations=cfg.csls_iterations)

        self.weight = w.astype(np.float32)
        self.source_mean = source_mean.astype(np.float32)
        self.target_mean = target_mean.astype(np.float32)
        self.target_scale = target_scale
        self.config.source_dim, self.config.target_dim = int(xa.shape[1]), int(xb.shape[1])
        self.history = history
        return history

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `model.safetensors` (W, the two means, B's scale) then `config.json` (with the weights'
        sha256), each atomically; `from_pretrained` refuses a folder whose two files do not belong together."""
        weight, source_mean, target_mean, target_scale = self._fitted()
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        blob = save_safetensors(
            {
                "weight": weight,
                "source_mean": source_mean,
                "target_mean": target_mean,
                "target_scale": np.array([target_scale], dtype=np.float32),
            }
        )
        atomic_write(directory / WEIGHTS_NAME, lambda fh: fh.write(blob), binary=True)
        config = self.config.to_dict()
        config["weights_sha256"] = hashlib.sha256(blob).hexdigest()
        atomic_write_json(config, directory / CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MiniVec2VecAligner:
        """Load an aligner saved with `save_pretrained` (no network, nothing else needed)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} does not exist: {directory} is not a folder written by MiniVec2VecAligner.save_pretrained"
                )
        config_dict = json.loads(config_path.read_text(encoding="utf-8"))
        if config_dict.get("model_type") != MiniVec2VecConfig.model_type:
            raise ValueError(
                f"{config_path} describes a {config_dict.get('model_type')!r}, not a {MiniVec2VecConfig.model_type!r} aligner"
            )
        expected = config_dict.pop("weights_sha256", None)
        blob = weights_path.read_bytes()
        if expected is not None and hashlib.sha256(blob).hexdigest() != expected:
            raise ValueError(
                f"{weights_path} does not match {config_path} (checksum differs): the folder was modified; save the aligner again"
            )
        aligner = cls(MiniVec2VecConfig.from_dict(config_dict))
        tensors = load_safetensors(blob)
        aligner.weight = tensors["weight"]
        aligner.source_mean = tensors["source_mean"]
        aligner.target_mean = tensors["target_mean"]
        aligner.target_scale = float(tensors["target_scale"][0])
        expected_shape = (aligner.config.source_dim, aligner.config.target_dim)
        if aligner.weight.shape != expected_shape:
            raise ValueError(f"{weights_path} holds a {aligner.weight.shape} map but {config_path} says {expected_shape}")
        return aligner

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, xa: Any, xb: Any) -> dict[str, Any]:
        """`alignment_metrics` of paired held-out vectors (row i of `xa` and `xb` = the same item)."""
        return alignment_metrics(self(xa, output="normalized"), self.normalize_target(xb))
