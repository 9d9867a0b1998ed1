"""The embedder trained on all pets against the shipped one, per kind of photo, on the all-pets split's validation dogs.

    python bench/bench_all_pets_embedder.py --models models/arcface-embedder,runs/arcface-all-pets/checkpoints/checkpoint-300 \
        --json bench/results/all_pets_embedder.json

Issue 32, item 4 (scripts/run_all_pets_recipe.sh trains the candidates): DogFaceNet validation dogs (dog faces) and the
47 MPDD validation dogs (whole dogs) of train/splits/all_pets.json, in runs/all-pets-data (scripts/prepare_all_pets.py).
Per kind: one-shot Recall@1 / Recall@5 / mAP of the trained embedding alone (no intake, no fusion: what training
changed), the first photo of each dog the gallery as during training. A checkpoint folder is evaluated at 224 px with
flip TTA, as the shipped embedder runs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from model_pkg.arcface import ArcFaceEmbedderModel
from model_pkg.arcface.embedding import embed_paths
from model_pkg.arcface.trainer import recall_metrics
from model_pkg.evaluation import load_groups
from model_pkg.fileio import atomic_write_json
from model_pkg.loading import load_arcface_model

KINDS = {"dog faces": "dfn-", "whole dogs": "mpdd-"}


def load(spec: str) -> ArcFaceEmbedderModel:
    if "checkpoint-" in spec:  # a training checkpoint: the cached-activation recipe's model, run as shipped
        model = ArcFaceEmbedderModel.from_pretrained(spec, image_size=224, tta_flip=True, activation_stage=None)
        return model.float().eval()
    return load_arcface_model(spec)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="models/arcface-embedder")
    parser.add_argument("--data", default="runs/all-pets-data")
    parser.add_argument("--splits", default="train/splits/all_pets.json")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    groups, _ = load_groups(args.data, args.splits, "val", None)
    report: dict = {"data": args.data, "splits": args.splits, "models": {}}
    for spec in args.models.split(","):
        model = load(spec)
        model.config.intake = model.config.fusion = None  # the trained embedding alone
        rows = {}
        for kind, prefix in KINDS.items():
            dogs = sorted(d for d in groups if d.startswith(prefix))
            paths = [p for d in dogs for p in groups[d]]
            identities = np.array([i for i, d in enumerate(dogs) for _ in groups[d]])
            metrics = recall_metrics(embed_paths(model, paths), identities)
            rows[kind] = {"dogs": len(dogs), "photos": len(paths), **{k: round(float(v), 4) for k, v in metrics.items()}}
            print(f"{spec} {kind}: " + " ".join(f"{k} {v}" for k, v in rows[kind].items()), flush=True)
        report["models"][spec] = rows
    atomic_write_json(report, args.json)
    print(json.dumps(report["models"], indent=1))
    return report


if __name__ == "__main__":
    main()
