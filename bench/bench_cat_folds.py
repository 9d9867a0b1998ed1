"""Does training on cats help other cats? The head-only all-pets recipe with 6 of the 12 cats, cross-fitted.

    python bench/bench_cat_folds.py --json bench/results/cat_folds.json

Issue 32, item 4. The 12 cats of ../shared/data/cats are split into two folds of 6 (`runs/cat_folds.json`, written with
the trees by the recipe, scripts/run_all_pets_recipe.sh); `runs/arcface-all-pets-cats-A/model` trained its head on
DogFaceNet + MPDD + fold A's cats (faces, and ordinary photos squashed whole) and is measured on fold B's cats, and
the other way round, so every cat is measured by a model that never saw it. Beside it, on the same cats: the shipped
embedder and the head trained without cats (`runs/arcface-all-pets-head/model`). Trained embedding alone (no intake,
no fusion), one-shot Recall@1 / mAP, the first photo of each cat the gallery, per kind of photo; the two folds' queries
pooled (Recall@1 and mAP weighted by queries).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from bench_all_pets_embedder import load  # bench/ is the script's own folder

from model_pkg.arcface.embedding import embed_paths
from model_pkg.arcface.trainer import recall_metrics
from model_pkg.fileio import atomic_write_json

DATA = Path(os.environ.get("PETMATCH_DATA", "../shared/data")) / "cats"
KINDS = {"cat faces": "faces", "cats in photos": "photos"}


def fold_metrics(model, cats: list[str], folder: str) -> tuple[dict, int]:
    photos = {c: sorted(str(p) for p in (DATA / folder / c).glob("*.jpg")) for c in cats if (DATA / folder / c).is_dir()}
    paths = [p for ps in photos.values() for p in ps]
    identities = np.array([i for i, ps in enumerate(photos.values()) for _ in ps])
    return recall_metrics(embed_paths(model, paths), identities), len(paths) - len(photos)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", default="runs/cat_folds.json")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    folds = json.loads(Path(args.folds).read_text())
    report: dict = {"folds": folds, "rows": {}}
    names = {"shipped": "models/arcface-embedder", "head, no cats": "runs/arcface-all-pets-head/model"}
    totals: dict = {}
    for fold, trained_on in folds.items():
        measured = sorted(c for other, cats in folds.items() if other != fold for c in cats)
        models = {**names, "head, 6 other cats": f"runs/arcface-all-pets-cats-{fold}/model"}
        for row, spec in models.items():
            model = load(spec)
            model.config.intake = model.config.fusion = None
            for kind, folder in KINDS.items():
                metrics, queries = fold_metrics(model, measured, folder)
                acc = totals.setdefault(row, {}).setdefault(kind, {"queries": 0, "r1": 0.0, "map": 0.0})
                acc["queries"] += queries
                acc["r1"] += metrics["recall_at_1"] * queries
                acc["map"] += metrics["map"] * queries
                print(f"fold {fold} (trained on {trained_on}) {row} {kind}: {metrics}", flush=True)
    for row, kinds in totals.items():
        report["rows"][row] = {
            kind: {
                "queries": v["queries"],
                "recall_at_1": round(v["r1"] / v["queries"], 2),
                "map": round(v["map"] / v["queries"], 4),
            }
            for kind, v in kinds.items()
        }
    atomic_write_json(report, args.json)
    print(json.dumps(report["rows"], indent=1))
    return report


if __name__ == "__main__":
    main()
