"""Photos: where they are (the data root, else the app's demo photos) and small thumbnails for chart tooltips.
Separate from the embeddings because the gallery tab shows photos too.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

from .files import REPO


def default_data_root() -> Path:
    """Where the photos are: `PETMATCH_DATA`, else `<repo>/../shared/data` (the app's default)."""
    return Path(os.environ.get("PETMATCH_DATA", REPO.parent / "shared" / "data"))


def default_assets_dir() -> Path:
    """The app's assets (`PETMATCH_ASSETS_DIR`, as for the app, else `app/assets`): its demo photos are test dogs."""
    return Path(os.environ.get("PETMATCH_ASSETS_DIR", REPO / "app" / "assets"))


def find_photo(relative: str, data_root: Path, assets_dir: Path | None = None) -> Path | None:
    """A photo given relative to the data root (`dogfacenet/<dog>/<photo>`): under `data_root`, else among the app's
    demo photos (`<assets>/demo_photos/*/<dog>/<photo>`, shipped with the repository); None if neither has it."""
    candidate = Path(data_root, relative)
    if candidate.is_file():
        return candidate
    parts = Path(relative).parts
    if len(parts) >= 2:
        demo = Path(assets_dir or default_assets_dir(), "demo_photos")
        for folder in sorted(demo.glob(f"*/{parts[-2]}")):
            if (folder / parts[-1]).is_file():
                return folder / parts[-1]
    return None


def thumbnail_data_url(path: Path, size: int = 96) -> str:
    """A small JPEG of the photo as a `data:` URL (for chart tooltips, which cannot read local files)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
