"""Example "photos" drawn by code, so the quickstart needs no downloads."""

from __future__ import annotations

import random
from pathlib import Path

EXAMPLES = {
    # name: (body colour, accent colour, shape)
    "mascot": ((220, 60, 40), (250, 220, 60), "circle"),
    "emblem": ((40, 80, 200), (240, 240, 240), "square"),
    "gem": ((40, 170, 90), (20, 60, 30), "diamond"),
}


SHAPES = ("circle", "square", "diamond", "triangle", "ring", "cross")


def concept_specs(count: int) -> dict[str, tuple]:
    """``count`` distinct synthetic concepts (the three examples first), for benchmarks."""
    import itertools

    specs = dict(EXAMPLES)
    palette = [(220, 60, 40), (40, 80, 200), (40, 170, 90), (230, 200, 40), (150, 60, 190), (30, 30, 30)]
    for body, accent, shape in itertools.product(palette, palette[::-1], SHAPES):
        if len(specs) >= count:
            break
        if body != accent and (body, accent, shape) not in specs.values():
            specs[f"{shape}{len(specs)}"] = (body, accent, shape)
    return dict(list(specs.items())[:count])


def draw_example(name: str, index: int, size: int = 64, spec: tuple | None = None):
    """One photo of example concept ``name``: varied position, scale and background."""
    from PIL import Image, ImageDraw

    body, accent, shape = spec or EXAMPLES[name]
    rng = random.Random(f"{name}-{index}")
    background = tuple(rng.randint(90, 200) for _ in range(3))
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    s = rng.uniform(0.45, 0.7) * size
    cx, cy = rng.uniform(s / 2, size - s / 2), rng.uniform(s / 2, size - s / 2)
    box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
    if shape == "circle":
        d.ellipse(box, fill=body)
        for ex in (-0.18, 0.18):  # two eyes
            e = (cx + ex * s - s * 0.08, cy - s * 0.15 - s * 0.08, cx + ex * s + s * 0.08, cy - s * 0.15 + s * 0.08)
            d.ellipse(e, fill=accent)
    elif shape == "square":
        d.rectangle(box, fill=body)
        for k in range(1, 4):  # horizontal stripes
            y = box[1] + k * s / 4
            d.line((box[0], y, box[2], y), fill=accent, width=max(1, int(s / 14)))
    elif shape == "diamond":
        d.polygon([(cx, box[1]), (box[2], cy), (cx, box[3]), (box[0], cy)], fill=body, outline=accent)
    elif shape == "triangle":
        d.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=body, outline=accent)
    elif shape == "ring":
        d.ellipse(box, outline=body, width=max(2, int(s / 5)))
        d.ellipse((cx - s / 8, cy - s / 8, cx + s / 8, cy + s / 8), fill=accent)
    else:  # cross
        w = s / 3
        d.rectangle((cx - w / 2, box[1], cx + w / 2, box[3]), fill=body)
        d.rectangle((box[0], cy - w / 2, box[2], cy + w / 2), fill=accent)
    return im


def write_examples(
    folder: Path, names: list[str] | None = None, count: int = 6, specs: dict[str, tuple] | None = None
) -> list[Path]:
    """Write ``count`` photos of each concept to ``folder/<name>/``; returns the folders."""
    specs = specs or EXAMPLES
    out = []
    for name in names or list(specs):
        sub = Path(folder) / name
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw_example(name, i, spec=specs[name]).save(sub / f"{name}_{i}.png")
        out.append(sub)
    return out
