"""Configuration of the ArcFace identity embedder."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from ..intake.settings import check_intake_fusion


class ArcFaceEmbedderConfig(PretrainedConfig):
    r"""Configuration of [`ArcFaceEmbedderModel`]: one photo -> an L2-normalised identity embedding.

    Args:
        backbone (`str`): timm model name of the image backbone.
        backbone_pretrained (`bool`): load pretrained backbone weights when the model is *built*
            (offline package, `backbone_checkpoint_path` or the Hub). A saved model stores its backbone
            weights itself, so `save_pretrained` writes `False` here and loading needs no package.
        backbone_checkpoint_path (`str`, *optional*): local weights file for the backbone.
        backbone_weights_source (`str`): where the backbone weights first came from (for the model card).
        image_size (`int`): input side in pixels.
        embedding_size (`int`): size of the identity embedding.
        dropout (`float`): dropout on the pooled backbone feature, before the embedding projection.
        num_classes (`int`): training identities, the rows of the ArcFace margin head; 0 builds no head
            (an embedder that can only embed, e.g. for inference).
        margin (`float`): ArcFace additive angular margin m (radians) of the fine-tuning phase, the margin
            `forward` uses by default. The training callback lowers the head's runtime margin (to 0 by
            default) while the backbone is frozen. The seed's recipe used 0.3.
        scale (`float`): ArcFace scale s (the seed's recipe used 48).
        easy_margin (`bool`): apply the margin only to targets closer than 90 degrees instead of the
            `th` / `mm` fallback.
        freeze_backbone (`bool`): backbone parameters get no gradient (the frozen phase).
        backbone_trainable_groups (`int`, *optional*): when the backbone is not frozen, train only its
            last this-many layer groups (timm's `group_matcher`: stem, each block stage, head); all when None.
        freeze_backbone_bn (`bool`): keep the backbone's BatchNorm statistics fixed while fine-tuning.
        activation_stage (`int`, *optional*): the CPU recipe: the backbone's stem and block stages before this
            one stay frozen, and training reads their cached output (`activations`, computed once per
            augmented view) instead of pixels; the stages from this one on and the head conv train. None:
            `backbone_trainable_groups` decides what trains, on pixels.
        tta_flip (`bool`): flip test-time augmentation: at inference each photo's backbone tokens are the
            mean of its own and its mirror image's (about 2x the backbone cost; training is unchanged).
        initializer_range (`float`): std of the normal init of new linear layers.
        score_threshold (`float`, *optional*): gallery rejection threshold on the best cosine similarity,
            calibrated on validation identities (`GalleryIndex.calibrate`); None = never reject as unknown.
        margin_threshold (`float`): gallery "reshoot" threshold on the vote-share margin between the two
            best identities (calibrated with `score_threshold`). Not related to the ArcFace `margin`.
        gallery_k (`int`): neighbours that vote in the gallery, the k the thresholds were calibrated for.
        gallery_per_id (`int`, *optional*): photos per known dog in the calibration gallery.
        intake (`dict`, *optional*): the photo intake's settings (`model_pkg.intake.IntakeConfig`): species, crop,
            kind of photo and reshoot reasons before the model sees a photo. None: photos go in whole.
        fusion (`dict`, *optional*): per-kind fusion with the untrained ImageNet features
            (`model_pkg.intake.FusionConfig`); needs `intake`. The gallery then searches fused vectors and
            `score_threshold` / `margin_threshold` are calibrated on them.
    """

    model_type = "petmatch_arcface_embedder"

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        backbone_pretrained: bool = True,
        backbone_checkpoint_path: str | None = None,
        backbone_weights_source: str = "",
        image_size: int = 224,
        embedding_size: int = 512,
        dropout: float = 0.2,
        num_classes: int = 0,
        margin: float = 0.5,
        scale: float = 64.0,
        easy_margin: bool = False,
        freeze_backbone: bool = False,
        backbone_trainable_groups: int | None = None,
        freeze_backbone_bn: bool = True,
        activation_stage: int | None = None,
        tta_flip: bool = False,
        initializer_range: float = 0.02,
        score_threshold: float | None = None,
        margin_threshold: float = 0.05,
        gallery_k: int = 20,
        gallery_per_id: int | None = None,
        intake: dict | None = None,
        fusion: dict | None = None,
        **kwargs,
    ):
        if embedding_size < 1:
            raise ValueError(f"embedding_size={embedding_size} must be >= 1.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must lie in [0, 1).")
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes} must be >= 0 (0 builds no margin head).")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin={margin} is an angle in radians and must lie in [0, pi/2).")
        if not scale > 0.0:
            raise ValueError(f"scale={scale} must be > 0.")
        if backbone_trainable_groups is not None and backbone_trainable_groups < 0:
            raise ValueError(f"backbone_trainable_groups={backbone_trainable_groups} must be >= 0 (or None for all).")
        if activation_stage is not None and activation_stage < 1:
            raise ValueError(f"activation_stage={activation_stage} must be >= 1 (a block stage index), or None.")
        if gallery_k < 1:
            raise ValueError(f"gallery_k={gallery_k} must be >= 1.")
        self.backbone = backbone
        self.backbone_pretrained = backbone_pretrained
        self.backbone_checkpoint_path = backbone_checkpoint_path
        self.backbone_weights_source = backbone_weights_source
        self.image_size = image_size
        self.embedding_size = embedding_size
        self.dropout = dropout
        self.num_classes = num_classes
        self.margin = margin
        self.scale = scale
        self.easy_margin = easy_margin
        self.freeze_backbone = freeze_backbone
        self.backbone_trainable_groups = backbone_trainable_groups
        self.freeze_backbone_bn = freeze_backbone_bn
        self.activation_stage = activation_stage
        self.tta_flip = tta_flip
        self.initializer_range = initializer_range
        self.score_threshold = score_threshold
        self.margin_threshold = margin_threshold
        self.gallery_k = gallery_k
        self.gallery_per_id = gallery_per_id
        self.intake, self.fusion = check_intake_fusion(intake, fusion)
        super().__init__(**kwargs)
