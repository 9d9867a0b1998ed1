"""ONNX Runtime for inference: an exported tower stands in for its PyTorch module when nothing trains.

`python -m model_pkg.export onnx --model DIR` writes `DIR/onnx/<tower>.onnx` and `DIR/onnx/manifest.json`
(see `model_pkg.export`). `from_pretrained` of a petmatch model then calls `attach_exported`, which attaches to
each exported tower an `OnnxTower` (an `onnxruntime.InferenceSession`), a stand-in (`model_pkg.stand_in`) held by
the tower as its child `onnx_runner`, when

* `onnxruntime` is installed (without it, PyTorch runs, silently: it is an optional accelerator),
* the manifest's checksum of the tower's weights equals the loaded model's (else a warning: the export
  is stale, re-export it), and the image size it was exported for is the model's.

Towers: `image` is the model's `Backbone` (`pixels -> tokens`, flip TTA included when the model uses it;
for the dual encoder its `feature_layer`); `text` is a transformers text tower (`ids, mask -> mean-pooled`).
Everything after the tower (pooling, projection, normalisation, set pooling) stays in PyTorch: it is cheap.

The towers know nothing of ONNX Runtime: they ask their stand-in, if any, at each call. A tower uses its session only
at inference on CPU (float32 pixels): no gradients, eval mode, the same layer and TTA setting as the export. Putting
it in training mode or loading new weights into it retires the stand-in and drops the session for good (its weights
may change from then on), so training never runs on ONNX Runtime. `onnx_tower(module)` is the tower's serving one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import Backbone
from .fileio import sha256_file, update_with_weights
from .stand_in import StandIn

__all__ = [
    "ExportError",
    "export_graph",
    "MANIFEST_FILE",
    "ONNX_SUBDIR",
    "OnnxTower",
    "attach_exported",
    "create_session",
    "detach_onnx",
    "shared_session",
    "exportable_towers",
    "onnx_tower",
    "tower_checksum",
]

logger = logging.getLogger(__name__)

ONNX_SUBDIR = "onnx"  # <model folder>/onnx/ holds the export
RUNNER_NAME = "onnx_runner"  # the child module of a tower that holds its OnnxTower
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
# Idle intra-op threads sleep instead of spinning: between two batches the caller decodes JPEGs on the same
# cores, and spinning threads slowed that down (bench/README.md, issue 14: 28-37% fewer images/s).
SPINNING = False


class ExportError(ValueError):
    """The model, the photos or the exported graph is not fit for export: the message says what to do."""


def export_graph(
    graph: nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic: tuple, path: Path, opset: int
) -> None:
    """`torch.onnx.export` (the dynamo exporter) of `graph` in eval mode without gradients, written atomically."""
    graph.eval()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress lines and deprecation chatter about its internals
        try:
            program = torch.onnx.export(
                graph,
                args,
                dynamo=True,
                opset_version=opset,
                input_names=names[0],
                output_names=names[1],
                dynamic_shapes=dynamic,
                verbose=False,
            )
        except ImportError as err:
            raise ExportError(
                f"exporting to ONNX needs the onnx and onnxscript packages ({err}): pip install -r requirements.txt"
            ) from err
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        # save() may write external weight files beside the graph for large models: keep them in one file.
        program.save(os.path.join(tmp, path.name), external_data=False)
        os.replace(os.path.join(tmp, path.name), path)


def create_session(path: str | os.PathLike, threads: int | None = None, spinning: bool = SPINNING):
    """An `onnxruntime.InferenceSession` on the CPU with all graph optimisations and `threads` intra-op
    threads (default: torch's thread count, so `OMP_NUM_THREADS` / `torch.set_num_threads` hold for both).
    `spinning`: idle worker threads spin waiting for the next call instead of sleeping."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


# One session per exported graph and session settings in a process: the shipped pair matcher and ArcFace embedder
# carry the same backbone export, and each session holds its own copy of the graph's weights and its own memory
# arena. A session may run calls from several threads at once. Weak values: a session goes away with the last
# tower that uses it.
_SESSIONS: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()
_SESSIONS_LOCK = threading.Lock()


def shared_session(path: str | os.PathLike, spinning: bool = SPINNING):
    """`create_session(path)`, or the session already open in this process for a file of the same content (sha256:
    12 ms for Lite0's 13 MB) with the same thread settings."""
    threads = torch.get_num_threads()
    key = (sha256_file(path), threads, spinning)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = create_session(path, threads, spinning)
            _SESSIONS[key] = session
        return session


class OnnxTower(StandIn):
    """One exported tower's session (shared with other towers of the same export, `shared_session`) plus the manifest
    entry that says what it computes: the stand-in of the tower's PyTorch module at inference."""

    def __init__(self, path: str | os.PathLike, entry: dict[str, Any], spinning: bool = SPINNING):
        super().__init__()
        self.path = os.fspath(path)
        self.entry = dict(entry)
        self.spinning = spinning
        self._open()

    def _open(self) -> None:
        self.session = shared_session(self.path, spinning=self.spinning)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __getstate__(self) -> dict[str, Any]:  # sessions do not pickle: deepcopy / pickle reopen the file
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.session = None
        if not self.retired:
            self._open()

    def extra_repr(self) -> str:
        return os.path.basename(self.path) + (", retired" if self.retired else "")

    def retire(self) -> None:
        super().retire()
        self.session = None  # the last tower using a shared session frees it

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: x.detach().contiguous().numpy() for name, x in zip(self.input_names, inputs)}
        (out,) = self.session.run(None, feeds)
        return torch.from_numpy(np.asarray(out))

    def serves(self, *inputs: torch.Tensor, **settings: Any) -> bool:
        """Whether this tower computes its module's call on these CPU inputs: a text tower any ids and mask; an image
        tower `Backbone.forward_tokens(pixel_values, layer)` of float32 pixels at the exported size, and the exported
        `layer` and `tta_flip` settings."""
        if any(x.device.type != "cpu" for x in inputs):
            return False
        if "input_size" not in self.entry:
            return True
        (pixel_values,) = inputs
        return (
            pixel_values.ndim == 4
            and tuple(pixel_values.shape[1:]) == tuple(self.entry["input_size"])
            and pixel_values.dtype == torch.float32
            and settings.get("layer") == self.entry["layer"]
            and settings.get("tta_flip", False) == self.entry["tta_flip"]
        )


