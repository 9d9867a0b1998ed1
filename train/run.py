"""The one training entry for every petmatch model.

    accelerate launch train/run.py --task pair --config train/configs/pair_matcher.yaml
    accelerate launch train/run.py --task arcface --config train/configs/arcface_embedder.yaml
    accelerate launch train/run.py --task dual --config train/configs/dual_encoder.yaml
    accelerate launch train/run.py --task dual --config train/configs/dual_encoder_lstm_baseline.yaml
    python train/run.py --task pair --config train/configs/pair_matcher.yaml --set output_dir=runs/x --fresh

Several GPUs or machines: `accelerate launch --config_file train/accelerate/multi_gpu.yaml train/run.py ...`
(also `multi_node.yaml`, `fsdp.yaml`; docs/training.md, "Training on several processes"). Every process runs this
script; batch sizes in a recipe are per process, so N processes train on N times the batch each step.

A run resumes from its latest checkpoint unless `--fresh` is given. `--set key=value` overrides one
option of the YAML (values are parsed as YAML: `--set frozen_steps=50 --set set_size=[1,2]`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import yaml

from model_pkg.arcface.training import ArcFaceTrainingConfig, train_arcface
from model_pkg.dual_encoder.training import DualTrainingConfig, train_dual_encoder
from model_pkg.pair_matcher.training import PairTrainingConfig, train_pair_matcher

TASKS = {"pair": (PairTrainingConfig, train_pair_matcher), "arcface": (ArcFaceTrainingConfig, train_arcface)}
TASKS["dual"] = (DualTrainingConfig, train_dual_encoder)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="which model family to train")
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. train/configs/pair_matcher.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one option")
    parser.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    return parser.parse_args(argv)


def load_recipe(path: str, overrides: list[str]) -> dict:
    if not os.path.isfile(path):
        raise SystemExit(f"Config file '{path}' does not exist. Shipped recipes live in train/configs/.")
    with open(path) as f:
        recipe = yaml.safe_load(f) or {}
    recipe.pop("task", None)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got '{item}'.")
        target = recipe
        *parents, leaf = key.split(".")  # model.hidden_size=128 sets a nested option
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    return recipe


def main(argv=None) -> dict:
    rank = os.environ.get("RANK")  # set by `accelerate launch` / torchrun for each of several processes
    tag = f" [rank {rank}]" if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{tag} %(name)s: %(message)s")
    args = parse_args(argv)
    config_cls, train_fn = TASKS[args.task]
    recipe = load_recipe(args.config, args.set)
    if args.fresh:
        recipe["fresh"] = True
    try:
        cfg = config_cls.from_dict(recipe)
    except (TypeError, ValueError) as err:
        raise SystemExit(f"Bad config {args.config}: {err}") from err
    summary = train_fn(cfg)
    if "process_index" in summary:  # not the main process of several: it wrote nothing to report
        return summary
    print(json.dumps({k: summary[k] for k in ("val", "dev", "best_global_step") if k in summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
