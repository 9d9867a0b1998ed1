"""Fine-tune the dual encoder's image tower on a GPU against its trained text tower (issue 13).

    python train/dual_image_gpu.py --prepare gpu_inputs                      # on a machine with the data and packages
    python train/dual_image_gpu.py --images gpu_inputs/flickr.zip --targets gpu_inputs/targets.npz \
        --init gpu_inputs/lite2_imagenet.safetensors --projection gpu_inputs/projection.safetensors \
        --out runs/dual-image-gpu --name lr1e-4 --backbone-lr 1e-4 --minutes 3

The CPU recipe (`train/configs/dual_encoder.yaml`) keeps the image tower frozen and cached, and its curve says the
frozen ImageNet features are the limit. With a GPU the tower itself can learn: every Flickr8k photo is decoded
once into GPU memory and augmented there (`training.gpu_recipes.augment`), and the whole EfficientNet-Lite2 plus the
image projection train against the captions' embeddings from the shipped, already fine-tuned text tower, which
stay fixed (`--targets`: every caption's L2-normalised 256-d embedding, computed once with
`DualEncoderModel.encode_text`), so the new image tower slots in beside that text tower unchanged. Each step
takes a batch of distinct training photos with one random caption each, the symmetric InfoNCE of CLIP at the
shipped model's temperature. The run starts at the shipped model (ImageNet backbone, shipped projection),
follows a wall-clock cosine schedule, evaluates text->image and image->text recall on the dev photos every
`--eval-seconds` and keeps the best by mean recall (`vision.safetensors`: `vision_model.backbone.*` and
`visual_projection.*` in fp16, whole or absent, and `run.json` with the curve). Merge it into a model folder with
`--merge`: `python train/dual_image_gpu.py --merge OUT/NAME --model models/dual-encoder --out-model DIR`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from model_pkg.backbones import create_backbone
from model_pkg.training.gpu_recipes import Normalizer, add_run_arguments, augment, setup_device, train_for, write_record

DUAL_CURVE = {k: k for k in ("recall_mean", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")}


def load_zip_photos(path: str, names: list[str], size: int) -> torch.Tensor:
    """JPEGs named `names` inside the zip at `path` -> uint8 (N, 3, size, size)."""
    with zipfile.ZipFile(path) as z:
        blobs = [z.read(n) for n in names]

    def read(blob: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(blob)) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im)

    with ThreadPoolExecutor(16) as pool:
        arrays = list(pool.map(read, blobs))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class ImageSide(nn.Module):
    """The dual encoder's image side: backbone `stage7` tokens, mean over positions, MLP projection, L2 norm."""

    def __init__(self, backbone: str, image_size: int, layer: str, dim: int, hidden: int, out: int, dropout: float):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained=False, image_size=image_size)
        self.layer = layer
        self.projection = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics stay ImageNet's (batches of one dataset's photos would shift them)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.forward_tokens(x, self.layer)  # (B, T, D)
        return F.normalize(self.projection(tokens.float().mean(1)), dim=-1)


