#!/bin/bash
# Issue 32, item 4 end to end: fine-tune the shipped embedder on dog faces and whole dogs together, build the matcher,
# fit the fusion on validation pets, and measure it beside today's models on the same pets. Nothing in models/
# changes: the candidates go to runs/all-pets-release/, and ship only if they win on every kind (bench/README.md).
# One heavy job at a time on the 2-core machine; each step resumes or reuses its caches when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/all-pets-release

# 1. The tree (DogFaceNet faces + MPDD squashed to 224 px) and its split: MPDD halved, 48 train / 47 val dogs.
python scripts/prepare_all_pets.py
# 2. ~25 min: caches of the stage-4 activations, then 2,400 kind-balanced steps (12 face dogs + 4 whole dogs a batch).
python train/run.py --task arcface --config train/configs/arcface_all_pets_cpu.yaml
# 3. Ship the candidate at 224 px with flip TTA, gallery thresholds calibrated on the val dogs of both kinds.
python scripts/ship_embedder.py runs/arcface-all-pets/model --sizes 224 --tta-flip --data runs/all-pets-data \
    --splits train/splits/all_pets.json --recipe train/configs/arcface_all_pets_cpu.yaml --out $OUT/arcface-embedder \
    --json bench/results/arcface_all_pets_sizes.json
# 4. The pair matcher on it (the recipe of models/pair-matcher, another embedder).
python train/run.py --task pair --config train/configs/pair_matcher_embedder.yaml --fresh \
    --set embedder=$OUT/arcface-embedder --set output_dir=runs/pair-matcher-all-pets
python - <<'PY'
import json, torch, model_pkg
from model_pkg import PairMatcherModel
from model_pkg.pair_matcher.trainer import save_with_card
model = PairMatcherModel.from_pretrained("runs/pair-matcher-all-pets/model")
summary = json.load(open("runs/pair-matcher-all-pets/summary.json"))
metrics = {f"val_{k}": v["accuracy"] for k, v in summary["val_by_size"].items()}
save_with_card(model, "runs/all-pets-release/pair-matcher", metrics=metrics, weights_dtype=torch.float16)
PY
# 5. The fusion on validation pets (MPDD: the 47 val dogs only), keeping today's intake (its kind head reads the
#    untrained features, so it does not depend on the embedder).
python - <<'PY'
import json
from model_pkg.fileio import atomic_write_json
intake = json.load(open("models/arcface-embedder/config.json"))["intake"]
for folder in ("runs/all-pets-release/arcface-embedder", "runs/all-pets-release/pair-matcher"):
    config = json.load(open(f"{folder}/config.json"))
    config["intake"] = intake
    atomic_write_json(config, f"{folder}/config.json")
PY
python bench/fit_fusion.py --mpdd val --embedder $OUT/arcface-embedder --matcher $OUT/pair-matcher \
    --json bench/results/fusion_fit_all_pets.json --write $OUT/arcface-embedder $OUT/pair-matcher --keep-kind-head
# 6. Both systems on the same validation pets (whole dogs: the 47 MPDD val dogs).
python bench/bench_pets_quality.py --mpdd val --embedder $OUT/arcface-embedder --matcher $OUT/pair-matcher \
    --variants "trained alone,shipped" --json bench/results/pets_quality_val_all_pets.json
python bench/bench_pets_quality.py --mpdd val --kinds dog_body,mixed --json bench/results/pets_quality_val_mpdd_half.json
