#!/bin/bash
# The three frozen-tower recipes of bench/README.md "Text search" (bench/results/text_search_recipes.json).
# Needs the shared feature cache (scripts/cache_flickr8k_features.py); each run takes a few CPU-minutes.
IMG=/work/feature_cache/flickr8k__tf_efficientnet_lite0__224__pooled.npz
TXT=/work/feature_cache/flickr8k__all-MiniLM-L6-v2__0__meanpool.npz
run() { name=$1; shift; OMP_NUM_THREADS=1 nice -n 10 python train/run.py --task dual --config train/configs/dual_encoder.yaml --fresh \
  --set output_dir=runs/$name --set image_features_file=$IMG --set text_features_file=$TXT --set report_to=none "$@" > runs/$name.log 2>&1; }
run exp-linear --set model.projection=linear --set model.projection_dropout=0.0 --set learning_rate=0.001 --set weight_decay=0.0
run exp-mlp --set model.projection_dropout=0.1 --set weight_decay=0.05
run exp-mlp-d3   # the shipped recipe as it stands in the YAML
