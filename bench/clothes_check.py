"""What the trained embedders look at on whole dogs in clothes (issue 32, item 4: clothes are a shortcut in MPDD).

    python bench/clothes_check.py --models models/arcface-embedder,runs/all-pets-release/arcface-embedder \
        --png bench/results/clothes_check.png --json bench/results/clothes_check.json

For each MPDD dog that wears clothes or a harness in its photos (picked by eye from a contact sheet of all 95 dogs),
one photo is occluded a cell at a time (a 7 x 7 grid, each cell set to the ImageNet mean); a cell's weight is how
much the photo's cosine to the mean embedding of the dog's *other* photos drops without it. A model that identifies
the dog by its clothes puts its weight on the coat; one that identifies the dog puts it on the head and the fur.
The trained embedder alone is measured (no intake, no fusion): the question is what its weights learnt. The JSON
gives each map's share of weight in the clothes box drawn by hand (`CLOTHES`, fractions of the photo).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from bench_all_pets_embedder import load  # bench/ is the script's own folder
from PIL import Image, ImageDraw

from model_pkg.fileio import atomic_write_json
from model_pkg.transforms import create_transform

DATA = Path(os.environ.get("PETMATCH_DATA", "../shared/data")) / "mpdd"
# dog -> (photo index in sorted order, clothes box as fractions (left, top, right, bottom) of that photo), by eye
CLOTHES = {
    "149": (0, (0.20, 0.35, 0.85, 0.65)),  # a patterned vest
    "165": (0, (0.40, 0.20, 0.80, 0.60)),  # pink clothes
    "172": (0, (0.40, 0.40, 0.65, 0.65)),  # an orange harness
    "46": (0, (0.25, 0.30, 0.95, 0.75)),  # a grey coat
    "71": (0, (0.00, 0.20, 0.70, 0.65)),  # a dark printed coat
    "78": (0, (0.05, 0.00, 0.85, 0.85)),  # green and blue clothes, most of the photo
}
GRID = 7


@torch.no_grad()
def embed(model, pixels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(model.photo_embeddings(pixels).float(), dim=-1)


@torch.no_grad()
def occlusion_map(model, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """x: (1, 3, H, W) the photo as the model sees it."""
    base = float(embed(model, x)[0] @ target)
    size = x.shape[-1]
    step = size // GRID
    batch = []
    for i in range(GRID):
        for j in range(GRID):
            y = x.clone()
            y[..., i * step : (i + 1) * step, j * step : (j + 1) * step] = 0.0  # the normalised data mean
            batch.append(y)
    occluded = embed(model, torch.cat(batch)) @ target
    return (base - occluded.numpy()).reshape(GRID, GRID)


def in_box(box: tuple[float, float, float, float]) -> np.ndarray:
    """(GRID, GRID) bool: the cells whose centre lies in the box."""
    centres = (np.arange(GRID) + 0.5) / GRID
    return (centres[:, None] >= box[1]) & (centres[:, None] <= box[3]) & (centres[None] >= box[0]) & (centres[None] <= box[2])


def clothes_share(heat: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Share of the positive weight in the cells whose centre lies in the clothes box."""
    weight = heat.clip(0)
    return float(weight[in_box(box)].sum() / max(weight.sum(), 1e-12))


def overlay(photo: Image.Image, heat: np.ndarray, size: int = 160) -> Image.Image:
    base = photo.convert("RGB").resize((size, size))
    h = heat.clip(0) / max(heat.max(), 1e-12)
    red = Image.fromarray((h * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    mask = Image.merge("RGB", (red, Image.new("L", (size, size)), Image.new("L", (size, size))))
    return Image.blend(base, mask, 0.55)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="models/arcface-embedder")
    parser.add_argument("--png", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    names = args.models.split(",")
    models = [load(n).eval() for n in names]
    for model in models:
        model.config.intake = model.config.fusion = None
    size = 160
    sheet = Image.new("RGB", (size * (1 + len(models)), (size + 14) * len(CLOTHES) + 14), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(["photo", *names]):
        draw.text(
            (c * size + 2, 0), os.path.basename(os.path.dirname(name)) + "/" + os.path.basename(name) if c else name, fill="black"
        )
    report: dict = {"models": names, "dogs": {}}
    for r, (dog, (index, box)) in enumerate(CLOTHES.items()):
        photos = sorted((DATA / dog).glob("*.jpg"))
        photo = Image.open(photos[index]).convert("RGB")
        others = [Image.open(p).convert("RGB") for k, p in enumerate(photos) if k != index]
        y = 14 + r * (size + 14)
        shown = photo.resize((size, size))
        ImageDraw.Draw(shown).rectangle([box[0] * size, box[1] * size, box[2] * size, box[3] * size], outline="yellow")
        sheet.paste(shown, (0, y + 14))
        draw.text((2, y), f"MPDD dog {dog}", fill="black")
        # what a model that looked everywhere alike would put on the clothes
        report["dogs"][dog] = {
            "photo": photos[index].name,
            "clothes_box": box,
            "box_share_of_cells": round(float(in_box(box).mean()), 3),
        }
        for c, (name, model) in enumerate(zip(names, models), start=1):
            transform = create_transform(model.backbone.data_config, train=False)
            target = torch.nn.functional.normalize(embed(model, torch.stack([transform(o) for o in others])).mean(0), dim=0)
            heat = occlusion_map(model, transform(photo)[None], target)
            share = clothes_share(heat, box)
            report["dogs"][dog][name] = {"clothes_share": round(share, 3), "map": heat.round(4).tolist()}
            sheet.paste(overlay(photo, heat, size), (c * size, y + 14))
            draw.text((c * size + 2, y), f"clothes {share:.0%}", fill="black")
            print(f"dog {dog} {name}: {share:.0%} of the weight on the clothes", flush=True)
    report["box_share_of_cells"] = round(float(np.mean([d["box_share_of_cells"] for d in report["dogs"].values()])), 3)
    for name in names:
        report[name] = {
            "mean_clothes_share": round(float(np.mean([d[name]["clothes_share"] for d in report["dogs"].values()])), 3)
        }
    sheet.save(args.png)
    atomic_write_json(report, args.json)
    print(json.dumps({n: report[n] for n in ["box_share_of_cells", *names]}))
    return report


if __name__ == "__main__":
    main()
