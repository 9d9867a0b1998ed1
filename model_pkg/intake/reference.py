"""The intake's untrained ImageNet network: its weights, and its feature maps served by ONNX Runtime when it can.

The intake runs the untrained Lite0 on every photo (the whole view, the crop, a second look at a possible second
animal). On 2 CPU cores PyTorch takes 87-115 ms for 6 photos at 224 px, ONNX Runtime 31 ms
(bench/bench_intake_speed.py), so the graph `pixels -> feature maps` is exported once per machine, from the offline
weights, into ``<cache_dir()>/onnx/`` (keyed by the weights' checksum, written atomically under a file lock, checked
against PyTorch before it is used). Without onnxruntime/onnxscript, or when the export or the check fails, PyTorch
runs instead, with a warning: the answers are the same to 1e-4.

The process's instance (`reference_features()`) attaches its session in the background, so an app's first start on
a machine answers on PyTorch while the graph is exported. `reference_features().forward_features` is a function of one batch tensor, rows independent, so the app can batch
the intake's passes of concurrent requests with `model_pkg.batching` as it does the trained towers'.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from ..fileio import cache_dir

__all__ = ["REFERENCE_NETWORK", "ReferenceFeatures", "reference_features", "reference_network"]

logger = logging.getLogger(__name__)

REFERENCE_NETWORK = "tf_efficientnet_lite0"
IMAGE_SIZE = 224
ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-3  # max abs difference of the feature maps (values up to ~20) between the export and PyTorch


@functools.lru_cache(maxsize=1)
def reference_network() -> Any:
    """The untrained ImageNet EfficientNet-Lite0 with its classifier (offline weights), eval mode, shared by the
    process (the app's matcher and gallery use one copy)."""
    import timm

    from ..backbones import load_offline_state_dict

    net = timm.create_model(REFERENCE_NETWORK, pretrained=False)
    net.load_state_dict(load_offline_state_dict(REFERENCE_NETWORK, net))
    return net.eval()


def export_reference(network: Any, path: str | os.PathLike) -> None:
    """Write the ONNX graph `pixels -> feature maps` of `network` to `path` (atomically)."""
    from ..onnx_runtime import export_graph

    batch = torch.export.Dim("batch", min=1, max=4096)
    pixels = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    export_graph(_FeatureMaps(network), (pixels,), (["pixel_values"], ["maps"]), ({0: batch},), Path(path), ONNX_OPSET)


class _FeatureMaps(torch.nn.Module):
    def __init__(self, network: Any):
        super().__init__()
        self.network = network

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(pixel_values)


class ReferenceFeatures:
    """`forward_features(pixels (B, 3, 224, 224)) -> (B, 1280, 7, 7)` of `reference_network()`; `source` says what
    computes it ("onnxruntime" or "torch")."""

    def __init__(self, network: Any, use_onnx: bool = True, background: bool = False):
        self.network = network
        self.session: Any = None
        self.source = "torch"
        self.ready = threading.Event()  # set once the ONNX session is attached, or known to be unavailable
        if not use_onnx:
            self.ready.set()
        elif background:
            # A first start on a machine exports the graph (7 s on 2 cores): PyTorch answers meanwhile, so the app's
            # first answer does not wait for it (bench/results/cold_start_first_export.json).
            threading.Thread(target=self._attach, args=(True,), name="intake onnx export", daemon=True).start()
        else:
            self._attach()

    def _attach(self, background: bool = False) -> None:
        try:
            self.session = self._onnx_session(in_subprocess=background)
            self.source = "onnxruntime"
        except Exception as err:  # an optional accelerator: PyTorch computes the same maps
            logger.warning("the intake runs on PyTorch (ONNX Runtime unavailable: %s)", err)
        finally:
            self.ready.set()

    @torch.no_grad()
    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.session is not None and pixel_values.dtype == torch.float32:
            (maps,) = self.session.run(None, {"pixel_values": pixel_values.contiguous().numpy()})
            return torch.from_numpy(maps)
        return self.network.forward_features(pixel_values)

    def _onnx_session(self, in_subprocess: bool = False) -> Any:
        from filelock import FileLock

        from ..onnx_runtime import shared_session, tower_checksum

        folder = cache_dir() / "onnx"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"reference-{REFERENCE_NETWORK}-{tower_checksum(self.network)}.onnx"
        with FileLock(str(path) + ".lock", timeout=300):  # the app and a test, or two workers, starting at once
            for attempt in range(2):
                if not path.exists():
                    if in_subprocess:
                        # torch.export traces under a fake-tensor mode that breaks PyTorch forwards running in other
                        # threads of the process (the app answering meanwhile): export in a process of its own
                        root = str(Path(__file__).resolve().parents[2])
                        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
                        command = [sys.executable, "-m", "model_pkg.intake.reference", str(path)]
                        subprocess.run(command, check=True, capture_output=True, timeout=900, env=env)
                    else:
                        export_reference(self.network, path)
                try:
                    session = shared_session(path)
                    self._check(session)
                    return session
                except Exception:
                    # a cached graph that does not load or disagrees (damaged file, other onnxruntime): export it again
                    os.replace(path, str(path) + ".rejected")
                    if attempt == 1:
                        raise
        raise AssertionError("unreachable")

    def _check(self, session: Any) -> None:
        pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        (maps,) = session.run(None, {"pixel_values": pixels.numpy()})
        with torch.no_grad():
            diff = float((torch.from_numpy(maps) - self.network.forward_features(pixels)).abs().max())
        if diff > ONNX_TOLERANCE:
            raise RuntimeError(f"the exported graph differs from PyTorch by {diff:.2g} (> {ONNX_TOLERANCE})")


@functools.lru_cache(maxsize=1)
def reference_features() -> ReferenceFeatures:
    """The process's one `ReferenceFeatures` (ONNX Runtime unless ``PETMATCH_INTAKE_ONNX=0``), its session attached in
    the background: the first photos may run on PyTorch, with the same answers to 1e-6."""
    use_onnx = os.environ.get("PETMATCH_INTAKE_ONNX", "1") != "0"
    return ReferenceFeatures(reference_network(), use_onnx=use_onnx, background=True)


if __name__ == "__main__":  # python -m model_pkg.intake.reference PATH: the export, in a process of its own
    export_reference(reference_network(), sys.argv[1])
