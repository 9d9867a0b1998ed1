"""Robust image loading: every photo becomes an 8-bit RGB ``PIL.Image`` or a clear error.

Real photo folders contain surprises (zero-byte uploads, HTML saved as ``.jpg``,
half-copied JPEGs, phone photos rotated through EXIF, CMYK scans, 16-bit PNGs,
50-megapixel originals). ``load_image`` turns each of these into either a usable
RGB image or an :class:`ImageLoadError` naming the file, the problem and the fix,
so a bad file fails at the line that reads it instead of deep inside PIL or torch.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | Image.Image | np.ndarray

# PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS (~179 MP) as possible
# decompression bombs. Big camera originals are legitimate here and JPEGs are
# decoded at reduced scale via ``draft``, so we apply our own, higher ceiling.
# Raise it if you really have larger photos (non-JPEG ones are fully decoded).
MAX_PIXELS = 400_000_000
# Formats other than JPEG have no reduced-scale decoding: a 20,000 x 20,000 PNG of 1 MB would be decoded
# in full (1.2 GB, tens of seconds of CPU) before it could be downscaled. Such files are refused from their
# header; 50 MP still covers every camera and phone photo saved as PNG, WebP, TIFF or HEIF.
MAX_DECODED_PIXELS = 50_000_000
# A progressive JPEG is not cheap at reduced scale: libjpeg keeps every DCT coefficient of the full image
# until the last scan (a 550 KB, 144 MP file cost +414 MB), so above this size it is refused from its header.
MAX_PROGRESSIVE_PIXELS = MAX_DECODED_PIXELS

# What a service accepts from strangers (`check_upload`): recognised by their first bytes, never by name or
# by whichever of PIL's 40-odd readers would take the file (EPS runs Ghostscript, PSD and others are rarely
# exercised parsers).
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP")
_MAGIC = (
    ("JPEG", 0, b"\xff\xd8\xff"),
    ("PNG", 0, b"\x89PNG\r\n\x1a\n"),
    ("WEBP", 8, b"WEBP"),  # RIFF....WEBP
)

# Guards the brief switch-off of PIL's global bomb check while a header is read.
_BOMB_CHECK_LOCK = threading.Lock()

# PIL modes that carry (or may carry) an alpha channel.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
# PIL modes holding more than 8 bits per pixel in a single channel.
_WIDE_GRAY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


class ImageLoadError(ValueError):
    """An image file could not be turned into an RGB picture.

    The message names the file, says what was wrong and what to do about it.
    """


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<numpy array shape={source.shape} dtype={source.dtype}>"
    return f"<{type(source).__name__}>"


def _fail(name: str, problem: str, fix: str) -> ImageLoadError:
    return ImageLoadError(f"cannot load image {name}: {problem}. {fix}")


def sniff_format(head: bytes) -> str | None:
    """The format of a file from its first 12 bytes, among `UPLOAD_FORMATS`; None for anything else."""
    for fmt, offset, magic in _MAGIC:
        if head[offset : offset + len(magic)] == magic and (fmt != "WEBP" or head[:4] == b"RIFF"):
            return fmt
    return None


def check_upload(path: str | os.PathLike, name: str | None = None, formats=UPLOAD_FORMATS) -> str:
    """The format of an uploaded file, read from its magic bytes; an `ImageLoadError` naming the file as `name`
    (default: its base name, never the server's path) when it is none of `formats`."""
    shown = repr(name if name is not None else os.path.basename(os.fspath(path)))
    with open(path, "rb") as fh:
        head = fh.read(12)
    if not head:
        raise _fail(shown, "the file is empty (0 bytes)", "Upload the photo file itself.")
    fmt = sniff_format(head)
    if fmt is None or fmt not in formats:
        raise _fail(
            shown,
            f"the file is not an image in an accepted format: only {', '.join(formats)} photos are accepted (told "
            "from the file's first bytes, not its name)",
            "Save or export the photo as a JPEG or PNG and upload that.",
        )
    return fmt


def _widen_to_uint8(img: Image.Image) -> Image.Image:
    """Map a >8-bit grayscale image onto 0-255 by its bit depth, not by clipping."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        # Full 16-bit range: 65535 / 257 == 255 exactly.
        scaled = arr.astype(np.float64) / 257.0
    elif img.mode == "F":
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            scaled = arr.astype(np.float64) * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = arr.astype(np.float64)
        else:
            scaled = (arr - lo) / max(hi - lo, 1e-12) * 255.0
    else:  # "I": 32-bit signed; PNG/TIFF readers use it for 16-bit data too.
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 255:
            scaled = arr.astype(np.float64)
        elif lo >= 0 and hi <= 65535:
            scaled = arr.astype(np.float64) / 257.0
        else:
            scaled = (arr.astype(np.float64) - lo) / max(hi - lo, 1) * 255.0
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Return a new RGB image (never the caller's object) with transparency on white."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode in ("L", "RGB") and "transparency" in img.info:
        # A single transparent colour key; treat it like alpha.
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in _WIDE_GRAY_MODES:
        return _widen_to_uint8(img).convert("RGB")
    # Covers RGB (copy), L, 1, P, CMYK (PIL undoes Adobe inversion), YCbCr, RGBX...
    return img.convert("RGB")


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise _fail(
            name,
            f"array dtype is {arr.dtype}, expected uint8",
            "Convert it first, e.g. (arr * 255).clip(0, 255).astype(np.uint8) for 0-1 floats.",
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[2] == 3 else "RGBA")
    raise _fail(
        name,
        f"array shape {arr.shape} is not HxW, HxWx1, HxWx3 or HxWx4",
        "Pass a height x width x 3 uint8 array (channels last).",
    )


def _open_file(path: Path, max_side: int) -> Image.Image:
    name = repr(str(path))
    if not path.exists():
        raise _fail(name, "file not found", "Check the path, or remove the entry from your dataset.")
    if path.is_dir():
        raise _fail(name, "it is a directory, not a file", "Point to an image file inside it.")
    if path.stat().st_size == 0:
        raise _fail(name, "the file is empty (0 bytes)", "Re-copy or re-download it, or delete it.")

    try:
        with open(path, "rb") as fh:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                # Image.open only reads the header; PIL's own bomb check runs here,
                # so it is switched off for this call and replaced by MAX_PIXELS.
                with _BOMB_CHECK_LOCK:
                    saved_limit = Image.MAX_IMAGE_PIXELS
                    Image.MAX_IMAGE_PIXELS = None
                    try:
                        img = Image.open(fh)
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved_limit
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise _fail(
                        name,
                        f"{width}x{height} pixels exceeds the safety limit of {MAX_PIXELS:,}",
                        "Downscale the file, or raise model_pkg.data.images.MAX_PIXELS if it is genuine.",
                    )
                progressive = img.format == "JPEG" and bool(img.info.get("progressive") or img.info.get("progression"))
                if progressive and width * height > MAX_PROGRESSIVE_PIXELS:
                    raise _fail(
                        name,
                        f"{width}x{height} pixels in a progressive JPEG, which is decoded at full size in memory even "
                        f"when scaled down, above the safety limit of {MAX_PROGRESSIVE_PIXELS:,} pixels",
                        "Downscale the photo or save it as a baseline (non-progressive) JPEG, or raise "
                        "model_pkg.data.images.MAX_PROGRESSIVE_PIXELS if it is genuine.",
                    )
                if img.format == "JPEG" and max(width, height) > max_side:
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: a 100 MP photo then
                    # never materialises at full size in memory.
                    img.draft(img.mode, (max_side, max_side))
                decoded = img.size[0] * img.size[1]  # after draft: what will really be decoded
                if decoded > MAX_DECODED_PIXELS:
                    raise _fail(
                        name,
                        f"{width}x{height} pixels ({img.format or 'unknown format'}) would have to be decoded in full, "
                        f"above the safety limit of {MAX_DECODED_PIXELS:,} pixels",
                        "Downscale the file or save it as a JPEG, or raise model_pkg.data.images.MAX_DECODED_PIXELS "
                        "if it is genuine.",
                    )
                # Force the full decode now so truncation/corruption surfaces here.
                img.load()
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise _fail(
            name,
            "the file is not an image PIL can read (wrong format, or e.g. an HTML/text page saved with an image extension)",
            "Open it to check, then re-download/convert it to JPEG or PNG, or delete it.",
        ) from exc
    except MemoryError as exc:
        raise _fail(name, "not enough memory to decode it", "Downscale the file first.") from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError... for bad data
        raise _fail(
            name,
            f"the image data is corrupt or truncated ({type(exc).__name__}: {exc})",
            "Re-copy or re-export the file (it may be a partial download), or delete it.",
        ) from exc
    return img


def load_image(path: ImageSource, max_side: int = 2048) -> Image.Image:
    """Load a photo as an 8-bit RGB image whose longest side is at most ``max_side``.

    ``path`` may be a file path, an already-open PIL image (never modified) or a
    height x width x 3 uint8 numpy array. EXIF rotation is applied, transparency is
    composited on white, CMYK/palette/gray images are converted, 16-bit grayscale is
    rescaled by bit depth, and very large images are downscaled (JPEGs are decoded at
    reduced scale directly). Any failure raises :class:`ImageLoadError`.

    Truncated files are only detected while ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``
    is False (PIL's default); code that sets it True gets gray-filled images instead.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    name = _describe(path)
    if isinstance(path, (str, os.PathLike)):
        img = _open_file(Path(path), max_side)
    elif isinstance(path, Image.Image):
        try:
            path.load()
        except Exception as exc:
            raise _fail(
                name,
                f"the image data is corrupt or truncated ({type(exc).__name__}: {exc})",
                "Re-copy or re-export the file, or delete it.",
            ) from exc
        img = path
    elif isinstance(path, np.ndarray):
        img = _from_array(path, name)
    else:
        raise TypeError(f"load_image expects a path, a PIL image or a numpy uint8 array, got {type(path).__name__}")

    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception as exc:
        # A malformed EXIF block should not make an otherwise fine photo unusable.
        logger.debug("ignoring unreadable EXIF orientation of %s: %s", name, exc)
        oriented = img
    try:
        rgb = _to_rgb(oriented if oriented is not None else img)
    except Exception as exc:
        raise _fail(
            name,
            f"cannot convert PIL mode {img.mode!r} to RGB ({exc})",
            "Convert the file to an RGB JPEG or PNG.",
        ) from exc
    # _to_rgb always returns a fresh image, so resizing in place is safe.
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb
