#!/bin/bash
# Issue 32, item 4: the shipped embedder trained further on dog faces and whole dogs together, on 2 CPU cores, and
# measured beside today's models on the same validation pets. Nothing in models/ changes (neither candidate won on
# every kind: bench/README.md, "Training on all pets"). One heavy job at a time; each step reuses its caches.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The tree (DogFaceNet faces + MPDD squashed to 224 px) and its split: MPDD halved, 48 train / 47 val dogs; with
#    --cat-folds also the tree with the 12 cats and a split per fold of 6 cats (step 2c).
python scripts/prepare_all_pets.py --cat-folds
# 2a. Stages 5-6 + head on cached 160 px activations, kind-balanced batches (12 face dogs + 4 whole dogs), starting
#     from models/arcface-embedder (~7 min of caches, then 2,400 steps at ~4 steps/s; early stopping ends it at 1,500).
python train/run.py --task arcface --config train/configs/arcface_all_pets_cpu.yaml
# 2b. The head alone (projection, BatchNorm, class centres) on the pooled features of the untouched backbone.
python train/run.py --task arcface --config train/configs/arcface_all_pets_cpu.yaml --set output_dir=runs/arcface-all-pets-head \
    --set model.activation_stage=null --set frozen_steps=1200 --set finetune_steps=0 --set frozen_margin=0.3 \
    --set learning_rate=0.0003 --set eval_steps=200 --set margin_ramp_steps=0
# 2c. The same with 6 of the cats (two folds, each measured on the other 6 cats: bench/bench_cat_folds.py).
for fold in A B; do
  mkdir -p runs/arcface-all-pets-cats-$fold  # both folds embed the same photos: B reuses A's pooled features
  if [ $fold = B ]; then cp -rn runs/arcface-all-pets-cats-A/feature_cache runs/arcface-all-pets-cats-B/; fi
  python train/run.py --task arcface --config train/configs/arcface_all_pets_cpu.yaml --set data_dir=runs/all-pets-cats-data \
      --set splits_file=runs/all_pets_cats_$fold.json --set output_dir=runs/arcface-all-pets-cats-$fold \
      --set model.activation_stage=null --set frozen_steps=1200 --set finetune_steps=0 --set frozen_margin=0.3 \
      --set learning_rate=0.0003 --set eval_steps=200 --set margin_ramp_steps=0 \
      --set 'identity_groups={"dfn-": 10, "mpdd-": 4, "cat-": 2}'
done
python bench/bench_cat_folds.py --json bench/results/cat_folds.json
# 3. The trained embedding alone, per kind, on the split's validation dogs; what each looks at on dogs in clothes.
python bench/bench_all_pets_embedder.py --json bench/results/all_pets_embedder.json \
    --models models/arcface-embedder,runs/arcface-all-pets/checkpoints/checkpoint-300,runs/arcface-all-pets-head/model
python bench/clothes_check.py --png bench/screenshots/clothes_check.png --json bench/results/clothes_check.json \
    --models models/arcface-embedder,runs/arcface-all-pets/checkpoints/checkpoint-300,runs/arcface-all-pets-head/model
# 4. The better candidate as the app would run it: today's intake, fusion and thresholds copied into its config,
#    against today's models on the same pets (whole dogs: the 47 val dogs only).
mkdir -p runs/all-pets-head-release && rm -rf runs/all-pets-head-release/arcface-embedder
cp -r runs/arcface-all-pets-head/model runs/all-pets-head-release/arcface-embedder
python - <<'PY'
import json
from model_pkg.fileio import atomic_write_json
shipped = json.load(open("models/arcface-embedder/config.json"))
path = "runs/all-pets-head-release/arcface-embedder/config.json"
config = json.load(open(path))
config.update({k: shipped[k] for k in ("intake", "fusion", "score_threshold", "margin_threshold")})
atomic_write_json(config, path)
PY
python bench/bench_pets_quality.py --mpdd val --kinds dog_body,cat_face,cat_body --variants "trained alone,shipped" \
    --gallery-only --embedder runs/all-pets-head-release/arcface-embedder --json bench/results/pets_quality_val_all_pets_head.json
python bench/bench_pets_quality.py --mpdd val --kinds dog_body --json bench/results/pets_quality_val_mpdd_half.json
# A candidate that wins on every kind ships like models/arcface-embedder: scripts/ship_embedder.py, the pair matcher
# on it (train/configs/pair_matcher_embedder.yaml --set embedder=...), bench/fit_fusion.py --mpdd val --write, then
# bench/bench_pets_quality.py --mpdd val for the tables.
