"""Checking uploaded pictures before any model sees them."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_BYTES = 25 * 1024 * 1024
MAX_PIXELS = 20_000_000
ACCEPTED = "a JPEG, PNG, WebP, BMP or GIF picture under 25 MB and 20 megapixels"


class UploadError(ValueError):
    pass


def load_upload(path: str | Path | None) -> tuple[Image.Image, list[str]]:
    """The upload as an RGB image plus notes on what was converted; UploadError if unusable."""
    if not path:
        raise UploadError(f"No picture yet: upload {ACCEPTED}, or pick an example.")
    path = Path(path)
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise UploadError(f"{path.name} is {size / 1e6:.1f} MB; please upload {ACCEPTED}.")
    notes = []
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UploadError(f"{path.name} is {w}×{h} ({w * h / 1e6:.1f} megapixels); please upload {ACCEPTED}.")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes.append(f"animated ({frames} frames): using the first frame")
            img.seek(0)
            if img.mode not in ("RGB",):
                notes.append(f"{ {'L': 'grayscale', 'RGBA': 'RGBA', 'LA': 'grayscale+alpha', 'P': 'palette'}.get(img.mode, img.mode)} "
                             "picture converted to RGB" + (" on white" if "A" in img.mode or img.mode == "P" else ""))
            if "A" in img.mode or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.split()[3])
            else:
                rgb = img.convert("RGB")
            rgb.load()
    except UploadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadError(f"{path.name} is not a readable picture ({type(exc).__name__}); please upload {ACCEPTED}.") from None
    return rgb, notes