def recalls(image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict:
    """Dev images (N, P) x their captions (N, 5, P) -> text->image and image->text R@1/5/10 in percent."""
    n, c, _ = text_emb.shape
    texts = text_emb.reshape(n * c, -1)
    owner = torch.arange(n, device=texts.device).repeat_interleave(c)
    sims = texts @ image_emb.T  # (N*5, N)
    rank_t2i = (sims > sims[torch.arange(n * c), owner][:, None]).sum(1)  # images scored above the true one
    best_caption = (image_emb @ texts.T).view(n, n, c)  # (N images, N owners, 5)
    own = best_caption[torch.arange(n), torch.arange(n)].max(1).values  # (N,) best score of an own caption
    rank_i2t = (best_caption.flatten(1) > own[:, None]).sum(1)
    out = {}
    for tag, rank in (("t2i", rank_t2i), ("i2t", rank_i2t)):
        for k in (1, 5, 10):
            out[f"{tag}_r{k}"] = float((rank < k).float().mean() * 100)
    out["recall_mean"] = float(np.mean([out[f"{t}_r{k}"] for t in ("t2i", "i2t") for k in (1, 5, 10)]))
    return out


def save_vision(model: ImageSide, folder: str) -> None:
    from safetensors.torch import save_file

    state = {f"vision_model.backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state |= {f"visual_projection.{k}": v for k, v in model.projection.state_dict().items()}
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "vision.safetensors.tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(folder, "vision.safetensors"))


def merge(run_dir: str, model_dir: str, out_dir: str, image_size: int | None, metrics_json: str | None = None) -> None:
    """The shipped dual encoder with the run's image tower in place of the frozen one -> a model folder (and its
    tuned backbone alone in `backbone.safetensors`). The card gets the run's best dev recalls (at its training
    size), or those of `metrics_json` (`evaluate text-search`)."""
    from safetensors.torch import load_file, save_file

    from model_pkg import DualEncoderModel
    from model_pkg.dual_encoder.training import save_with_card

    with open(os.path.join(run_dir, "run.json")) as f:
        record = json.load(f)
    model = DualEncoderModel.from_pretrained(model_dir).float()
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in load_file(os.path.join(run_dir, "vision.safetensors")).items()
    }
    missing = set(state) - set(model.state_dict())
    if missing:
        raise SystemExit(f"{run_dir} holds weights the model has not: {sorted(missing)[:5]} ...")
    model.load_state_dict(state, strict=False)
    model.config.vision_config.freeze = False  # the backbone's weights are now the model's own, saved with it
    if image_size:
        model.config.vision_config.image_size = image_size
        model.vision_model.backbone.image_size = image_size
    model.set_frozen()
    best = record["best"]
    metrics = {f"dev_{k}": v for k, v in best.items() if k.startswith(("t2i", "i2t", "recall"))}
    if metrics_json:
        with open(metrics_json) as f:
            measured = json.load(f)
        metrics = {
            f"dev_{tag}_{k}": v
            for tag, key in (("t2i", "text_to_image"), ("i2t", "image_to_text"))
            for k, v in measured[key].items()
        }
    training = {
        "recipe": "train/dual_image_gpu.py",
        "name": record["args"]["name"],
        "best_step": best["step"],
        "best_epoch": round(best["epoch"], 1),
        "train_image_size": record["args"]["image_size"],
    }
    save_with_card(model, out_dir, metrics=metrics, training=training, weights_dtype=torch.float16)
    # The tuned backbone alone, as a timm checkpoint: `vision_config.backbone_checkpoint_path` of a CPU recipe that
    # trains the text side against it (train/configs/dual_encoder_tuned_image.yaml).
    backbone = {k: v.contiguous() for k, v in model.vision_model.backbone.model.state_dict().items()}
    save_file(backbone, os.path.join(out_dir, "backbone.safetensors.tmp"), metadata={"format": "pt"})
    os.replace(os.path.join(out_dir, "backbone.safetensors.tmp"), os.path.join(out_dir, "backbone.safetensors"))


def prepare(data: str, model_dir: str, out: str, size: int, quality: int) -> None:
    """What a GPU machine without the data or the weight packages needs, in `out`: `flickr.zip` (the training and
    dev photos as `size` px JPEGs), `targets.npz` (every caption's embedding from `model_dir`'s text side and its
    temperature), `projection.safetensors` (its image projection) and `lite2_imagenet.safetensors`."""
    from safetensors.torch import save_file

    from model_pkg import DualEncoderModel
    from model_pkg.dual_encoder.data import load_flickr8k_splits

    os.makedirs(out, exist_ok=True)
    splits = load_flickr8k_splits(data)
    model = DualEncoderModel.from_pretrained(model_dir).float().eval()
    arrays: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    for split, key in (("train", "train"), ("dev", "dev")):
        rows = splits[split]
        names[key] = [os.path.basename(p) for p in rows["image_path"]]
        texts = [c for caps in rows["captions"] for c in caps[:5]]
        arrays[f"{key}_text"] = model.encode_text(texts).numpy().reshape(len(rows), 5, -1).astype(np.float16)
    scale = float(model.logit_scale.detach().clamp(max=math.log(model.config.max_logit_scale)).exp())
    np.savez(
        os.path.join(out, "targets.npz"),
        train_names=np.array(names["train"]),
        dev_names=np.array(names["dev"]),
        logit_scale=np.float32(scale),
        **arrays,
    )
    projection = {k: v.half().contiguous() for k, v in model.state_dict().items() if k.startswith("visual_projection.")}
    save_file(projection, os.path.join(out, "projection.safetensors"))
    backbone = create_backbone(model.config.vision_config.backbone, pretrained=True, image_size=size)
    save_file(
        {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in backbone.model.state_dict().items()},
        os.path.join(out, "lite2_imagenet.safetensors"),
    )
    with zipfile.ZipFile(os.path.join(out, "flickr.zip"), "w", compression=zipfile.ZIP_STORED) as z:
        for split in ("train", "dev"):
            for path in splits[split]["image_path"]:
                with Image.open(path) as im:
                    buf = io.BytesIO()
                    im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
                z.writestr(os.path.basename(path), buf.getvalue())


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="zip of the Flickr8k photos named in --targets")
    parser.add_argument("--targets", help="npz: train_names, dev_names, train_text (N, 5, P), dev_text (N, 5, P), logit_scale")
    parser.add_argument("--init", help="ImageNet weights of the backbone (safetensors, timm key names)")
    parser.add_argument("--projection", help="the shipped model's visual_projection.* (safetensors)")
    add_run_arguments(
        parser, minutes=3.0, image_size=192, backbone_lr=3e-5, head_lr=1e-4, weight_decay=0.05, warmup=0.05, eval_seconds=12.0
    )
    parser.add_argument("--backbone", default="tf_efficientnet_lite2")
    parser.add_argument("--layer", default="stage7")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--max-images", type=int, default=None, help="smoke tests")
    parser.add_argument("--prepare", help="write the device inputs (photos zip, caption targets, weights) into this folder")
    parser.add_argument(
        "--data", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "flickr8k")
    )
    parser.add_argument("--zip-quality", type=int, default=70)
    parser.add_argument("--merge", help="a finished run's folder: write it into --model as --out-model")
    parser.add_argument("--model", default="models/dual-encoder")
    parser.add_argument("--out-model")
    parser.add_argument("--merge-image-size", type=int, default=None)
    parser.add_argument("--merge-metrics", default=None, help="an `evaluate text-search` JSON of the merged model, for its card")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.data, args.model, args.prepare, args.image_size, args.zip_quality)
        return None
    if args.merge:
        merge(args.merge, args.model, args.out_model, args.merge_image_size, args.merge_metrics)
        return None

    if not (args.images and args.targets and args.init and args.projection and args.out):
        parser.error("training needs --images, --targets, --init, --projection and --out (see --prepare)")
    device = setup_device(args)
    targets = np.load(args.targets)
    train_names, dev_names = list(targets["train_names"][: args.max_images]), list(targets["dev_names"][: args.max_images])
    train_text = torch.from_numpy(targets["train_text"][: args.max_images].astype(np.float32)).to(device)  # (N, 5, P)
    dev_text = torch.from_numpy(targets["dev_text"][: args.max_images].astype(np.float32)).to(device)
    scale = float(targets["logit_scale"])
    started = time.time()
    train_x = load_zip_photos(args.images, train_names, args.image_size).to(device)
    dev_x = load_zip_photos(args.images, dev_names, args.image_size).to(device)
    print(
        f"[{args.name}] {len(train_x)} training and {len(dev_x)} dev photos decoded in {time.time() - started:.1f} s", flush=True
    )

    from safetensors.torch import load_file

    proj = load_file(args.projection)
    hidden, dim = proj["visual_projection.1.weight"].shape
    out_dim = proj["visual_projection.3.weight"].shape[0]
    model = ImageSide(args.backbone, args.image_size, args.layer, dim, hidden, out_dim, dropout=0.3)
    model.backbone.model.load_state_dict({k: v.float() for k, v in load_file(args.init).items()})
    model.projection.load_state_dict({k.removeprefix("visual_projection."): v.float() for k, v in proj.items()})
    model.to(device).to(memory_format=torch.channels_last)
    norm = Normalizer(model.backbone.data_config, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    params = [list(model.backbone.parameters()), list(model.projection.parameters())]
    base_lrs = [args.backbone_lr, args.head_lr]
    opt = torch.optim.AdamW([{"params": p, "lr": lr} for p, lr in zip(params, base_lrs)], weight_decay=args.weight_decay)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    best_dir = os.path.join(args.out, args.name)
    record: dict = {"args": vars(args), "curve": [], "best": None}

    @torch.no_grad()
    def evaluate(step: int, seconds: float, loss: float | None) -> None:
        model.eval()
        with autocast:
            emb = torch.cat([model(norm(dev_x[i : i + 256].float() / 255.0)).float() for i in range(0, len(dev_x), 256)])
        model.train()
        point = {
            "step": step,
            "epoch": step * args.batch / len(train_x),
            "seconds": round(seconds, 1),
            "train_loss": loss,
            **recalls(emb, dev_text),
        }
        record["curve"].append(point)
        if record["best"] is None or point["recall_mean"] > record["best"]["recall_mean"]:
            record["best"] = point
            save_vision(model, best_dir)
        write_record(record, best_dir, DUAL_CURVE)
        print(f"[{args.name}] " + json.dumps(point), flush=True)

    order = np.array([], dtype=np.int64)
    labels = torch.arange(args.batch, device=device)

    def batch_loss(progress: float) -> torch.Tensor:
        nonlocal order
        if len(order) < args.batch:  # every photo once per epoch, never twice in a batch
            order = np.concatenate([order, rng.permutation(len(train_x))])
        idx_np, order = order[: args.batch], order[args.batch :]
        if len(set(idx_np.tolist())) < len(idx_np):  # an epoch boundary repeated a photo: draw afresh
            idx_np = rng.choice(len(train_x), size=args.batch, replace=False)
        idx = torch.as_tensor(idx_np, device=device)
        captions = torch.as_tensor(rng.integers(0, train_text.shape[1], size=len(idx_np)), device=device)
        text = train_text[idx, captions]  # (B, P) fixed targets
        with autocast:
            image = model(norm(augment(train_x[idx], gen)))
        logits = scale * text @ image.float().T  # (B texts, B images)
        return 0.5 * (F.cross_entropy(logits, labels[: len(idx)]) + F.cross_entropy(logits.T, labels[: len(idx)]))

    record["images_per_second"] = train_for(args, model, opt, base_lrs, batch_loss, evaluate, args.batch)
    write_record(record, best_dir, DUAL_CURVE)
    print(f"[{args.name}] done: best " + json.dumps(record["best"]), flush=True)
    return record


if __name__ == "__main__":
    main()
