"""Training images: finding, hashing and loading them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from seqlib.errors import DataError
from seqlib.format import ImageRecord

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# Larger images are refused before they are decoded: a few-hundred-byte PNG can claim
# 50,000 x 50,000 pixels (a decompression bomb). 100 MP covers any camera.
MAX_PIXELS = 100_000_000
# Decoded images are shrunk to this side at once, so an 8000 x 8000 photo costs its decode only.
WORKING_SIDE = 1024


def find_images(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
    """The image files of ``folder`` (sorted); other files go to ``skipped`` if given."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder} does not exist")
    if folder.is_file():
        return [folder]
    files, others = [], []
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith("."):
            (files if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    if skipped is not None:
        skipped.extend(others)
    if not files:
        raise DataError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def image_records(files: list[Path]) -> list[ImageRecord]:
    return [ImageRecord(file=p.name, sha256=hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]


def photo_warnings(files: list[Path], resolution: int) -> list[str]:
    """What a careful user would want to hear about the photos before minutes of training: ones
    far smaller than the training resolution (upscaled, they carry no detail) and ones whose
    centre square keeps only a sliver of them. Reads headers only."""
    from PIL import Image

    small, thin = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Exception:  # noqa: BLE001  (unreadable files are refused when loaded)
            continue
        if min(width, height) < resolution / 2:
            small.append(f"{path.name} ({width}x{height})")
        if max(width, height) > 3 * min(width, height):
            thin.append(f"{path.name} ({width}x{height})")
    out = []
    if small:
        out.append(
            f"{len(small)} photos are under half the training resolution of {resolution} px and are upscaled: "
            + ", ".join(small[:3])
            + (" …" if len(small) > 3 else "")
        )
    if thin:
        out.append(
            f"{len(thin)} photos are over 3x longer than wide; the centre square keeps a sliver of each: "
            + ", ".join(thin[:3])
            + (" …" if len(thin) > 3 else "")
        )
    return out


def load_images(
    files: list[Path], resolution: int, crop: str = "center", flip: bool = False, copies: int = 1, seed: int = 0
):
    """RGB, cropped to a square and resized: a (N * copies, 3, res, res) tensor in [-1, 1].

    ``crop="random"`` takes squares of 80-100% of the short side at random places, ``flip``
    mirrors half of the copies at random: few-shot concepts see more poses without new photos.
    """
    import random

    import torch
    from PIL import Image, ImageOps

    out = []
    for path in files:
        im = open_image(path, max(WORKING_SIDE, 2 * resolution))
        rng = random.Random(f"{seed}-{path.name}")
        for _ in range(copies):
            view = im
            if crop == "random":
                side = int(min(im.size) * rng.uniform(0.8, 1.0))
                x, y = rng.randint(0, im.size[0] - side), rng.randint(0, im.size[1] - side)
                view = im.crop((x, y, x + side, y + side))
            view = ImageOps.fit(view, (resolution, resolution), Image.Resampling.BICUBIC)
            if flip and rng.random() < 0.5:
                view = ImageOps.mirror(view)
            out.append(pil_to_tensor(view))
    return torch.stack(out)


def open_image(path: Path, side: int = WORKING_SIDE):
    """An upright RGB PIL image no larger than ``side`` on its long edge; a clear DataError for
    anything that is not a readable image of at most MAX_PIXELS pixels."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > MAX_PIXELS:
                    raise DataError(
                        f"{path.name} is {width} x {height} pixels ({width * height / 1e6:.0f} MP); seqlib reads "
                        f"images of at most {MAX_PIXELS / 1e6:.0f} MP: downscale it or remove it"
                    )
                im.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
                im.load()
                im = _to_rgb(ImageOps.exif_transpose(im))
        if max(im.size) > side:
            im.thumbnail((side, side), Image.Resampling.LANCZOS)
        return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"{path.name} claims too many pixels to decode safely; seqlib reads images of at most "
            f"{MAX_PIXELS / 1e6:.0f} MP: downscale it or remove it"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read {path.name} as an image ({e}); remove or replace it") from None


def pil_to_tensor(im):
    """An RGB PIL image -> a (3, H, W) float tensor in [-1, 1], the range the VAE expects."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def _to_rgb(im):
    """Any PIL mode to 8-bit RGB: 16/32-bit greyscale is rescaled (a plain convert clips it
    to white), transparency is composited on white, CMYK and palettes convert normally."""
    import numpy as np
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")
