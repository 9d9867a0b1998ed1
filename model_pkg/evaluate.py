"""Evaluation command line: `python -m model_pkg.evaluate <task> ...`.

Tasks (sub-commands):

* ``pair``: set-vs-set verification ("do these two sets of photos show the same dog?") of a saved
  :class:`~model_pkg.PairMatcherModel` or of the ``imagenet-cosine`` baseline, on pairs drawn from an
  identity-folder tree (optionally only the identities of one split of a splits file)::

      python -m model_pkg.evaluate pair --model runs/pair/model --data ../shared/data/dogfacenet \\
          --splits runs/pair/splits.json --split test --set-size 3 --pairs 1000 --seed 0 \\
          --negatives hard --json results/pair_test_k3_hard.json

Pairs come from :func:`~model_pkg.data.sample_pairs` (half positives). With ``--negatives hard`` each
negative pairs a dog with its nearest other dog under the *untrained* ImageNet
``tf_efficientnet_lite0`` (cosine of the mean of each dog's pooled photo features), computed over the
evaluated dogs, so every model is evaluated on the same hard pairs. Those reference features are cached
in ``$PETMATCH_CACHE`` (default ``~/.cache/petmatch``) keyed by the image paths and modification times.

Every unique photo in the pairs goes through the backbone once; pairs are then scored from the cached
tokens. The decision threshold is the model's stored validation threshold (``"stored"``); the baseline
chooses its own on pairs drawn the same way from the ``--threshold-split`` identities (``"val"``), or,
without a splits file, on the evaluated pairs themselves (``"oracle"``: optimistic).

* ``gallery``: identification against a gallery of known dogs, with open-set rejection, for a saved
  :class:`~model_pkg.ArcFaceEmbedderModel` or the ``imagenet`` baseline (untrained ImageNet
  ``tf_efficientnet_lite0`` pooled features, cosine)::

      python -m model_pkg.evaluate gallery --model runs/arcface/model --data ../shared/data/dogfacenet \\
          --splits train/splits/dogfacenet.json --split test --gallery-per-id 1 --unknown-fraction 0.2 \\
          --seed 0 --json results/gallery_test_g1.json

``--unknown-fraction`` U of the dogs are left out of the gallery (all their photos are queries that must
be rejected); every other dog registers ``--gallery-per-id`` G random photos and queries with the rest
(:func:`~model_pkg.data.samplers.split_gallery_queries`; dogs with G photos or fewer are skipped). Reports
rank1 / rank5 / rank10 (percent), map, mrr, open_set_auroc, and known_accuracy / unknown_rejection at
score and vote-margin thresholds calibrated (``GalleryIndex.calibrate``) on the ``--threshold-split``
dogs under the same G, U and seed (``"val"``); without a splits file, at the model's stored thresholds
(``"stored"``), or else calibrated on the evaluated queries themselves (``"oracle"``: optimistic).

* ``text-search``: text-to-image and image-to-text retrieval of a saved
  :class:`~model_pkg.DualEncoderModel`, every image of a split list against all of that list's captions::

      python -m model_pkg.evaluate text-search --model models/dual-encoder --images ../shared/data/flickr8k/images \\
          --captions ../shared/data/flickr8k/Flickr8k.token.txt \\
          --split-list ../shared/data/flickr8k/Flickr_8k.devImages.txt --json results/text_search_dev.json

Reports ``{"text_to_image": {"r1", "r5", "r10", "mrr"}, "image_to_text": {...}}`` (recalls in percent).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from .evaluation import (
    BASELINE,
    GALLERY_BASELINE,
    NEGATIVE_MODES,
    evaluate_gallery_protocol,
    evaluate_pair,
    evaluate_text_search,
)
from .fileio import atomic_write_json

__all__ = ["build_parser", "main", "portable_paths", "write_json"]


# --------------------------------------------------------------------------- #
# Command line (the tasks themselves: model_pkg/evaluation/)
# --------------------------------------------------------------------------- #
def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (temp file in the same folder + ``os.replace``)."""
    atomic_write_json(obj, path)


_PATH_KEYS = ("model", "data", "splits_file", "images", "captions", "split_list", "confusion_csv", "confusion_png")


