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

Step 1 (image sets, feature cache, caption embeddings) lives in `bench/recommend_features.py`, steps 3-4's
truth metrics and taus in `bench/recommend_scoring.py`; this file holds the candidates, the scoring loop
and the command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from recommend_features import caption_embeddings, dog_sets, embed_datasets, flickr_sets, model_tag
from recommend_scoring import TRUTH_OF, append_rows, correlate, flickr_t2i_r10, merge, one_shot_rank1

from model_pkg.fileio import atomic_write_json
from model_pkg.recommend.candidates import parse_candidates
from model_pkg.recommend.scores import knn_loo_score, logme

REPO = Path(__file__).resolve().parents[1]


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


def evaluate(args, candidates, feats, timings, datasets, score_dogs, truth_dogs, flickr_train, flickr_dev, log) -> dict:
    dog_index = {p: i for i, p in enumerate(datasets["dogfacenet"][1])}
    flickr_index = {p: i for i, p in enumerate(datasets["flickr8k"][1])}
    score_rows = [dog_index[p] for p, _ in score_dogs]
    score_labels = np.array([d for _, d in score_dogs])
    truth_rows = [dog_index[p] for p, _ in truth_dogs]
    truth_labels = [d for _, d in truth_dogs]
    caps = caption_embeddings(Path(args.cache_dir) if args.cache_dir else None, Path(args.data_root) / "flickr8k", log)
    train_caps = np.stack([caps[p] for p in flickr_train])
    dev_caps = np.stack([caps[p] for p in flickr_dev])
    score_part = flickr_train[: args.flickr_score]
    targets = train_caps[: len(score_part)].mean(axis=1)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    train_rows = [flickr_index[p] for p in flickr_train]
    dev_rows = [flickr_index[p] for p in flickr_dev]
    results = []
    for c in candidates:
        dog, flickr = feats[c.spec]["dogfacenet"], feats[c.spec]["flickr8k"]
        row = {"candidate": c.spec, "feature_dim": int(dog.shape[1])}
        start = time.perf_counter()
        row["dog_logme"] = logme(dog[score_rows], score_labels)
        row["dog_logme_s"] = time.perf_counter() - start
        start = time.perf_counter()
        row["dog_knn_loo"] = knn_loo_score(dog[score_rows], score_labels, k=1)
        row["dog_knn_loo_s"] = time.perf_counter() - start
        start = time.perf_counter()
        row["flickr_logme"] = logme(flickr[train_rows[: len(score_part)]], targets)
        row["flickr_logme_s"] = time.perf_counter() - start
        start = time.perf_counter()
        row["flickr_knn_loo"] = knn_loo_score(flickr[train_rows[: len(score_part)]], targets, k=1)
        row["flickr_knn_loo_s"] = time.perf_counter() - start
        row["dog_one_shot_rank1"] = one_shot_rank1(dog[truth_rows], truth_labels, args.gallery_draws, args.seed)
        start = time.perf_counter()
        row["flickr_t2i_r10"] = flickr_t2i_r10(flickr[train_rows], train_caps, flickr[dev_rows], dev_caps, seed=args.seed)
        row["flickr_probe_s"] = time.perf_counter() - start
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        results.append(row)
    summary = {
        **correlate(results),
        "extraction": timings,
        "protocol": {
            "score_dogs": len(set(score_labels.tolist())),
            "score_photos": len(score_rows),
            "truth_dogs": len(set(truth_labels)),
            "truth_photos": len(truth_rows),
            "gallery_draws": args.gallery_draws,
            "flickr_train": len(flickr_train),
            "flickr_dev": len(flickr_dev),
            "flickr_score_photos": len(score_part),
            "seed": args.seed,
        },
    }
    log(json.dumps({k: summary[k] for k in ("correlation", "mean_weighted_tau", "mean_kendall_tau")}, indent=1))
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    table_rows = []
    for r, c in zip(results, candidates):
        for task, dataset in (("dog", "dogfacenet"), ("flickr", "flickr8k")):
            for s in ("logme", "knn_loo", "combined"):
                table_rows.append(
                    {
                        "time": stamp,
                        "dataset": dataset,
                        "model": c.spec,
                        "model_tag": model_tag(c),
                        "saved_model": c.saved,
                        "image_size": c.image_size,
                        "layer": c.layer or "pooled",
                        "feature_dim": r["feature_dim"],
                        "score": s,
                        "score_value": r[f"{task}_{s}"],
                        "true_metric": TRUTH_OF[task],
                        "true_value": r[TRUTH_OF[task]],
                        "num_candidates": len(results),
                        "protocol": summary["protocol"],
                    }
                )
    if args.table:
        append_rows(Path(args.table), table_rows)
    if args.json:
        atomic_write_json(summary, args.json)
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--splits", default=str(REPO / "train" / "splits" / "dogfacenet.json"))
    parser.add_argument(
        "--candidates", default=None, help="comma-separated specs (default: DEFAULT_CANDIDATES + saved models that exist)"
    )
    parser.add_argument("--cache-dir", default=None, help="shared feature cache folder (optional speed-up)")
    parser.add_argument("--score-dogs", type=int, default=80)
    parser.add_argument("--score-per-dog", type=int, default=4)
    parser.add_argument("--truth-per-dog", type=int, default=4)
    parser.add_argument(
        "--flickr-train", type=int, default=2000, help="Flickr8k train photos (of 4,000) the projection trains on"
    )
    parser.add_argument("--flickr-score", type=int, default=1000, help="Flickr8k train photos the scores see")
    parser.add_argument("--gallery-draws", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extract-only", action="store_true")
    parser.add_argument(
        "--merge",
        default=None,
        help="comma-separated JSON outputs of earlier runs: pool their candidates, recompute the taus into --json",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--table", default=str(REPO / "results" / "backbone_performance.jsonl"))
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge.split(","), args.json)
    torch.set_num_threads(args.threads)
    os.chdir(REPO)  # saved-model candidates are given relative to the repository
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731

    specs = (
        args.candidates.split(",")
        if args.candidates
        else DEFAULT_CANDIDATES + [s for s in OPTIONAL_CANDIDATES if Path(s.split("@")[0]).is_dir()]
    )
    candidates = parse_candidates(specs)
    root = Path(args.data_root)
    score_dogs, truth_dogs = dog_sets(
        root / "dogfacenet", Path(args.splits), args.score_dogs, args.score_per_dog, args.truth_per_dog, args.seed
    )
    flickr_train, flickr_dev = flickr_sets(root / "flickr8k")
    flickr_train = flickr_train[: args.flickr_train]
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    if cache_dir:
        cache_dir.mkdir(parents=True, exist_ok=True)
    datasets = {
        "dogfacenet": (root / "dogfacenet", sorted({p for p, _ in score_dogs + truth_dogs})),
        "flickr8k": (root / "flickr8k", flickr_train + flickr_dev),
    }
    log(
        f"{len(candidates)} candidates; dogs: {len(score_dogs)} score photos, {len(truth_dogs)} truth photos; "
        f"flickr8k: {len(flickr_train)} + {len(flickr_dev)} photos"
    )
    feats, timings = embed_datasets(candidates, datasets, cache_dir, args.batch_size, log)
    if args.extract_only:
        return {"timings": timings}
    return evaluate(args, candidates, feats, timings, datasets, score_dogs, truth_dogs, flickr_train, flickr_dev, log)


if __name__ == "__main__":
    main()
