#!/bin/bash
# Issue 13's image-side probes (bench/README.md, "Text search: training the towers"): the text tower frozen and
# its caption features cached once, the image tower's outputs cached once per layer; ~4 CPU-minutes per run.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/flickr
TXT=runs/flickr/flickr8k__all-MiniLM-L6-v2__0__meanpool.npz
[ -f $TXT ] || python scripts/cache_flickr8k_features.py --what text --cache-dir runs/flickr
run() { name=$1; shift; python train/run.py --task dual --config train/configs/dual_encoder.yaml --fresh \
  --set output_dir=runs/flickr/$name --set feature_cache_dir=runs/flickr/cache --set text_features_file=$TXT \
  --set model.text_config.freeze=true --set report_to=none "$@" > runs/flickr/$name.log 2>&1; echo "$name done"; }
L2="--set model.vision_config.backbone=tf_efficientnet_lite2 --set model.vision_config.image_size=260 --set model.vision_config.feature_layer=stage7"
run l2s7-attn $L2 --set model.vision_config.pooling=attention
run l2s7-attn-mv $L2 --set model.vision_config.pooling=attention --set model.loss=max_violation
run l2s7-mean $L2 --set model.vision_config.pooling=timm
run l0s7-attn --set model.vision_config.backbone=tf_efficientnet_lite0 --set model.vision_config.image_size=224 \
  --set model.vision_config.feature_layer=stage7 --set model.vision_config.pooling=attention
# the seed's recipe with the offline image tower (LSTM text tower from scratch)
python train/run.py --task dual --config train/configs/dual_encoder_lstm.yaml --fresh --set feature_cache_dir=runs/flickr/cache \
  --set output_dir=runs/flickr/lstm > runs/flickr/lstm.log 2>&1; echo "lstm done"
