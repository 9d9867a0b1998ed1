"""Ship a trained dual encoder with a query bank: choose the bank's size and temperature on the dev split, save.

    python scripts/ship_dual_encoder.py runs/dual-tuned/model --tta-flip --sizes 1000,2000,4000 \
        --temperatures 0.05,0.0667,0.1,0.15 --out models/dual-encoder --json bench/results/dual_query_bank_tuned_flip.json

Text-to-image search ranks photos by cosine plus a per-photo offset: minus a soft maximum (log-mean-exp at the bank's
temperature) of the photo's cosines with a bank of training captions (`DualEncoderModel.image_score_offsets`;
QB-Norm's inverted softmax, Bogolin et al., CVPR 2022). A photo that resembles every caption a little (a hub) otherwise tops searches it
does not answer. The bank is the first caption of training photos drawn at random (`query_bank_captions`), so it
holds captions like the ones users type and never a dev caption. Every dev photo and caption is embedded once; each
(size, temperature) is judged by text->image R@1/5/10 on the 1,000 dev photos x 5,000 captions, and the best mean of
the three is kept (ties: the smaller bank). Image->text is unchanged by the bank. `--tta-flip`: every photo is
embedded as the mean of itself and its mirror image (`DualEncoderVisionConfig.tta_flip`), and shipped so.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import model_pkg  # noqa: F401
from model_pkg.dual_encoder.data import caption_pairs, load_flickr8k_splits
from model_pkg.dual_encoder.evaluation import flat_metrics
from model_pkg.dual_encoder.search import database_vectors, embed_images, query_vectors
from model_pkg.dual_encoder.training import query_bank_captions, save_with_card
from model_pkg.fileio import atomic_write_json
from model_pkg.loading import load_dual_model
from model_pkg.metrics import text_image_retrieval_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the trained dual encoder, e.g. runs/dual-tuned/model")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "flickr8k"))
    parser.add_argument("--sizes", default="1000,2000,4000", help="bank sizes (training captions, one per photo)")
    parser.add_argument("--temperatures", default="0.05,0.0667,0.1")
    parser.add_argument("--tta-flip", action="store_true", help="ship with flip test-time augmentation of the photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary", default=None, help="the run's summary.json, for the model card (default: beside the model)")
    parser.add_argument("--out", default=None, help="save the model with the chosen bank here (fp16 weights, model card)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    model = load_dual_model(args.model).eval()
    model.set_tta_flip(args.tta_flip)
    splits = load_flickr8k_splits(args.data)
    dev_paths, dev_captions, owner = caption_pairs(splits["dev"])
    img, _, skipped = embed_images(model, dev_paths)
    if skipped:
        raise SystemExit(f"{len(skipped)} dev photo(s) could not be read, e.g. {skipped[0]}")
    txt = model.encode_text(dev_captions).numpy()
    plain = text_image_retrieval_metrics(img, txt, owner)
    rows = [{"size": 0, "temperature": None, **plain["text_to_image"]}]
    print(f"no bank: t2i {_fmt(plain['text_to_image'])}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    captions = query_bank_captions(splits["train"], max(sizes), args.seed)
    bank = model.encode_text(captions)  # the largest bank; smaller ones are its random subsets (same seed)
    for size in sizes:
        subset = sorted(np.random.default_rng(args.seed).permutation(len(captions))[:size])
        for temperature in (float(t) for t in args.temperatures.split(",")):
            model.query_bank, model.config.query_bank_temperature = bank[subset], temperature
            model.config.query_bank_size = size
            t2i = text_image_retrieval_metrics(database_vectors(model, img), query_vectors(model, txt), owner)
            rows.append({"size": size, "temperature": temperature, **t2i["text_to_image"]})
            print(f"bank {size}, temperature {temperature}: t2i {_fmt(t2i['text_to_image'])}", flush=True)
    best = max(rows[1:], key=lambda r: (np.mean([r["r1"], r["r5"], r["r10"]]), -r["size"]))
    subset = sorted(np.random.default_rng(args.seed).permutation(len(captions))[: best["size"]])
    model.set_query_bank([captions[i] for i in subset], best["temperature"])
    chosen = {"text_to_image": {k: best[k] for k in ("r1", "r5", "r10", "mrr")}, "image_to_text": plain["image_to_text"]}
    print(f"chosen: bank {best['size']}, temperature {best['temperature']}: t2i {_fmt(chosen['text_to_image'])}")
    result = {"model": args.model, "tta_flip": args.tta_flip, "rows": rows}
    result["chosen"] = {"size": best["size"], "temperature": best["temperature"]}
    result["dev"], result["dev_without_query_bank"] = chosen, plain
    if args.out:
        summary_file = args.summary or os.path.join(os.path.dirname(os.path.abspath(args.model)), "summary.json")
        training = (json.load(open(summary_file)).get("training") if os.path.isfile(summary_file) else None) or {}
        training["shipped_by"] = f"scripts/ship_dual_encoder.py{' --tta-flip' if args.tta_flip else ''}: " + (
            f"query bank of {best['size']} training captions, temperature {best['temperature']}"
        )
        save_with_card(model, args.out, metrics={f"dev_{k}": v for k, v in flat_metrics(chosen).items()}, training=training)
    if args.json:
        atomic_write_json(result, args.json)
    return result


def _fmt(m: dict) -> str:
    return f"R@1 {m['r1']:.1f} / R@5 {m['r5']:.1f} / R@10 {m['r10']:.1f} / MRR {m['mrr']:.3f}"


if __name__ == "__main__":
    main()
