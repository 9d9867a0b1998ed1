"""Text search benchmarks: dev retrieval quality of saved dual encoders, query latency on a 5,000-image
database, and database build speed.

    python bench/bench_text_search.py quality --models models/dual-encoder,runs/dual-encoder-lstm-baseline/model \
        --cache-dir /work/feature_cache --json bench/results/text_search_quality.json
    python bench/bench_text_search.py speed --model models/dual-encoder --cache-dir /work/feature_cache \
        --json bench/results/text_search_speed.json

quality: every dev image against all 5,000 dev captions (the protocol of `python -m model_pkg.evaluate
text-search`). `--cache-dir` (optional) reuses frozen-tower outputs of the shared feature cache
(`flickr8k__tf_efficientnet_lite0__224__pooled.npz`, `flickr8k__all-MiniLM-L6-v2__0__meanpool.npz`) for
models whose towers are exactly those frozen towers; the numbers are the same as from pixels and text,
only faster. Without it, or for other models, everything runs through the model.

speed: the database holds all 5,000 Flickr8k photos (embedded from cached pooled features when given,
else from pixels); each query is `ImageSearchEngine.search_database(text, top_k=10)`: tokenize, text
tower, projection, exact faiss inner-product search (with a query bank, over the rows of `database_vectors`). Build speed is `build_image_database` from JPEG
files (decode, resize, image tower, projection, index) on `--build-images` photos.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import model_pkg  # noqa: F401
from model_pkg.dual_encoder.data import caption_pairs, load_flickr8k_splits
from model_pkg.dual_encoder.evaluation import evaluate_retrieval, flat_metrics
from model_pkg.dual_encoder.search import ImageSearchEngine, database_vectors, query_vectors
from model_pkg.fileio import atomic_write_json
from model_pkg.loading import load_dual_model

QUERIES = [
    "a black dog running on the beach",
    "two children playing in a fountain",
    "a man riding a bike down a dirt road",
    "a girl in a pink dress",
    "people walking on a snowy street",
    "a brown dog catching a frisbee",
    "a surfer riding a wave",
    "a group of people standing in front of a building",
    "ein Hund im Schnee",
    "a climber on a rock wall",
]


def _cached(model, cache_dir: str | None, data_dir: str, paths, keys):
    """Cached frozen-tower outputs for this model's towers, or (None, None)."""
    if not cache_dir:
        return None, None
    vc, tc = model.config.vision_config, model.config.text_config
    img = txt = None
    image_file = os.path.join(cache_dir, f"flickr8k__{vc.backbone}__{vc.image_size}__pooled.npz")
    if vc.freeze and vc.pooling == "timm" and os.path.isfile(image_file):
        with np.load(image_file) as npz:
            where = {os.path.normpath(os.path.join(data_dir, p)): i for i, p in enumerate(npz["paths"])}
            img = torch.from_numpy(npz["features"][[where[os.path.normpath(p)] for p in paths]])
    text_file = os.path.join(cache_dir, f"flickr8k__{tc.model_name_or_path}__0__meanpool.npz")
    if tc.tower == "transformers" and tc.freeze and os.path.isfile(text_file) and keys is not None:
        with np.load(text_file) as npz:
            where = {str(k): i for i, k in enumerate(npz["paths"])}
            txt = torch.from_numpy(npz["features"][[where[k] for k in keys]])
    return img, txt


