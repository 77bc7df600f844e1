"""Training images: finding, hashing and loading them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from seqlib.errors import DataError
from seqlib.format import ImageRecord

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def find_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder} does not exist")
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def image_records(files: list[Path]) -> list[ImageRecord]:
    return [ImageRecord(file=p.name, sha256=hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]


def load_images(files: list[Path], resolution: int):
    """RGB, centre-cropped to a square and resized: a (N, 3, res, res) tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    out = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read {path} as an image: {e}") from None
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)
