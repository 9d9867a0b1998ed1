"""Dog quality of an embedder on every protocol, with and without flip TTA and adaptive s-norm (issue 12).

    python bench/bench_dog_quality.py --models imagenet,models/arcface-embedder --split val \
        --json bench/results/dog_quality_val.json
    python bench/bench_dog_quality.py --models models/arcface-embedder --tta none --snorm none,set,photos \
        --pair-seeds 0,1,2,3,4 --split val --json bench/results/dog_quality_val_cohort_stats.json

For each model and variant, every photo of `--split` is embedded once; then
* set vs set: 1v1 and 3v3 pairs with random and hard negatives, drawn exactly as `python -m
  model_pkg.evaluate pair` draws them (same seeds, hard = nearest dog under the untrained ImageNet
  reference); score = cosine of the mean embeddings of the two sets; ROC-AUC and the oracle accuracy
  (threshold chosen on these pairs: for comparing variants, not for publishing);
* gallery: one photo per known dog registered, the others query it, 20% of the dogs unknown
  (`split_gallery_queries`, seed 0); rank-1 / rank-5 and open-set AUROC of the best score.

Variants: `tta=flip` averages each photo's embedding with its mirror image's; `snorm` normalises every
score by the top-`--cohort-top` similarities of each side to a cohort of training dogs (one mean
embedding per training dog): s' = ((s - mu_a) / sd_a + (s - mu_b) / sd_b) / 2 (adaptive s-norm, as in
speaker and face verification); `--snorm set` takes mu and sd of a side from its set's mean embedding,
`--snorm photos` averages its photos' own (the same for 1v1; the pair matcher's `cohort_stats`). `imagenet` is
the untrained EfficientNet-Lite0's pooled feature. `--pair-seeds 0,1,2,3,4` averages five draws of pairs.
Choose variants on `--split val`; report them on `--split test`.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import model_pkg  # noqa: F401
from model_pkg.data import load_image
from model_pkg.data.samplers import split_gallery_queries
from model_pkg.evaluation import draw_pairs, load_groups
from model_pkg.fileio import atomic_write_json
from model_pkg.metrics import retrieval_metrics, verification_metrics
from model_pkg.transforms import create_transform

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_encoder(name: str):
    """`imagenet` or a saved embedder folder, optionally `@SIZE` and `+tta` / `-tta` (the model's flip TTA, which
    averages backbone tokens rather than embeddings, switched on / off whatever its config says) ->
    (encode(pixels) -> (B, D) features, data_config)."""
    if name == "imagenet":
        from model_pkg.backbones import create_backbone

        backbone = create_backbone("tf_efficientnet_lite0").eval()
        return (lambda x: backbone(x).pooled), backbone.data_config
    from model_pkg import ArcFaceEmbedderModel

    overrides = {}
    for suffix, tta in (("+tta", True), ("-tta", False)):  # the model's own flip TTA (`tta_flip`)
        if name.endswith(suffix):
            name, overrides["tta_flip"] = name.removesuffix(suffix), tta
    path, _, size = name.partition("@")  # runs/x/model@192: evaluate at another resolution (FixRes)
    if size:
        overrides["image_size"] = int(size)
    model = ArcFaceEmbedderModel.from_pretrained(path, **overrides).float().eval()
    return (lambda x: model.get_image_features(pixel_values=x)), model.data_config


@torch.no_grad()
def embed(encode, data_config, paths, flip: bool, batch_size: int = 16) -> dict[str, np.ndarray]:
    transform = create_transform(data_config)
    out = {}
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        x = torch.stack([transform(load_image(p)) for p in batch]).contiguous(memory_format=torch.channels_last)
        f = torch.nn.functional.normalize(encode(x).float(), dim=-1)
        if flip:
            f = torch.nn.functional.normalize(f + torch.nn.functional.normalize(encode(x.flip(-1)).float(), dim=-1), dim=-1)
        out.update(zip(batch, f.numpy()))
    return out


def cohort_stats(vectors: np.ndarray, cohort: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    sims = np.sort(vectors @ cohort.T, axis=1)[:, -top:]
    return sims.mean(1), sims.std(1) + 1e-6


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def pair_rows(emb, groups, cohort, top, seeds, pairs, snorm) -> list[dict]:
    """ROC-AUC and oracle accuracy per protocol, each the mean over the pair draws of `seeds`. `snorm`: None (the plain
    cosine), "set" (each side's cohort statistics from its mean embedding) or "photos" (the mean of its photos' own)."""
    rows = []
    photo_stats = None  # each photo's own cohort mean and spread, computed once for every draw
    if snorm == "photos":
        paths = sorted(p for ps in groups.values() for p in ps)
        mu, sd = cohort_stats(np.stack([emb[p] for p in paths]), cohort, top)
        photo_stats = dict(zip(paths, zip(mu, sd)))
    for negatives in ("random", "hard"):
        for k in (1, 3):
            aucs, accs = [], []
            for seed in seeds:
                drawn, _ = draw_pairs(groups, pairs, k, seed, negatives, 32, "bench")
                a = unit(np.stack([np.mean([emb[p] for p in pr.paths_a], 0) for pr in drawn]))
                b = unit(np.stack([np.mean([emb[p] for p in pr.paths_b], 0) for pr in drawn]))
                scores = (a * b).sum(1)
                if snorm:
                    mu_a, sd_a = side_stats(a, [pr.paths_a for pr in drawn], cohort, top, photo_stats)
                    mu_b, sd_b = side_stats(b, [pr.paths_b for pr in drawn], cohort, top, photo_stats)
                    scores = 0.5 * ((scores - mu_a) / sd_a + (scores - mu_b) / sd_b)
                m = verification_metrics(np.array([pr.label for pr in drawn]), scores)
                aucs.append(m["roc_auc"])
                accs.append(m["best_accuracy"])
            rows.append(
                {"protocol": f"{k}v{k} {negatives}", "roc_auc": float(np.mean(aucs)), "best_accuracy": float(np.mean(accs))}
            )
    return rows


def side_stats(vectors, path_sets, cohort, top, photo_stats):
    """Each side's s-norm mean and spread: from its set vector, or with `photo_stats` ({path: (mu, sd)}) the mean of
    its photos' own."""
    if photo_stats is None:
        return cohort_stats(vectors, cohort, top)
    per_side = np.array([np.mean([photo_stats[p] for p in paths], axis=0) for paths in path_sets])  # (B, 2)
    return per_side[:, 0], per_side[:, 1]


