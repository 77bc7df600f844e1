"""Held-out concepts: distinctive objects the embedded base never saw, photographed by code.

The pretraining world (``seqlib.world``) has single-colour primitive shapes. A concept here
is a multi-part object of three or four colours — a mascot with ears, eyes, belly and feet,
a heraldic emblem, a robot, a stacked totem — and each "photo" shows it with a different
pose (rotation, mirroring), scale, position and background: the few-shot setting of the
paper. Every concept and photo is a pure function of (namespace, index), so benchmarks and
the identity metric's training identities (another namespace) are reproducible and disjoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("mascot", "emblem", "robot", "totem")
PALETTE = {
    "red": (215, 45, 45),
    "orange": (240, 140, 30),
    "yellow": (240, 215, 50),
    "lime": (150, 215, 60),
    "green": (30, 140, 70),
    "teal": (30, 160, 160),
    "sky": (100, 180, 240),
    "blue": (40, 60, 190),
    "purple": (130, 50, 170),
    "pink": (240, 130, 190),
    "brown": (120, 70, 35),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
# The quickstart's concepts: the first photo-able concept of each family, by name.
EXAMPLES = ("mascot", "emblem", "robot")


@dataclass(frozen=True)
class Concept:
    """One identity: a family, its colours (body, accent, detail) and a few part choices."""

    name: str
    family: str
    body: str
    accent: str
    detail: str
    variant: tuple[int, int, int]

    @property
    def key(self) -> tuple:
        return (self.family, self.body, self.accent, self.detail, self.variant)


def concept(namespace: str, index: int, name: str | None = None) -> Concept:
    rng = random.Random(f"concept-{namespace}-{index}")
    family = FAMILIES[index % len(FAMILIES)]
    body, accent, detail = rng.sample(list(PALETTE), 3)
    variant = (rng.randrange(4), rng.randrange(4), rng.randrange(3))
    return Concept(name or f"{family}{index}", family, body, accent, detail, variant)


def held_out(count: int, namespace: str = "benchmark") -> dict[str, Concept]:
    """``count`` distinct concepts; in the benchmark namespace the first of each family is
    named after it (``mascot``, ``emblem``, ``robot``, ``totem``)."""
    out: dict[str, Concept] = {}
    seen: set[tuple] = set()
    index = 0
    while len(out) < count:
        c = concept(namespace, index)
        if namespace == "benchmark" and c.family not in out:
            c = concept(namespace, index, name=c.family)
        if c.key not in seen:
            seen.add(c.key)
            out[c.name] = c
        index += 1
    return out


class _Pen:
    """Draws in a 128-unit frame scaled to the canvas."""

    def __init__(self, draw, side: int) -> None:
        self.d, self.s = draw, side / 128

    def box(self, x0, y0, x1, y1):
        s = self.s
        return (x0 * s, y0 * s, x1 * s, y1 * s)

    def poly(self, points):
        return [(x * self.s, y * self.s) for x, y in points]


def _draw_object(c: Concept, side: int = 128):
    """The concept on a transparent square canvas, upright and centred."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    colours = PALETTE[c.body], PALETTE[c.accent], PALETTE[c.detail]
    _FAMILIES.get(c.family, _draw_totem)(_Pen(ImageDraw.Draw(im), side), *colours, *c.variant)
    return im


def _draw_mascot(pen: _Pen, body, accent, detail, v0: int, v1: int, v2: int) -> None:
    """A round creature: ears or an antenna, belly, eyes looking by variant, feet."""
    d, s, box, poly = pen.d, pen.s, pen.box, pen.poly
    if v0 == 0:  # pointed ears
        d.polygon(poly([(30, 40), (44, 8), (58, 36)]), fill=body)
        d.polygon(poly([(70, 36), (84, 8), (98, 40)]), fill=body)
    elif v0 == 1:  # round ears
        d.ellipse(box(22, 14, 52, 44), fill=detail)
        d.ellipse(box(76, 14, 106, 44), fill=detail)
    elif v0 == 2:  # antenna
        d.line(box(64, 30, 64, 6), fill=detail, width=int(5 * s))
        d.ellipse(box(54, 0, 74, 18), fill=accent)
    d.ellipse(box(20, 26, 108, 112), fill=body)
    d.ellipse(box(42, 66, 86, 106), fill=accent)  # belly
    for x in (46, 82):  # eyes
        d.ellipse(box(x - 10, 42, x + 10, 62), fill=(250, 250, 250))
        d.ellipse(box(x - 4 + v1 - 2, 48, x + 4 + v1 - 2, 58), fill=(15, 15, 15))
    d.ellipse(box(30, 104, 56, 124), fill=detail)  # feet
    d.ellipse(box(72, 104, 98, 124), fill=detail)


