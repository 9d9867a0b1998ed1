"""Ship a trained ArcFace embedder: choose its input size on the validation dogs, recalibrate the gallery
thresholds at that size, save it with fp16 weights and its model card.

    python scripts/ship_embedder.py runs/arcface-cpu/model --sizes 160,192,224 --out models/arcface-embedder \
        --json bench/results/arcface_cpu_sizes.json

A recipe that trains on cached 160 px activations can be evaluated at any size (the network is fully
convolutional up to its global pooling); "train low, test high" (FixRes) is a known win, but only the
validation dogs can say which size is best here. For each size: one-shot Recall@1/5 and mAP of the val
photos (the first photo of each dog is the gallery, as during training) and the gallery calibration of
`train_arcface` (1 photo per known dog, 25% of the dogs unknown). The size with the best Recall@1 is kept.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

import model_pkg  # noqa: F401
from model_pkg import ArcFaceEmbedderModel
from model_pkg.arcface.calibration import calibrate_gallery_thresholds
from model_pkg.arcface.embedding import embed_paths
from model_pkg.arcface.trainer import model_card_metrics, recall_metrics, save_with_card
from model_pkg.evaluation import load_groups
from model_pkg.fileio import atomic_write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the trained embedder, e.g. runs/arcface-cpu/model")
    parser.add_argument("--sizes", default="160,192,224")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "dogfacenet"))
    parser.add_argument("--splits", default=os.path.join(ROOT, "train", "splits", "dogfacenet.json"))
    parser.add_argument("--summary", default=None, help="the run's summary.json, for the model card (default: beside the model)")
    parser.add_argument("--out", default=None, help="save the chosen model here (fp16 weights, model card)")
    parser.add_argument("--tta-flip", action="store_true", help="ship with flip test-time augmentation (`tta_flip`)")
    parser.add_argument(
        "--recipe", default="train/configs/arcface_embedder_cpu.yaml", help="how the model was trained, for the card"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    groups, _ = load_groups(args.data, args.splits, "val", None)
    paths = [p for dog in sorted(groups) for p in groups[dog]]
    identities = np.array([i for i, dog in enumerate(sorted(groups)) for _ in groups[dog]])
    rows, chosen = [], None
    for size in (int(s) for s in args.sizes.split(",")):
        model = ArcFaceEmbedderModel.from_pretrained(args.model, image_size=size, tta_flip=args.tta_flip).float().eval()
        emb = embed_paths(model, paths)
        metrics = recall_metrics(emb, identities)
        cfg = model.config
        gallery, calibration = calibrate_gallery_thresholds(
            dict(zip(paths, emb)), groups, cfg.gallery_per_id or 1, 0.25, 0, cfg.gallery_k
        )
        row = {"image_size": size, **metrics, "calibration": calibration}
        rows.append(row)
        print(
            f"{size} px: val Recall@1 {metrics['recall_at_1']:.2f}, Recall@5 {metrics['recall_at_5']:.2f}, "
            f"mAP {metrics['map']:.4f}, open-set AUROC {calibration.get('open_set_auroc', float('nan')):.4f}",
            flush=True,
        )
        if chosen is None or metrics["recall_at_1"] > chosen[0]["recall_at_1"]:
            if gallery is not None:
                model.config.score_threshold = gallery.score_threshold
                model.config.margin_threshold = gallery.margin_threshold
                model.config.gallery_per_id = cfg.gallery_per_id or 1
            chosen = (row, model)
    assert chosen is not None
    row, model = chosen
    print(f"chosen: {row['image_size']} px")
    result = {
        "model": os.path.relpath(args.model),
        "chosen_image_size": row["image_size"],
        "tta_flip": args.tta_flip,
        "rows": rows,
    }
    if args.json:
        atomic_write_json(result, args.json)
    if args.out:
        summary_file = args.summary or os.path.join(os.path.dirname(os.path.normpath(args.model)), "summary.json")
        training = {
            "recipe": args.recipe,
            "image_size_chosen_on_val": row["image_size"],
            "tta_flip": args.tta_flip,
        }
        if os.path.isfile(summary_file):
            summary = json.load(open(summary_file))
            training.update({k: summary[k] for k in ("frozen_steps", "finetune_steps", "best_global_step") if k in summary})
        name = os.path.basename(os.path.normpath(args.model))
        if name.startswith("checkpoint-"):  # a checkpoint other than the run's best-by-Recall@1-at-training-size
            training["shipped_step"] = int(name.split("-")[-1])
            training.pop("best_global_step", None)
        save_with_card(model, args.out, metrics=model_card_metrics(row), training=training, weights_dtype=torch.float16)
    return result


if __name__ == "__main__":
    main()
