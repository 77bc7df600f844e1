"""The lab world: a richer procedural world for the embedded lab base (``embedded:lab``).

The tiny base's world (``seqlib.world``) has single-colour primitives; a new concept made of
several coloured parts (eyes, feet, a frame, a visor) is then made of nothing the base knows.
Here objects have parts, textures and relations, as a photo model's world has dogs with ears
and houses with doors — so a concept can be drawn from parts the base already draws:

- primitives (the world's six shapes and a star, an oval, a bar) in plain, striped, dotted or
  checkered texture, optionally with a border of another colour;
- composite objects: a creature (body, optional ears, eyes, belly, feet), a house (walls, roof,
  door), a tree (trunk, crown), a flag (pole, banner, band), a badge (an outline with an inner
  symbol), a tower (two or three stacked parts), a machine (head with a visor, body, arms, legs);
- relations between two objects: side by side, one above the other, one inside the other;
- backdrops of one colour or a wall and a floor, as in the held-out concepts' photos.

The held-out concepts (``seqlib.heldout``) stay out of this world: their exact colour triples,
proportions and part layouts are never drawn here, only the kinds of parts they are made of.
Every scene is a pure function of its index; images are drawn at twice the size and
downsampled (antialiased), like the concepts' photos.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from seqlib.heldout import PALETTE

# The held-out concepts' palette (so a colour word means the same colour in both), less lime and
# sky (a concept may still bring a colour the world never named), plus grey.
COLOURS = {name: rgb for name, rgb in PALETTE.items() if name not in ("lime", "sky")} | {"grey": (128, 128, 128)}
BACKGROUNDS = ("grey", "white", "black", "blue", "green", "brown", "pink", "teal")
SHAPES = ("circle", "square", "triangle", "diamond", "ring", "cross", "star", "oval", "bar")
OBJECTS = ("creature", "house", "tree", "flag", "badge", "tower", "machine")
TEXTURES = ("plain", "striped", "dotted", "checkered")
SIZES = {"small": 0.34, "big": 0.62}
RELATIONS = ("left-right", "above", "inside")
WORDS = (
    "a and in on the of with background floor wall above below inside next to left right top bottom center "
    "small big border eyes ears pointed round feet belly roof door walls trunk crown pole banner band visor "
    "arms legs body head symbol outline stripes dots tall"
).split()
VOCABULARY = sorted({*COLOURS, *BACKGROUNDS, *SHAPES, *OBJECTS, *TEXTURES, *SIZES, *WORDS})


@dataclass(frozen=True)
class Thing:
    """One object: a primitive ``shape`` or a composite ``kind`` with its part choices."""

    kind: str  # a SHAPES or OBJECTS entry
    colour: str
    size: str
    texture: str = "plain"
    border: str | None = None  # primitives: a border colour
    parts: tuple[tuple[str, str], ...] = ()  # composites: (part, colour or style) in caption order

    def phrase(self) -> str:
        texture = "" if self.texture == "plain" else f" {self.texture}"
        words = f"a {self.size} {self.colour}{texture} {self.kind}"
        extras = []
        if self.border:
            extras.append(f"a {self.border} border")
        for part, value in self.parts:
            extras.append(f"{value} {part}" if value else part)
        return words + (" with " + " and ".join(extras) if extras else "")


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    relation: str  # "single", or one of RELATIONS for two things
    position: str  # where a single thing stands
    background: str
    floor: str | None

    @property
    def caption(self) -> str:
        if self.relation == "single":
            where = "in the center" if self.position == "center" else f"on the {self.position}"
            body = f"{self.things[0].phrase()} {where}"
        elif self.relation == "left-right":
            body = f"{self.things[0].phrase()} on the left and {self.things[1].phrase()} on the right"
        elif self.relation == "above":
            body = f"{self.things[0].phrase()} above {self.things[1].phrase()}"
        else:
            body = f"{self.things[0].phrase()} inside {self.things[1].phrase()}"
        back = f"on a {self.background} background"
        return f"{body} {back}" + (f" with a {self.floor} floor" if self.floor else "")


def _thing(rng: random.Random, avoid: set[str], size: str) -> Thing:
    def pick(exclude: set[str]) -> str:
        return rng.choice([c for c in COLOURS if c not in exclude])

    colour = pick(avoid)
    if rng.random() < 0.45:
        shape = rng.choice(SHAPES)
        textured = shape not in ("ring", "cross", "bar")
        texture = rng.choice(TEXTURES) if textured and rng.random() < 0.5 else "plain"
        border = pick(avoid | {colour}) if shape not in ("ring", "cross") and rng.random() < 0.3 else None
        return Thing(shape, colour, size, texture, border)
    kind = rng.choice(OBJECTS)
    parts: list[tuple[str, str]] = []
    other = pick({colour})
    if kind == "creature":
        if rng.random() < 0.6:
            parts.append(("ears", rng.choice(("pointed", "round"))))
        parts.append(("eyes", ""))
        if rng.random() < 0.6:
            parts.append(("belly", pick({colour})))
        if rng.random() < 0.7:
            parts.append(("feet", other))
    elif kind == "house":
        parts = [("roof", other)] + ([("door", pick({colour}))] if rng.random() < 0.7 else [])
    elif kind == "tree":
        parts = [("trunk", rng.choice(("brown", "black", "grey")))]
    elif kind == "flag":
        parts = [("pole", rng.choice(("black", "white", "grey", "brown")))]
        if rng.random() < 0.6:
            parts.append(("band", other))
    elif kind == "badge":
        parts = [("outline", other), ("symbol", rng.choice(("star", "cross", "circle", "stripes")))]
    elif kind == "tower":
        parts = [("top", rng.choice(("circle", "square", "triangle"))), ("body", other)]
    else:  # machine
        parts = [("visor", other)] + ([("arms", pick({colour}))] if rng.random() < 0.6 else []) + [("legs", "")]
    return Thing(kind, colour, size, parts=tuple(parts))


def scene(index: int) -> Scene:
    """The lab scene with this index (deterministic)."""
    rng = random.Random(f"lab-{index}")
    background = rng.choice(BACKGROUNDS)
    floor = rng.choice([b for b in BACKGROUNDS if b != background]) if rng.random() < 0.35 else None
    avoid = {background} | ({floor} if floor else set())
    roll = rng.random()
    if roll < 0.55:
        size = rng.choice(list(SIZES))
        position = rng.choice(("center", "left", "right", "top", "bottom")) if size == "small" else "center"
        return Scene((_thing(rng, avoid, size),), "single", position, background, floor)
    relation = rng.choice(RELATIONS)
    first = _thing(rng, avoid, "small")
    second = _thing(
        rng, avoid | ({first.colour} if relation == "inside" else set()), "big" if relation == "inside" else "small"
    )
    if relation == "inside":  # a primitive inside a big primitive reads clearly; composites do not
        first = Thing(rng.choice(("circle", "square", "star", "diamond")), first.colour, "small")
        second = Thing(rng.choice(("circle", "square", "diamond")), second.colour, "big", border=second.border)
    return Scene((first, second), relation, "center", background, floor)


def _draw_primitive(d, shape: str, cx: float, cy: float, r: float, fill, texture: str = "plain", border=None) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    outline = dict(outline=border, width=max(2, int(r / 5))) if border else {}
    if shape == "circle":
        d.ellipse(box, fill=fill, **outline)
    elif shape == "oval":
        d.ellipse((cx - r, cy - r * 0.6, cx + r, cy + r * 0.6), fill=fill, **outline)
    elif shape == "square":
        d.rectangle(box, fill=fill, **outline)
    elif shape == "bar":
        d.rectangle((cx - r * 0.3, cy - r, cx + r * 0.3, cy + r), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill, **outline)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill, **outline)
    elif shape == "star":
        pts = [
            (
                cx + (r if k % 2 == 0 else r * 0.42) * math.sin(k * math.pi / 5),
                cy - (r if k % 2 == 0 else r * 0.42) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
        d.polygon(pts, fill=fill, **outline)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=max(3, int(r / 2.5)))
    else:  # cross
        w = r / 2.5
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    if texture != "plain":
        contrast = (15, 15, 15) if sum(fill) > 380 else (250, 250, 250)
        step = max(4, int(r / 2.5))
        lo, hi = cx - r / 2, cx + r / 2
        if texture == "striped":
            for y in range(int(cy - r * 0.7), int(cy + r * 0.7), step):
                d.line((lo, y, hi, y), fill=contrast, width=2)
        elif texture == "dotted":
            for y in range(int(cy - r / 2), int(cy + r / 2) + 1, step):
                for x in range(int(lo), int(hi) + 1, step):
                    d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=contrast)
        else:  # checkered
            half = step // 2 or 1
            for j, y in enumerate(range(int(cy - r / 2), int(cy + r / 2), half)):
                for i, x in enumerate(range(int(lo), int(hi), half)):
                    if (i + j) % 2:
                        d.rectangle((x, y, x + half - 1, y + half - 1), fill=contrast)


def _draw_creature(d, parts: dict, fill, cx: float, cy: float, r: float) -> None:
    """Ears (pointed or round), body, belly, eyes, feet."""

    def c(name: str):
        return COLOURS[parts[name]]

    def box(x0, y0, x1, y1):  # in units of r around the centre
        return (cx + x0 * r, cy + y0 * r, cx + x1 * r, cy + y1 * r)

    if parts.get("ears") == "pointed":
        d.polygon([(cx - 0.55 * r, cy - 0.45 * r), (cx - 0.35 * r, cy - r), (cx - 0.1 * r, cy - 0.6 * r)], fill=fill)
        d.polygon([(cx + 0.1 * r, cy - 0.6 * r), (cx + 0.35 * r, cy - r), (cx + 0.55 * r, cy - 0.45 * r)], fill=fill)
    elif parts.get("ears") == "round":
        d.ellipse(box(-0.7, -0.95, -0.3, -0.55), fill=fill)
        d.ellipse(box(0.3, -0.95, 0.7, -0.55), fill=fill)
    d.ellipse(box(-0.7, -0.7, 0.7, 0.75), fill=fill)
    if "belly" in parts:
        d.ellipse(box(-0.35, 0.05, 0.35, 0.65), fill=c("belly"))
    for sx in (-0.28, 0.28):
        d.ellipse(box(sx - 0.16, -0.4, sx + 0.16, -0.08), fill=(250, 250, 250))
        d.ellipse(box(sx - 0.07, -0.3, sx + 0.07, -0.14), fill=(15, 15, 15))
    if "feet" in parts:
        d.ellipse(box(-0.55, 0.68, -0.15, 0.98), fill=c("feet"))
        d.ellipse(box(0.15, 0.68, 0.55, 0.98), fill=c("feet"))


def _draw_badge(d, parts: dict, fill, cx: float, cy: float, r: float) -> None:
    """An outlined shield with a symbol (stripes or a primitive) in the outline's colour."""

    def c(name: str):
        return COLOURS[parts[name]]

    def box(x0, y0, x1, y1):  # in units of r around the centre
        return (cx + x0 * r, cy + y0 * r, cx + x1 * r, cy + y1 * r)

    d.polygon(
        [
            (cx - 0.85 * r, cy - 0.9 * r),
            (cx + 0.85 * r, cy - 0.9 * r),
            (cx + 0.85 * r, cy + 0.1 * r),
            (cx, cy + r),
            (cx - 0.85 * r, cy + 0.1 * r),
        ],
        fill=c("outline"),
    )
    d.polygon(
        [
            (cx - 0.65 * r, cy - 0.72 * r),
            (cx + 0.65 * r, cy - 0.72 * r),
            (cx + 0.65 * r, cy + 0.02 * r),
            (cx, cy + 0.75 * r),
            (cx - 0.65 * r, cy + 0.02 * r),
        ],
        fill=fill,
    )
    symbol, contrast = parts["symbol"], COLOURS[parts["outline"]]
    if symbol == "stripes":
        for y0 in (-0.45, -0.05):
            d.rectangle(box(-0.5, y0, 0.5, y0 + 0.16), fill=contrast)
    else:
        _draw_primitive(d, symbol, cx, cy - 0.1 * r, 0.35 * r, contrast)