def onnx_tower(module: nn.Module) -> OnnxTower | None:
    """The `OnnxTower` attached to a tower `module` while it may serve (None: none attached, or retired)."""
    tower = getattr(module, RUNNER_NAME, None)
    return tower if isinstance(tower, OnnxTower) and not tower.retired else None


def tower_checksum(module: nn.Module) -> str:
    """sha256 (16 hex) of a tower's weights as float32, in name order: an export of other weights is stale."""
    return update_with_weights(hashlib.sha256(), module.state_dict()).hexdigest()[:16]


def exportable_towers(model: nn.Module) -> dict[str, tuple[nn.Module, str | None]]:
    """The towers of a petmatch model an export covers -> (module, feature layer of an image tower).

    `image`: the `Backbone` of a pair matcher / ArcFace embedder, or of a dual encoder's vision tower (at its
    `feature_layer`); `text`: a dual encoder's transformers text tower (the LSTM baseline is not exported)."""
    towers: dict[str, tuple[nn.Module, str | None]] = {}
    backbone = getattr(model, "backbone", None)
    vision = getattr(model, "vision_model", None)
    if isinstance(backbone, Backbone):
        towers["image"] = (backbone, None)
    elif vision is not None and isinstance(getattr(vision, "backbone", None), Backbone):
        towers["image"] = (vision.backbone, getattr(vision, "layer", None))
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    text = getattr(model, "text_model", None)
    if getattr(text_config, "tower", None) == "transformers" and isinstance(text, nn.Module):
        towers["text"] = (text, None)
    return towers


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """`<folder>/manifest.json` of an export, or None when there is none."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring the ONNX export in {str(folder)!r}: unreadable {MANIFEST_FILE} ({err})", stacklevel=3)
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or not isinstance(manifest.get("towers"), dict)
    ):
        warnings.warn(
            f"ignoring the ONNX export in {str(folder)!r}: {MANIFEST_FILE} is not a format-{MANIFEST_FORMAT} petmatch "
            "export manifest; re-export with `python -m model_pkg.export onnx --model <model folder>`",
            stacklevel=3,
        )
        return None
    return manifest


def attach_exported(model: nn.Module, model_folder: str | os.PathLike) -> list[str]:
    """Give each tower exported in `<model_folder>/onnx/` its ONNX Runtime session; -> the towers attached.

    Nothing happens without an export or without `onnxruntime`; a stale export (other weights, another
    image size) or an unreadable one is skipped with a warning, and that tower runs on PyTorch."""
    folder = Path(model_folder) / ONNX_SUBDIR
    if not folder.is_dir():
        return []
    manifest = read_manifest(folder)
    if manifest is None:
        return []
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        logger.info("%s holds an ONNX export but onnxruntime is not installed: inference runs on PyTorch", folder)
        return []
    towers = exportable_towers(model)
    attached = []
    for name, entry in manifest["towers"].items():
        fix = f"re-export it with `python -m model_pkg.export onnx --model {os.fspath(model_folder)}`"
        if name not in towers:
            warnings.warn(f"ignoring ONNX tower {name!r} in {str(folder)!r}: this model has no such tower", stacklevel=2)
            continue
        module, layer = towers[name]
        if entry.get("source_checksum") != tower_checksum(module):
            warnings.warn(
                f"ignoring the stale ONNX export of the {name} tower in {str(folder)!r}: it was exported from other "
                f"weights than the model's; {fix}. The {name} tower runs on PyTorch.",
                stacklevel=2,
            )
            continue
        if name == "image":
            image_size = getattr(module, "image_size", None)
            if entry.get("input_size", [None])[-1] != image_size or entry.get("layer") != layer:
                warnings.warn(
                    f"ignoring the ONNX export of the image tower in {str(folder)!r}: it takes {entry.get('input_size')} "
                    f"pixels at layer {entry.get('layer')!r}, the model {image_size} px at layer {layer!r}; {fix}. "
                    "The image tower runs on PyTorch.",
                    stacklevel=2,
                )
                continue
        file = folder / str(entry.get("file", ""))
        try:
            tower = OnnxTower(file, entry)
        except Exception as err:  # onnxruntime raises its own types for missing, damaged or unsupported graphs
            warnings.warn(
                f"ignoring the ONNX export of the {name} tower: {str(file)!r} could not be opened by onnxruntime "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); {fix}.",
                stacklevel=2,
            )
            continue
        module.add_module(RUNNER_NAME, tower)
        attached.append(name)
    if attached:
        logger.info("ONNX Runtime serves the %s tower(s) of %s", ", ".join(attached), model_folder)
    return attached


def detach_onnx(model: nn.Module) -> None:
    """Retire every ONNX Runtime session of `model`: it runs on PyTorch only from now on."""
    for module in model.modules():
        if isinstance(module, OnnxTower):
            module.retire()
