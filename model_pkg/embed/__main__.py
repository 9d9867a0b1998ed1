"""`python -m model_pkg.embed --model DIR --images DIR --out DIR`: the command line of `model_pkg.embed`.

Its `--help` is the package's docstring (the output folder, resuming, several processes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch

from . import EmbeddingsError, embed_collection
from . import __doc__ as DESCRIPTION


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_pkg.embed", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="a saved ArcFace embedder folder (e.g. models/arcface-embedder)")
    parser.add_argument("--images", required=True, help="a folder of photos (recursive) or a saved datasets folder")
    parser.add_argument("--out", required=True, help="the embeddings folder (created; an existing one is resumed)")
    parser.add_argument("--shard-size", type=int, default=4096, help="photos per shard (the unit of resuming)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = embed_collection(args.model, args.images, args.out, args.shard_size, args.batch_size, args.num_workers)
    except EmbeddingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    from accelerate import PartialState

    if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        print(
            f"{manifest['num_embeddings']} embeddings in {len(manifest['shards'])} shards, {len(manifest['failed'])} "
            f"unreadable photos, complete={manifest['complete']}: {args.out}"
        )
    return manifest


if __name__ == "__main__":
    main()
