"""Static int8 quantisation of an exported image graph (`python -m model_pkg.export onnx --int8`).

Its own module because it is a separate step on a finished fp32 graph, with its own dependency
(`onnxruntime.quantization`) and its own reasons (the 7-bit weights below); `bench/bench_embed_speed.py`
calls it directly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["quantize_image_tower"]


def quantize_image_tower(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    calibration: torch.Tensor,
    batch_size: int = 16,
    reduce_range: bool = True,
) -> dict[str, Any]:
    """Static QDQ quantisation of an image graph: per-channel int8 weights, uint8 activations whose ranges
    (MinMax) come from `calibration` pixels (N, 3, S, S), photos of training identities.

    `reduce_range` keeps the weights to 7 bits. CPUs without VNNI (AVX2 / AVX-512 only, like our 2-core machine)
    multiply uint8 x int8 with an instruction whose 16-bit sums saturate: with full 8-bit weights the shipped
    embedder lost 8.2 points of gallery rank-1, with 7-bit weights none (bench/README.md, issue 14)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[torch.Tensor] = iter(calibration.split(batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch.numpy()}

    target = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(str(fp32_path), prepared, skip_symbolic_shape=False)
        quantized = os.path.join(tmp, target.name)
        quantize_static(
            prepared,
            quantized,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,  # keeps only each tensor's min / max per batch: small
        )
        os.replace(quantized, target)
    return {"photos": len(calibration), "method": "MinMax", "format": "QDQ", "per_channel": True, "reduce_range": reduce_range}
