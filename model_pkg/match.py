"""Match two photo sets from the command line.

python -m model_pkg.match --model models/pair-matcher --a found/*.jpg --b lost/*.jpg
"""

from __future__ import annotations

import argparse
import json
import os

from .data import ImageLoadError
from .pair_matcher import PairMatcherModel
from .pair_matcher.pipeline import match_sets

DEFAULT_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "pair-matcher")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Do two sets of photos show the same animal?")
    parser.add_argument(
        "--model",
        default=os.environ.get("PETMATCH_PAIR_MODEL", DEFAULT_MODEL),
        help="saved pair-matcher folder or Hub id (default: the shipped models/pair-matcher)",
    )
    parser.add_argument("--a", nargs="+", required=True, help="photos of the first animal")
    parser.add_argument("--b", nargs="+", required=True, help="photos of the second animal")
    args = parser.parse_args(argv)
    if os.path.sep in args.model and not os.path.isdir(args.model):
        parser.error(f"model folder '{args.model}' does not exist")
    model = PairMatcherModel.from_pretrained(args.model)
    try:
        result = match_sets(model, args.a, args.b)
    except (ImageLoadError, ValueError, TypeError) as err:
        parser.error(str(err))
    i, j = divmod(int(result.photo_similarity.argmax()), len(args.b))
    out = {
        "probability": round(result.probability, 4),
        "same_animal": bool(result.same),
        "threshold": round(result.threshold, 4),
        "most_similar_photos": [args.a[i], args.b[j]],
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
