"""Backbone recommendation benchmark: do the cheap scores rank backbones like their true downstream quality?

    nice -n 10 python bench/bench_recommend.py --cache-dir /work/feature_cache \
        --json bench/results/recommend.json --table results/backbone_performance.jsonl

For every candidate (default: `DEFAULT_CANDIDATES`, EfficientNet-Lite0 / Lite2 at several input sizes and
layers, plus our saved models that exist) this

1. embeds (one forward pass per model and size, all layers at once; cached as
   `{cache}/{dataset}__{model}__{size}__{layer}.npz` when `--cache-dir` is given):
   * a *score sample* of the shared dogs: `--score-dogs` training-split dogs, `--score-per-dog` photos each;
   * the test-split dogs (`train/splits/dogfacenet.json`), at most `--truth-per-dog` photos each;
   * the 5,000 shared Flickr8k photos (4,000 train, 1,000 dev);
2. scores it as `recommend_backbones` does (LogME, kNN leave-one-out accuracy, their rank average) on the
   dog score sample; for Flickr8k, where there are no classes, LogME of the features against the mean
   MiniLM-L6 caption embedding of each photo (LogME's regression form) and the kNN analogue (mean cosine
   between a photo's caption embedding and that of its leave-one-out nearest photo), on `--flickr-score`
   train photos;
3. measures the truth:
   * `dog_one_shot_rank1`: one-shot gallery rank-1 on the test dogs (one random photo per dog registered,
     the others are queries, cosine 1-NN), averaged over `--gallery-draws` random galleries;
   * `flickr_t2i_r10`: text->image R@10 (percent) on the 1,000 dev photos after a LiT-style linear
     projection: frozen image features -> a linear map into the frozen mean-pooled all-MiniLM-L6-v2
     caption space, trained with a contrastive loss on the 4,000 train photos (text tower frozen);
4. reports Kendall tau and weighted tau (scipy.stats) of each score against each truth and appends every
   (dataset, model, score, true metric) row to the results table.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_pkg.recommend.candidates import Candidate, FeatureExtractor, parse_candidates  # noqa: E402

DEFAULT_CANDIDATES = [
    "models/pair-matcher@224:pooled",
    "models/pair-matcher@224:stage5",
    "tf_efficientnet_lite0@224:pooled",
    "tf_efficientnet_lite0@224:stage7",
    "tf_efficientnet_lite0@224:stage5",
    "tf_efficientnet_lite0@224:stage3",
    "tf_efficientnet_lite2@192:pooled",
    "tf_efficientnet_lite2@192:stage7",
    "tf_efficientnet_lite2@192:stage5",
    "tf_efficientnet_lite0@160:pooled",
    "tf_efficientnet_lite0@160:stage5",
    "tf_efficientnet_lite0@128:pooled",
    "tf_efficientnet_lite0@128:stage5",
]
OPTIONAL_CANDIDATES = ["models/arcface-embedder@224:embedding", "models/arcface-embedder@224:pooled"]


# --------------------------------------------------------------------------- #
# Image sets
# --------------------------------------------------------------------------- #
def dog_sets(root: Path, splits_file: Path, score_dogs: int, score_per_dog: int, truth_per_dog: int, seed: int):
    """-> (score sample, truth set): lists of (relative path, dog id)."""
    splits = json.loads(splits_file.read_text())
    rng = random.Random(seed)

    def photos(dog: str) -> list[str]:
        return sorted(f"{dog}/{name}" for name in os.listdir(root / dog) if name.lower().endswith(".jpg"))

    train = [d for d in splits["train"] if len(photos(d)) >= 2]
    score = []
    for dog in sorted(rng.sample(train, min(score_dogs, len(train)))):
        files = photos(dog)
        score += [(p, dog) for p in sorted(rng.sample(files, min(score_per_dog, len(files))))]
    truth = []
    for dog in splits["test"]:
        files = photos(dog)
        if len(files) >= 2:
            truth += [(p, dog) for p in sorted(rng.sample(files, min(truth_per_dog, len(files))))]
    return score, truth


def flickr_sets(root: Path) -> tuple[list[str], list[str]]:
    read = lambda name: [line.strip() for line in (root / name).read_text().splitlines() if line.strip()]  # noqa: E731
    return [f"images/{n}" for n in read("Flickr_8k.trainImages.txt")], [f"images/{n}" for n in read("Flickr_8k.devImages.txt")]


# --------------------------------------------------------------------------- #
# Feature cache
# --------------------------------------------------------------------------- #
def model_tag(candidate: Candidate) -> str:
    """Cache name of a candidate's model: the timm name, or a saved folder's name + a hash of its weights."""
    if not candidate.saved:
        return candidate.model
    folder = Path(candidate.model)
    digest = hashlib.sha1()
    for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
        digest.update(f.read_bytes())
    return f"{folder.name}-{digest.hexdigest()[:8]}"


def cache_file(cache_dir: Path, dataset: str, tag: str, size: int, layer: str) -> Path:
    return cache_dir / f"{dataset}__{tag}__{size}__{layer}.npz"


def load_cached(path: Path, wanted: list[str]) -> np.ndarray | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        index = {p: i for i, p in enumerate(z["paths"].tolist())}
        if not all(p in index for p in wanted):
            return None
        return z["features"][[index[p] for p in wanted]].astype(np.float32)


def save_npz(path: Path, features: np.ndarray, paths: list[str]) -> None:
    tmp = path.with_name(path.name[: -len(".npz")] + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, features=features.astype(np.float32), paths=np.array(paths))
    os.replace(tmp, path)


def embed_datasets(candidates, datasets: dict, cache_dir: Path | None, batch_size: int, log) -> tuple[dict, dict]:
    """-> ({spec: {dataset: (N, C)}}, {pass: extraction seconds per dataset}). `datasets`: {name: (root, paths)}."""
    groups: dict = {}
    for c in candidates:
        groups.setdefault(c.pass_key, []).append(c)
    feats: dict = {c.spec: {} for c in candidates}
    timings: dict = {}
    for key, members in groups.items():
        extractor = None
        tag = model_tag(members[0])
        for dataset, (root, paths) in datasets.items():
            size = members[0].image_size
            layers = {c.spec: c.layer or "pooled" for c in members}
            missing = []
            for c in members:
                cached = load_cached(cache_file(cache_dir, dataset, tag, size, layers[c.spec]), paths) if cache_dir else None
                if cached is None:
                    missing.append(c)
                else:
                    feats[c.spec][dataset] = cached
            if not missing:
                log(f"{tag}@{size} {dataset}: all layers cached")
                continue
            extractor = extractor or FeatureExtractor(*key)
            wanted = sorted({layers[c.spec] for c in missing})
            start = time.perf_counter()
            out = extractor([str(root / p) for p in paths], wanted, batch_size=batch_size)
            seconds = time.perf_counter() - start
            timings[f"{tag}@{size}/{dataset}"] = {"seconds": seconds, "images": len(paths), "layers": wanted}
            log(f"{tag}@{size} {dataset}: {len(paths)} photos, layers {wanted} in {seconds:.0f}s")
            for c in missing:
                feats[c.spec][dataset] = out[layers[c.spec]]
            if cache_dir:
                for layer in wanted:
                    target = cache_file(cache_dir, dataset, tag, size, layer)
                    old_paths, old = [], None
                    if target.is_file():
                        with np.load(target) as z:
                            old_paths, old = z["paths"].tolist(), z["features"]
                    keep = [i for i, p in enumerate(old_paths) if p not in set(paths)]
                    merged = out[layer] if old is None or not keep else np.concatenate([old[keep], out[layer]])
                    save_npz(target, merged, [old_paths[i] for i in keep] + list(paths))
    return feats, timings


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--splits", default=str(REPO / "train" / "splits" / "dogfacenet.json"))
    parser.add_argument("--candidates", default=None, help="comma-separated specs (default: DEFAULT_CANDIDATES + saved models that exist)")
    parser.add_argument("--cache-dir", default=None, help="shared feature cache folder (optional speed-up)")
    parser.add_argument("--score-dogs", type=int, default=80)
    parser.add_argument("--score-per-dog", type=int, default=4)
    parser.add_argument("--truth-per-dog", type=int, default=4)
    parser.add_argument("--flickr-train", type=int, default=2000, help="Flickr8k train photos (of 4,000) the projection trains on")
    parser.add_argument("--flickr-score", type=int, default=1000, help="Flickr8k train photos the scores see")
    parser.add_argument("--gallery-draws", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--table", default=str(REPO / "results" / "backbone_performance.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.chdir(REPO)  # saved-model candidates are given relative to the repository
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    specs = args.candidates.split(",") if args.candidates else DEFAULT_CANDIDATES + [
        s for s in OPTIONAL_CANDIDATES if Path(s.split("@")[0]).is_dir()
    ]
    candidates = parse_candidates(specs)
    root = Path(args.data_root)
    score_dogs, truth_dogs = dog_sets(root / "dogfacenet", Path(args.splits), args.score_dogs, args.score_per_dog,
                                      args.truth_per_dog, args.seed)
    flickr_train, flickr_dev = flickr_sets(root / "flickr8k")
    flickr_train = flickr_train[: args.flickr_train]
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    if cache_dir:
        cache_dir.mkdir(parents=True, exist_ok=True)
    datasets = {
        "dogfacenet": (root / "dogfacenet", sorted({p for p, _ in score_dogs + truth_dogs})),
        "flickr8k": (root / "flickr8k", flickr_train + flickr_dev),
    }
    log(f"{len(candidates)} candidates; dogs: {len(score_dogs)} score photos, {len(truth_dogs)} truth photos; "
        f"flickr8k: {len(flickr_train)} + {len(flickr_dev)} photos")
    feats, timings = embed_datasets(candidates, datasets, cache_dir, args.batch_size, log)
    if args.extract_only:
        return {"timings": timings}
    from bench_recommend_eval import evaluate  # noqa: E402  (scoring and truth: below, once features exist)

    return evaluate(args, candidates, feats, timings, datasets, score_dogs, truth_dogs, flickr_train, flickr_dev, log)


if __name__ == "__main__":
    main()
