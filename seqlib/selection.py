"""Selections and prompts: ``"mydog=0.8,cat"`` -> {name: weight}. Torch-free, so the CLI can
check what it was asked before anything heavy loads."""

from __future__ import annotations

import math
import re

from seqlib.choices import LAYOUTS
from seqlib.errors import ConceptNotFoundError, UsageError
from seqlib.format import Version, token_for

# A residual weighted beyond this swamps the base (usual LoRA weights are 0.3-1.5): the image is
# saturated or black, never what a user meant.
MAX_WEIGHT = 10.0
MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens: more is certainly cut, and surely a mistake
MIN_SIZE = 32  # pixels: below it the latent grid is a few cells, and nothing is drawn


def _parse(spec: str | list[str] | dict[str, float]) -> dict[str, float | None]:
    """``"mydog=0.8,cat"`` or ``["mydog", "cat"]`` -> {name: weight, or None where none is given}."""
    if isinstance(spec, dict):
        return dict(spec)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, float | None] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            value = float(weight) if weight else None
        except ValueError:
            raise UsageError(f"weight of {name!r} must be a number, not {weight!r}") from None
        if value is not None and not math.isfinite(value):
            raise UsageError(f"weight of {name!r} must be a finite number, not {weight!r}")
        if value is not None and abs(value) > MAX_WEIGHT:  # far past any useful scale: black or noise
            raise UsageError(f"weight of {name!r} is {weight}; use a weight between -{MAX_WEIGHT} and {MAX_WEIGHT}")
        out[name.strip()] = value
    if not out:
        raise UsageError("no concepts selected; name one or more, e.g. `mydog,cat`")
    return out


def parse_selection(spec: str | list[str] | dict[str, float]) -> dict[str, float]:
    """``"mydog=0.8,cat"`` or ``["mydog", "cat"]`` -> {name: weight} (1 where none is given)."""
    return {name: 1.0 if w is None else w for name, w in _parse(spec).items()}


def example_prompt(spec: str) -> str:
    """A prompt naming the selected concepts, for hints: ``"mascot,robot=0.5"`` ->
    ``a photo of <mascot> and <robot>``."""
    names = [item.partition("=")[0].strip() for item in spec.split(",") if item.strip()] or ["mydog"]
    return "a photo of " + " and ".join(token_for(n) for n in names[:3])


def weights_for(spec: str | list[str] | dict[str, float], commit: Version) -> dict[str, float]:
    """Like ``parse_selection``, but a concept without a weight gets its preferred weight
    (``seqlib annotate --weight``)."""
    weights = {}
    for name, w in _parse(spec).items():
        concept = commit.concept(name)
        weights[name] = w if w is not None else concept.weight if concept else 1.0
    return weights


def unknown_concept(name: str, names: list[str]) -> ConceptNotFoundError:
    """The error for a name the version lacks, with the nearest name (a typo) and the known ones."""
    import difflib

    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    known = ", ".join(names[:20]) + (f" … ({len(names)} in all; `seqlib list`)" if len(names) > 20 else "")
    return ConceptNotFoundError(f"no concept named {name!r}; {hint}concepts: {known or 'none yet'}")


def check_request(prompt: str, weights: dict[str, float], commit: Version, layout: str, size: int, guidance: float):
    """Refuse what cannot be rendered; the row's prompts per tile (None for a summed image)."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; use {' or '.join(LAYOUTS)}")
    tile_prompts = _row_prompts(prompt, weights, commit) if layout == "row" else None
    if tile_prompts is None:
        _check_prompt(prompt, weights, commit)
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UsageError(
            f"the prompt has {len(prompt)} characters; the text encoder reads 77 tokens (a few hundred "
            f"characters), so keep it under {MAX_PROMPT_CHARS}"
        )
    if size % 8 or size < MIN_SIZE:  # diffusers' pipelines need it; every SD VAE's factor divides 8
        raise UsageError(
            f"--size {size}: must be a multiple of 8 and at least {MIN_SIZE}, e.g. {max(64, size // 8 * 8)}"
        )
    if not math.isfinite(guidance):
        raise UsageError(f"--guidance must be a finite number, not {guidance}")
    return tile_prompts


def mentioned_names(prompt: str) -> set[str]:
    """Concept names a prompt mentions by token (``<name>``)."""
    return set(re.findall(r"<([^<>\s]+)>", prompt))


def _row_prompts(prompt: str, weights: dict[str, float], commit: Version) -> list[str]:
    """One prompt per tile, each mentioning its own concept and no other."""
    prompts = [p.strip() for p in prompt.split("|")]
    if len(prompts) != len(weights):
        example = " | ".join(f"a photo of {token_for(n)}" for n in weights)
        raise UsageError(
            f"--layout row needs one prompt per concept, separated by '|': {len(weights)} concepts, "
            f'{len(prompts)} prompt{"s" if len(prompts) != 1 else ""} (e.g. "{example}")'
        )
    for i, (name, tile_prompt) in enumerate(zip(weights, prompts), 1):
        mentioned = mentioned_names(tile_prompt) & {c.name for c in commit.concepts}
        if mentioned != {name}:
            raise UsageError(
                f"tile {i} is {token_for(name)}'s: its prompt must mention {token_for(name)} and no other concept "
                f"(it has {tile_prompt!r})"
            )
    return prompts


def _check_prompt(prompt: str, weights: dict[str, float], commit: Version) -> None:
    mentioned = mentioned_names(prompt)
    selected = set(weights)
    if not mentioned & selected:
        tokens = " ".join(token_for(n) for n in weights)
        raise UsageError(f"the prompt mentions none of the selected concepts; use their tokens: {tokens}")
    known = {c.name for c in commit.concepts}
    unselected = sorted((mentioned & known) - selected)
    if unselected:
        raise UsageError(
            f"the prompt mentions {', '.join(token_for(n) for n in unselected)} but the selection "
            f"does not include {'it' if len(unselected) == 1 else 'them'}; add to the selection"
        )
