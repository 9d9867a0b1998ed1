"""Fit the photo intake's kind head and the per-kind fusion on validation pets, and store them in the shipped models.

    python bench/fit_fusion.py --json bench/results/fusion_fit.json                 # fit, report, write nothing else
    python bench/fit_fusion.py --json bench/results/fusion_fit.json --write models/arcface-embedder models/pair-matcher

Validation pets (never the animals anyone reports on): the DogFaceNet validation dogs of train/splits/dogfacenet.json
(dog faces), all of ../shared/data/mpdd (whole dogs: the embedder never saw them), the 12 cats of ../shared/data/cats
(faces, and ordinary photos); 60 DogFaceNet training dogs add face photos to the kind head only.

1. Every photo goes through the intake (no kind head yet) and the embedder, as the app runs them
   (`model_pkg.intake.embed_photos`): untrained and trained vectors of the whole view and the crop.
2. Kind head: multinomial `LogisticRegression` on the untrained features -> dog face / whole dog / cat face /
   cat in a photo / none (300 Flickr8k development photos whose captions name no dog, cat or pet); its accuracy
   is measured with identities held out (`GroupKFold`).
3. Per kind, the trained weight `a` of the fused cosine is chosen on a grid by the mean of gallery rank-1,
   open-set AUROC (G = 1, 20% unknown, 5 draws) and 1v1 pair ROC-AUC (1,000 random-negative pairs, 3 draws).
4. Per kind, set-vs-set decisions are made on the fused cosine, or on the pair matcher's own score (its adaptive
   s-norm against training dogs) where that has the higher 1v1 ROC-AUC on the validation pairs. Per kind and set
   size (1, 2, 3 photos per side): Platt scaling of that score (`LogisticRegression`'s slope) centred on its
   accuracy-optimal value on validation pairs -> `KindFusion.pair_score` / `slope` / `centres`.
5. The gallery's unknown / reshoot thresholds are calibrated on a mixed validation gallery (all four kinds), and
   per kind on galleries of that kind's animals (5 draws, median): `KindFusion.gallery_*`.
6. Out of sample: for the kinds decided on the fused cosine, 1v1 thresholds fitted on half of the animals are
   measured on the other half, beside the baseline at its best threshold (`cross_validated_decisions`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_pets_quality import mpdd_dogs  # bench/ is the script's own folder

from model_pkg.data import sample_pairs
from model_pkg.data.samplers import split_gallery_queries
from model_pkg.features import reference_features
from model_pkg.fileio import (
    atomic_save_npy,
    atomic_write_json,
    cache_dir,
)
from model_pkg.gallery import GalleryIndex
from model_pkg.intake import KINDS, FusionConfig, KindFusion, embed_photos, fused_vectors, gallery_vectors
from model_pkg.intake.photo_intake import PhotoIntake
from model_pkg.intake.settings import KIND_HEAD_CLASSES, IntakeConfig
from model_pkg.loading import load_arcface_model, load_pair_model
from model_pkg.metrics import choose_threshold
from model_pkg.modeling_utils import model_identity

DATA = Path(os.environ.get("PETMATCH_DATA", "../shared/data"))
GRID = [round(0.1 * i, 1) for i in range(11)]


def validation_photos(splits_file: str, mpdd: str = "all") -> list[tuple[str, str, str, bool]]:
    """-> (path, identity, kind, used for fusion) of every validation photo; `mpdd="val"`: only the 47 MPDD dogs the
    all-pets embedder did not train on."""
    splits = json.loads(Path(splits_file).read_text())
    rng = np.random.default_rng(0)
    rows: list[tuple[str, str, str, bool]] = []

    def add(folder: Path, ids, kind: str, tag: str, fusion: bool) -> None:
        for ident in ids:
            for path in sorted((folder / str(ident)).glob("*.jpg")):
                rows.append((str(path), f"{tag}:{ident}", kind, fusion))

    add(DATA / "dogfacenet", splits["val"], "dog_face", "dfn", True)
    add(DATA / "dogfacenet", sorted(rng.choice(splits["train"], 60, replace=False)), "dog_face", "dfn", False)
    add(DATA / "mpdd", mpdd_dogs(mpdd), "dog_body", "mpdd", True)
    add(DATA / "cats" / "faces", sorted(os.listdir(DATA / "cats" / "faces")), "cat_face", "catface", True)
    add(DATA / "cats" / "photos", sorted(os.listdir(DATA / "cats" / "photos")), "cat_body", "catphoto", True)
    return rows


_DOG_OR_CAT = re.compile(
    r"\b(dogs?|pupp(y|ies)|pups?|cats?|kittens?|animals?|pets?|poodles?|terriers?|retrievers?|collies?|shepherds?|"
    r"labradors?|labs?|greyhounds?|dachshunds?|pugs?|huskies|husky|beagles?|chihuahuas?|spaniels?|bulldogs?)\b",
    re.IGNORECASE,
)


def photos_without_pets(count: int = 300) -> list[str]:
    """Flickr8k development photos none of whose five captions mentions a dog, a cat or a pet: the kind head's
    "none" class (people, streets, landscapes, other animals)."""
    root = DATA / "flickr8k"
    captions: dict[str, list[str]] = {}
    for line in (root / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        key, caption = line.split("\t", 1)
        captions.setdefault(key.split("#")[0], []).append(caption)
    names = [n for n in (root / "Flickr_8k.devImages.txt").read_text().split() if n]
    clean = [n for n in names if not any(_DOG_OR_CAT.search(c) for c in captions.get(n, []))]
    return [str(root / "images" / n) for n in clean[:count]]


def photo_vectors(model, paths: list[str], cache: Path) -> dict[str, np.ndarray]:
    """Untrained (N, 1280) and trained (N, E) vectors and the intake's reshoot reasons, cached by the paths and the
    embedder (its identity hashes its weights and config)."""
    cache = cache.with_name(f"{cache.name}-{model_identity(model).split(':')[-1]}")
    if cache.with_suffix(".json").is_file():
        meta = json.loads(cache.with_suffix(".json").read_text())
        if meta["paths"] == paths:
            return {"u": np.load(f"{cache}-u.npy"), "t": np.load(f"{cache}-t.npy"), "reshoot": np.array(meta["reshoot"])}
    us, ts, reshoot = [], [], []
    start = time.perf_counter()
    for i in range(0, len(paths), 64):
        vectors = embed_photos(model, paths[i : i + 64])
        us.append(vectors.untrained)
        ts.append(vectors.trained)
        reshoot += [r.reshoot or "" for r in vectors.intake]
        print(f"  {i + len(vectors.intake)}/{len(paths)} photos, {time.perf_counter() - start:.0f} s", flush=True)
    out = {"u": np.concatenate(us), "t": np.concatenate(ts), "reshoot": np.array(reshoot)}
    atomic_save_npy(f"{cache}-u.npy", out["u"])
    atomic_save_npy(f"{cache}-t.npy", out["t"])
    atomic_write_json({"paths": paths, "reshoot": reshoot}, cache.with_suffix(".json"))
    return out


def fit_kind_head(u: np.ndarray, kinds: np.ndarray, groups: np.ndarray) -> tuple[dict, float]:
    """Multinomial logistic regression over `KIND_HEAD_CLASSES`; accuracy with identities held out (GroupKFold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    y = np.array([KIND_HEAD_CLASSES.index(k) for k in kinds])
    correct = 0
    for train, test in GroupKFold(n_splits=5).split(u, y, groups):
        head = LogisticRegression(C=1.0, max_iter=2000).fit(u[train], y[train])
        correct += int((head.predict(u[test]) == y[test]).sum())
    head = LogisticRegression(C=1.0, max_iter=2000).fit(u, y)
    weights = {"kind_weights": np.round(head.coef_, 5).tolist(), "kind_bias": np.round(head.intercept_, 5).tolist()}
    return weights, correct / len(y)


def _groups(ids: np.ndarray, paths: np.ndarray) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for ident, path in zip(ids, paths):
        groups.setdefault(str(ident), []).append(str(path))
    return groups


def gallery_scores(vectors: np.ndarray, groups, index: dict[str, int], seeds=range(5)) -> tuple[float, float]:
    rank1 = auroc = 0.0
    for seed in seeds:
        split = split_gallery_queries(groups, 1, 0.2, seed)
        gallery = GalleryIndex(vectors.shape[1], "ip")
        gallery.add(vectors[[index[p] for p in split.gallery_paths]], split.gallery_labels)
        metrics = gallery.evaluate(vectors[[index[p] for p in split.query_paths]], split.query_labels, split.unknown_labels)
        rank1 += metrics["rank1"] / 100
        auroc += metrics["open_set_auroc"]
    return rank1 / len(seeds), auroc / len(seeds)


def pair_cosines(vectors: np.ndarray, groups, index: dict[str, int], size: int, seed: int, pairs: int = 1000):
    drawn = sample_pairs(groups, pairs, set_size=size, seed=seed)

    def mean(paths):
        v = vectors[[index[p] for p in paths]].mean(0)
        return v / np.linalg.norm(v)

    labels = np.array([p.label for p in drawn])
    return labels, np.array([float(mean(p.paths_a) @ mean(p.paths_b)) for p in drawn])


def matcher_scores(matcher, trained: np.ndarray, groups, index: dict[str, int], size: int, seed: int, pairs: int = 1000):
    """The pair matcher's own score (its adaptive s-norm) of the same pairs `pair_cosines` draws."""
    drawn = sample_pairs(groups, pairs, set_size=size, seed=seed)
    t = torch.from_numpy(trained)
    labels = np.array([p.label for p in drawn])
    scores = [matcher.score_photo_embeddings(t[[index[q] for q in p.paths_a]], t[[index[q] for q in p.paths_b]]) for p in drawn]
    return labels, np.array(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="models/arcface-embedder")
    parser.add_argument("--matcher", default="models/pair-matcher", help="the pair matcher whose own score is compared")
    parser.add_argument("--splits", default="train/splits/dogfacenet.json")
    parser.add_argument("--json", required=True, help="write the fit and its validation figures here")
    parser.add_argument(
        "--mpdd", choices=("all", "val"), default="all", help="whole dogs: all of MPDD, or the all-pets split's val dogs"
    )
    parser.add_argument("--write", nargs="*", default=[], help="model folders whose config.json gets intake + fusion")
    parser.add_argument(
        "--keep-kind-head",
        action="store_true",
        help="--write keeps the intake (kind head) already in each config: refitting the fusion alone leaves the model's "
        "identity, and the galleries embedded with it, valid",
    )
    args = parser.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rows = validation_photos(args.splits, args.mpdd)
    paths = np.array([r[0] for r in rows])
    ids = np.array([r[1] for r in rows])
    kinds = np.array([r[2] for r in rows])
    for_fusion = np.array([r[3] for r in rows])
    model = load_arcface_model(args.embedder)
    matcher = load_pair_model(args.matcher)
    base_intake = IntakeConfig().to_dict()
    model.config.intake, model.config.fusion = base_intake, None
    vectors = photo_vectors(model, list(paths), cache_dir() / "fusion-fit")
    u, t = vectors["u"], vectors["t"]
    report: dict = {"photos": len(paths), "reshoot": {}}
    for kind in KINDS:
        sel = kinds == kind
        reasons = [r.split(":")[0] for r in vectors["reshoot"][sel] if r]
        report["reshoot"][kind] = {"photos": int(sel.sum()), "reshoot": len(reasons), "reasons": sorted(set(reasons))}

    none_paths = photos_without_pets()
    intake_only = PhotoIntake(base_intake)
    none_u = np.concatenate(
        [np.stack([r.features for r in intake_only(none_paths[i : i + 32])]) for i in range(0, len(none_paths), 32)]
    )
    head, kind_accuracy = fit_kind_head(
        np.concatenate([u, none_u]),
        np.concatenate([kinds, ["none"] * len(none_u)]),
        np.concatenate([ids, [f"flickr:{i}" for i in range(len(none_u))]]),
    )
    report["kind_head_accuracy_identities_held_out"] = round(kind_accuracy, 4)
    print(f"kind head: {kind_accuracy:.3f} accuracy with identities held out", flush=True)

    index = {p: i for i, p in enumerate(paths)}
    fusion: dict[str, KindFusion] = {}
    report["kinds"] = {}
    for kind in KINDS:
        sel = (kinds == kind) & for_fusion
        groups = _groups(ids[sel], paths[sel])
        table = []
        for a in GRID:
            fused = fused_vectors(t, u, np.full(len(t), a))
            rank1, auroc = gallery_scores(fused, groups, index)
            aucs = [roc_auc_score(*pair_cosines(fused, groups, index, 1, seed)) for seed in range(3)]
            table.append({"trained_weight": a, "rank1": rank1, "open_set_auroc": auroc, "pair_roc_auc": float(np.mean(aucs))})
            print(f"{kind} a={a}: rank1 {rank1:.3f} auroc {auroc:.3f} 1v1 auc {np.mean(aucs):.4f}", flush=True)
        best = max(table, key=lambda r: (r["rank1"] + r["open_set_auroc"] + r["pair_roc_auc"]) / 3)
        a = best["trained_weight"]
        fused = fused_vectors(t, u, np.full(len(t), a))
        # Set-vs-set decisions: the fused cosine, or the pair matcher's own score where it separates pairs better.
        matcher_auc = float(np.mean([roc_auc_score(*matcher_scores(matcher, t, groups, index, 1, seed)) for seed in range(3)]))
        pair_score = "matcher" if matcher_auc > best["pair_roc_auc"] else "fused"
        print(f"{kind}: pair matcher alone 1v1 auc {matcher_auc:.4f} -> decisions on the {pair_score} score", flush=True)

        def scores(size: int, seed: int, pair_score=pair_score, groups=groups, fused=fused):
            if pair_score == "matcher":
                return matcher_scores(matcher, t, groups, index, size, seed)
            return pair_cosines(fused, groups, index, size, seed)

        slopes, centres = [], {}
        for size in (1, 2, 3):
            labels, cosines = zip(*(scores(size, seed) for seed in range(3)))
            y, s = np.concatenate(labels), np.concatenate(cosines)
            centres[str(size)] = round(float(choose_threshold(y, s)), 5)
            slopes.append(float(LogisticRegression(C=100.0).fit(s[:, None], y).coef_[0, 0]))
        fusion[kind] = KindFusion(
            trained_weight=a, slope=round(float(np.mean(slopes)), 3), centres=centres, pair_score=pair_score
        )
        report["kinds"][kind] = {
            "chosen": best,
            "grid": table,
            "matcher_pair_roc_auc": matcher_auc,
            "fusion": fusion[kind].__dict__,
        }

    fusion_config = FusionConfig(fusion)
    reference = reference_features(list(paths))
    baseline = np.stack([reference[p] for p in paths])
    baseline /= np.linalg.norm(baseline, axis=1, keepdims=True)
    fused_kinds = {
        k: fused_vectors(t, u, np.full(len(t), fusion[k].trained_weight)) for k in KINDS if fusion[k].pair_score == "fused"
    }
    report["cross_validated_decisions"] = cross_validated_decisions(fused_kinds, baseline, ids, paths, kinds, for_fusion, index)
    intake = {**base_intake, **head}
    # The mixed gallery: every kind registered together, the vectors the app's gallery stores.
    model.config.intake, model.config.fusion = intake, fusion_config.to_dict()
    kind_of_photo = _predicted_kinds(intake, u)
    fused = fused_vectors(t, u, np.array(fusion_config.weights(kind_of_photo)))
    species = [k.split("_")[0] for k in kind_of_photo]
    g = gallery_vectors(fused, species)
    groups = _groups(ids[for_fusion], paths[for_fusion])
    split = split_gallery_queries(groups, 1, 0.2, 0)
    gallery = GalleryIndex(g.shape[1], "ip")
    gallery.add(g[[index[p] for p in split.gallery_paths]], split.gallery_labels)
    unknown = np.array([lab in set(split.unknown_labels) for lab in split.query_labels])
    q = g[[index[p] for p in split.query_paths]]
    known_labels = [lab for lab, unk in zip(split.query_labels, unknown) if not unk]
    gallery.calibrate(q[~unknown], known_labels, q[unknown], k=20)
    report["gallery_thresholds"] = {"score_threshold": gallery.score_threshold, "margin_threshold": gallery.margin_threshold}
    report["gallery_thresholds_per_kind"] = gallery_thresholds_per_kind(
        g, ids[for_fusion], paths[for_fusion], index, kinds[for_fusion], np.array(kind_of_photo), fusion_config
    )
    report["fusion"] = fusion_config.to_dict()
    report["intake"] = {k: v for k, v in intake.items() if k not in ("kind_weights", "kind_bias")}
    atomic_write_json(report, args.json)
    print(json.dumps({k: report[k] for k in ("reshoot", "gallery_thresholds", "fusion")}, indent=1))
    for folder in args.write:
        config_file = Path(folder) / "config.json"
        config = json.loads(config_file.read_text())
        config["intake"], config["fusion"] = config["intake"] if args.keep_kind_head else intake, fusion_config.to_dict()
        if config.get("model_type") == "petmatch_arcface_embedder":
            config["score_threshold"] = gallery.score_threshold
            config["margin_threshold"] = gallery.margin_threshold
        atomic_write_json(config, config_file)
        print(f"wrote intake + fusion into {config_file}")
    return 0


def gallery_thresholds_per_kind(
    g, ids, paths, index, kinds: np.ndarray, query_kinds: np.ndarray, fusion_config, draws: int = 5
) -> dict:
    """Per kind of photo, the thresholds `GalleryIndex.calibrate` chooses on galleries of that kind's validation
    animals (G = 1, 20% unknown, `draws` draws), each query decided at the thresholds of its kind as the intake reads
    it; the median over draws is stored in `fusion_config`. One kind per gallery: in a mixed validation gallery a
    cat's face photos and its ordinary photos are two identities, so the same cat would count as an impostor."""
    report = {}
    for kind in KINDS:
        sel = kinds == kind
        groups = _groups(ids[sel], paths[sel])
        fits = []
        for seed in range(draws):
            split = split_gallery_queries(groups, 1, 0.2, seed)
            gallery = GalleryIndex(g.shape[1], "ip")
            gallery.add(g[[index[p] for p in split.gallery_paths]], split.gallery_labels)
            rows = np.array([index[p] for p in split.query_paths])
            labels = np.array(split.query_labels)
            unknown = np.isin(labels, list(split.unknown_labels))
            seen_as = query_kinds[rows] == kind
            known, unseen = seen_as & ~unknown, seen_as & unknown
            fit = gallery.calibrate(g[rows[known]], list(labels[known]), g[rows[unseen]], k=20)
            fits.append((float(fit["score_threshold"]), float(fit["margin_threshold"])))
        settings = fusion_config.kinds[kind]
        settings.gallery_score_threshold = round(float(np.median([f[0] for f in fits])), 6)
        settings.gallery_margin_threshold = round(float(np.median([f[1] for f in fits])), 6)  # 1e-6: ties stay "reshoot"
        report[kind] = {"draws": fits, "score": settings.gallery_score_threshold, "margin": settings.gallery_margin_threshold}
    return report


def cross_validated_decisions(fused_by_kind, baseline, ids, paths, kinds, for_fusion, index, halvings: int = 5) -> dict:
    """How the stored thresholds hold on animals they were not fitted on: per kind, the 1v1 threshold chosen on half
    of the animals (random halvings, both ways), the accuracy on the other half's pairs beside the baseline's accuracy
    at its best threshold on those same pairs, and both ROC-AUCs."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    out = {}
    for kind, fused in fused_by_kind.items():
        sel = (kinds == kind) & for_fusion
        animals = sorted(set(ids[sel]))
        rows = []
        for _ in range(halvings):
            half = set(rng.permutation(animals)[: len(animals) // 2])
            for fit_side in (True, False):
                fit = sel & np.array([(i in half) == fit_side for i in ids])
                held = sel & ~fit
                ys, ss = zip(*(pair_cosines(fused, _groups(ids[fit], paths[fit]), index, 1, seed) for seed in range(3)))
                threshold = choose_threshold(np.concatenate(ys), np.concatenate(ss))
                y, s = pair_cosines(fused, _groups(ids[held], paths[held]), index, 1, 11)
                yb, sb = pair_cosines(baseline, _groups(ids[held], paths[held]), index, 1, 11)
                base_acc = float(((sb >= choose_threshold(yb, sb)) == yb).mean())
                rows.append([float(((s >= threshold) == y).mean()), base_acc, roc_auc_score(y, s), roc_auc_score(yb, sb)])
        r = np.array(rows)
        out[kind] = {
            "accuracy_at_threshold_fitted_on_other_animals": float(r[:, 0].mean()),
            "baseline_best_threshold_accuracy": float(r[:, 1].mean()),
            "worst_gap_points": float(100 * (r[:, 0] - r[:, 1]).min()),
            "roc_auc": float(r[:, 2].mean()),
            "baseline_roc_auc": float(r[:, 3].mean()),
        }
        print(f"{kind}: held-out decisions {json.dumps(out[kind])}", flush=True)
    return out


def _predicted_kinds(intake: dict, u: np.ndarray) -> list[str]:
    logits = u @ np.array(intake["kind_weights"]).T + np.array(intake["kind_bias"])
    return [KINDS[i] for i in logits[:, : len(KINDS)].argmax(1)]


if __name__ == "__main__":
    sys.exit(main())
