"""`evaluate gallery`: identification against a gallery of known dogs with open-set rejection, for an ArcFace
embedder or the ``imagenet`` baseline (G photos registered per known dog, a share U of the dogs unknown)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..arcface import ArcFaceEmbedderModel
from ..arcface.embedding import embed_paths
from ..data.samplers import GallerySplit, split_gallery_queries
from ..features import reference_features
from ..gallery import GalleryIndex
from ..gallery_store.identification import kind_thresholds
from ..intake.embedding import embed_photo_files, model_fusion
from ..loading import load_arcface_model
from ..metrics import confusion as confusion_matrix_of
from ..metrics import save_confusion
from .common import BASELINE, GALLERY_BASELINE, EvaluationError, json_safe, load_groups

__all__ = ["GALLERY_RESULT_KEYS", "RESHOOT", "UNKNOWN", "evaluate_gallery_protocol"]

GALLERY_RESULT_KEYS = (
    "rank1",
    "rank5",
    "rank10",
    "map",
    "mrr",
    "open_set_auroc",
    "known_accuracy",
    "unknown_rejection",
    "balanced_accuracy",
    "classification_accuracy",
    "known_acceptance",
    "known_misidentified",
    "score_threshold",
    "margin_threshold",
    "k",
    "num_known",
    "num_unknown",
    "num_gallery",
)


def _gallery_split(groups, gallery_per_id: int, unknown_fraction: float, seed: int, where: str) -> GallerySplit:
    try:
        return split_gallery_queries(groups, gallery_per_id, unknown_fraction, seed)
    except ValueError as exc:
        message = str(exc).replace("gallery_per_id=", "--gallery-per-id ").replace("gallery_per_id", "--gallery-per-id")
        raise EvaluationError(f"{where}: {message}") from exc


def _split_arrays(split: GallerySplit, emb: Mapping[str, np.ndarray]):
    gallery = np.stack([emb[p] for p in split.gallery_paths]).astype(np.float32)
    queries = np.stack([emb[p] for p in split.query_paths]).astype(np.float32)
    return gallery, queries


def _calibrated(split: GallerySplit, emb: Mapping[str, np.ndarray], k: int) -> GalleryIndex:
    """A gallery of `split` with thresholds calibrated on its known and unknown queries."""
    gallery_emb, query_emb = _split_arrays(split, emb)
    unknown = np.array([lab in set(split.unknown_labels) for lab in split.query_labels])
    gallery = GalleryIndex(gallery_emb.shape[1], "ip", approximate_above=max(len(gallery_emb), 1))
    gallery.add(gallery_emb, split.gallery_labels)
    known_labels = [lab for lab, u in zip(split.query_labels, unknown) if not u]
    gallery.calibrate(query_emb[~unknown], known_labels, query_emb[unknown], k=k)
    return gallery


UNKNOWN, RESHOOT = "unknown", "reshoot"  # the decision columns of a rejected query


def _write_gallery_confusion(prefix, gallery: GalleryIndex, split: GallerySplit, query_emb, k):
    """Classify the queries with `gallery` (at its thresholds) and save the decision confusion matrix (CSV + PNG)."""
    unknown = set(split.unknown_labels)
    truth = [UNKNOWN if lab in unknown else lab for lab in split.query_labels]
    decided = [p.label if p.label is not None else p.reason for p in gallery.classify(query_emb, k=k)]
    labels = sorted(set(split.gallery_labels)) + [UNKNOWN, RESHOOT]
    csv_path, png_path = os.fspath(prefix) + ".csv", os.fspath(prefix) + ".png"
    save_confusion(confusion_matrix_of(truth, decided, labels), labels, csv_path, png_path)  # creates the folder
    return os.path.abspath(csv_path), os.path.abspath(png_path)


def evaluate_gallery_protocol(
    model: str | os.PathLike | ArcFaceEmbedderModel,
    data: Any,
    gallery_per_id: int = 1,
    unknown_fraction: float = 0.2,
    seed: int = 0,
    splits: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    split: str = "test",
    threshold_split: str = "val",
    k: int | None = None,
    batch_size: int = 32,
    confusion: str | os.PathLike | None = None,
) -> dict:
    """Gallery identification with open-set rejection of an ArcFace embedder (or the ``imagenet`` baseline).

    Args:
        model: a saved ArcFaceEmbedderModel folder, a loaded ``ArcFaceEmbedderModel``, or ``"imagenet"``.
        data: an identity-folder tree (or seed layout), or anything ``as_dataset`` accepts.
        gallery_per_id: G, photos registered per known dog; its other photos are queries.
        unknown_fraction: U in [0, 1), the share of dogs left out of the gallery (their queries must be rejected).
        seed: the draw of unknown dogs and gallery photos; the same arguments give the same numbers.
        splits: a splits JSON (or dict): evaluate only ``split``'s dogs and calibrate the thresholds on
            ``threshold_split``'s dogs under the same protocol.
        split: the evaluated split.
        threshold_split: the split thresholds are calibrated on.
        k: neighbours that vote (default: the model's ``gallery_k``, 20 for the baseline).
        batch_size: backbone batch size.
        confusion: if given, a path prefix: the confusion matrix of the voted decisions at the chosen
            thresholds is written to ``<prefix>.csv`` and ``<prefix>.png``. Rows are the true dog
            (every unknown dog's row is ``unknown``), columns the decision: a dog, ``unknown`` or ``reshoot``.

    Returns a JSON-serialisable dict: rank1, rank5, rank10 (percent), map, mrr, open_set_auroc,
    known_accuracy, unknown_rejection, balanced_accuracy, score_threshold, margin_threshold,
    threshold_source ("val" / "stored" / "oracle" / "none"), counts, and the arguments.

    Raises ``EvaluationError`` (a ``ValueError``) for a missing model/data folder, a model that is not an
    ArcFace embedder, U outside [0, 1), G < 1 or larger than the photos available, or an unknown split.
    """
    start = time.perf_counter()
    if isinstance(gallery_per_id, bool) or not isinstance(gallery_per_id, int) or gallery_per_id < 1:
        raise EvaluationError(f"--gallery-per-id must be an integer >= 1, got {gallery_per_id!r}")
    if isinstance(unknown_fraction, bool) or not isinstance(unknown_fraction, (int, float)) or not 0.0 <= unknown_fraction < 1.0:
        raise EvaluationError(
            f"--unknown-fraction must lie in [0, 1) (the share of dogs left out of the gallery), got {unknown_fraction!r}"
        )
    if k is not None and k < 1:
        raise EvaluationError(f"k must be >= 1, got {k}")
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")

    baseline = isinstance(model, str) and model in (GALLERY_BASELINE, BASELINE)
    if baseline:
        net, model_name = None, GALLERY_BASELINE
    elif isinstance(model, ArcFaceEmbedderModel):
        net, model_name = model.cpu().eval(), str(getattr(model, "name_or_path", "") or type(model).__name__)
    elif isinstance(model, (str, os.PathLike)):
        net, model_name = load_arcface_model(model), os.path.abspath(os.fspath(model))
    else:
        raise EvaluationError(
            f"model must be a saved ArcFaceEmbedderModel folder, an ArcFaceEmbedderModel or {GALLERY_BASELINE!r}, "
            f"got {type(model).__name__}"
        )
    k = k or (20 if net is None else int(net.config.gallery_k))

    use_val = splits is not None and bool(threshold_split) and threshold_split != split and unknown_fraction > 0
    groups, threshold_groups = load_groups(data, splits, split, threshold_split if use_val else None)
    where = f"split {split!r}" if splits is not None else "data"
    evaluated = _gallery_split(groups, gallery_per_id, unknown_fraction, seed, where)
    calibration = None
    if use_val:
        calibration = _gallery_split(
            threshold_groups, gallery_per_id, unknown_fraction, seed, f"threshold split {threshold_split!r}"
        )
        if not calibration.unknown_labels:
            raise EvaluationError(f"threshold split {threshold_split!r} has too few dogs to leave one out of the gallery")

    paths = sorted(
        {*evaluated.gallery_paths, *evaluated.query_paths}
        | ({*calibration.gallery_paths, *calibration.query_paths} if calibration else set())
    )
    reshoot = None
    kinds: dict[str, str | None] | None = None
    if net is None:
        emb = reference_features(paths, batch_size=batch_size)
    elif model_fusion(net) is not None:  # the app's path: intake, both matchers, fused vectors with the species block
        vectors = embed_photo_files(net, paths, batch_size=batch_size)
        emb = dict(zip(paths, vectors.gallery))
        reshoot = sum(not r.usable for r in vectors.intake)
        kinds = {p: r.kind for p, r in zip(paths, vectors.intake)}
    else:
        emb = dict(zip(paths, embed_paths(net, paths, batch_size=batch_size)))

    score_threshold, margin_threshold = None, 0.05
    if calibration is not None:
        fitted = _calibrated(calibration, emb, k)
        score_threshold, margin_threshold, source = fitted.score_threshold, fitted.margin_threshold, "val"
    elif net is not None and net.config.score_threshold is not None:
        score_threshold, margin_threshold, source = net.config.score_threshold, net.config.margin_threshold, "stored"
    elif evaluated.unknown_labels:
        fitted = _calibrated(evaluated, emb, k)
        score_threshold, margin_threshold, source = fitted.score_threshold, fitted.margin_threshold, "oracle"
    else:
        source = "none"

    gallery_emb, query_emb = _split_arrays(evaluated, emb)
    gallery = GalleryIndex(
        gallery_emb.shape[1],
        "ip",
        approximate_above=max(len(gallery_emb), 1),
        score_threshold=score_threshold,
        margin_threshold=margin_threshold,
    )
    gallery.add(gallery_emb, evaluated.gallery_labels)
    thresholds = None
    if kinds is not None and source == "stored":  # as PhotoGallery.identify decides: at the thresholds of each query's kind
        fusion = model_fusion(net)
        per_query = [kind_thresholds(fusion, kinds[p], score_threshold, margin_threshold) for p in evaluated.query_paths]
        thresholds = (np.array([np.nan if s is None else s for s, _ in per_query]), np.array([m for _, m in per_query]))
    metrics = gallery.evaluate(query_emb, evaluated.query_labels, evaluated.unknown_labels, k=k, thresholds=thresholds)
    result = {key: metrics[key] for key in GALLERY_RESULT_KEYS}
    if confusion is not None:
        result["confusion_csv"], result["confusion_png"] = _write_gallery_confusion(confusion, gallery, evaluated, query_emb, k)
    result.update(
        threshold_source=source,
        model=model_name,
        data=os.path.abspath(os.fspath(data)) if isinstance(data, (str, os.PathLike)) else type(data).__name__,
        split=split if splits is not None else "all",
        splits_file=os.path.abspath(os.fspath(splits)) if isinstance(splits, (str, os.PathLike)) else None,
        threshold_split=threshold_split if source == "val" else None,
        gallery_per_id=gallery_per_id,
        unknown_fraction=unknown_fraction,
        seed=seed,
        num_identities=len(groups),
        num_known_identities=len(evaluated.known_labels),
        num_unknown_identities=len(evaluated.unknown_labels),
        num_skipped_identities=len(evaluated.skipped_labels),
        intake_reshoot_photos=reshoot,
        seconds=round(time.perf_counter() - start, 3),
    )
    if source == "oracle":
        result["note"] = (
            "the thresholds were calibrated on the evaluated queries themselves (oracle: no splits file and no stored "
            "thresholds), so known_accuracy/unknown_rejection are optimistic; ranks, map and open_set_auroc are threshold-free"
        )
    elif source == "none":
        result["note"] = "no unknown dogs (--unknown-fraction 0) and no stored thresholds: nothing is rejected as unknown"
    return {k_: json_safe(v) for k_, v in result.items()}