def _draw_emblem(pen: _Pen, body, accent, detail, v0: int, v1: int, v2: int) -> None:
    """A badge: an outline, an inner field and a charge."""
    d, box, poly = pen.d, pen.box, pen.poly
    outline = [
        [(16, 12), (112, 12), (112, 64), (64, 122), (16, 64)],  # shield
        [(64, 6), (118, 36), (118, 92), (64, 122), (10, 92), (10, 36)],  # hexagon
        [(64, 6), (122, 64), (64, 122), (6, 64)],  # lozenge
        [(14, 14), (114, 14), (114, 114), (14, 114)],  # square banner
    ][v0]
    d.polygon(poly(outline), fill=detail)
    cx = sum(x for x, _ in outline) / len(outline)
    cy = sum(y for _, y in outline) / len(outline)
    inner = [(cx + 0.8 * (x - cx), cy + 0.8 * (y - cy)) for x, y in outline]
    d.polygon(poly(inner), fill=body)
    if v1 == 0:  # chevron
        d.polygon(poly([(30, 84), (64, 44), (98, 84), (98, 100), (64, 62), (30, 100)]), fill=accent)
    elif v1 == 1:  # cross
        d.rectangle(box(56, 24, 72, 108), fill=accent)
        d.rectangle(box(28, 52, 100, 68), fill=accent)
    elif v1 == 2:  # star
        import math

        pts = [
            (
                64 + (30 if k % 2 == 0 else 12) * math.sin(k * math.pi / 5),
                62 - (30 if k % 2 == 0 else 12) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
        d.polygon(poly(pts), fill=accent)
    else:  # two bands
        d.rectangle(box(26, 40, 102, 52), fill=accent)
        d.rectangle(box(26, 72, 102, 84), fill=accent)
    if v2 == 1:
        d.ellipse(box(56, 54, 72, 70), fill=detail)


def _draw_robot(pen: _Pen, body, accent, detail, v0: int, v1: int, v2: int) -> None:
    """A boxy robot: antenna, head with visor, torso with buttons, arms and legs."""
    d, s, box = pen.d, pen.s, pen.box
    d.rectangle(box(58, 4, 70, 22), fill=detail)  # antenna
    d.ellipse(box(54, 0, 74, 14), fill=accent if v2 else detail)
    head = box(28, 18, 100, 62) if v0 % 2 == 0 else box(36, 14, 92, 62)
    d.rectangle(head, fill=body)
    d.rectangle(box(head[0] / s + 6, 30, head[2] / s - 6, 44), fill=accent)  # visor
    d.rectangle(box(34, 66, 94, 114), fill=detail if v0 < 2 else body)  # torso
    for k in range(1 + v1 % 3):  # buttons
        d.ellipse(box(56, 72 + 13 * k, 72, 84 + 13 * k), fill=accent)
    d.rectangle(box(14, 70, 30, 104), fill=body)  # arms
    d.rectangle(box(98, 70, 114, 104), fill=body)
    d.rectangle(box(40, 114, 58, 128), fill=body)  # legs
    d.rectangle(box(70, 114, 88, 128), fill=body)


def _draw_totem(pen: _Pen, body, accent, detail, v0: int, v1: int, v2: int) -> None:
    """Three stacked parts in an order given by the variant, and a bar."""
    d, box, poly = pen.d, pen.box, pen.poly
    parts = [
        lambda y: d.ellipse(box(36, y, 92, y + 40), fill=body),
        lambda y: d.rectangle(box(30, y + 2, 98, y + 38), fill=accent),
        lambda y: d.polygon(poly([(64, y), (100, y + 40), (28, y + 40)]), fill=detail),
    ]
    order = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1)][v0]
    for k, part in enumerate(order):
        parts[part](4 + 40 * k)
    d.rectangle(box(20, 58, 108, 66) if v1 % 2 else box(60, 4, 68, 124), fill=(250, 250, 250))


_FAMILIES = {"mascot": _draw_mascot, "emblem": _draw_emblem, "robot": _draw_robot, "totem": _draw_totem}


def _backdrop(rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    top = tuple(rng.randint(70, 210) for _ in range(3))
    bottom = tuple(min(255, max(0, v + rng.randint(-40, 40))) for v in top) if rng.random() < 0.5 else top
    im = Image.new("RGB", (size, size), top)
    ImageDraw.Draw(im).rectangle((0, int(size * rng.uniform(0.55, 0.8)), size, size), fill=bottom)
    return im


def _place(im, c: Concept, rng: random.Random, side: int, x: int, y: int) -> None:
    """Paste the concept with a random pose (rotation, mirroring) at ``(x, y)``, ``side`` px wide."""
    from PIL import Image

    obj = _draw_object(c)
    if rng.random() < 0.5 and c.family != "totem":
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    obj = obj.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC, expand=False)
    obj = obj.resize((side, side), Image.Resampling.LANCZOS)
    im.paste(obj, (x, y), obj)


def photo(c: Concept, index: int, size: int = 64, scale: tuple[float, float] = (0.5, 0.8)):
    """Photo ``index`` of concept ``c``: an RGB PIL image with its own pose, scale (a share of
    the image side in ``scale``), position and background (a plain or two-tone backdrop in
    muted colours)."""
    rng = random.Random(f"photo-{c.name}-{c.key}-{index}")
    im = _backdrop(rng, size)
    side = int(size * rng.uniform(*scale))
    _place(im, c, rng, side, rng.randint(0, size - side), rng.randint(0, size - side))
    return im


def pair_photo(left: Concept, right: Concept, index: int, size: int = 64):
    """Both concepts in one photo, one in each half: the reference picture of a composition."""
    rng = random.Random(f"pair-{left.key}-{right.key}-{index}")
    im = _backdrop(rng, size)
    for c, x0 in ((left, 0), (right, size // 2)):
        side = int(size * rng.uniform(0.36, 0.48))
        _place(im, c, rng, side, x0 + rng.randint(0, size // 2 - side), rng.randint(0, size - side))
    return im


def write_photos(folder: Path, concepts: dict[str, Concept], count: int = 6) -> list[Path]:
    """Write ``count`` photos of each concept to ``folder/<name>/``; returns the folders."""
    out = []
    for name, c in concepts.items():
        sub = Path(folder) / name
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            photo(c, i).save(sub / f"{name}_{i}.png")
        out.append(sub)
    return out


def examples() -> dict[str, Concept]:
    """The quickstart's concepts (``examples/mascot`` ... are written from these)."""
    everything = held_out(len(FAMILIES))
    return {name: everything[name] for name in EXAMPLES}
