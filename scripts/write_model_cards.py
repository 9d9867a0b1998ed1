"""Write the shipped models' cards again, with the Hub metadata and the results measured in bench/results/, and
their image processors (preprocessor_config.json).

    python scripts/write_model_cards.py                       # models/arcface-embedder, pair-matcher, dual-encoder
    python scripts/write_model_cards.py --processors          # also preprocessor_config.json (loads each model)

Only each folder's README.md (and with --processors its preprocessor_config.json) changes (`model_pkg.hub.rewrite_model_card`): the card's own sections and metrics stay,
`license`, `pipeline_tag`, `datasets` and `base_model` follow `model_pkg.hub.HUB_METADATA`, and `model-index` gets:

- the embedder: gallery rank-1 and open-set AUROC per kind of photo, as the app runs it (intake + per-kind fusion),
  from bench/results/pets_quality_val.json (`python bench/bench_pets_quality.py`, validation pets);
- the pair matcher: set-vs-set 1v1 ROC-AUC and accuracy at the stored thresholds per kind, same file;
- the dual encoder: text-to-image R@1 / R@5 / R@10 on the Flickr8k dev split at its shipped query bank, from
  bench/results/dual_query_bank_tuned_flip.json (`python scripts/ship_dual_encoder.py ... --tta-flip`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from model_pkg.hub import rewrite_model_card, save_image_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# bench_pets_quality.py's kinds: what was photographed, and where the validation photos come from
KINDS = {
    "dog_face": ("dog faces", "DogFaceNet"),
    "dog_body": ("whole dogs", "MPDD"),
    "cat_face": ("cat faces", "Cat-Faces-Identification"),
    "cat_body": ("cats in photos", "Cat-Faces-Identification"),
    "mixed": ("mixed gallery of all four kinds", "DogFaceNet+MPDD+Cat-Faces-Identification"),
}
IDENTIFY = "gallery identification, as the app runs it (intake + per-kind fusion)"
VERIFY = "set-vs-set verification, as the app decides it (matcher score on dog faces, fused cosine on other kinds)"
# timm's Hub names of the backbones' ImageNet weights, and the text tower's
HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def timm_hub_id(backbone: str) -> str:
    import timm

    return timm.models.get_pretrained_cfg(backbone).hf_hub_id or f"timm/{backbone}"


def result(task: str, task_name: str, kind: str, metric_type: str, name: str, value: float) -> dict[str, Any]:
    label, dataset = KINDS[kind]
    return dict(
        task_type=task,
        task_name=task_name,
        dataset_type=dataset,
        dataset_config=kind,
        dataset_name=f"{dataset} ({label})",
        dataset_split="validation",
        metric_type=metric_type,
        metric_name=name,
        metric_value=round(float(value), 4),
    )


def embedder_results(pets: dict) -> list[dict[str, Any]]:
    rows = []
    for kind, models in pets["kinds"].items():
        shipped = models["shipped"]
        rows.append(
            result(
                "image-feature-extraction",
                IDENTIFY,
                kind,
                "accuracy",
                "gallery rank-1 (G=1, 20% unknown)",
                shipped["rank1"] / 100,
            )
        )
        rows.append(
            result(
                "image-feature-extraction",
                IDENTIFY,
                kind,
                "roc_auc",
                "open-set AUROC (known vs unknown)",
                shipped["open_set_auroc"],
            )
        )
    return rows


def matcher_results(pets: dict) -> list[dict[str, Any]]:
    rows = []
    for kind, models in pets["kinds"].items():
        shipped = models["shipped"]
        if "pair_roc_auc" not in shipped:  # the mixed gallery has no pairs
            continue
        rows.append(result("other", VERIFY, kind, "roc_auc", "1v1 ROC-AUC (same animal or not)", shipped["pair_roc_auc"]))
        rows.append(result("other", VERIFY, kind, "accuracy", "1v1 accuracy at the stored threshold", shipped["pair_accuracy"]))
    return rows


def dual_results(bank: dict, size: int, temperature: float) -> list[dict[str, Any]]:
    (row,) = [
        r
        for r in bank["rows"]
        if r["size"] == size and r["temperature"] is not None and abs(r["temperature"] - temperature) < 1e-6
    ]
    out = []
    for k in (1, 5, 10):
        out.append(
            dict(
                task_type="feature-extraction",
                task_name="text-to-image retrieval",
                dataset_type="Flickr8k",
                dataset_name="Flickr8k (1,000 dev images x 5,000 captions)",
                dataset_split="dev",
                metric_type="recall",
                metric_name=f"text-to-image R@{k}",
                metric_value=round(row[f"r{k}"], 2),
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=os.path.join(ROOT, "models"))
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--processors", action="store_true", help="also write each model's preprocessor_config.json")
    args = parser.parse_args(argv)

    def load(name: str) -> dict:
        with open(os.path.join(args.results, name)) as f:
            return json.load(f)

    pets = load("pets_quality_val.json")
    embedder = os.path.join(args.models, "arcface-embedder")
    matcher = os.path.join(args.models, "pair-matcher")
    dual = os.path.join(args.models, "dual-encoder")
    for folder, rows in ((embedder, embedder_results(pets)), (matcher, matcher_results(pets))):
        backbone = load_config(folder)["backbone"]
        rewrite_model_card(folder, eval_results=rows, base_model=timm_hub_id(backbone))
        print(f"{folder}: {len(rows)} results")
    cfg = load_config(dual)
    rows = dual_results(load("dual_query_bank_tuned_flip.json"), cfg["query_bank_size"], cfg["query_bank_temperature"])
    text_tower = cfg["text_config"]["model_name_or_path"]
    bases = [timm_hub_id(cfg["vision_config"]["backbone"]), HUB_IDS.get(text_tower, text_tower)]
    rewrite_model_card(dual, eval_results=rows, base_model=bases)
    print(f"{dual}: {len(rows)} results")
    if args.processors:
        from transformers import AutoModel

        import model_pkg

        model_pkg.register_auto_classes()
        for folder in (embedder, matcher, dual):
            written = save_image_processor(AutoModel.from_pretrained(folder), folder)
            print(f"{folder}: preprocessor_config.json {'written' if written else 'not needed (no image tower)'}")


def load_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


if __name__ == "__main__":
    main()
