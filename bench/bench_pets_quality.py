"""Quality per kind of photo: dog faces, whole dogs, cat faces, cats in photos, and a mixed gallery of all four.

    python bench/bench_pets_quality.py --json bench/results/pets_quality.json

For each kind, `model_pkg.evaluate`'s own protocols, exactly as `python -m model_pkg.evaluate gallery|pair` runs them
(G = 1, 20% unknown, 1,000 random-negative 1v1 pairs; seeds 0-2, averaged), for:

* `imagenet` / `imagenet-cosine`: the untrained ImageNet Lite0 on the raw photo, the fixed baseline (its pair
  accuracy at its best threshold on the evaluated pairs: the oracle);
* `trained alone`: the shipped embedder and matcher without the intake and the fusion (today's models before it);
* `shipped`: models/arcface-embedder and models/pair-matcher as the app runs them (intake, fusion, stored thresholds).

The pets are the validation pets the fusion was fitted on (`bench/fit_fusion.py`: DogFaceNet validation dogs, MPDD,
the 12 cats), so the shipped rows are in-sample for the fusion's weights and thresholds; `--dogfacenet-split test`
gives dog faces the fusion never saw. Identity folders are linked into a temporary tree, so the CLI needs no splits
file and the baseline gets its oracle threshold, as in the issue's table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from model_pkg.evaluation import evaluate_gallery_protocol, evaluate_pair
from model_pkg.fileio import atomic_write_json, cache_dir
from model_pkg.loading import load_arcface_model, load_pair_model

DATA = Path(os.environ.get("PETMATCH_DATA", "../shared/data"))
KIND_NAMES = {"dog_face": "dog faces", "dog_body": "whole dogs", "cat_face": "cat faces", "cat_body": "cats in photos"}


def link_tree(root: Path, sources: dict[str, Path]) -> Path:
    """A folder of identity sub-folders holding symlinks to the source photos (kept between runs, so the baseline's
    cached reference features are found again)."""
    for name, folder in sources.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for photo in folder.iterdir():
            link = root / name / photo.name.replace(":", "-")
            if not link.exists():
                link.symlink_to(photo.resolve())
    return root


def mpdd_dogs(which: str) -> list[str]:
    """ "all" 95 MPDD dogs, or "val": the 47 the all-pets embedder never trained on (train/splits/all_pets.json)."""
    if which == "all":
        return sorted(os.listdir(DATA / "mpdd"))
    splits = json.loads(Path("train/splits/all_pets.json").read_text())
    return sorted(name.removeprefix("mpdd-") for name in splits["val"] if name.startswith("mpdd-"))


def kind_folders(tmp: Path, dogfacenet_split: str, mpdd: str = "all") -> dict[str, Path]:
    splits = json.loads(Path("train/splits/dogfacenet.json").read_text())
    trees = {
        "dog_face": {d: DATA / "dogfacenet" / d for d in splits[dogfacenet_split]},
        "dog_body": {d: DATA / "mpdd" / d for d in mpdd_dogs(mpdd)},
        "cat_face": {c: DATA / "cats" / "faces" / c for c in sorted(os.listdir(DATA / "cats" / "faces"))},
        "cat_body": {c: DATA / "cats" / "photos" / c for c in sorted(os.listdir(DATA / "cats" / "photos"))},
    }
    folders = {kind: link_tree(tmp / kind, tree) for kind, tree in trees.items()}
    mixed = {f"{kind}-{name}": folder for kind, tree in trees.items() for name, folder in tree.items()}
    folders["mixed"] = link_tree(tmp / "mixed", mixed)
    return folders


@contextlib.contextmanager
def variant(model, name: str):
    """The model as `name` asks: "trained alone" switches the intake and the fusion off for the duration."""
    if name != "trained alone" or isinstance(model, str):
        yield model
        return
    saved = model.config.intake, model.config.fusion
    model.config.intake = model.config.fusion = None
    try:
        yield model
    finally:
        model.config.intake, model.config.fusion = saved


def mean_of(runs: list[dict], keys: tuple[str, ...]) -> dict:
    return {
        k: float(np.mean([r[k] for r in runs if r.get(k) is not None])) for k in keys if any(r.get(k) is not None for r in runs)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", default="models/arcface-embedder")
    parser.add_argument("--matcher", default="models/pair-matcher")
    parser.add_argument("--dogfacenet-split", default="val")
    parser.add_argument(
        "--mpdd",
        choices=("all", "val"),
        default="all",
        help="whole dogs: all 95 MPDD dogs, or the 47 of the all-pets split's val",
    )
    parser.add_argument("--variants", default="imagenet,trained alone,shipped", help="comma-separated subset of the rows")
    parser.add_argument(
        "--gallery-only", action="store_true", help="the gallery protocol only (an embedder without its own pair matcher)"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", required=True, help="results file; with --kinds, the other kinds' rows already there are kept")
    parser.add_argument("--kinds", default=None, help="comma-separated subset of dog_face,dog_body,cat_face,cat_body,mixed")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    embedder, matcher = load_arcface_model(args.embedder), load_pair_model(args.matcher)
    names = args.variants.split(",")
    gallery_models = {
        n: m for n, m in {"imagenet": "imagenet", "trained alone": embedder, "shipped": embedder}.items() if n in names
    }
    pair_models = {"imagenet": "imagenet-cosine", "trained alone": matcher, "shipped": matcher}
    report: dict = {
        "dogfacenet_split": args.dogfacenet_split,
        "mpdd": args.mpdd,
        "gallery_only": args.gallery_only,
        "embedder": args.embedder,
        "matcher": args.matcher,
        "seeds": seeds,
        "kinds": {},
    }
    if args.kinds and Path(args.json).is_file():
        kept = json.loads(Path(args.json).read_text())
        report = {**kept, **report, "kinds": kept.get("kinds", {})}
    wanted = args.kinds.split(",") if args.kinds else None
    tree = (
        cache_dir()
        / "bench-pets"
        / (args.dogfacenet_split if args.mpdd == "all" else f"{args.dogfacenet_split}-mpdd-{args.mpdd}")
    )
    for kind, folder in kind_folders(tree, args.dogfacenet_split, args.mpdd).items():
        if wanted is not None and kind not in wanted:
            continue
        rows = dict(report["kinds"].get(kind, {})) if args.kinds else {}
        for name in gallery_models:
            start = time.perf_counter()
            with variant(gallery_models[name], name) as model:
                gallery = [evaluate_gallery_protocol(model, folder, 1, 0.2, seed) for seed in seeds]
            row = mean_of(gallery, ("rank1", "open_set_auroc", "known_accuracy", "unknown_rejection"))
            if kind != "mixed" and not args.gallery_only:
                with variant(pair_models[name], name) as model:
                    pairs = [evaluate_pair(model, folder, set_size=1, pairs=1000, seed=seed) for seed in seeds]
                row.update({f"pair_{k}": v for k, v in mean_of(pairs, ("roc_auc", "accuracy", "best_accuracy")).items()})
            row["seconds"] = round(time.perf_counter() - start, 1)
            rows[name] = row
            print(f"{kind:9s} {name:14s} " + " ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
        report["kinds"][kind] = rows
        atomic_write_json(report, args.json)  # after each kind: a long run interrupted keeps what it measured
    atomic_write_json(report, args.json)
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [
        "| kind | model | gallery rank-1 | open-set AUROC | known accepted right / unknown rejected | 1v1 ROC-AUC "
        "| 1v1 accuracy (stored thr.; baseline: best thr.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, rows in report["kinds"].items():
        for name, row in rows.items():
            acc = row.get("pair_best_accuracy" if name == "imagenet" else "pair_accuracy")
            pair = f"{row['pair_roc_auc']:.4f} | {acc:.3f}" if "pair_roc_auc" in row else "- | -"
            decisions = f"{row['known_accuracy']:.3f} / {row['unknown_rejection']:.3f}" if "unknown_rejection" in row else "-"
            lines.append(
                f"| {KIND_NAMES.get(kind, 'mixed gallery')} | {name} | {row['rank1'] / 100:.3f} | {row['open_set_auroc']:.3f} "
                f"| {decisions} | {pair} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