def _draw_thing(d, t: Thing, cx: float, cy: float, r: float) -> None:
    fill = COLOURS[t.colour]
    if t.kind in SHAPES:
        _draw_primitive(d, t.kind, cx, cy, r, fill, t.texture, COLOURS[t.border] if t.border else None)
        return
    parts = dict(t.parts)

    def c(name: str):
        return COLOURS[parts[name]]

    def box(x0, y0, x1, y1):  # in units of r around the centre
        return (cx + x0 * r, cy + y0 * r, cx + x1 * r, cy + y1 * r)

    if t.kind == "creature":
        _draw_creature(d, parts, fill, cx, cy, r)
    elif t.kind == "house":
        d.rectangle(box(-0.7, -0.15, 0.7, 0.95), fill=fill)
        d.polygon([(cx - 0.9 * r, cy - 0.1 * r), (cx, cy - r), (cx + 0.9 * r, cy - 0.1 * r)], fill=c("roof"))
        if "door" in parts:
            d.rectangle(box(-0.18, 0.4, 0.18, 0.95), fill=c("door"))
    elif t.kind == "tree":
        d.rectangle(box(-0.15, 0.2, 0.15, 1.0), fill=c("trunk"))
        d.ellipse(box(-0.75, -1.0, 0.75, 0.4), fill=fill)
    elif t.kind == "flag":
        d.rectangle(box(-0.8, -1.0, -0.65, 1.0), fill=c("pole"))
        d.rectangle(box(-0.65, -0.95, 0.85, 0.05), fill=fill)
        if "band" in parts:
            d.rectangle(box(-0.65, -0.6, 0.85, -0.3), fill=c("band"))
    elif t.kind == "badge":
        _draw_badge(d, parts, fill, cx, cy, r)
    elif t.kind == "tower":
        d.rectangle(box(-0.5, 0.0, 0.5, 1.0), fill=c("body"))
        _draw_primitive(d, parts["top"], cx, cy - 0.5 * r, 0.5 * r, fill)
    else:  # machine
        d.rectangle(box(-0.5, -0.95, 0.5, -0.3), fill=fill)  # head
        d.rectangle(box(-0.38, -0.75, 0.38, -0.55), fill=c("visor"))
        d.rectangle(box(-0.45, -0.22, 0.45, 0.6), fill=fill)  # body
        if "arms" in parts:
            d.rectangle(box(-0.75, -0.2, -0.55, 0.35), fill=c("arms"))
            d.rectangle(box(0.55, -0.2, 0.75, 0.35), fill=c("arms"))
        d.rectangle(box(-0.35, 0.6, -0.12, 1.0), fill=fill)
        d.rectangle(box(0.12, 0.6, 0.35, 1.0), fill=fill)