def quality(args) -> dict:
    splits = load_flickr8k_splits(args.data, split_lists={"dev": "Flickr_8k.devImages.txt"})
    paths, captions, owner = caption_pairs(splits["dev"])
    keys = [f"{n}#{j}" for n, caps in zip(splits["dev"]["image_id"][:], splits["dev"]["captions"][:]) for j in range(len(caps))]
    rows = []
    for name in args.models.split(","):
        model = load_dual_model(name)
        start = time.perf_counter()
        img, txt = _cached(model, args.cache_dir, args.data, paths, keys)
        result = evaluate_retrieval(model, paths, captions, owner, image_features=img, text_features=txt)
        check = {}
        if img is not None and args.check_pixels:  # the cache gives the same embeddings as the pixels
            from model_pkg.dual_encoder.search import embed_images

            n = args.check_pixels
            with torch.no_grad():
                cached = model.get_image_features(image_features=img[:n]).numpy()
            check["image_max_abs_diff"] = float(np.abs(embed_images(model, paths[:n])[0] - cached).max())
        if txt is not None and args.check_pixels:
            with torch.no_grad():
                cached = model.get_text_features(text_features=txt[: args.check_pixels]).numpy()
            check["text_max_abs_diff"] = float(np.abs(model.encode_text(captions[: args.check_pixels]).numpy() - cached).max())
        rows.append(
            {
                "model": name,
                **result,
                "flat": flat_metrics(result),
                "cached_image_features": img is not None,
                "cached_text_features": txt is not None,
                "cache_vs_model_check": check,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        t, i = result["text_to_image"], result["image_to_text"]
        print(
            f"| {name} | {t['r1']:.1f} / {t['r5']:.1f} / {t['r10']:.1f} / {t['mrr']:.3f} | "
            f"{i['r1']:.1f} / {i['r5']:.1f} / {i['r10']:.1f} / {i['mrr']:.3f} |",
            flush=True,
        )
    return {"protocol": "Flickr8k dev: 1,000 images x 5,000 captions", "results": rows}


def speed(args) -> dict:
    model = load_dual_model(args.model)
    engine = ImageSearchEngine(model, batch_size=args.batch_size)
    names = sorted(os.listdir(os.path.join(args.data, "images")))
    paths = [os.path.join(args.data, "images", n) for n in names]
    out = {"model": args.model, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}

    # Build speed from JPEG files.
    subset = paths[: args.build_images]
    start = time.perf_counter()
    engine.build_image_database(subset)
    seconds = time.perf_counter() - start
    out["build"] = {"images": len(subset), "seconds": round(seconds, 2), "images_per_second": round(len(subset) / seconds, 2)}
    print(f"build: {len(subset)} photos in {seconds:.1f}s = {len(subset) / seconds:.2f} photos/s", flush=True)

    # The 5,000-photo database.
    img, _ = _cached(model, args.cache_dir, args.data, paths, None)
    if img is not None:
        from model_pkg.gallery import GalleryIndex

        with torch.no_grad():
            rows = database_vectors(model, model.get_image_features(image_features=img).numpy())
        database = GalleryIndex(rows.shape[1], "ip", approximate_above=200_000, model_id=engine.model_id)
        database.add(rows, paths, metadata=[{"path": p} for p in paths])
        engine.database = database
        out["database_source"] = "cached pooled features -> projection (the same vectors as from pixels)"
    else:
        engine.build_image_database(paths)
        out["database_source"] = "pixels"
    out["database_size"] = len(engine.database)

    for q in QUERIES[:2]:
        engine.search_database(q)  # warm-up
    times = []
    for _ in range(args.repeats):
        for q in QUERIES:
            t0 = time.perf_counter()
            engine.search_database(q, top_k=10)
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    out["query_ms"] = {
        "median": round(statistics.median(times), 2),
        "p90": round(times[int(0.9 * (len(times) - 1))], 2),
        "max": round(times[-1], 2),
        "queries": len(times),
    }
    queries = query_vectors(engine.model, engine.model.encode_text(QUERIES).numpy())
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        engine.database.search(queries, k=10)
    out["index_only_ms_per_query"] = round((time.perf_counter() - t0) * 1000 / (args.repeats * len(QUERIES)), 3)
    print(
        f"query on {len(engine.database)} photos: median {out['query_ms']['median']} ms, p90 {out['query_ms']['p90']} ms; "
        f"faiss search alone {out['index_only_ms_per_query']} ms/query",
        flush=True,
    )
    out["example"] = {q: [os.path.basename(h.path) for h in engine.search_database(q, top_k=3)] for q in QUERIES[:3]}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--models", required=True, help="comma-separated saved DualEncoderModel folders")
    q.add_argument("--check-pixels", type=int, default=32, help="compare cached and model embeddings on this many dev items")
    s = sub.add_parser("speed")
    s.add_argument("--model", required=True)
    s.add_argument("--build-images", type=int, default=200)
    s.add_argument("--repeats", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=32)
    for p in (q, s):
        p.add_argument("--data", default="../shared/data/flickr8k")
        p.add_argument("--cache-dir", default=None, help="shared feature cache (optional speed-up)")
        p.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    result = quality(args) if args.what == "quality" else speed(args)
    atomic_write_json(result, args.json)


if __name__ == "__main__":
    main()
