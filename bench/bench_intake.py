"""What the shipped intake says about the validation pets: species, kind, crops and reshoot reasons per kind of photo.

    python bench/bench_intake.py --json bench/results/intake_val.json --examples bench/screenshots/intake_examples.png

Photos: the validation pets of `bench/fit_fusion.py` (DogFaceNet validation dogs, MPDD, the 12 cats; the kind head
was fitted on them, so its accuracy here is in-sample: `bench/results/fusion_fit.json` has it with identities held
out) and 300 Flickr8k development photos without a dog or cat in their captions (the head's "none" class was fitted
on the first 300 of them; these are the next 300). The examples image shows, for each kind, photos as loaded with
the intake's box drawn in, and every photo the intake would have reshot, with its reason.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from fit_fusion import photos_without_pets, validation_photos
from PIL import Image, ImageDraw

from model_pkg.fileio import atomic_write_json
from model_pkg.intake import KINDS, PhotoIntake

TILE = 160


def tile(result, caption: str) -> Image.Image:
    image = result.image.copy()
    scale = TILE / max(image.size)
    image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = (int(v * scale) for v in result.box)
    draw.rectangle((left, top, right - 1, bottom - 1), outline=(255, 40, 40), width=2)
    out = Image.new("RGB", (TILE, TILE + 28), "white")
    out.paste(image, ((TILE - image.width) // 2, 0))
    text = ImageDraw.Draw(out)
    for i, line in enumerate((caption[:30], caption[30:60])):
        text.text((2, TILE + 2 + 12 * i), line, fill="black")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/arcface-embedder", help="a model folder whose config holds the intake")
    parser.add_argument("--splits", default="train/splits/dogfacenet.json")
    parser.add_argument("--json", required=True)
    parser.add_argument("--examples", default=None, help="write a PNG of example boxes and every reshoot here")
    args = parser.parse_args(argv)
    intake = PhotoIntake(json.loads((Path(args.model) / "config.json").read_text())["intake"])
    rows = [(p, kind) for p, _, kind, fusion in validation_photos(args.splits) if fusion]
    rows += [(p, "none") for p in photos_without_pets(600)[300:]]
    report: dict = {}
    examples: dict[str, list] = collections.defaultdict(list)
    reshot: list = []
    for kind in (*KINDS, "none"):
        paths = [p for p, k in rows if k == kind]
        counts: collections.Counter = collections.Counter()
        species_right = kind_right = cropped = 0
        for start in range(0, len(paths), 32):
            for result in intake(paths[start : start + 32]):
                reason = (result.reshoot or "").split(":")[0]
                counts[reason or "usable"] += 1
                if kind != "none":
                    species_right += result.species == kind.split("_")[0]
                    kind_right += result.kind == kind
                    cropped += result.cropped
                    if len(examples[kind]) < 4 and start % 96 == 0 and result.usable:
                        examples[kind].append(tile(result, f"{result.kind} {result.species_probability:.2f}"))
                if result.reshoot and len(reshot) < 24:
                    reshot.append(tile(result, f"{kind}: {reason}"))
                result.image = result.crop = None
        n = len(paths)
        report[kind] = {"photos": n, "outcomes": dict(counts)}
        if kind != "none":
            report[kind].update(species_accuracy=species_right / n, kind_accuracy=kind_right / n, cropped=cropped / n)
        print(kind, json.dumps(report[kind]), flush=True)
    atomic_write_json(report, args.json)
    if args.examples:
        tiles = [t for kind in KINDS for t in examples[kind]] + reshot
        columns = 8
        sheet = Image.new("RGB", (columns * TILE, -(-len(tiles) // columns) * (TILE + 28)), "white")
        for i, t in enumerate(tiles):
            sheet.paste(t, ((i % columns) * TILE, (i // columns) * (TILE + 28)))
        Path(args.examples).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