def portable_paths(result: dict) -> dict:
    """The result with its absolute input paths made relative to the working directory, so a results file
    written here reads the same in any clone (no /home/<user>/ or site-packages paths in shipped files)."""
    out = dict(result)
    for key in _PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and os.path.isabs(value):
            out[key] = os.path.relpath(value)
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model_pkg.evaluate", description=__doc__.split("\n\n")[0])
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    pair = tasks.add_parser(
        "pair",
        help="set-vs-set verification of a pair matcher or the imagenet-cosine baseline",
        description="Verification metrics on sampled set pairs (half positives).",
    )
    pair.add_argument("--model", required=True, help=f"saved PairMatcherModel folder, or {BASELINE!r}")
    pair.add_argument("--data", required=True, help="identity-folder tree (<data>/<dog>/<photos>) or seed layout")
    pair.add_argument("--set-size", type=_positive_int, default=3, help="photos per side K (default 3)")
    pair.add_argument("--pairs", type=_positive_int, default=1000, help="number of pairs N, half positive (default 1000)")
    pair.add_argument("--seed", type=int, default=0, help="pair-sampling seed (default 0)")
    pair.add_argument("--negatives", choices=NEGATIVE_MODES, default="random", help="negative pairs (default random)")
    pair.add_argument("--json", dest="json_path", help="write the metrics JSON here (atomically); always printed")
    pair.add_argument("--splits", help="splits JSON saved by training: evaluate only the identities of --split")
    pair.add_argument("--split", default="test", help="split to evaluate (default test)")
    pair.add_argument(
        "--threshold-split",
        default="val",
        help="split the baseline chooses its threshold on (default val; needs --splits, else oracle)",
    )
    pair.add_argument(
        "--threshold-negatives",
        choices=NEGATIVE_MODES,
        default=None,
        help="negatives of the --threshold-split pairs (default: as --negatives; random = the shipped thresholds' policy)",
    )
    pair.add_argument("--batch-size", type=_positive_int, default=32, help="backbone batch size (default 32)")
    pair.add_argument(
        "--calibrate",
        action="store_true",
        help="saved model: choose the threshold on --threshold-split pairs drawn the same way, as the baseline does",
    )
    pair.add_argument("--save-scores", default=None, metavar="NPZ", help="write labels, scores and threshold here (ROC / PR)")
    pair.set_defaults(func=_run_pair)

    gallery = tasks.add_parser(
        "gallery",
        help="gallery identification with open-set rejection of an ArcFace embedder or the imagenet baseline",
        description="Register G photos of each known dog, query with the rest; U of the dogs are unknown and must be rejected.",
    )
    gallery.add_argument("--model", required=True, help=f"saved ArcFaceEmbedderModel folder, or {GALLERY_BASELINE!r}")
    gallery.add_argument("--data", required=True, help="identity-folder tree (<data>/<dog>/<photos>) or seed layout")
    gallery.add_argument("--gallery-per-id", type=_positive_int, default=1, help="photos registered per known dog G (default 1)")
    gallery.add_argument(
        "--unknown-fraction", type=float, default=0.2, help="share U in [0, 1) of dogs left out of the gallery (default 0.2)"
    )
    gallery.add_argument("--seed", type=int, default=0, help="draw of unknown dogs and gallery photos (default 0)")
    gallery.add_argument("--json", dest="json_path", help="write the metrics JSON here (atomically); always printed")
    gallery.add_argument("--splits", help="splits JSON saved by training: evaluate only the identities of --split")
    gallery.add_argument("--split", default="test", help="split to evaluate (default test)")
    gallery.add_argument(
        "--threshold-split",
        default="val",
        help="split the rejection thresholds are calibrated on (default val; needs --splits)",
    )
    gallery.add_argument(
        "--k", type=_positive_int, default=None, help="neighbours that vote (default: the model's gallery_k, 20)"
    )
    gallery.add_argument("--batch-size", type=_positive_int, default=32, help="backbone batch size (default 32)")
    gallery.add_argument(
        "--confusion",
        default=None,
        metavar="PREFIX",
        help="write the confusion matrix of the decisions (dogs + unknown + reshoot) to PREFIX.csv and PREFIX.png",
    )
    gallery.set_defaults(func=_run_gallery)

    text = tasks.add_parser(
        "text-search",
        help="text-to-image and image-to-text retrieval of a dual encoder",
        description="Every image of --split-list against all of its captions: R@1/5/10 (percent) and MRR, both directions.",
    )
    text.add_argument("--model", required=True, help="saved DualEncoderModel folder")
    text.add_argument("--images", required=True, help="folder with the photos")
    text.add_argument("--captions", required=True, help="caption file, Flickr8k.token.txt format")
    text.add_argument("--split-list", required=True, help="file with one image name per line (e.g. Flickr_8k.devImages.txt)")
    text.add_argument("--json", dest="json_path", help="write the metrics JSON here (atomically); always printed")
    text.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default 64)")
    text.set_defaults(func=_run_text_search)
    return parser


def _run_pair(args: argparse.Namespace) -> dict:
    return evaluate_pair(
        args.model,
        args.data,
        set_size=args.set_size,
        pairs=args.pairs,
        seed=args.seed,
        negatives=args.negatives,
        splits=args.splits,
        split=args.split,
        threshold_split=args.threshold_split,
        batch_size=args.batch_size,
        calibrate=args.calibrate,
        save_scores=args.save_scores,
        threshold_negatives=args.threshold_negatives,
    )


def _run_gallery(args: argparse.Namespace) -> dict:
    return evaluate_gallery_protocol(
        args.model,
        args.data,
        gallery_per_id=args.gallery_per_id,
        unknown_fraction=args.unknown_fraction,
        seed=args.seed,
        splits=args.splits,
        split=args.split,
        threshold_split=args.threshold_split,
        k=args.k,
        batch_size=args.batch_size,
        confusion=args.confusion,
    )


def _run_text_search(args: argparse.Namespace) -> dict:
    return evaluate_text_search(args.model, args.images, args.captions, args.split_list, batch_size=args.batch_size)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the task, print its JSON (and write ``--json``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .backbones import BackboneWeightsError
    from .data import ImageLoadError

    try:
        result = portable_paths(args.func(args))
    except (ValueError, FileNotFoundError, BackboneWeightsError, ImageLoadError) as exc:
        raise SystemExit(f"{parser.prog} {args.task}: error: {exc}") from exc
    if getattr(args, "json_path", None):
        write_json(result, args.json_path)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
