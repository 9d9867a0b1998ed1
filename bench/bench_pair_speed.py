"""Pair-matcher speed on this machine: backbone images/s, and 3v3 match latency cold and with cached tokens.

    python bench/bench_pair_speed.py --model models/pair-matcher --json bench/results/pair_speed.json

cold   = 6 JPEG files -> decode, transform, backbone, set pooling, head (what `match_sets` does).
cached = the 6 photos' backbone tokens are already known (a gallery or an earlier query): head only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from model_pkg.data import load_image
from model_pkg.pair_matcher import PairMatcherModel
from model_pkg.pair_matcher.pipeline import match_sets
from model_pkg.transforms import create_transform

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "dogfacenet")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2), "runs": len(ms)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/pair-matcher")
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    model = PairMatcherModel.from_pretrained(args.model).eval()
    dogs = sorted(os.listdir(args.data))[:2]
    photos = [sorted(os.path.join(args.data, d, f) for f in os.listdir(os.path.join(args.data, d)))[:3] for d in dogs]
    transform = create_transform(model.data_config)
    batch = torch.stack([transform(load_image(p)) for p in photos[0] * (args.batch_size // 3 + 1)][: args.batch_size])

    with torch.no_grad():
        model.embed_photos(batch)  # warm-up
        backbone_ms = timed(lambda: model.embed_photos(batch), max(3, args.repeats // 3))
        match_sets(model, photos[0], photos[1])  # warm-up
        cold_ms = timed(lambda: match_sets(model, photos[0], photos[1]), args.repeats)
        tok_a = model.embed_photos(torch.stack([transform(load_image(p)) for p in photos[0]]))[None]
        tok_b = model.embed_photos(torch.stack([transform(load_image(p)) for p in photos[1]]))[None]
        cached_ms = timed(lambda: model.predict_proba(tokens_a=tok_a, tokens_b=tok_b), args.repeats * 5)

    result = {
        "model": args.model,
        "backbone": model.config.backbone,
        "image_size": model.config.image_size,
        "threads": torch.get_num_threads(),
        "backbone_images_per_s": round(args.batch_size / (statistics.median(backbone_ms) / 1000), 1),
        "match_3v3_cold": summary(cold_ms),
        "match_3v3_cached_tokens": summary(cached_ms),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
