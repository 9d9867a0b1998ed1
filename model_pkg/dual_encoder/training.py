"""Training the dual encoder with HF Trainer (`train/run.py --task dual`).

* Rows are training *images*; each batch takes every image once with one of its captions drawn at
  random (caption sampling: five views of the text per image, and no image twice in a batch, so the
  contrastive loss has no false negatives from a repeated photo).
* A frozen image tower trains on its cached outputs (pooled features or token maps, computed once
  with `features.compute_tokens`, or read from `image_features_file`); a frozen text tower likewise on
  cached mean-pooled sentence features. The LiT recipe: frozen EfficientNet-Lite0, MiniLM's top
  layers trained, MLP projections.
* `DualEncoderTrainer.evaluate` (`trainer.py`, `evaluation.py`) embeds every dev image and every dev caption and reports
  text->image and image->text R@1/5/10 and MRR (`metrics.text_image_retrieval_metrics`) at each evaluation;
  the mean of the six recalls selects the best checkpoint. Checkpoints, auto-resume, mixed precision and
  atomic saving as the other tasks (`model_pkg.training`).
* `report_to: [mlflow]` logs params and metrics to `file:./mlruns` (unless `MLFLOW_TRACKING_URI` is set);
  `tensorboard` works the same way once the tensorboard package is installed.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import datasets
import numpy as np
import torch
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from ..features import compute_tokens
from ..fileio import atomic_write_json
from ..modeling_utils import model_identity
from ..training import (
    check_options,
    last_checkpoint,
    main_process_first,
    process_state,
    remove_previous_run,
    resolve_mixed_precision,
    save_with_model_card,
    trainer_arguments,
)
from ..transforms import create_transform
from .configuration_dual_encoder import DualEncoderConfig
from .data import caption_pairs, load_flickr8k_splits
from .evaluation import evaluate_retrieval, flat_metrics
from .modeling_dual_encoder import DualEncoderModel
from .tokenization import build_vocab
from .trainer import CaptionBatchCollator, DualEncoderTrainer

__all__ = [
    "DualTrainingConfig",
    "image_tower_outputs",
    "save_with_card",
    "train_dual_encoder",
]


@dataclass
class DualTrainingConfig:
    """Everything one dual-encoder run needs; `train/configs/dual_encoder.yaml` is one of these."""

    data_dir: str
    output_dir: str
    token_file: str | None = None  # default <data_dir>/Flickr8k.token.txt
    train_list: str = "Flickr_8k.trainImages.txt"
    eval_list: str = "Flickr_8k.devImages.txt"
    model: dict = field(default_factory=dict)  # DualEncoderConfig keyword arguments
    vocab_min_freq: int = 2  # LSTM tower: words seen this often in the training captions
    cache_image_features: bool = True  # frozen image tower: train on its cached outputs
    image_features_file: str | None = None  # optional precomputed pooled features (.npz: features, paths)
    text_features_file: str | None = None  # frozen text tower: optional precomputed features (.npz, paths = '<image>#<n>')
    feature_cache_dir: str | None = None  # default <output_dir>/feature_cache
    batch_size: int = 256
    epochs: float = 10.0
    max_steps: int | None = None  # replaces epochs when given
    learning_rate: float = 1e-3  # projections, pooling, temperature, LSTM tower
    text_learning_rate: float = 5e-5  # a pretrained transformers text tower
    image_learning_rate: float = 1e-4  # an unfrozen image backbone
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    augment_images: bool = True  # training on pixels: the project's train transform
    query_bank_size: int = 0  # >0: store this many training captions (one per photo) as the model's query bank
    query_bank_temperature: float = 1 / 15  # its temperature (`DualEncoderConfig.query_bank_temperature`)
    eval_steps: int = 50
    eval_on_start: bool = False  # evaluate before the first step too (the learning curve's starting point)
    eval_batch_size: int = 256
    logging_steps: int = 10
    save_total_limit: int | None = 2
    mixed_precision: str = "auto"
    report_to: str | list[str] = "none"
    seed: int = 0
    fresh: bool = False

    def __post_init__(self):
        if self.batch_size < 2:
            raise ValueError(f"batch_size={self.batch_size} must be >= 2: the contrastive loss needs negatives.")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs} must be > 0 (or give max_steps).")

    @classmethod
    def from_dict(cls, values: dict) -> DualTrainingConfig:
        check_options(cls, values, "dual-training")
        return cls(**values)


# -- cached tower outputs ------------------------------------------------------------------------------
def image_tower_outputs(
    model: DualEncoderModel, paths: Sequence[str], cache_dir: str | None, batch_size: int = 32
) -> torch.Tensor:
    """The frozen image tower's outputs for `paths`: pooled (N, D) float32, or tokens (N, T, D) float16
    for attention pooling; stored by `datasets` under `cache_dir` and reused on resume. The file name carries the
    weights' digest, so a tuned tower (`backbone_checkpoint_path`) never reads the ImageNet tower's tokens."""
    tower = model.vision_model
    backbone = tower.backbone
    cache_file = None
    if cache_dir:
        layer = f"-{tower.layer}" if tower.layer else ""
        weights = model_identity(backbone).split(":")[-1]
        name = f"tokens-{backbone.model_name}-{backbone.image_size}{layer}-{len(paths)}-{weights}.arrow"
        cache_file = os.path.join(cache_dir, name)
    tokens = compute_tokens(
        backbone, list(paths), batch_size=batch_size, cache_file=cache_file, desc="image tower", layer=tower.layer
    )
    if tower.pool is not None:
        return tokens
    with torch.no_grad():  # the tower's own non-learned pooling, in chunks
        return torch.cat([tower.pool_tokens(tokens[i : i + 256].float()) for i in range(0, max(len(tokens), 1), 256)])


def _load_features_file(file: str, data_dir: str | None, paths: Sequence[str], dim: int) -> torch.Tensor:
    """Rows of a precomputed `.npz` (`features`, `paths`: relative to `data_dir`, or caption keys when
    `data_dir` is None) in the order of `paths`."""
    with np.load(file) as npz:
        features, stored = npz["features"], [str(p) for p in npz["paths"]]
    norm = (lambda p: os.path.normpath(os.path.join(data_dir, p))) if data_dir is not None else str
    where = {norm(p): i for i, p in enumerate(stored)}
    try:
        rows = [where[os.path.normpath(p) if data_dir is not None else p] for p in paths]
    except KeyError as err:
        raise ValueError(f"image_features_file {file!r} has no features for {err.args[0]!r}.") from None
    if features.ndim != 2 or features.shape[1] != dim:
        raise ValueError(f"image_features_file {file!r} holds {features.shape} features; the image tower gives (N, {dim}).")
    return torch.from_numpy(np.ascontiguousarray(features[rows], dtype=np.float32))


@torch.no_grad()
def _text_tower_outputs(model: DualEncoderModel, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    model.eval()
    out = [model.text_model(**model.tokenize(captions[i : i + batch_size])) for i in range(0, len(captions), batch_size)]
    return torch.cat(out).float()


def query_bank_captions(split: datasets.Dataset, size: int, seed: int = 0) -> list[str]:
    """`size` training captions for `DualEncoderModel.set_query_bank`: the first caption of `size` photos drawn at
    random (all photos when `size` reaches their number), so the bank covers as many photos as it can."""
    if size < 1:
        raise ValueError(f"the query bank needs at least 1 caption, got size={size}.")
    captions = split["captions"][:]
    rows = random.Random(seed).sample(range(len(captions)), min(size, len(captions)))
    return [captions[i][0] for i in sorted(rows)]


# -- saving ---------------------------------------------------------------------------------------------------
def save_with_card(
    model: DualEncoderModel,
    save_directory: str,
    metrics: dict | None = None,
    training: dict | None = None,
    weights_dtype: torch.dtype | None = torch.float16,
) -> None:
    """save_pretrained (fp16 weights by default) + a model card, swapped into place atomically."""
    vc, tc = model.config.vision_config, model.config.text_config
    if tc.tower == "transformers":
        tuned = (
            "frozen"
            if tc.freeze
            else ("fine-tuned" if tc.trainable_layers is None else f"top {tc.trainable_layers} layers fine-tuned")
        )
        text = f"`{tc.model_name_or_path}` (mean pooling, {tuned})"
    else:
        text = f"word embeddings + LSTM ({len(tc.vocab)} words)"
    layer = f", `{vc.feature_layer}` features" if getattr(vc, "feature_layer", None) else ""
    if vc.backbone_weights_source.startswith("file:"):  # e.g. a tower fine-tuned by train/dual_image_gpu.py
        layer += f", weights from `{vc.backbone_weights_source[len('file:') :]}`"
    if getattr(vc, "tta_flip", False):
        layer += ", flip test-time augmentation"
    save_with_model_card(
        model,
        save_directory,
        weights_dtype,
        model_type=model.config.model_type,
        description=(
            f"Image-text dual encoder for text-to-image search: image tower `{vc.backbone}` ({vc.image_size}px{layer}, "
            f"{vc.pooling} pooling{', frozen' if vc.freeze else ''}), text tower {text}, {model.config.projection} "
            f"projections into a {model.config.projection_dim}-d L2-normalised space, learned temperature. "
            "Frozen parts of towers from installed PyPI packages are referenced, not copied: loading needs no network."
            + (
                f" Search scores are normalised with a query bank of {model.config.query_bank_size} training captions "
                f"(inverted softmax, temperature {model.config.query_bank_temperature:.3g})."
                if model.query_bank is not None
                else ""
            )
        ),
        metrics=metrics,
        data="Flickr8k (Hodosh, Young, Hockenmaier 2013): 4,000 official training images x 5 captions; "
        "metrics on the 1,000 official dev images against all their 5,000 captions.",
        intended_use="Find photos by describing them in English; rank a set of photos against a sentence.",
        limitations="Trained on 4,000 Flickr photos of people and dogs in everyday scenes, English captions only: "
        "other domains, languages and fine-grained attributes (counts, colours of small objects) are weak.",
        training=training,
        base_model=f"timm/{vc.backbone}",
        usage=(
            "import model_pkg\nfrom transformers import AutoModel\nfrom model_pkg.dual_encoder.search import ImageSearchEngine\n"
            f"engine = ImageSearchEngine(AutoModel.from_pretrained('{save_directory}'))\n"
            "engine.build_image_database(['photo1.jpg', 'photo2.jpg'])\n"
            "print(engine.search_database('a black dog running on the beach', top_k=5))"
        ),
        tags=["text-to-image-retrieval", "dual-encoder", "zero-shot-image-classification"],
    )


# -- the run ------------------------------------------------------------------------------------------------
def _optimizer(model: DualEncoderModel, cfg: DualTrainingConfig) -> torch.optim.Optimizer:
    groups: dict[str, list[nn.Parameter]] = {"text": [], "image": [], "head": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("text_model.encoder."):
            groups["text"].append(param)
        elif name.startswith("vision_model.backbone."):
            groups["image"].append(param)
        else:
            groups["head"].append(param)
    lrs = {"text": cfg.text_learning_rate, "image": cfg.image_learning_rate, "head": cfg.learning_rate}
    return torch.optim.AdamW([{"params": ps, "lr": lrs[g]} for g, ps in groups.items() if ps], weight_decay=cfg.weight_decay)


def _report_to(cfg: DualTrainingConfig) -> list[str]:
    report = [cfg.report_to] if isinstance(cfg.report_to, str) else list(cfg.report_to)
    if "mlflow" in report:
        os.environ.setdefault("MLFLOW_TRACKING_URI", "file:./mlruns")
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.17 wants it for a local folder store
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "petmatch-dual-encoder")
    return report


def train_dual_encoder(cfg: DualTrainingConfig) -> dict:
    """Train, keep the best checkpoint by mean dev recall, save `<output_dir>/model` (fp16 + card); return a summary."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    state = process_state()  # one of `state.num_processes` processes under `accelerate launch`, or the only one
    checkpoints = os.path.join(cfg.output_dir, "checkpoints")
    if cfg.fresh and state.is_main_process:
        remove_previous_run(checkpoints)

    splits = load_flickr8k_splits(cfg.data_dir, cfg.token_file, {"train": cfg.train_list, "dev": cfg.eval_list})
    train_paths, train_captions, _ = caption_pairs(splits["train"])
    dev_paths, dev_captions, dev_owner = caption_pairs(splits["dev"])

    model_kwargs: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.model.items()}
    text_kwargs = model_kwargs.setdefault("text_config", {})
    if text_kwargs.get("tower") == "lstm" and not text_kwargs.get("vocab"):
        text_kwargs["vocab"] = build_vocab(train_captions, min_freq=cfg.vocab_min_freq)
    model = DualEncoderModel(DualEncoderConfig(**model_kwargs))
    vc, tc = model.config.vision_config, model.config.text_config

    # Frozen towers: their outputs computed once.
    all_paths = list(train_paths) + list(dev_paths)
    image_features = None
    if vc.freeze and cfg.cache_image_features:
        if cfg.image_features_file and vc.pooling == "timm" and not vc.feature_layer:
            image_features = _load_features_file(cfg.image_features_file, cfg.data_dir, all_paths, model.vision_model.dim)
        else:
            cache_dir = cfg.feature_cache_dir or os.path.join(cfg.output_dir, "feature_cache")
            with main_process_first("image tower outputs"):  # built once, then read by the other processes
                image_features = image_tower_outputs(model, all_paths, cache_dir)
    train_image, dev_image = (
        (None, None) if image_features is None else (image_features[: len(train_paths)], image_features[len(train_paths) :])
    )
    text_table = text_index = dev_text = None
    if tc.freeze:  # every train and dev caption through the frozen text tower once
        flat = [(i, j, c) for i, caps in enumerate(splits["train"]["captions"][:]) for j, c in enumerate(caps)]
        texts = [c for _, _, c in flat] + list(dev_captions)
        if cfg.text_features_file:
            keys = [f"{splits['train'][i]['image_id']}#{j}" for i, j, _ in flat]
            keys += [
                f"{name}#{j}"
                for name, caps in zip(splits["dev"]["image_id"][:], splits["dev"]["captions"][:])
                for j in range(len(caps))
            ]
            table = _load_features_file(cfg.text_features_file, None, keys, model.text_model.dim)
        else:
            table = _text_tower_outputs(model, texts)
        text_table, dev_text = table[: len(flat)], table[len(flat) :]
        text_index = {(i, j): n for n, (i, j, _) in enumerate(flat)}

    transform = create_transform(model.vision_model.backbone.data_config, train=cfg.augment_images)
    collator = CaptionBatchCollator(model, train_image, transform, text_index, text_table, seed=cfg.seed)
    train_rows = [
        {"row": i, "image_path": p, "captions": c} for i, (p, c) in enumerate(zip(train_paths, splits["train"]["captions"][:]))
    ]
    # `batch_size` images per process and step: N processes go through an epoch in 1/N the steps
    steps_per_epoch = math.ceil(len(train_rows) / (cfg.batch_size * state.num_processes))
    total_steps = cfg.max_steps or max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))

    optimizer = _optimizer(model, cfg)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    precision = resolve_mixed_precision(cfg.mixed_precision)
    args = trainer_arguments(
        checkpoints,
        max_steps=total_steps,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        metric_for_best_model="recall_mean",
        logging_steps=cfg.logging_steps,
        report_to=_report_to(cfg),
        seed=cfg.seed,
        precision=precision,
        eval_on_start=cfg.eval_on_start,
        dataloader_drop_last=True,  # a last batch of a few pairs would give an easy, noisy loss
    )
    trainer = DualEncoderTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=[{"row": i} for i in range(len(dev_paths))],
        data_collator=collator,
        optimizers=(optimizer, scheduler),
        retrieval_eval={
            "image_paths": dev_paths,
            "captions": dev_captions,
            "caption_image": dev_owner,
            "image_features": dev_image,
            "text_features": dev_text,
        },
    )
    trainer.train(resume_from_checkpoint=None if cfg.fresh else last_checkpoint(checkpoints))
    if not trainer.is_world_process_zero():  # of several processes, the main one evaluates and saves
        return {"best_global_step": trainer.state.best_global_step, "process_index": state.process_index}

    model = cast(DualEncoderModel, trainer.model).cpu().eval()
    dev = evaluate_retrieval(model, dev_paths, dev_captions, dev_owner, dev_image, dev_text)
    dev_plain = None
    if cfg.query_bank_size:  # search-score normalisation: set after training, judged on dev with and without
        dev_plain = dev
        model.set_query_bank(query_bank_captions(splits["train"], cfg.query_bank_size, cfg.seed), cfg.query_bank_temperature)
        dev = evaluate_retrieval(model, dev_paths, dev_captions, dev_owner, dev_image, dev_text)
    training = {
        "steps": total_steps,
        "batch_size": cfg.batch_size,
        "epochs": round(total_steps / steps_per_epoch, 2),
        "best_global_step": trainer.state.best_global_step,
        "mixed_precision": precision,
    }
    card_metrics = {f"dev_{k}": v for k, v in flat_metrics(dev).items()}
    save_with_card(model, os.path.join(cfg.output_dir, "model"), metrics=card_metrics, training=training)
    summary = {"dev": dev, "training": {**training, "config": asdict(cfg)}, "log_history": trainer.state.log_history}
    if dev_plain is not None:
        summary["dev_without_query_bank"] = dev_plain
    atomic_write_json(summary, os.path.join(cfg.output_dir, "summary.json"))
    return summary
