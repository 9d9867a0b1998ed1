"""What the GPU recipes share (`train/arcface_gpu.py`, `train/dual_image_gpu.py`): batch augmentation of photos held
in device memory, the wall-clock training loop with its cosine schedule, and their run records.

Photos are decoded once into GPU memory as uint8 and augmented there a batch at a time, because per-photo PIL
decoding on the CPU, not the network, would set the pace of a small backbone on a GPU. The loop follows
wall-clock time rather than a step count, so a run of any length ends annealed and fits a lent machine's
minutes. Each evaluation writes `run.json` (arguments, curve, best point) and the same curve as HF Trainer's
`trainer_state.json`, so `scripts/learning_curve.py` and the dashboard read a GPU run like a Trainer run.
Apart from the rest of the package because none of it touches HF Trainer: these recipes run their own loop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "Normalizer",
    "add_run_arguments",
    "augment",
    "cosine_factor",
    "setup_device",
    "train_for",
    "trainer_state",
    "write_record",
]


def augment(photos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) in [0, 1]: random crop of 80-100% of the area at aspect 0.9-1.1,
    rotation within 15 degrees, horizontal flip, brightness/contrast 0.8-1.2, saturation 0.9-1.1, and a
    Gaussian blur (sigma 0.1-1.5) on one photo in five."""
    b, dev = photos.shape[0], photos.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen, device=dev) * (hi - lo) + lo

    x = photos.float() / 255.0
    area, ratio = uniform(0.8, 1.0), uniform(math.log(0.9), math.log(1.1)).exp()
    sx, sy = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
    tx, ty = (1 - sx) * uniform(-1, 1), (1 - sy) * uniform(-1, 1)
    angle = uniform(-15, 15) * math.pi / 180
    flip = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos * sx * flip, -sin * sy, tx], 1), torch.stack([sin * sx * flip, cos * sy, ty], 1)], 1
    )  # (B, 2, 3): output pixel -> input pixel, rotation @ scale(flip)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x * uniform(0.8, 1.2).view(b, 1, 1, 1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)
    mean = grey.mean((2, 3), keepdim=True)
    x = (x - mean) * uniform(0.8, 1.2).view(b, 1, 1, 1) + mean
    x = (x - grey) * uniform(0.9, 1.1).view(b, 1, 1, 1) + grey
    # every photo goes through a 5x5 kernel (fixed shapes for cudnn): a Gaussian for one in five, identity for the rest
    sigma = uniform(0.1, 1.5)
    taps = torch.arange(5, device=dev, dtype=x.dtype) - 2
    k1 = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # (B, 5)
    keep = torch.rand(b, generator=gen, device=dev) >= 0.2
    k1 = torch.where(keep[:, None], (taps == 0).to(x.dtype)[None], k1)
    k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(3, 0).unsqueeze(1)  # (3B, 1, 5, 5)
    _, _, h, w = x.shape
    x = F.conv2d(F.pad(x.reshape(1, 3 * b, h, w), (2, 2, 2, 2), mode="reflect"), k2, groups=3 * b).reshape(b, 3, h, w)
    return x.clamp(0.0, 1.0)


class Normalizer:
    """[0, 1] pixels -> the backbone's normalised input, channels_last."""

    def __init__(self, data_config: dict, device: torch.device):
        self.mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def cosine_factor(progress: float, warmup: float) -> float:
    """Learning-rate factor at `progress` (0..1 of the time budget): linear warm-up, then cosine to zero."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def trainer_state(record: dict, metrics: dict[str, str], scale: float = 1.0) -> dict:
    """A run's curve in HF Trainer's trainer_state.json shape (`log_history`), so `scripts/learning_curve.py` and the
    dashboard read a GPU run like a Trainer run. `metrics`: curve key -> `eval_<name>` key; values times `scale`."""
    history = []
    for point in record["curve"]:
        base = {"step": point["step"], "epoch": point["epoch"]}
        if point.get("train_loss") is not None:
            history.append({**base, "loss": point["train_loss"], "learning_rate": point.get("lr")})
        evals = {f"eval_{name}": point[key] * scale for key, name in metrics.items()}
        history.append({**base, **evals, "eval_unix_time": point["seconds"]})
    best, last = record["best"], record["curve"][-1]
    first = next(iter(metrics))
    return {
        "log_history": history,
        "global_step": last["step"],
        "epoch": last["epoch"],
        "best_global_step": best["step"],
        "best_metric": best[first] * scale,
    }


def add_run_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """The options every GPU recipe shares: where the run goes, its time budget and schedule, its device."""
    parser.add_argument("--out", default=defaults.get("out"))
    parser.add_argument("--name", default="run")
    parser.add_argument(
        "--minutes", type=float, default=defaults["minutes"], help="training time budget (the schedule follows it)"
    )
    parser.add_argument("--image-size", type=int, default=defaults["image_size"])
    parser.add_argument("--backbone-lr", type=float, default=defaults["backbone_lr"])
    parser.add_argument("--head-lr", type=float, default=defaults["head_lr"])
    parser.add_argument("--weight-decay", type=float, default=defaults["weight_decay"])
    parser.add_argument("--warmup", type=float, default=defaults["warmup"], help="share of the budget")
    parser.add_argument("--eval-seconds", type=float, default=defaults["eval_seconds"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)


def setup_device(args: argparse.Namespace) -> torch.device:
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True  # fixed shapes: every batch is the same size
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device(args.device)


def write_record(record: dict, folder: str, metrics: dict[str, str], scale: float = 1.0) -> None:
    """`run.json` (args, curve, best) and the same curve as `trainer_state.json`, each written whole."""
    os.makedirs(folder, exist_ok=True)
    for name, data in (("run.json", record), ("trainer_state.json", trainer_state(record, metrics, scale))):
        tmp = os.path.join(folder, name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, os.path.join(folder, name))


def train_for(
    args: argparse.Namespace,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    base_lrs: list[float],
    loss_fn: Callable[[float], torch.Tensor],
    evaluate: Callable[[int, float, float | None], None],
    images_per_step: int,
) -> float:
    """The wall-clock loop of the GPU recipes. `evaluate(step, seconds, mean_loss)` runs first (the starting
    point), every `args.eval_seconds` and once at the end; each optimiser group's learning rate is its base rate
    times `cosine_factor` of the elapsed share of `args.minutes`; `loss_fn(progress)` gives one batch's loss.
    Returns the training images per second."""
    evaluate(0, 0.0, None)
    model.train()
    budget, steps, t0, next_eval, losses = args.minutes * 60.0, 0, time.time(), args.eval_seconds, []
    while (elapsed := time.time() - t0) < budget:
        progress = elapsed / budget
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * cosine_factor(progress, args.warmup)
        loss = loss_fn(progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        steps += 1
        if time.time() - t0 >= next_eval:
            print(f"[{args.name}] step {steps}: {steps * images_per_step / (time.time() - t0):.0f} images/s", flush=True)
            evaluate(steps, time.time() - t0, float(torch.stack(losses).mean()))
            losses = []
            next_eval = time.time() - t0 + args.eval_seconds
    evaluate(steps, time.time() - t0, float(torch.stack(losses).mean()) if losses else None)
    return steps * images_per_step / max(time.time() - t0, 1e-9)
