"""Configuration of the set-vs-set pair matcher."""

from __future__ import annotations

from transformers import PretrainedConfig

from ..intake.settings import check_intake_fusion

SET_POOLINGS = ("mean", "attention", "cls_mean")
HEADS = ("concat_mlp", "cross_attention", "siamese")
SIAMESE_DISTANCES = ("cosine", "learned")
PHOTO_NORMS = ("layer", "l2")
SCORE_NORMS = (None, "asnorm")
COHORT_STATS = ("set", "photos")


class PairMatcherConfig(PretrainedConfig):
    r"""Configuration of [`PairMatcherModel`]: two sets of photos -> "same animal?" logit.

    Args:
        backbone (`str`): timm model name of the shared image backbone.
        backbone_pretrained (`bool`): load pretrained backbone weights when the model is *built*
            (offline package, `backbone_checkpoint_path` or the Hub). A saved model stores its backbone
            weights itself, so `save_pretrained` writes `False` here and loading needs no package.
        backbone_checkpoint_path (`str`, *optional*): local weights file for the backbone.
        backbone_weights_source (`str`): where the backbone weights first came from (for the model card).
        image_size (`int`): input side in pixels.
        hidden_size (`int`): width tokens are projected to before pooling and reasoning.
        set_pooling (`str`): how one set's photos become one vector: `mean` (masked mean of all tokens of
            all photos), `attention` (learned query attending over all tokens, mask-aware), `cls_mean`
            (masked mean of each photo's pooled/CLS feature).
        head (`str`): `concat_mlp` (MLP on `[a; b; |a-b|; a*b]`), `cross_attention` (each set's tokens
            attend to the other's, are pooled by the attention pooling when `set_pooling="attention"`
            and by a masked mean otherwise, then `concat_mlp`), `siamese` (a distance between the two set vectors).
        siamese_distance (`str`): `cosine` (scaled cosine + bias, both learned) or `learned` (MLP on
            `[|a-b|; a*b]`), for `head="siamese"`.
        photo_norm (`str`): the normalisation after the token projection: `layer` (LayerNorm) or `l2` (unit
            length, no weights). A matcher built from an ArcFace embedder (`PairMatcherModel.from_embedder`)
            uses `l2`, so its photo embeddings are exactly the embedder's.
        score_norm (`str`, *optional*): `"asnorm"`: the siamese cosine is normalised against a cohort of
            training identities before scale and bias (adaptive s-norm, as in speaker and face verification):
            s' = ((s - mu_a) / sd_a + (s - mu_b) / sd_b) / 2, where mu and sd are the mean and standard deviation
            of each set's `cohort_top_k` best cosines to the cohort. None: the plain cosine.
        cohort_stats (`str`): where mu and sd of a side come from: `set` (its set vector's cohort scores) or
            `photos` (the mean of each photo's own mu and sd). They agree for single photos. A set's mean embedding
            lies nearer the centre of the space than any of its photos, so its cohort scores run high and tight and
            `set` statistics over-penalise multi-photo sets: on the validation dogs `set` cost 3v3 lookalike pairs
            0.005 of ROC-AUC against the plain cosine, `photos` nothing (bench/README.md, issue 12).
        cohort_size (`int`): rows of the cohort buffer (one mean embedding per cohort identity), saved with the weights.
        cohort_top_k (`int`): cohort scores per side that give mu and sd.
        num_attention_heads (`int`): heads of the attention pooling and cross-attention.
        mlp_hidden_size (`int`): hidden width of the reasoning MLP.
        dropout (`float`): dropout in the reasoning MLP.
        pos_weight (`float`, *optional*): BCE weight of positive pairs.
        threshold (`float`): decision threshold on the probability, chosen on validation pairs.
        set_size_thresholds (`dict`, *optional*): `{"1": t1, "2": t2, ...}`, a threshold per size of the
            smaller set, chosen on validation pairs of that size. A 3v3 pair's probabilities sit much
            higher than a 1v1 pair's, so one threshold for all sizes costs accuracy; sizes above the
            largest key use the largest key's threshold, sizes without a key use `threshold`.
        freeze_backbone (`bool`): backbone parameters get no gradient (the frozen phase).
        backbone_trainable_groups (`int`, *optional*): when the backbone is not frozen, train only its
            last this-many layer groups (timm's coarse `group_matcher`: the stem, then each block stage,
            the last one merged with the head conv); all when None, none when 0.
            Fewer trainable groups make CPU fine-tuning several times cheaper.
        freeze_backbone_bn (`bool`): keep the backbone's BatchNorm statistics fixed while fine-tuning
            (small CPU batches would otherwise wreck them).
        tta_flip (`bool`): flip test-time augmentation: at inference each photo's backbone tokens are the
            mean of its own and its mirror image's (about 2x the backbone cost; training is unchanged).
        initializer_range (`float`): std of the normal init of new linear layers.
        intake (`dict`, *optional*): the photo intake's settings (`model_pkg.intake.IntakeConfig`): species, crop,
            kind of photo and reshoot reasons before the model sees a photo. None: photos go in whole.
        fusion (`dict`, *optional*): per-kind calibrated fusion with the untrained ImageNet features
            (`model_pkg.intake.FusionConfig`); needs `intake`. `match_sets` and `evaluate pair` then decide with
            the fused probability at 0.5 instead of `threshold` / `set_size_thresholds`.
    """

    model_type = "petmatch_pair_matcher"

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        backbone_pretrained: bool = True,
        backbone_checkpoint_path: str | None = None,
        backbone_weights_source: str = "",
        image_size: int = 224,
        hidden_size: int = 256,
        set_pooling: str = "mean",
        head: str = "concat_mlp",
        siamese_distance: str = "cosine",
        photo_norm: str = "layer",
        score_norm: str | None = None,
        cohort_size: int = 0,
        cohort_top_k: int = 50,
        cohort_stats: str = "set",
        num_attention_heads: int = 4,
        mlp_hidden_size: int = 256,
        dropout: float = 0.1,
        pos_weight: float | None = None,
        threshold: float = 0.5,
        set_size_thresholds: dict | None = None,
        freeze_backbone: bool = False,
        backbone_trainable_groups: int | None = None,
        freeze_backbone_bn: bool = True,
        tta_flip: bool = False,
        initializer_range: float = 0.02,
        intake: dict | None = None,
        fusion: dict | None = None,
        **kwargs,
    ):
        if set_pooling not in SET_POOLINGS:
            raise ValueError(f"set_pooling={set_pooling!r} is not one of {SET_POOLINGS}.")
        if head not in HEADS:
            raise ValueError(f"head={head!r} is not one of {HEADS}.")
        if siamese_distance not in SIAMESE_DISTANCES:
            raise ValueError(f"siamese_distance={siamese_distance!r} is not one of {SIAMESE_DISTANCES}.")
        if score_norm not in SCORE_NORMS:
            raise ValueError(f"score_norm={score_norm!r} is not one of {SCORE_NORMS}.")
        if score_norm is not None and (head != "siamese" or siamese_distance != "cosine"):
            raise ValueError("score_norm needs head='siamese' with siamese_distance='cosine' (it normalises that cosine).")
        if score_norm is not None and not 1 <= cohort_top_k <= cohort_size:
            raise ValueError(f"score_norm needs 1 <= cohort_top_k ({cohort_top_k}) <= cohort_size ({cohort_size}).")
        if cohort_stats not in COHORT_STATS:
            raise ValueError(f"cohort_stats={cohort_stats!r} is not one of {COHORT_STATS}.")
        if photo_norm not in PHOTO_NORMS:
            raise ValueError(f"photo_norm={photo_norm!r} is not one of {PHOTO_NORMS}.")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_attention_heads={num_attention_heads}.")
        if backbone_trainable_groups is not None and backbone_trainable_groups < 0:
            raise ValueError(f"backbone_trainable_groups={backbone_trainable_groups} must be >= 0 (or None for all).")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold} is a probability and must lie in [0, 1].")
        for size, value in (set_size_thresholds or {}).items():
            if int(size) < 1 or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"set_size_thresholds[{size!r}]={value}: sizes are >= 1 and thresholds lie in [0, 1].")
        self.backbone = backbone
        self.backbone_pretrained = backbone_pretrained
        self.backbone_checkpoint_path = backbone_checkpoint_path
        self.backbone_weights_source = backbone_weights_source
        self.image_size = image_size
        self.hidden_size = hidden_size
        self.set_pooling = set_pooling
        self.head = head
        self.siamese_distance = siamese_distance
        self.photo_norm = photo_norm
        self.score_norm = score_norm
        self.cohort_size = cohort_size
        self.cohort_top_k = cohort_top_k
        self.cohort_stats = cohort_stats
        self.num_attention_heads = num_attention_heads
        self.mlp_hidden_size = mlp_hidden_size
        self.dropout = dropout
        self.pos_weight = pos_weight
        self.threshold = threshold
        self.set_size_thresholds = {str(int(k)): float(v) for k, v in (set_size_thresholds or {}).items()} or None
        self.freeze_backbone = freeze_backbone
        self.backbone_trainable_groups = backbone_trainable_groups
        self.freeze_backbone_bn = freeze_backbone_bn
        self.tta_flip = tta_flip
        self.initializer_range = initializer_range
        self.intake, self.fusion = check_intake_fusion(intake, fusion)
        super().__init__(**kwargs)
