"""The training tree of the all-pets embedder (issue 32, item 4): DogFaceNet's dog faces and MPDD's whole dogs as one
folder of identity folders, and its identity split.

    python scripts/prepare_all_pets.py --out runs/all-pets-data --splits train/splits/all_pets.json

* `dfn-<id>/`: links to the DogFaceNet dog's photos (224 x 224 aligned faces already).
* `mpdd-<id>/`: the MPDD dog's photos squashed to 224 x 224, as the embedder sees a photo at inference
  (`create_transform(train=False)` resizes a photo whole); training's RandomResizedCrop then crops a square photo,
  not the middle of a long one.
* The split keeps DogFaceNet's (train/splits/dogfacenet.json) and halves MPDD's 95 dogs at random (seed 0): 48
  train, 47 validation (the split's `mpdd-` validation dogs, also what `bench/bench_pets_quality.py --mpdd val` and `bench/fit_fusion.py
  --mpdd val` measure on). The 12 cats stay out of training: too few to learn cats from, and all of them are
  needed to validate the cat thresholds.
* `--cat-folds`: also `runs/all-pets-cats-data/` (the same dogs, plus `cat-<name>/`: a cat's face crops and its
  ordinary photos squashed to 224 px) with the 12 cats in two folds of 6 (`runs/cat_folds.json`, seed 0) and a split
  per fold that trains on its cats and validates on the others (`runs/all_pets_cats_A.json`, `_B.json`): the
  cross-fitted check of bench/bench_cat_folds.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from PIL import Image

from model_pkg.fileio import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
SIZE = 224


def mpdd_halves(mpdd: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    dogs = sorted(d.name for d in mpdd.iterdir() if d.is_dir())
    shuffled = random.Random(seed).sample(dogs, len(dogs))
    train = sorted(shuffled[: (len(dogs) + 1) // 2])
    return train, sorted(set(dogs) - set(train))


def squash(photo: Path, target: Path) -> None:
    if target.exists():
        return
    with Image.open(photo) as im:
        squashed = im.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    tmp = target.with_suffix(".tmp.jpg")
    squashed.save(tmp, quality=95)
    os.replace(tmp, target)


def cat_folds(data: Path, tree: Path, out: Path, splits: dict) -> dict:
    """The all-pets tree plus the cats, and one split per fold of 6 cats."""
    out.mkdir(parents=True, exist_ok=True)
    for identity in tree.iterdir():
        folder = out / identity.name
        folder.mkdir(exist_ok=True)
        for photo in identity.iterdir():
            if not (folder / photo.name).exists():
                (folder / photo.name).symlink_to(photo.resolve())
    cats = sorted(d.name for d in (data / "cats" / "faces").iterdir() if d.is_dir())
    for cat in cats:
        folder = out / f"cat-{cat}"
        folder.mkdir(exist_ok=True)
        for photo in sorted((data / "cats" / "faces" / cat).iterdir()):
            if not (folder / f"face_{photo.name}").exists():
                (folder / f"face_{photo.name}").symlink_to(photo.resolve())
        if (data / "cats" / "photos" / cat).is_dir():
            for photo in sorted((data / "cats" / "photos" / cat).iterdir()):
                squash(photo, folder / f"photo_{photo.stem}.jpg")
    order = random.Random(0).sample(cats, len(cats))
    folds = {"A": sorted(order[: len(cats) // 2]), "B": sorted(order[len(cats) // 2 :])}
    for name, train_cats in folds.items():
        other = [c for c in cats if c not in train_cats]
        atomic_write_json(
            {
                "train": splits["train"] + [f"cat-{c}" for c in train_cats],
                "val": splits["val"] + [f"cat-{c}" for c in other],
                "test": splits["test"],
            },
            out.parent / f"all_pets_cats_{name}.json",
        )
    atomic_write_json(folds, out.parent / "cat_folds.json")
    return folds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "all-pets-data"))
    parser.add_argument("--splits", default=str(ROOT / "train" / "splits" / "all_pets.json"))
    parser.add_argument("--cat-folds", action="store_true", help="also the tree with the cats and its two cat folds")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    dfn = json.loads((ROOT / "train" / "splits" / "dogfacenet.json").read_text())
    mpdd_train, mpdd_val = mpdd_halves(data / "mpdd")
    out.mkdir(parents=True, exist_ok=True)
    for dog in dfn["train"] + dfn["val"] + dfn["test"]:
        folder = out / f"dfn-{dog}"  # a folder of links: the dataset reader does not follow linked folders
        folder.mkdir(exist_ok=True)
        for photo in sorted((data / "dogfacenet" / dog).iterdir()):
            link = folder / photo.name
            if not link.exists():
                link.symlink_to(photo.resolve())
    for dog in mpdd_train + mpdd_val:
        folder = out / f"mpdd-{dog}"
        folder.mkdir(exist_ok=True)
        for photo in sorted((data / "mpdd" / dog).iterdir()):
            squash(photo, folder / photo.name)
    splits = {
        "train": [f"dfn-{d}" for d in dfn["train"]] + [f"mpdd-{d}" for d in mpdd_train],
        "val": [f"dfn-{d}" for d in dfn["val"]] + [f"mpdd-{d}" for d in mpdd_val],
        "test": [f"dfn-{d}" for d in dfn["test"]],
    }
    atomic_write_json(splits, args.splits)
    summary: dict = {k: len(v) for k, v in splits.items()}
    if args.cat_folds:
        summary["cat_folds"] = cat_folds(data, out, out.parent / "all-pets-cats-data", splits)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
