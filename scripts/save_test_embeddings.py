"""Embeddings of the test dogs' photos, saved small for the dashboard (embedding map, "most confused dogs").

    python scripts/save_test_embeddings.py --model models/arcface-embedder \
        --out bench/results/embeddings/arcface_embedder_test.npz

Every photo of every `--split` dog in the saved split file is embedded with the shipped embedder (its own
eval transform, image size and flip TTA: `model_pkg.arcface.training.embed_paths`, the code the gallery
uses). The .npz holds `embeddings` (N, D) float16, L2-normalised (float16 keeps cosines to ~1e-3 at half
the size); `labels` (N,) the dog ids; `paths` (N,) each photo relative to the data root
(`dogfacenet/<dog>/<photo>.jpg`, no machine path), so the dashboard finds the thumbnails under whatever
`PETMATCH_DATA` points to; `model` and `split` (what made it). Written atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from model_pkg.arcface.embedding import embed_paths
from model_pkg.fileio import atomic_write
from model_pkg.loading import load_arcface_model

ROOT = Path(__file__).resolve().parents[1]


PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


def split_photos(data_root: Path, dataset: str, splits_file: Path, split: str) -> list[str]:
    """`<dataset>/<dog>/<photo>` of every photo of the split's dogs, relative to `data_root`, sorted."""
    splits = json.loads(splits_file.read_text())
    if split not in splits:
        raise SystemExit(f"{splits_file} has no split {split!r} (it has {sorted(splits)})")
    photos = []
    for dog in splits[split]:
        folder = data_root / dataset / str(dog)
        if not folder.is_dir():
            raise SystemExit(f"no photos of dog {dog} at {folder}: give the data root with --data (or PETMATCH_DATA)")
        photos += [f"{dataset}/{dog}/{p.name}" for p in sorted(folder.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES]
    return photos


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/arcface-embedder")
    parser.add_argument("--data", default=os.environ.get("PETMATCH_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--dataset", default="dogfacenet", help="folder under --data with one folder per dog")
    parser.add_argument("--splits", default=str(ROOT / "train" / "splits" / "dogfacenet.json"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "embeddings" / "arcface_embedder_test.npz"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    data_root = Path(args.data)
    photos = split_photos(data_root, args.dataset, Path(args.splits), args.split)
    model = load_arcface_model(args.model)
    start = time.perf_counter()
    with torch.inference_mode():
        vectors = embed_paths(model, [str(data_root / p) for p in photos])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    seconds = time.perf_counter() - start

    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        embeddings=vectors.astype(np.float16),
        labels=np.array([p.split("/")[1] for p in photos]),
        paths=np.array(photos),
        model=np.array(Path(args.model).as_posix() if not Path(args.model).is_absolute() else Path(args.model).name),
        split=np.array(args.split),
    )
    out = Path(args.out)
    atomic_write(out, lambda fh: fh.write(buffer.getvalue()), binary=True)
    dogs = len({p.split("/")[1] for p in photos})
    print(
        f"{len(photos)} photos of {dogs} {args.split} dogs embedded in {seconds:.1f} s -> {out} "
        f"({out.stat().st_size / 1e6:.2f} MB)"
    )
    return out


if __name__ == "__main__":
    main()
