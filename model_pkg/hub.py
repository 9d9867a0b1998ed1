"""Model cards and Hugging Face Hub helpers for petmatch models.

* :func:`write_model_card` writes ``README.md`` (YAML front matter + sections)
  next to ``config.json`` / ``model.safetensors`` in a ``save_pretrained`` folder.
* :func:`read_model_card_metrics` reads the metrics back from that front matter.
* :func:`rewrite_model_card` writes a shipped model's card again from its own sections and front matter, with the
  Hub metadata of :data:`HUB_METADATA` and measured results (``model-index``); weights and config stay untouched.
* :func:`save_image_processor` writes ``preprocessor_config.json``, so ``AutoImageProcessor.from_pretrained(folder)``
  prepares photos as the model's own eval transform does (``model_pkg.transforms.create_transform``).
* :func:`push_folder_to_hub` checks the folder is complete and uploads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import huggingface_hub.constants as hf_constants
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from .fileio import atomic_write_text
from .markdown_tables import markdown_table, plain, table_cell

__all__ = [
    "HUB_METADATA",
    "LIBRARY_NAME",
    "push_folder_to_hub",
    "read_model_card_metrics",
    "rewrite_model_card",
    "save_image_processor",
    "write_model_card",
]

LIBRARY_NAME = "petmatch"
CARD_NAME = "README.md"
METRICS_KEY = "petmatch_metrics"
TRAINING_KEY = "petmatch_training"
MODEL_TYPE_KEY = "petmatch_model_type"

# What the Hub shows first, per model type. The pair matcher answers "same animal?" for two *sets* of photos: no
# transformers pipeline takes that input, so its honest task is "other". The dual encoder embeds captions and photos
# into one space for text-to-image search: "feature-extraction" (it is not evaluated as a zero-shot classifier).
_PETS = ["DogFaceNet", "MPDD", "Cat-Faces-Identification"]  # the kind head and fusion are fitted on all three
HUB_METADATA: dict[str, dict[str, Any]] = {
    "petmatch_arcface_embedder": {"pipeline_tag": "image-feature-extraction", "datasets": _PETS},
    "petmatch_pair_matcher": {"pipeline_tag": "other", "datasets": _PETS},
    "petmatch_dual_encoder": {"pipeline_tag": "feature-extraction", "datasets": ["Flickr8k"]},
}


def _network_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [HfHubHTTPError, OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for mod_name in ("httpx2", "httpx", "requests"):
        try:
            mod = __import__(mod_name)
        except ImportError:
            continue
        for attr in ("HTTPError", "RequestException", "TransportError"):
            cls = getattr(mod, attr, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                types.append(cls)
    return tuple(dict.fromkeys(types))


_NETWORK_ERRORS = _network_error_types()


# --------------------------------------------------------------------------- #
# Model card
# --------------------------------------------------------------------------- #
def _default_usage(model_name: str, model_type: str) -> str:
    return (
        "```python\n"
        "from huggingface_hub import snapshot_download\n\n"
        f'local_dir = snapshot_download("<user-or-org>/{model_name}")\n'
        f"# load with the petmatch model class for model_type `{model_type}`:\n"
        "# model = <ModelClass>.from_pretrained(local_dir)\n"
        "```"
    )


def write_model_card(
    save_directory: str | os.PathLike,
    *,
    model_name: str,
    model_type: str,
    description: str,
    metrics: dict | None = None,
    data: str | None = None,
    intended_use: str | None = None,
    limitations: str | None = None,
    training: dict | None = None,
    base_model: str | list[str] | None = None,
    usage: str | None = None,
    tags: list[str] | None = None,
    license: str = "apache-2.0",
    pipeline_tag: str | None = None,
    datasets: list[str] | None = None,
    eval_results: list[dict[str, Any]] | None = None,
) -> str:
    """Write ``<save_directory>/README.md`` (a Hugging Face model card) and return its text.

    Front matter (YAML, via ``huggingface_hub.ModelCardData``): ``license``,
    ``library_name: petmatch``, ``tags`` (``petmatch``, ``model_type``, then
    ``tags``), ``model_name``, ``base_model`` (if given), ``petmatch_model_type``,
    ``petmatch_metrics`` (the ``metrics`` dict, numpy values converted to plain
    Python) and ``petmatch_training`` (the ``training`` dict) when given; ``pipeline_tag`` and ``datasets``
    (default: :data:`HUB_METADATA` for ``model_type``); ``model-index`` from ``eval_results`` (dicts of
    ``huggingface_hub.EvalResult``'s fields: task_type, dataset_type, dataset_name, metric_type, metric_value, ...),
    which the Evaluation section also lists as a table. ``base_model`` may be a list (one entry per tower).

    Body sections: Model description, Intended use, Training data, Training
    procedure (only if ``training``), Evaluation (metrics as a markdown table;
    nested dicts are flattened to dotted names), Limitations, How to use (``usage``
    as a code block; wrapped in a ```python fence unless it already has one).
    Missing optional texts are rendered as "_Not provided._".

    The file is written atomically (temporary file in the folder + ``os.replace``).
    """
    if not model_name or not model_name.strip():
        raise ValueError("model_name must be a non-empty string")
    if not model_type or not model_type.strip():
        raise ValueError("model_type must be a non-empty string")
    folder = Path(save_directory)

    all_tags = list(dict.fromkeys([LIBRARY_NAME, model_type, *(tags or [])]))
    extra: dict[str, Any] = {MODEL_TYPE_KEY: model_type}
    if metrics:
        extra[METRICS_KEY] = plain(metrics)
    if training:
        extra[TRAINING_KEY] = plain(training)
    hub = HUB_METADATA.get(model_type, {})
    results = [EvalResult(**r) for r in eval_results or []]
    card_data = ModelCardData(
        license=license,
        library_name=LIBRARY_NAME,
        pipeline_tag=pipeline_tag or hub.get("pipeline_tag"),
        datasets=list(datasets or hub.get("datasets") or []) or None,
        tags=all_tags,
        base_model=base_model,
        model_name=model_name,
        eval_results=results or None,
        **extra,
    )

    missing = "_Not provided._"
    sections = [f"# {model_name}", "## Model description", description.strip() or missing]
    sections.append(f"- **Model type:** `{model_type}`")
    if base_model:
        bases = [base_model] if isinstance(base_model, str) else base_model
        sections[-1] += "\n- **Base model:** " + ", ".join(f"`{b}`" for b in bases)
    sections += ["## Intended use", (intended_use or "").strip() or missing]
    sections += ["## Training data", (data or "").strip() or missing]
    if training:
        sections += ["## Training procedure", markdown_table(plain(training), ("Setting", "Value"))]
    sections.append("## Evaluation")
    sections.append(markdown_table(plain(metrics), ("Metric", "Value")) if metrics else "No evaluation metrics were provided.")
    if results:
        rows = ["| Dataset | Split | Metric | Value |", "| --- | --- | --- | --- |"]
        rows += [
            f"| {table_cell(r.dataset_name)} | {table_cell(r.dataset_split or '')} | {table_cell(r.metric_name or r.metric_type)} | "
            f"{table_cell(r.metric_value)} |"
            for r in results
        ]
        sections.append("Measured results (the `model-index` above):\n\n" + "\n".join(rows))
    sections += ["## Limitations", (limitations or "").strip() or missing]
    sections.append("## How to use")
    if usage and usage.strip():
        body = usage.strip()
        sections.append(body if body.startswith("```") else f"```python\n{body}\n```")
    else:
        sections.append(_default_usage(model_name, model_type))
    text = "\n\n".join(sections) + "\n"

    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{text}")
    content = str(card)
    atomic_write_text(folder / CARD_NAME, content)
    return content


def _sections(text: str) -> dict[str, str]:
    """The ``## `` sections of a card body written by :func:`write_model_card`, by heading."""
    parts = ("\n" + text).split("\n## ")[1:]
    return {head.strip(): body.strip() for head, _, body in (p.partition("\n") for p in parts)}


def rewrite_model_card(
    save_directory: str | os.PathLike,
    *,
    eval_results: list[dict[str, Any]] | None = None,
    base_model: str | list[str] | None = None,
    license: str | None = None,
) -> str:
    """Write ``<save_directory>/README.md`` again with :func:`write_model_card`, from the card already there.

    The description, intended use, data, limitations, usage, metrics and training settings are read back from the
    card; the Hub metadata comes from :data:`HUB_METADATA`, ``eval_results`` becomes the ``model-index``, and
    ``base_model`` / ``license`` replace the stored ones when given. Nothing else in the folder is touched.
    """
    path = Path(save_directory) / CARD_NAME
    card = ModelCard.load(path)
    data = card.data.to_dict()
    body = _sections(card.text)
    missing = "_Not provided._"

    def text(heading: str) -> str | None:
        value = body.get(heading, "")
        return None if value in ("", missing) else value

    description = "\n".join(
        line
        for line in body.get("Model description", "").splitlines()
        if not line.startswith(("- **Model type:**", "- **Base model:**"))
    ).strip()
    model_type = data[MODEL_TYPE_KEY]
    own_tags = [t for t in data.get("tags", []) if t not in (LIBRARY_NAME, model_type)]
    return write_model_card(
        save_directory,
        model_name=card.data.model_name or Path(save_directory).name,
        model_type=model_type,
        description=description,
        metrics=data.get(METRICS_KEY),
        data=text("Training data"),
        intended_use=text("Intended use"),
        limitations=text("Limitations"),
        training=data.get(TRAINING_KEY),
        base_model=base_model or data.get("base_model"),
        usage=text("How to use"),
        tags=own_tags,
        license=license or data.get("license") or "apache-2.0",
        eval_results=eval_results,
    )


def image_data_config(model: Any) -> dict | None:
    """The timm data config of a model's image tower (``input_size``, ``mean``, ``std``, ``interpolation``), if any."""
    vision = getattr(model, "vision_model", None)
    backbone = getattr(vision, "backbone", None)
    config = getattr(backbone, "data_config", None) if backbone is not None else getattr(model, "data_config", None)
    return config if isinstance(config, dict) else None


def image_processor_settings(data_config: dict) -> dict[str, Any]:
    """transformers ``ViTImageProcessor`` settings equal to ``create_transform(data_config)`` at eval: the whole photo
    resized to size x size (no crop), with the backbone's resampling filter, scaled to [0, 1], then normalised."""
    from PIL import Image

    size = int(data_config["input_size"][-1])
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    return dict(
        do_resize=True,
        size={"height": size, "width": size},
        resample=int(resample.get(data_config.get("interpolation", "bicubic"), Image.Resampling.BICUBIC)),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[float(v) for v in data_config["mean"]],
        image_std=[float(v) for v in data_config["std"]],
        do_convert_rgb=True,
    )


def save_image_processor(model: Any, save_directory: str | os.PathLike) -> bool:
    """Write ``preprocessor_config.json`` for a model with an image tower; False (nothing written) without one.

    ``AutoImageProcessor.from_pretrained(save_directory)`` then gives a ``ViTImageProcessor`` with the model's size,
    resampling, mean and std. Its default (torchvision) backend matches the model's own transform to one grey level
    (1/127.5 after normalisation); ``backend="pil"`` matches it exactly."""
    data_config = image_data_config(model)
    if data_config is None:
        return False
    from transformers import ViTImageProcessor

    ViTImageProcessor(**image_processor_settings(data_config)).save_pretrained(str(save_directory))
    return True


def read_model_card_metrics(save_directory: str | os.PathLike) -> dict:
    """Return the ``petmatch_metrics`` dict stored in ``<save_directory>/README.md`` ({} if none).

    Reads the local file only (never the Hub); raises ``FileNotFoundError`` if
    there is no README.md.
    """
    path = Path(save_directory) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no model card at {path}; create it with write_model_card({str(save_directory)!r}, ...)")
    card = ModelCard.load(path)
    metrics = card.data.to_dict().get(METRICS_KEY)
    return dict(metrics) if isinstance(metrics, dict) else {}


# --------------------------------------------------------------------------- #
# Upload
# --------------------------------------------------------------------------- #
def _missing_files(folder: Path) -> list[str]:
    problems: list[str] = []
    if not (folder / "config.json").is_file():
        problems.append("config.json (write it with `model.save_pretrained(dir)`)")
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        pass
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, AttributeError) as exc:
            problems.append(f"a readable model.safetensors.index.json ({exc}); re-run `model.save_pretrained(dir)`")
        else:
            if not shards:
                problems.append("weight shards (model.safetensors.index.json lists none); re-run `model.save_pretrained(dir)`")
            absent = [s for s in shards if not (folder / s).is_file()]
            if absent:
                problems.append(
                    f"safetensors shard(s) {', '.join(absent)} listed in model.safetensors.index.json; "
                    "re-run `model.save_pretrained(dir)`"
                )
    else:
        problems.append(
            "model.safetensors (or sharded model-XXXXX-of-XXXXX.safetensors + model.safetensors.index.json); "
            "write it with `model.save_pretrained(dir)`"
        )
    if not (folder / CARD_NAME).is_file():
        problems.append("README.md (write it with `model_pkg.hub.write_model_card(dir, ...)`)")
    return problems


def push_folder_to_hub(
    save_directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload petmatch model",
) -> str:
    """Upload a ``save_pretrained`` folder (with model card) to a Hub model repo; return the repo URL.

    Before any network call it checks that the folder holds ``config.json``,
    ``model.safetensors`` (or a sharded index with all its shards) and
    ``README.md`` (``ValueError`` naming what is missing and how to create it),
    validates ``repo_id``, and refuses to run when ``HF_HUB_OFFLINE`` is set
    (``RuntimeError``).  Then ``HfApi().create_repo(exist_ok=True)`` and
    ``upload_folder``.  Network/HTTP errors from huggingface_hub are re-raised as
    ``RuntimeError`` (original chained) saying the folder is ready to retry.
    """
    folder = Path(save_directory).resolve()
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is not a folder; create it with `model.save_pretrained(dir)` and "
            "`model_pkg.hub.write_model_card(dir, ...)`"
        )
    problems = _missing_files(folder)
    if problems:
        raise ValueError(f"cannot push {folder} to the Hub, missing: " + "; ".join(problems))
    validate_repo_id(repo_id)

    advice = (
        f"The model folder is ready at {folder}. Unset HF_HUB_OFFLINE (and check the network connection / token) and run again."
    )
    if hf_constants.HF_HUB_OFFLINE:
        raise RuntimeError(f"The Hugging Face Hub is offline (HF_HUB_OFFLINE is set); nothing was uploaded. {advice}")

    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            repo_type="model",
            token=token,
        )
    except _NETWORK_ERRORS as exc:
        raise RuntimeError(f"Could not upload {folder} to the Hub repo {repo_id!r}: {exc}. {advice}") from exc
    url = str(repo_url) if repo_url else ""
    return url or f"{hf_constants.ENDPOINT.rstrip('/')}/{repo_id}"