_PLACES = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73), "center": (0.5, 0.5)}


def render(s: Scene, size: int = 64):
    """The scene as an RGB PIL image of ``size`` x ``size`` pixels."""
    from PIL import Image, ImageDraw

    big = size * 2
    im = Image.new("RGB", (big, big), COLOURS[s.background])
    d = ImageDraw.Draw(im)
    if s.floor:
        d.rectangle((0, int(big * 0.68), big, big), fill=COLOURS[s.floor])
    if s.relation == "single":
        fx, fy = _PLACES[s.position]
        _draw_thing(d, s.things[0], fx * big, fy * big, SIZES[s.things[0].size] * big / 2 * 1.25)
    elif s.relation == "left-right":
        for t, fx in zip(s.things, (0.27, 0.73)):
            _draw_thing(d, t, fx * big, 0.5 * big, 0.2 * big)
    elif s.relation == "above":
        for t, fy in zip(s.things, (0.27, 0.73)):
            _draw_thing(d, t, 0.5 * big, fy * big, 0.2 * big)
    else:  # inside: the big one first, the small one on top of it
        _draw_thing(d, s.things[1], 0.5 * big, 0.5 * big, 0.42 * big)
        _draw_thing(d, s.things[0], 0.5 * big, 0.5 * big, 0.16 * big)
    return im.resize((size, size), Image.Resampling.LANCZOS)
