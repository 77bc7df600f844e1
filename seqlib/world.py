"""A procedural, captioned image world: the data a pretrained tiny base can learn from.

Every scene is a pure function of its index: one or two objects, each a coloured shape of
some size, pattern and position, on a plain background, with an English caption such as
"a small red striped circle on the left and a green square on a grey background". No
downloads; the same index gives the same image and caption on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 180),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {"grey": (128, 128, 128), "white": (245, 245, 245), "black": (20, 20, 20), "blue": (60, 90, 170)}
SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross")
PATTERNS = ("plain", "striped", "dotted")
SIZES = {"small": 0.28, "big": 0.5}
POSITIONS = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "center": (0.5, 0.5)}
VOCABULARY = sorted(
    {*COLOURS, *BACKGROUNDS, *SHAPES, *PATTERNS, *SIZES, *POSITIONS, "a", "and", "in", "on", "the", "background"}
)


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    pattern: str
    position: str

    def phrase(self) -> str:
        pattern = "" if self.pattern == "plain" else f" {self.pattern}"
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"a {self.size} {self.colour}{pattern} {self.shape} {where}"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: str

    @property
    def caption(self) -> str:
        return " and ".join(t.phrase() for t in self.things) + f" on a {self.background} background"


def scene(index: int, two_objects: float = 0.4) -> Scene:
    """The scene with this index (deterministic): object colours differ from the background,
    and two objects never share a position."""
    rng = random.Random(f"world-{index}")
    background = rng.choice(list(BACKGROUNDS))
    count = 2 if rng.random() < two_objects else 1
    positions = rng.sample(["left", "right"] if count == 2 else list(POSITIONS), count)
    things = tuple(
        Thing(
            shape=rng.choice(SHAPES),
            colour=rng.choice([c for c in COLOURS if c != background]),
            size="small" if count == 2 else rng.choice(list(SIZES)),
            pattern=rng.choice(PATTERNS),
            position=pos,
        )
        for pos in positions
    )
    return Scene(things, background)


def render(s: Scene, size: int = 64):
    """The scene as an RGB PIL image of ``size`` x ``size`` pixels."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), BACKGROUNDS[s.background])
    d = ImageDraw.Draw(im)
    for t in s.things:
        fx, fy = POSITIONS[t.position]
        cx, cy, r = fx * size, fy * size, SIZES[t.size] * size / 2
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLOURS[t.colour]
        if t.shape == "circle":
            d.ellipse(box, fill=fill)
        elif t.shape == "square":
            d.rectangle(box, fill=fill)
        elif t.shape == "triangle":
            d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        elif t.shape == "diamond":
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        elif t.shape == "ring":
            d.ellipse(box, outline=fill, width=max(2, int(r / 2.5)))
        else:  # cross
            w = r / 2.5
            d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
            d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        if t.pattern != "plain" and t.shape not in ("ring", "cross"):
            contrast = (0, 0, 0) if sum(fill) > 380 else (255, 255, 255)
            step = max(3, int(r / 2))
            if t.pattern == "striped":
                for y in range(int(cy - r) + step // 2, int(cy + r), step):
                    d.line((cx - r / 2, y, cx + r / 2, y), fill=contrast, width=1)
            else:
                for y in range(int(cy - r / 2), int(cy + r / 2) + 1, step):
                    for x in range(int(cx - r / 2), int(cx + r / 2) + 1, step):
                        d.point((x, y), fill=contrast)
    return im


def clutter(index: int, size: int = 64):
    """A caption-free image of random primitives in arbitrary colours (deterministic per index).

    Outside the grammar on purpose: the VAE must encode any picture a user brings (new
    colours, small parts, busy layouts), and the UNet learns a broad unconditional prior
    from these with an empty caption."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"clutter-{index}")

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    im = Image.new("RGB", (size, size), colour())
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 6)):
        r = rng.uniform(0.04, 0.4) * size
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        box = (cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r * rng.uniform(0.5, 1.5))
        kind = rng.choice(("ellipse", "rectangle", "polygon", "line", "ring", "dots"))
        if kind == "ellipse":
            d.ellipse(box, fill=colour())
        elif kind == "rectangle":
            d.rectangle(box, fill=colour())
        elif kind == "polygon":
            d.polygon(
                [(rng.uniform(box[0], box[2]), rng.uniform(box[1], box[3])) for _ in range(rng.randint(3, 6))],
                fill=colour(),
            )
        elif kind == "line":
            d.line(box, fill=colour(), width=rng.randint(1, 4))
        elif kind == "ring":
            d.ellipse(box, outline=colour(), width=rng.randint(1, 5))
        else:
            fill, step = colour(), rng.randint(3, 6)
            for y in range(int(box[1]), int(box[3]), step):
                for x in range(int(box[0]), int(box[2]), step):
                    d.point((x, y), fill=fill)
    return im
