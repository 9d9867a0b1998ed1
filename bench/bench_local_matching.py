"""Local matching as a third matcher of the fusion: SIFT keypoints (RootSIFT) matched between two photos, RANSAC inliers.

    python bench/bench_local_matching.py --json bench/results/local_matching_val.json

On the validation pets of `bench/fit_fusion.py` (DogFaceNet validation dogs, MPDD, the 12 cats; its cached vectors),
per kind of photo: 1v1 pairs as `evaluate pair` draws them (1,000 random-negative pairs, seeds 0-2). Each photo goes
through the shipped intake (its crop, as the app sees it), grey, longest side `--side` px; OpenCV's SIFT keypoints,
RootSIFT descriptors, mutual nearest neighbours passing Lowe's ratio test, then a RANSAC fundamental matrix
(`cv2.findFundamentalMat`, USAC MAGSAC): the score is log(1 + inliers). Reported per kind:

* ROC-AUC of each matcher alone: SIFT inliers, the shipped fused cosine (trained + untrained, the kind's weight);
* out of sample, the fused cosine against a logistic regression of [fused cosine, SIFT score] (scikit-learn):
  fitted on the pairs of half of the animals, measured on pairs of the other half (`--halvings` random halvings).

The issue's rule: keep a matcher only where it helps on validation. The numbers say whether SIFT earns its place.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from fit_fusion import _groups, photo_vectors, validation_photos  # bench/ is the script's own folder

from model_pkg.data import sample_pairs
from model_pkg.fileio import atomic_write, atomic_write_json, cache_dir
from model_pkg.intake import FusionConfig, IntakeConfig, PhotoIntake, fused_vectors
from model_pkg.intake.settings import KINDS
from model_pkg.loading import load_arcface_model


def sift_features(paths: list[str], intake_settings: dict, side: int) -> list[np.ndarray]:
    """RootSIFT descriptors (n, 128) and keypoint positions (n, 2) of each photo's intake crop."""
    import cv2

    intake = PhotoIntake(IntakeConfig.from_dict(intake_settings))
    sift = cv2.SIFT_create(nfeatures=500)
    out = []
    start = time.perf_counter()
    for i in range(0, len(paths), 32):
        for result in intake(paths[i : i + 32]):
            crop = result.crop.convert("L")
            scale = side / max(crop.size)
            if scale < 1:
                crop = crop.resize((round(crop.width * scale), round(crop.height * scale)))
            keypoints, desc = sift.detectAndCompute(np.asarray(crop), None)
            if desc is None:
                out.append(np.zeros((0, 130), np.float32))
                continue
            desc = desc / np.maximum(desc.sum(1, keepdims=True), 1e-7)  # RootSIFT: L1, then the square root
            desc = np.sqrt(desc).astype(np.float32)
            points = np.array([k.pt for k in keypoints], np.float32)
            out.append(np.concatenate([desc, points], 1))
        print(f"  SIFT {min(i + 32, len(paths))}/{len(paths)} photos, {time.perf_counter() - start:.0f} s", flush=True)
    return out


