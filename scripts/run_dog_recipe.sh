#!/bin/bash
# Issue 12 end to end: train the CPU recipe, ship the embedder and the matcher built on it, measure them.
# One heavy job at a time on the 2-core machine; each step resumes or reuses its caches when rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The embedder (~15 min to cache 10 views of the 5,153 training photos once, then ~35 min of training).
#    The shipped embedder came from the GPU recipe instead (docs/training.md, "Recipe results"):
#    python train/arcface_gpu.py --init lite0_imagenet.safetensors --out runs/arcface-gpu --name B --minutes 6 \
#        --backbone-lr 3e-4 --head-lr 1e-3, then step 2 with runs/arcface-gpu/B --sizes 224.
python train/run.py --task arcface --config train/configs/arcface_embedder_cpu.yaml
python scripts/learning_curve.py runs/arcface-cpu --json bench/results/arcface_cpu_curve.json \
    --png bench/results/arcface_cpu_curve.png --keep-state bench/results/runs/arcface-cpu

# 2. Ship it: the input size that validates best (160 / 192 / 224 px), gallery thresholds recalibrated at that
#    size, fp16 weights (computed in float32 when loaded) and the model card.
python scripts/ship_embedder.py runs/arcface-cpu/model --sizes 160,192,224 --out models/arcface-embedder \
    --json bench/results/arcface_cpu_sizes.json

# 3. The pair matcher on that embedder: thresholds per set size on validation pairs with random negatives.
python train/run.py --task pair --config train/configs/pair_matcher_embedder.yaml --fresh
python - <<'PY'
import json, torch, model_pkg
from model_pkg import PairMatcherModel
from model_pkg.pair_matcher.trainer import save_with_card
model = PairMatcherModel.from_pretrained("runs/pair-matcher-embedder/model")
summary = json.load(open("runs/pair-matcher-embedder/summary.json"))
metrics = {f"val_{k}": v["accuracy"] for k, v in summary["val_by_size"].items()}
save_with_card(model, "models/pair-matcher", metrics=metrics, weights_dtype=torch.float16)
PY

# 4. Validation study (flip TTA, adaptive s-norm) and the test-split tables.
python bench/bench_dog_quality.py --models imagenet,models/arcface-embedder --split val --json bench/results/dog_quality_val.json
python bench/bench_dog_quality.py --models imagenet,models/arcface-embedder --split test --json bench/results/dog_quality_test.json
python bench/bench_pair_quality.py --models imagenet-cosine,models/pair-matcher --json bench/results/pair_quality.json \
    --scores-dir bench/results/scores
for pair in imagenet:imagenet models/arcface-embedder:arcface; do
  m=${pair%%:*}; tag=${pair##*:}
  python -m model_pkg.evaluate gallery --model $m --data ../shared/data/dogfacenet --splits train/splits/dogfacenet.json \
      --split test --gallery-per-id 1 --unknown-fraction 0.2 --seed 0 --json bench/results/gallery_${tag}_g1_u02.json
done

# 5. The app's demo gallery for the new embedder.
python app/build_demo_assets.py
