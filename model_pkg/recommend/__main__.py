"""`python -m model_pkg.recommend --data DIR --candidates a,b,c --json OUT`: rank backbones for a class folder.

    python -m model_pkg.recommend --data ../shared/data/dogfacenet \\
        --candidates tf_efficientnet_lite0@224:pooled,tf_efficientnet_lite0@160:stage5,models/pair-matcher \\
        --per-class 4 --max-classes 50 --json results/recommend_dogs.json

Prints the table (best first) and writes it as JSON with `--json`. Bad input (one class, unknown
candidate, a single candidate, invalid features) exits with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..fileio import atomic_write_json
from .candidates import CandidateError
from .recommend import RecommendationError, recommend_backbones


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_pkg.recommend", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="class / identity folder: <data>/<class>/<photo>")
    parser.add_argument("--candidates", required=True, help="comma-separated NAME[@SIZE][:LAYER] specs (>= 2)")
    parser.add_argument("--json", default=None, help="write the table here (atomically)")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--max-classes", type=int, default=100)
    parser.add_argument("--k", type=int, default=1, help="neighbours of the kNN leave-one-out score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layout", default="auto", choices=("auto", "identity", "seed"))
    parser.add_argument(
        "--rank-by",
        default="knn_loo",
        choices=("knn_loo", "logme", "combined"),
        help="the score that orders the table (default: kNN leave-one-out, the best predictor in bench/)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    try:
        result = recommend_backbones(
            args.data,
            args.candidates,
            per_class=args.per_class,
            max_classes=args.max_classes,
            k=args.k,
            seed=args.seed,
            batch_size=args.batch_size,
            layout=args.layout,
            rank_by=args.rank_by,
        )
    except (RecommendationError, CandidateError, FileNotFoundError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{result.num_images} photos of {result.num_classes} classes from {result.data_dir}")
    print(result.table())
    print(f"recommended (by {result.rank_by}): {result.best}")
    out = result.to_dict()
    if args.json:
        atomic_write_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
