"""The seed's high-level trainer API for the pair matcher, and saving it with its model card.

trainer = PairMatchingTrainer(output_dir="runs/my-dogs")
trainer.train("photos/")            # identity folders, or a DataFrame with x = path, y = label
trainer.evaluate("photos/", set_size=3)
trainer.predict(paths_a, paths_b)   # `pipeline.match_sets`
trainer.save("my-matcher"); PairMatchingTrainer.load("my-matcher")

Apart from `pipeline.py` (`match_sets`, inference) because it trains, evaluates and writes model cards
(`model_pkg.training.checkpoints`): the training layer, as `arcface/trainer.py` and `dual_encoder/trainer.py`.
"""

from __future__ import annotations

import os

import torch

from ..evaluation import evaluate_pair
from ..intake.settings import limitations_text
from ..training.checkpoints import save_with_model_card
from .configuration_pair_matcher import PairMatcherConfig
from .modeling_pair_matcher import PairMatcherModel
from .pipeline import MatchResult, match_sets
from .training import PairTrainingConfig, train_pair_matcher

__all__ = ["PairMatchingTrainer", "save_with_card"]


def save_with_card(
    model: PairMatcherModel,
    save_directory: str,
    metrics: dict | None = None,
    data: str | None = None,
    weights_dtype: torch.dtype | None = None,
) -> None:
    """save_pretrained + a model card (README.md) ready for `push_folder_to_hub`, swapped into place atomically."""
    cfg = model.config
    save_with_model_card(
        model,
        save_directory,
        weights_dtype=weights_dtype,
        model_type=cfg.model_type,
        description=(
            f"Set-vs-set pair matcher: two sets of photos -> probability that they show the same individual animal. "
            f"Backbone `{cfg.backbone}` ({cfg.image_size}px), `{cfg.set_pooling}` set pooling, `{cfg.head}` head; "
            f"decision threshold {cfg.threshold:.3f} chosen on validation identities."
        ),
        metrics=metrics,
        data=data or "DogFaceNet (aligned dog faces, 1,184 dogs), split by identity: test dogs are never seen in training.",
        intended_use="Suggest whether a found animal and a lost one are the same individual, for a person to confirm.",
        limitations=limitations_text(cfg, "A high probability is a lead, not a proof of identity."),
        base_model=f"timm/{cfg.backbone}",
        usage=(
            "import model_pkg\nfrom transformers import AutoModel\nfrom model_pkg.pair_matcher.pipeline import match_sets\n"
            f"model = AutoModel.from_pretrained('{save_directory}')\n"
            "print(match_sets(model, ['a1.jpg', 'a2.jpg'], ['b1.jpg']))"
        ),
        tags=["image-classification", "pet-reidentification"],
    )


class PairMatchingTrainer:
    """The seed's high-level API, thin over `train_pair_matcher`, `evaluate_pair` and `match_sets`.

    Data can be an identity-folder path, the seed's DataFrame (`x` = image path, `y` = label), or a
    `datasets.Dataset` with `image_path` / `label` columns.
    """

    def __init__(self, output_dir: str = "runs/pair-matcher-api", model: dict | None = None, **training_options):
        self.output_dir = output_dir
        self.model_options = dict(model or {})
        self.training_options = training_options
        self.model: PairMatcherModel | None = None
        self.summary: dict | None = None

    def train(self, data) -> dict:
        cfg = PairTrainingConfig(data_dir=data, output_dir=self.output_dir, model=self.model_options, **self.training_options)
        self.summary = train_pair_matcher(cfg)
        self.model = PairMatcherModel.from_pretrained(os.path.join(self.output_dir, "model"))
        return self.summary

    def _require_model(self) -> PairMatcherModel:
        if self.model is None:
            raise RuntimeError("No model yet: call train(...) or PairMatchingTrainer.load(path) first.")
        return self.model

    def evaluate(self, data, set_size: int = 1, pairs: int = 500, seed: int = 0, negatives: str = "random") -> dict:
        return evaluate_pair(self._require_model(), data, set_size=set_size, pairs=pairs, seed=seed, negatives=negatives)

    def predict(self, paths_a, paths_b) -> MatchResult:
        return match_sets(self._require_model(), paths_a, paths_b)

    def save(self, path: str) -> None:
        save_with_card(self._require_model(), path, metrics=(self.summary or {}).get("val"))

    @classmethod
    def load(cls, path: str) -> PairMatchingTrainer:
        trainer = cls(output_dir=path)
        trainer.model = PairMatcherModel.from_pretrained(path)
        if not isinstance(trainer.model.config, PairMatcherConfig):
            raise ValueError(f"'{path}' does not hold a pair-matcher model.")
        return trainer