def inlier_score(a: np.ndarray, b: np.ndarray, ratio: float = 0.8) -> float:
    """log(1 + RANSAC inliers) of the mutual ratio-test matches between two photos' RootSIFT features."""
    import cv2

    if len(a) < 8 or len(b) < 8:
        return 0.0
    da, db = a[:, :128], b[:, :128]
    d2 = np.maximum(2.0 - 2.0 * da @ db.T, 0.0)  # RootSIFT vectors are unit length: squared L2 from the dot product
    nn_ab = np.argsort(d2, axis=1)[:, :2]
    best = d2[np.arange(len(da)), nn_ab[:, 0]]
    second = d2[np.arange(len(da)), nn_ab[:, 1]]
    back = d2.argmin(0)
    keep = (best < ratio**2 * second) & (back[nn_ab[:, 0]] == np.arange(len(da)))
    if keep.sum() < 8:
        return float(np.log1p(0))
    pa, pb = a[keep, 128:], b[nn_ab[keep, 0], 128:]
    try:
        _, mask = cv2.findFundamentalMat(pa, pb, cv2.USAC_MAGSAC, 3.0, 0.999, 2000)
    except cv2.error:  # degenerate matches (all on a line, repeated points): no geometry to verify
        mask = None
    return float(np.log1p(0 if mask is None else int(mask.sum())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="models/arcface-embedder")
    parser.add_argument("--splits", default="train/splits/dogfacenet.json")
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--halvings", type=int, default=10)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rows = [r for r in validation_photos(args.splits) if r[3]]
    paths = [r[0] for r in rows]
    ids = np.array([r[1] for r in rows])
    kinds = np.array([r[2] for r in rows])
    model = load_arcface_model(args.embedder)
    fusion = FusionConfig.from_dict(model.config.fusion)
    intake_settings = model.config.intake
    model.config.intake, model.config.fusion = IntakeConfig().to_dict(), None  # fit_fusion's cache: the same vectors
    everything = [r[0] for r in validation_photos(args.splits)]
    cached = photo_vectors(model, everything, cache_dir() / "fusion-fit")
    at = {p: i for i, p in enumerate(everything)}
    t, u = cached["t"][[at[p] for p in paths]], cached["u"][[at[p] for p in paths]]
    index = {p: i for i, p in enumerate(paths)}
    cache = cache_dir() / f"local-matching-sift-{args.side}.npz"
    if cache.is_file() and list(np.load(cache, allow_pickle=False)["paths"]) == paths:
        stored = np.load(cache, allow_pickle=False)
        sift = np.split(stored["features"], np.cumsum(stored["counts"])[:-1])
    else:
        sift = sift_features(paths, intake_settings, args.side)
        counts = np.array([len(f) for f in sift])
        features = np.concatenate(sift).astype(np.float32)
        atomic_write(cache, lambda fh: np.savez(fh, paths=np.array(paths), counts=counts, features=features), binary=True)
    report: dict = {"side": args.side, "seeds": args.seeds, "kinds": {}}
    rng = np.random.default_rng(0)
    for kind in KINDS:
        sel = kinds == kind
        groups = _groups(ids[sel], np.array(paths)[sel])
        fused = fused_vectors(t, u, np.full(len(t), fusion.kinds[kind].trained_weight))
        labels, cosines, local, animals = [], [], [], []
        for seed in (int(s) for s in args.seeds.split(",")):
            for pair in sample_pairs(groups, 1000, set_size=1, seed=seed):
                a, b = index[pair.paths_a[0]], index[pair.paths_b[0]]
                labels.append(pair.label)
                cosines.append(float(fused[a] @ fused[b]))
                local.append(inlier_score(sift[a], sift[b]))
                animals.append((ids[a], ids[b]))
        y, cos, loc = np.array(labels), np.array(cosines), np.array(local)
        names = sorted(groups)
        held_out = []
        for _ in range(args.halvings):
            half = set(rng.permutation(names)[: len(names) // 2])
            train = np.array([x in half and z in half for x, z in animals])
            test = np.array([x not in half and z not in half for x, z in animals])
            if len(set(y[train])) < 2 or len(set(y[test])) < 2:
                continue
            features = np.stack([cos, loc], 1)
            combined = LogisticRegression(C=1.0).fit(features[train], y[train])
            held_out.append(
                [roc_auc_score(y[test], cos[test]), roc_auc_score(y[test], combined.decision_function(features[test]))]
            )
        h = np.array(held_out)
        report["kinds"][kind] = {
            "pairs": int(len(y)),
            "sift_alone_roc_auc": float(roc_auc_score(y, loc)),
            "fused_cosine_roc_auc": float(roc_auc_score(y, cos)),
            "held_out_fused_cosine_roc_auc": float(h[:, 0].mean()),
            "held_out_fused_plus_sift_roc_auc": float(h[:, 1].mean()),
            "held_out_halvings_where_sift_helps": int((h[:, 1] > h[:, 0]).sum()),
            "held_out_halvings": int(len(h)),
            "median_inliers_same_animal": float(np.expm1(np.median(loc[y == 1]))),
            "median_inliers_different_animals": float(np.expm1(np.median(loc[y == 0]))),
        }
        print(kind, report["kinds"][kind], flush=True)
        atomic_write_json(report, args.json)
    atomic_write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
