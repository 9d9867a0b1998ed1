"""Training images/s of candidate ArcFace recipes on this machine, in one run (issue 12).

Each recipe times full training steps of `ArcFaceEmbedderModel` (forward, ArcFace loss over the real
number of training dogs, backward, AdamW step) on P x K batches:

* `full@S`: fine-tuning the whole backbone on pixels at S px (data loading not counted, which flatters it);
* `last3@S`: the previous recipe, the last 3 coarse layer groups trained on pixels;
* `cached-s5@S` / `cached-s6@S`: the stem and block stages before 5 (or 6) frozen and read from a cache of
  their activations (`config.activation_stage`); only the later stages and the head train;
* `stem@S`: building that cache, images/s of the frozen stem's forward pass (no grad), per view.

    python scripts/bench_train_speed.py --threads 2 --json bench/results/train_speed.json

Run it on an idle machine: a second heavy job halves every number.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from model_pkg.arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.fileio import atomic_write_json

DEFAULT_RECIPES = (
    "full@224,full@160,full@128,full@112,last3@224,"
    "cached-s5@224,cached-s5@160,cached-s6@224,cached-s5@224:nocl,full@224:nocl,"
    "stem-s5@224,stem-s5@160"
)


def parse_recipe(text: str) -> dict:
    name, _, rest = text.partition("@")
    size, _, flag = rest.partition(":")
    return {"recipe": text, "kind": name, "size": int(size), "channels_last": flag != "nocl"}


def build(kind: str, size: int, num_classes: int) -> ArcFaceEmbedderModel:
    stage = int(kind.split("-s")[1]) if "-s" in kind else None
    groups = 3 if kind == "last3" else None
    cfg = ArcFaceEmbedderConfig(
        image_size=size, num_classes=num_classes, activation_stage=stage, backbone_trainable_groups=groups, margin=0.3
    )
    model = ArcFaceEmbedderModel(cfg)
    model.set_backbone_frozen(False)
    return model


def time_recipe(spec: dict, batch: int, num_classes: int, min_seconds: float) -> dict:
    model = build(spec["kind"], spec["size"], num_classes)
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=fmt)
    pixels = torch.randn(batch, 3, spec["size"], spec["size"]).contiguous(memory_format=fmt)
    labels = torch.randint(0, num_classes, (batch,))
    stage = model.config.activation_stage

    if spec["kind"].startswith("stem"):
        model.eval()

        @torch.no_grad()
        def step():
            model.backbone.forward_stem(pixels, stage).to(torch.float16)

    else:
        model.train()
        inputs = {"pixel_values": pixels}
        if stage is not None:
            with torch.no_grad():
                inputs = {
                    "activations": model.backbone.forward_stem(pixels, stage)
                    .to(torch.float16)
                    .float()
                    .contiguous(memory_format=fmt)
                }
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(**inputs, labels=labels).loss.backward()
            optimizer.step()

    for _ in range(2):  # warm-up: allocator, oneDNN kernels
        step()
    steps, start = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and steps >= 3:
            break
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if not spec["kind"].startswith("stem") else 0
    return {
        **spec,
        "batch": batch,
        "steps": steps,
        "seconds": round(elapsed, 2),
        "images_per_s": round(steps * batch / elapsed, 1),
        "ms_per_image": round(1000 * elapsed / (steps * batch), 2),
        "trainable_params": trainable,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=DEFAULT_RECIPES, help="comma-separated kind@size[:nocl]")
    parser.add_argument("--batch", type=int, nargs="+", default=[64], help="batch sizes (P x K photos)")
    parser.add_argument("--num-classes", type=int, default=828, help="training dogs (rows of the ArcFace head)")
    parser.add_argument("--min-seconds", type=float, default=12.0, help="time each recipe at least this long")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for text in args.recipes.split(","):
        for batch in args.batch:
            row = time_recipe(parse_recipe(text.strip()), batch, args.num_classes, args.min_seconds)
            rows.append(row)
            print(
                f"{row['recipe']:<22} batch {batch:>3}: {row['images_per_s']:>6.1f} images/s  {row['ms_per_image']:>6.1f} ms/image  "
                f"({row['trainable_params'] / 1e6:.2f}M trainable)",
                flush=True,
            )
    if args.json:
        atomic_write_json(
            {
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "rows": rows,
            },
            args.json,
        )
    return rows


if __name__ == "__main__":
    main()