def gallery_row(emb, groups, cohort, top, seed, snorm) -> dict:
    split = split_gallery_queries(groups, 1, 0.2, seed)
    g = np.stack([emb[p] for p in split.gallery_paths])
    q = np.stack([emb[p] for p in split.query_paths])
    sim = q @ g.T
    if snorm:
        mu_q, sd_q = cohort_stats(q, cohort, top)
        mu_g, sd_g = cohort_stats(g, cohort, top)
        sim = 0.5 * ((sim - mu_q[:, None]) / sd_q[:, None] + (sim - mu_g[None]) / sd_g[None])
    unknown = set(split.unknown_labels)
    is_unknown = np.array([lab in unknown for lab in split.query_labels])
    known_labels = np.array(split.query_labels, dtype=object)[~is_unknown]
    r = retrieval_metrics(known_labels, np.array(split.gallery_labels, dtype=object), sim[~is_unknown], ks=(1, 5))
    best = sim.max(1)
    auroc = roc_auc_score((~is_unknown).astype(int), best)
    return {
        "protocol": "gallery",
        "rank1": r["r1"] / 100,
        "rank5": r["r5"] / 100,
        "open_set_auroc": float(auroc),
    }  # r@k in percent


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="imagenet,models/arcface-embedder")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "dogfacenet"))
    parser.add_argument("--splits", default=os.path.join(ROOT, "train", "splits", "dogfacenet.json"))
    parser.add_argument("--split", default="val")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the gallery split's seed")
    parser.add_argument("--pair-seeds", default="0", help="pair draws, comma-separated: each row is their mean")
    parser.add_argument("--snorm", default="none,set", help="none, set (statistics of the set vector), photos (of each photo)")
    parser.add_argument("--cohort-dogs", type=int, default=300, help="training dogs in the s-norm cohort")
    parser.add_argument("--cohort-top", type=int, default=50, help="top cohort scores per side (adaptive s-norm)")
    parser.add_argument("--tta", default="none,flip")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    seeds = [int(x) for x in args.pair_seeds.split(",")]
    if not set(args.snorm.split(",")) <= {"none", "set", "photos"}:
        parser.error(f"--snorm {args.snorm!r}: give none, set and/or photos, comma-separated")
    if args.threads:
        torch.set_num_threads(args.threads)
    groups, _ = load_groups(args.data, args.splits, args.split, None)
    train_groups, _ = load_groups(args.data, args.splits, "train", None)
    rng = np.random.default_rng(0)
    cohort_dogs = sorted(rng.choice(sorted(train_groups), size=min(args.cohort_dogs, len(train_groups)), replace=False))
    cohort_paths = [p for d in cohort_dogs for p in train_groups[d][:2]]
    paths = sorted(p for ps in groups.values() for p in ps)
    rows = []
    for name in args.models.split(","):
        encode, data_config = load_encoder(name)
        for tta in args.tta.split(","):
            start = time.perf_counter()
            emb = embed(encode, data_config, paths + cohort_paths, flip=tta == "flip")
            cohort = unit(np.stack([np.mean([emb[p] for p in train_groups[d][:2]], 0) for d in cohort_dogs]))
            for snorm in args.snorm.split(","):
                norm = None if snorm == "none" else snorm
                variant = {"model": name, "split": args.split, "tta": tta, "snorm": snorm}
                for r in pair_rows(emb, groups, cohort, args.cohort_top, seeds, args.pairs, norm):
                    rows.append({**variant, **r})
                rows.append({**variant, **gallery_row(emb, groups, cohort, args.cohort_top, args.seed, norm is not None)})
            print(f"{name} tta={tta}: {time.perf_counter() - start:.0f} s", flush=True)
    print("\n| model | TTA | s-norm | protocol | ROC-AUC | best acc. | rank-1 | rank-5 | open-set AUROC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.3f}" if k in r else "" for k in ("roc_auc", "best_accuracy", "rank1", "rank5", "open_set_auroc")]
        print(f"| {r['model']} | {r['tta']} | {r['snorm']} | {r['protocol']} | " + " | ".join(cells) + " |")
    if args.json:
        atomic_write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
