"""`python -m model_pkg.gallery build --embeddings DIR --out DIR`: a faiss index from sharded embeddings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .. import vector_index
from ..embedding_store import EmbeddingsError
from ..vector_index import BUILD_RERANK, KINDS, RERANK_FROM_DISK, VectorIndexError, build_from_embeddings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m model_pkg.gallery build --embeddings DIR --out DIR [...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m model_pkg.gallery",
        description=vector_index.__doc__,  # index kinds, how a build runs
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a faiss index folder from sharded embeddings (python -m model_pkg.embed)")
    b.add_argument("--embeddings", required=True, help="an embeddings folder written by python -m model_pkg.embed")
    b.add_argument("--out", required=True, help="the index folder to write (replaced atomically if it exists)")
    b.add_argument("--index", default="auto", choices=("auto", *KINDS), help="index kind (auto: by size, see choose_spec)")
    b.add_argument(
        "--nlist",
        type=int,
        default=None,
        help="IVF cells (default: a power of two near sqrt(N) for IVF-PQ, 4 sqrt(N) for IVF-Flat and on-disk lists)",
    )
    b.add_argument(
        "--nprobe", type=int, default=None, help="IVF cells scanned per query (default: a 16th of the cells for IVF-PQ)"
    )
    b.add_argument(
        "--pq-m", type=int, default=None, help="IVF-PQ sub-quantizers (default dim/2 codes of 4 bits; dim/4 bytes on disk)"
    )
    disk = b.add_mutually_exclusive_group()
    disk.add_argument(
        "--on-disk", dest="on_disk", action="store_true", default=None, help="inverted lists in a memory-mapped file"
    )
    disk.add_argument("--in-memory", dest="on_disk", action="store_false", help="never use on-disk inverted lists")
    b.add_argument(
        "--rerank",
        type=int,
        default=None,
        help=f"IVF-PQ: re-score k x this many candidates from a float16 copy (default {BUILD_RERANK}, on disk "
        f"{RERANK_FROM_DISK}; 1: none)",
    )
    b.add_argument("--max-memory-gb", type=float, default=None, help="memory the index may use (default: half the machine's)")
    b.add_argument("--part", default=None, help="I/S: index only every S-th embeddings shard from the I-th (one of S parts)")
    b.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    part = None
    if args.part:
        try:
            i, count = (int(v) for v in args.part.split("/"))
        except ValueError:
            parser.error(f"--part must look like 0/4 (part I of S), got {args.part!r}")
        part = (i, count)
    try:
        return build_from_embeddings(
            args.embeddings,
            args.out,
            args.index,
            args.nlist,
            args.nprobe,
            args.pq_m,
            args.on_disk,
            args.max_memory_gb,
            args.seed,
            rerank_factor=args.rerank,
            part=part,
        )
    except (VectorIndexError, EmbeddingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
