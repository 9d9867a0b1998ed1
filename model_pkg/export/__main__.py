"""`python -m model_pkg.export onnx --model DIR --photos DIR`: the command line of `model_pkg.export`.

Its `--help` is the package's docstring (what is written, the checks, int8); it also writes the export's README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_write
from ..onnx_runtime import ONNX_SUBDIR, ExportError
from . import DEFAULT_OPSET, DEFAULT_TOLERANCE, export_onnx
from . import __doc__ as DESCRIPTION


def _write_readme(out_dir: Path, manifest: dict[str, Any]) -> None:
    towers = ", ".join(f"{name} ({entry['file']}, {entry['precision']})" for name, entry in manifest["towers"].items())
    text = (
        "# ONNX export\n\n"
        f"Written by `python -m model_pkg.export onnx` (opset {manifest['opset']}): {towers}. `from_pretrained` of the model\n"
        "folder above runs these towers with onnxruntime at inference when it is installed, and ignores them (with a\n"
        "warning) once the model's weights differ from the ones recorded in manifest.json.\n"
    )
    atomic_write(out_dir / "README.md", lambda fh: fh.write(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_pkg.export", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    onnx = formats.add_parser("onnx", help="export the image / text towers to ONNX for onnxruntime")
    onnx.add_argument("--model", required=True, help="saved petmatch model folder")
    onnx.add_argument("--out", default=None, help="output folder (default <model>/onnx, where from_pretrained looks)")
    onnx.add_argument("--photos", default=None, help="folder of real photos to check (and calibrate) the image graph on")
    onnx.add_argument("--towers", default=None, help="comma-separated: image,text (default: all the model has)")
    onnx.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    onnx.add_argument("--check-photos", type=int, default=16, help="photos the graph is checked on (default 16)")
    onnx.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="largest relative error allowed")
    onnx.add_argument("--int8", action="store_true", help="also quantise the image tower (static int8) and use it")
    onnx.add_argument("--splits", default=None, help="splits JSON: calibrate on --calibration-split's identities only")
    onnx.add_argument("--calibration-split", default="train", help="split to calibrate on (default train)")
    onnx.add_argument("--calibration-photos", type=int, default=256, help="calibration photos (default 256)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("model_pkg").setLevel(logging.INFO)  # our progress, not the exporter's optimiser passes
    for name in ("check_photos", "calibration_photos"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            raise SystemExit(2)
    try:
        manifest = export_onnx(
            args.model,
            photos=args.photos,
            out=args.out,
            towers=[t.strip() for t in args.towers.split(",") if t.strip()] if args.towers else None,
            opset=args.opset,
            check_photos=args.check_photos,
            tolerance=args.tolerance,
            int8=args.int8,
            splits=args.splits,
            calibration_split=args.calibration_split,
            calibration_photos=args.calibration_photos,
        )
    except (ExportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    out_dir = Path(args.out) if args.out else Path(args.model) / ONNX_SUBDIR
    _write_readme(out_dir, manifest)
    print(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    main()
