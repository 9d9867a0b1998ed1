"""Speed of the intake's path on 2 cores: a gallery identify of one full-resolution phone photo, and a 3 vs 3 match.

    python bench/bench_intake_speed.py --json bench/results/intake_speed.json

The phone photo is a 4,032 x 3,024 JPEG (a cat photo of tests/photos enlarged onto a room-coloured scene, quality
90). "identify" is what `PhotoGallery.identify` runs: loading (draft-decoded), the intake (two passes of the
untrained Lite0), the trained embedder on the whole view and the crop, the fusion, and the kNN vote in the shipped
demo gallery; "match 3v3" is `match_sets` on three such photos per side. Warm: three runs first, then the median and
90th percentile of `--runs` runs. Set `--threads` to the cores the app gets (the app's default is torch's).
`PETMATCH_INTAKE_ONNX=0` runs the intake's network on PyTorch instead of ONNX Runtime (`intake_runs_on` says which).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_pkg.fileio import atomic_write_json
from model_pkg.gallery import GalleryIndex
from model_pkg.intake.embedding import embed_photos
from model_pkg.intake.reference import reference_features
from model_pkg.loading import load_arcface_model, load_pair_model
from model_pkg.pair_matcher.pipeline import match_sets

ROOT = Path(__file__).resolve().parents[1]


def phone_photo(folder: Path, source: Path, name: str) -> str:
    scene = Image.new("RGB", (4032, 3024), (214, 204, 188))
    cat = Image.open(source).convert("RGB")
    scene.paste(cat.resize((cat.width * 3, cat.height * 3), Image.Resampling.BICUBIC), (1500, 600))
    path = folder / name
    scene.save(path, quality=90)
    return str(path)


def timed(fn, runs: int) -> dict:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(float(np.median(times)), 1), "p90_ms": round(float(np.percentile(times, 90)), 1), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="models/arcface-embedder")
    parser.add_argument("--matcher", default="models/pair-matcher")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    embedder, matcher = load_arcface_model(args.embedder), load_pair_model(args.matcher)
    reference_features().ready.wait()  # the intake's ONNX session, attached in the background, before any timing
    gallery = GalleryIndex.load(ROOT / "app" / "assets" / "demo_gallery")
    cats = sorted((ROOT / "tests" / "photos" / "cat_photos").glob("*/*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        photos = [phone_photo(Path(tmp), source, f"phone{i}.jpg") for i, source in enumerate(cats[:6])]

        def identify() -> None:
            vectors = embed_photos(embedder, [photos[0]])
            gallery.classify(vectors.gallery, k=int(embedder.config.gallery_k))

        result = {
            "photo": "4032 x 3024 JPEG",
            "threads": args.threads,
            "intake_runs_on": reference_features().source,
            "identify": timed(identify, args.runs),
            "match_3v3": timed(lambda: match_sets(matcher, photos[:3], photos[3:6]), max(args.runs // 4, 3)),
        }
    atomic_write_json(result, args.json)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
